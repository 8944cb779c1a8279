"""The fault matrix: a signal to ``hpo-infer tune`` at each phase of a study, then the same
command again. README "When things go wrong" shows this table.

Who gets the signal:
- ``agent``: the tune process alone (``kill PID``, Ctrl-C's SIGINT in a terminal);
- ``job``: every process the job started, at once, as ``scancel``, a pod eviction or ``docker
  stop`` of a container running several processes do (the worker runs in its own session, so
  a process-group signal from a terminal reaches only the agent: that is ``agent``);
- ``worker``: the trial's worker process alone (the OOM killer, a stray ``kill``).

For every case: nothing left behind, no measured trial lost, and once the same command has
run again, no trial is WAITING or RUNNING, the baseline is measured, and the budget counts
measured trials only (the dead trial spent none of it).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import optuna
import psutil
import pytest
from conftest import fault_spec, run_cli, tagged, trial_processes, write_spec
from optuna.trial import TrialState

from hpo_infer.study.trials import BASELINE, NOT_STARTED, ROLE

HB = {"HPO_INFER_HEARTBEAT_S": "1", "HPO_INFER_GRACE_S": "2"}
BUDGET = 2  # the baseline and one sampled trial


def _spec(phase: str) -> dict[str, Any]:
    common: dict[str, Any] = {"budget": {"trials": BUDGET}, "sampler": {"name": "tpe", "seed": 0}}
    if phase == "engine start":
        return fault_spec(fixed={"start_s": 1.5, "pass_s": 0.1, "mode": "spawn_child"}, repeats=2, **common)
    if phase == "measuring":
        return fault_spec(fixed={"pass_s": 0.25, "mode": "spawn_child"}, repeats=4, **common)
    if phase == "between trials":
        return fault_spec(fixed={"pass_s": 0.02}, repeats=2, **{**common, "budget": {"trials": 8}})
    if phase == "re-validation":
        return fault_spec(
            fixed={"pass_s": 0.15, "mode": "spawn_child"},
            repeats=2,
            validate_finalists=True,
            validation_rounds=1,
            **common,
        )
    assert phase == "pack"
    return fault_spec(
        search_space={"x": {"type": "int", "low": 22, "high": 26, "step": 2}},
        fixed={"pass_s": 0.2, "mode": "spawn_child"},
        sampler={"name": "grid"},
        budget={"trials": 50},
        repeats=2,
        trials_per_engine=4,
    )


def _workers(agent: psutil.Process) -> list[psutil.Process]:
    try:
        return trial_processes(agent)
    except psutil.Error:
        return []


def _ready(phase: str, agent: psutil.Process, study: Callable[[], list]) -> psutil.Process | None:
    """The worker to hit once the study is in ``phase`` (or, between trials, the agent), else None."""
    workers = _workers(agent)
    if phase == "between trials":
        if workers:
            return None
        trials = study()
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        return agent if 1 <= done < 7 and not any(t.state == TrialState.RUNNING for t in trials) else None
    if not workers:
        return None
    w = workers[0]
    try:
        age = time.time() - w.create_time()
        grandchild = bool(w.children())
    except psutil.Error:
        return None
    trials = study()
    running = [t for t in trials if t.state == TrialState.RUNNING]
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    if phase == "engine start":
        return w if running and not running[0].intermediate_values and age > 0.8 else None
    if phase == "measuring":
        return w if running and running[0].intermediate_values and grandchild else None
    if phase == "pack":  # the pack's leader measured, a later member measuring
        return w if len(running) > 1 and len(running[0].intermediate_values) >= 2 and grandchild else None
    assert phase == "re-validation"  # every trial told: this worker re-measures a finalist
    return w if done >= BUDGET and not running and grandchild and age > 0.2 else None


def _hit(target: str, sig: int, agent: psutil.Process, worker: psutil.Process, tag: str) -> None:
    if target == "agent":
        agent.send_signal(sig)
    elif target == "worker":
        worker.send_signal(sig)
    else:  # the job: every process it started, at once
        for p in tagged(tag):
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def schema_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite file with the schema at head, copied into each case: creating the schema
    takes 2 s of the 4 a first ``tune`` needs, and the matrix has 29 cases."""
    path = tmp_path_factory.mktemp("schema") / "empty.db"
    assert run_cli("db", "upgrade", "--storage", f"sqlite:///{path}").returncode == 0
    return path


def _load(url: str) -> optuna.Study:
    from hpo_infer.storage_url import normalise

    url = normalise(url)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


CASES = [
    (phase, target, sig)
    for phase in ("engine start", "measuring", "pack", "between trials", "re-validation")
    for target in ("agent", "job", "worker")
    for sig in (signal.SIGKILL, signal.SIGTERM)
    if not (phase == "between trials" and target == "worker")  # no worker then
] + [("measuring", "agent", signal.SIGINT)]


@pytest.mark.parametrize(
    "phase,target,sig", CASES, ids=[f"{p.replace(' ', '-')}-{t}-{signal.Signals(s).name}" for p, t, s in CASES]
)
def test_fault_matrix_on_sqlite(tmp_path: Path, schema_db: Path, phase: str, target: str, sig: int) -> None:
    shutil.copy(schema_db, tmp_path / "s.db")
    _case(tmp_path, f"sqlite:///{tmp_path / 's.db'}", phase, target, sig)


PG_CASES = [(p, "job", s) for p in ("measuring", "pack") for s in (signal.SIGKILL, signal.SIGTERM)] + [
    ("re-validation", "agent", signal.SIGKILL)
]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "phase,target,sig", PG_CASES, ids=[f"{p.replace(' ', '-')}-{t}-{signal.Signals(s).name}" for p, t, s in PG_CASES]
)
def test_fault_matrix_on_postgres(tmp_path: Path, pg_url: str, phase: str, target: str, sig: int) -> None:
    """The cases PostgreSQL could change (its advisory locks and connections die with the agent;
    SIGKILL of an agent alone is tests/test_postgres_faults.py), on a fresh database."""
    _case(tmp_path, pg_url, phase, target, sig)


def _case(tmp_path: Path, url: str, phase: str, target: str, sig: int) -> None:
    raw = _spec(phase)
    spec = write_spec(tmp_path, raw)
    tag = uuid.uuid4().hex
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HPO_INFER_")}, **HB, "HPO_TEST_TAG": tag}
    log = open(tmp_path / "tune.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo_infer", "tune", str(spec), "--storage", url],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    agent = psutil.Process(proc.pid)
    study: optuna.Study | None = None
    before: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 90
        victim = None
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            if study is None:
                try:
                    study = _load(url)
                except (ValueError, KeyError, Exception):  # noqa: BLE001 - not created yet
                    time.sleep(0.05)
                    continue
            victim = _ready(phase, agent, lambda: study.get_trials(deepcopy=False))  # type: ignore[union-attr]
            if victim is None:
                time.sleep(0.02)
        assert victim is not None, f"never caught the study in {phase!r}: " + (tmp_path / "tune.log").read_text()
        assert study is not None
        before = {t.number: t.value for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
        _hit(target, sig, agent, victim, tag)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "tune.log").read_text()
    assert "Traceback" not in out, out[-3000:]
    if target == "worker":
        assert rc == 0, out[-3000:]  # the agent carries on: the trial is retried
    elif sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 130, out[-3000:]
        assert "run the same command again to resume" in out
    gone, alive = psutil.wait_procs(tagged(tag), timeout=15)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"

    # The same command again finishes the study.
    res = run_cli("tune", str(spec), "--storage", url, cwd=tmp_path, env={**HB, "HPO_TEST_TAG": tag}, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    time.sleep(0.3)
    assert not tagged(tag), "processes left behind by the resumed run"
    study = _load(url)
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state for t in trials)
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], states
    after = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert {n: after.get(n) for n in before} == before, "a measured trial was lost"
    assert any(t.state == TrialState.COMPLETE and t.user_attrs.get(ROLE) == BASELINE for t in trials), "no baseline"
    from hpo_infer.agent.stop_rules import retried, spent

    again = retried(trials)
    # A trial Optuna had asked for when the signal came, before it had settings, is FAIL in
    # Optuna but says so: it measured nothing and there is nothing to run again.
    not_started = [t.number for t in trials if t.user_attrs.get("status") == NOT_STARTED]
    assert all(not trials[n].params and "worker_status" not in trials[n].user_attrs for n in not_started)
    final_fails = [t.number for t in trials if t.state == TrialState.FAIL and t.number not in again | set(not_started)]
    assert not final_fails, f"failed for good: {final_fails}"
    if raw["sampler"]["name"] == "grid":
        from test_postgres import assert_grid_once

        assert_grid_once(study, raw)
    else:
        assert sum(spent(t, again) for t in trials) == raw["budget"]["trials"], [(t.number, t.state) for t in trials]
        assert states[TrialState.COMPLETE] == raw["budget"]["trials"], "the dead trial spent the budget"
    if phase == "re-validation":
        assert "best_vs_baseline" in study.user_attrs.get("validation", {}), study.user_attrs.get("validation")


def test_a_trial_whose_agent_died_before_its_first_heartbeat_is_failed_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ask`` stores a trial RUNNING before the heartbeat thread starts; an agent killed in
    between (CI caught one in the matrix's between-trials-job-SIGKILL case) left a trial Optuna
    never calls stale, RUNNING for good. Past the grace period (and a margin, here 0) it is
    failed and queued again as a stale one is; one that beats, or is young, is left alone."""
    from hpo_infer.db.storage import open_storage
    from hpo_infer.study import optuna_api

    monkeypatch.setenv("HPO_INFER_HEARTBEAT_S", "1")
    monkeypatch.setenv("HPO_INFER_GRACE_S", "2")
    monkeypatch.setattr(optuna_api, "UNBEATEN_MARGIN_S", 0)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    dead = study.ask({"x": optuna.distributions.IntDistribution(1, 4)})  # its agent died here
    alive = study.ask({"x": optuna.distributions.IntDistribution(1, 4)})
    time.sleep(2.5)
    young = study.ask({"x": optuna.distributions.IntDistribution(1, 4)})
    storage.record_heartbeat(alive._trial_id)
    optuna_api.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == states[young.number] == TrialState.RUNNING
    (retry,) = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert retry.params == {"x": dead.params["x"]}
