"""Many agents, one study, a real PostgreSQL server (started by the test run: tests/pg.py).

The fault engine stands in for vLLM: every trial is a real worker process that sleeps through
its passes, so the agents spend their time waiting on trials, as on GPUs.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import fault_spec, run_cli, tagged, write_spec
from optuna.trial import TrialState

pytestmark = pytest.mark.postgres

FAST_HEARTBEAT = {"HPO_INFER_HEARTBEAT_S": "1", "HPO_INFER_GRACE_S": "4"}


def grid_spec(**over: Any) -> dict[str, Any]:
    spec = fault_spec(
        search_space={
            "x": {"type": "int", "low": 18, "high": 30, "step": 4},
            "y": {"type": "int", "low": 1, "high": 4},
        },
        sampler={"name": "grid"},
        budget={"trials": 200},
        repeats=2,
    )
    spec.update(over)
    return spec


def start_worker(
    spec: Path, url: str, *args: str, tag: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    """``hpo-infer worker`` as a fleet runs it: the storage URL in the environment."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("HPO_INFER_")}
    e.update({"HPO_INFER_STORAGE": url, "HPO_TEST_TAG": tag, **(env or {})})
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "hpo_infer", "worker", str(spec), *args],
        env=e,
        cwd=spec.parent,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def load(url: str) -> optuna.Study:
    from hpo_infer.storage_url import normalise

    storage = optuna.storages.RDBStorage(normalise(url), skip_table_creation=True)
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def point(t: optuna.trial.FrozenTrial) -> tuple:
    return tuple(sorted(t.params.items()))


def assert_grid_once(study: optuna.Study, spec: dict[str, Any]) -> None:
    """Every grid point measured exactly once (one COMPLETE or PRUNED trial), nothing left over."""
    from hpo_infer.spec import from_dict
    from hpo_infer.spec import space as sp

    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state for t in trials)
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], states
    grid = [t for t in trials if t.user_attrs.get("hpo_infer_role") == "grid"]
    measured = collections.Counter(point(t) for t in grid if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    expected = {tuple(sorted(p.items())) for p in sp.grid(from_dict(spec).space())}
    assert set(measured) == expected, f"missing {expected - set(measured)}, extra {set(measured) - expected}"
    twice = {p: n for p, n in measured.items() if n > 1}
    assert not twice, f"grid points measured twice: {twice}"
    assert not [t for t in trials if t.user_attrs.get("hpo_infer_role") == "surplus"]


def db_text(url: str) -> str:
    """Every row of every table in the database, as text (to look for a leaked password)."""
    import psycopg

    from hpo_infer.storage_url import normalise

    with psycopg.connect(normalise(url).replace("postgresql+psycopg", "postgresql")) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT t::text FROM "{t}" t'))


def test_db_upgrade_from_many_hosts_at_once_then_current(pg_url: str, pg_server: Any) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpo_infer", "db", "upgrade", "--storage", pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-2000:] for o in outs]
    assert sorted(o[0].splitlines()[-1] for o in outs) == ["already up to date"] * 3 + ["upgraded"]
    res = run_cli("db", "current", "--storage", pg_url)
    assert res.returncode == 0, res.stderr
    assert "optuna    v3.2.0.a (head): up to date" in res.stdout
    assert "hpo-infer 0001 (head): up to date" in res.stdout
    assert pg_server.password not in res.stdout + "".join(o[0] + o[1] for o in outs)
    assert "hpo:***@127.0.0.1" in res.stdout


def test_four_agents_on_one_grid_study_each_point_once_and_outcomes_as_designed(
    tmp_path: Path, pg_url: str, pg_server: Any
) -> None:
    spec = grid_spec(
        search_space={
            "mode": {"type": "categorical", "choices": ["ok", "crash_start"]},
            "x": {"type": "int", "low": 20, "high": 32, "step": 4},
            "y": {"type": "int", "low": 1, "high": 2},
        },
        fixed={"pass_s": 0.05, "start_s": 0.3, "max_x": 28},
        pruner={"name": "median", "options": {"n_startup_trials": 4}},
    )
    path = write_spec(tmp_path, spec)
    tag = uuid.uuid4().hex
    res = run_cli(
        "worker",
        str(path),
        "--storage",
        pg_url,
        "--agents",
        "4",
        cwd=tmp_path,
        env={"HPO_TEST_TAG": tag, **FAST_HEARTBEAT},
        timeout=400,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    assert pg_server.password not in out
    assert len({ln.split("]")[0] for ln in res.stdout.splitlines() if ln.startswith("[agent ")}) == 4
    time.sleep(0.5)
    assert not tagged(tag), "processes left behind"

    study = load(pg_url)
    trials = study.get_trials(deepcopy=False)
    ok_points = [t for t in trials if t.params.get("mode") == "ok" and t.user_attrs["hpo_infer_role"] == "grid"]
    crash = [t for t in trials if t.params.get("mode") == "crash_start"]
    # ok points: each measured once, feasible or (x > max_x) infeasible with a violated constraint, or pruned
    assert_grid_once(
        study, {**spec, "search_space": {**spec["search_space"], "mode": {"type": "categorical", "choices": ["ok"]}}}
    )
    for t in ok_points:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state)
        if t.state == TrialState.COMPLETE:
            assert (t.user_attrs["status"] == "infeasible") == (t.params["x"] > 28), (t.params, t.user_attrs["status"])
    # crash points: failed, retried once, failed again; never a COMPLETE
    by_point = collections.defaultdict(list)
    for t in crash:
        by_point[point(t)].append(t)
    assert len(by_point) == 8
    for p, ts in by_point.items():
        assert [t.state for t in ts] == [TrialState.FAIL, TrialState.FAIL], (p, [(t.number, t.state) for t in ts])
        assert ts[1].user_attrs["retry_of"] == ts[0].number
    # (an agent that starts seconds late on a loaded machine may find little left: not all four need work)
    assert len({t.user_attrs["agent"] for t in trials if "agent" in t.user_attrs}) >= 2, "the agents shared the study"

    # our tables: every repeat and window of every launched trial, with its environment
    from sqlalchemy import create_engine, text

    from hpo_infer.storage_url import normalise

    eng = create_engine(normalise(pg_url))
    with eng.connect() as c:
        per_trial = dict(
            c.execute(text("SELECT trial_number, count(*) FROM hpo_infer_measurement GROUP BY trial_number")).all()
        )
        reps = dict(
            c.execute(
                text(
                    "SELECT trial_number, count(*) FROM hpo_infer_measurement WHERE metric='tok_s' AND repeat IS NOT NULL AND \"window\" IS NULL GROUP BY trial_number"  # noqa: E501
                )
            ).all()
        )
        envs = c.execute(text("SELECT host, gpu_name, engine FROM hpo_infer_environment")).all()
        names = {r[0] for r in c.execute(text("SELECT DISTINCT study_name FROM hpo_infer_measurement"))}
    eng.dispose()
    assert names == {study.study_name}
    assert set(per_trial) == {t.number for t in trials}, "every trial has its rows (at least wall_s)"
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "ok":
            assert reps[t.number] == 2, (t.number, reps.get(t.number))
    assert envs and envs[0][1] == "cpu" and envs[0][2] == "fault"

    # export: recorded in hpo_infer_export, password nowhere in the output or the database
    res = run_cli("export", study.study_name, "--storage", pg_url, "--format", "json")
    assert res.returncode == 0, res.stderr
    assert pg_server.password not in res.stdout + res.stderr
    text_all = db_text(pg_url)
    assert study.study_name in text_all and "hpo:***@" not in text_all
    assert pg_server.password not in text_all
    eng = create_engine(normalise(pg_url))
    with eng.connect() as c:
        rows = c.execute(text("SELECT study_name, format, destination, trial_number FROM hpo_infer_export")).all()
    eng.dispose()
    assert rows == [(study.study_name, "json", "-", study.best_trial.number)]


def test_eight_agents_started_at_once_after_db_upgrade(tmp_path: Path, pg_url: str) -> None:
    assert run_cli("db", "upgrade", "--storage", pg_url).returncode == 0
    spec = grid_spec()
    path = write_spec(tmp_path, spec)
    tag = uuid.uuid4().hex
    procs = [start_worker(path, pg_url, "--agents", "1", tag=tag, env=FAST_HEARTBEAT) for _ in range(8)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "Traceback" not in out and "error" not in out.lower(), out[-3000:]
    study = load(pg_url)
    assert_grid_once(study, spec)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len([t for t in study.trials if t.user_attrs.get("hpo_infer_role") == "baseline"]) == 1


def test_postgres_restart_mid_study_agents_carry_on_and_no_finished_trial_is_lost(
    tmp_path: Path, pg_url: str, pg_server: Any
) -> None:
    budget = 30
    spec = fault_spec(
        sampler={"name": "random", "seed": 0}, budget={"trials": budget}, fixed={"pass_s": 0.1}, repeats=2
    )
    path = write_spec(tmp_path, spec)
    assert run_cli("db", "upgrade", "--storage", pg_url).returncode == 0
    log = tmp_path / "worker.log"
    # grace > the outage: a trial must not go stale while the database is away
    proc = start_worker(
        path,
        pg_url,
        "--agents",
        "3",
        tag=uuid.uuid4().hex,
        env={"HPO_INFER_HEARTBEAT_S": "1", "HPO_INFER_GRACE_S": "30"},
        log=log,
    )
    try:
        deadline = time.monotonic() + 180
        before: dict[int, float] = {}
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                done = [t for t in load(pg_url).trials if t.state == TrialState.COMPLETE]
            except Exception:  # noqa: BLE001 - the study may not exist yet
                continue
            if len(done) >= 6:
                before = {t.number: t.value for t in done}
                break
        assert before, "the study did not get going: " + log.read_text()[-3000:]
        assert len(before) < budget - 6, "restart must come in the middle of the study"
        pg_server.restart(down_s=3.0)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 0, out[-4000:]
    assert "storage unreachable" in out, "the agents did meet the restart (retries logged)"
    assert "Traceback" not in out
    study = load(pg_url)
    trials = {t.number: t for t in study.trials}
    for n, v in before.items():
        assert trials[n].state == TrialState.COMPLETE and trials[n].value == v
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert len(finished) == budget, collections.Counter(t.state for t in trials.values())
    from sqlalchemy import create_engine, text

    from hpo_infer.storage_url import normalise

    eng = create_engine(normalise(pg_url))
    with eng.connect() as c:
        measured = {r[0] for r in c.execute(text("SELECT DISTINCT trial_number FROM hpo_infer_measurement"))}
    eng.dispose()
    # A point the random sampler drew twice is told its first result, not measured again.
    copies = {t.number for t in finished if "duplicate_of" in t.user_attrs}
    assert {trials[n].user_attrs["duplicate_of"] for n in copies} <= measured
    assert measured == {t.number for t in finished} - copies
