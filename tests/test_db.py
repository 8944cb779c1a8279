"""Our tables under our own Alembic history, beside Optuna's (SQLite), and the pieces agents use.

PostgreSQL versions of the fleet tests are in test_postgres*.py.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import fault_spec, run_cli, trial_processes, write_spec
from sqlalchemy.exc import OperationalError

from hpo_infer.errors import InputError, StorageError


def _tables_sql(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as c:
        return {
            n: s
            for n, s in c.execute(
                "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL"
            )
        }


def test_db_current_and_upgrade_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    res = run_cli("db", "current", "--storage", url)
    assert res.returncode == 0, res.stderr
    assert "optuna    not created" in res.stdout and "hpo-infer not created" in res.stdout
    assert not db.exists(), "looking must not create the database"

    res = run_cli("db", "upgrade", "--storage", url)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "upgraded"
    res = run_cli("db", "upgrade", "--storage", url)
    assert res.stdout.splitlines()[-1] == "already up to date"
    res = run_cli("db", "current", "--storage", url)
    assert "optuna    v3.2.0.a (head): up to date" in res.stdout
    assert "hpo-infer 0001 (head): up to date" in res.stdout
    assert "studies   0" in res.stdout


def test_db_upgrade_leaves_optunas_tables_and_alembic_version_alone(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="theirs", storage=url)  # Optuna creates and stamps its schema
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    before = _tables_sql(db)
    with sqlite3.connect(db) as c:
        optuna_rev = c.execute("SELECT version_num FROM alembic_version").fetchall()

    assert run_cli("db", "upgrade", "--storage", url).returncode == 0
    after = _tables_sql(db)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchall() == optuna_rev == [("v3.2.0.a",)]
        assert c.execute("SELECT version_num FROM hpo_infer_alembic_version").fetchall() == [("0001",)]
    assert {
        k: v for k, v in after.items() if not k.startswith(("hpo_infer_", "ix_hpo_infer_", "uq_hpo_infer_"))
    } == before
    assert set(after) - set(before) >= {
        "hpo_infer_alembic_version",
        "hpo_infer_measurement",
        "hpo_infer_environment",
        "hpo_infer_export",
    }
    assert len(optuna.load_study(study_name="theirs", storage=url).trials) == 2


def test_models_match_the_migrations_and_autogenerate_ignores_optunas_tables(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from hpo_infer.db import schema
    from hpo_infer.db.tables import VERSION_TABLE, Base, include_object

    url = f"sqlite:///{tmp_path / 's.db'}"
    schema.upgrade(url)
    eng = create_engine(url)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "include_object": include_object, "compare_type": True}
        )
        diff = compare_metadata(ctx, Base.metadata)
        # Without the filter, Optuna's tables would show up as tables to drop.
        unfiltered = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), Base.metadata
        )
    eng.dispose()
    assert diff == []
    assert any(d[0] == "remove_table" and d[1].name == "trials" for d in unfiltered)


def test_every_storage_call_optuna_makes_is_retried() -> None:
    import inspect
    import re

    import optuna.storages._cached_storage as cached
    from optuna.storages import BaseStorage

    from hpo_infer.db.retry import RETRIED, ResilientRDBStorage

    abstract = {n for n, m in inspect.getmembers(BaseStorage) if getattr(m, "__isabstractmethod__", False)}
    used = set(re.findall(r"_backend\.([a-z_]+)", Path(cached.__file__).read_text()))
    used -= {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}  # no database access
    covered = set(RETRIED) | {"set_trial_state_values"}
    assert abstract - covered == set()
    assert used - covered == set()
    for name in covered:
        assert getattr(ResilientRDBStorage, name) is not getattr(optuna.storages.RDBStorage, name), name


def _operational(msg: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(msg))


def test_call_with_retry_backs_off_on_lost_connections_only(caplog: pytest.LogCaptureFixture) -> None:
    from hpo_infer.db.retry import call_with_retry

    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise optuna.exceptions.StorageInternalError("commit failed") from _operational(
                "server closed the connection unexpectedly"
            )
        return "ok"

    with caplog.at_level(logging.WARNING, logger="hpo_infer.storage"):
        assert call_with_retry(flaky, "test", window_s=10) == "ok"
    assert calls["n"] == 3
    assert "storage unreachable during test" in caplog.text and "reachable again" in caplog.text

    def missing_table() -> None:
        calls["n"] += 1
        raise _operational("no such table: trials")

    calls["n"] = 0
    with pytest.raises(OperationalError):
        call_with_retry(missing_table, "test", window_s=10)
    assert calls["n"] == 1, "a missing table is not worth waiting for"

    def down() -> None:
        raise _operational("connection refused")

    with pytest.raises(OperationalError):
        call_with_retry(down, "test", window_s=0.5)


def test_measurement_rows_cover_every_repeat_and_window() -> None:
    from hpo_infer.db.record import rows
    from hpo_infer.trial.runner import ConfigResult, Outcome

    win = [{"tokens": 10, "seconds": 0.5}, {"tokens": 30, "seconds": 0.5}]
    reps = [{"repeat": i, "tokens": 40, "seconds": 1.0, "tok_s": 40.0, "windows": win} for i in range(3)]
    out = Outcome(
        "complete", [ConfigResult(status="complete", value=40.0, windows=reps, start_s=2.0, warmup_s=1.0)], wall_s=5.0
    )
    got = list(rows(out))
    assert {"config_index": None, "repeat": None, "window": None, "metric": "wall_s", "value": 5.0} in got
    assert {(r["metric"], r["value"]) for r in got if r["repeat"] is None and r["config_index"] == 0} == {
        ("value", 40.0),
        ("start_s", 2.0),
        ("warmup_s", 1.0),
    }
    assert len([r for r in got if r["window"] is None and r["repeat"] is not None]) == 3 * 3
    w = [r for r in got if r["window"] is not None]
    assert len(w) == 3 * 2 * 3
    assert {r["value"] for r in w if r["metric"] == "tok_s"} == {20.0, 60.0}


def test_gpu_groups() -> None:
    from hpo_infer.agent.fleet import gpu_groups

    assert gpu_groups([0, 1, 2, 3], 1, None, 4, [0, 1, 2, 3]) == [[0], [1], [2], [3]]
    assert gpu_groups([0, 1, 2, 3], 2, None, 4, None) == [[0, 1], [2, 3]]
    assert gpu_groups(None, 2, None, 4, [4, 5, 6, 7]) == [[4, 5], [6, 7]]  # CUDA_VISIBLE_DEVICES=4,5,6,7
    assert gpu_groups(None, 1, None, 0, None) == [None]
    assert gpu_groups(None, 1, 3, 0, None) == [None, None, None]
    with pytest.raises(InputError, match="--gpus-per-trial: 3 GPU"):
        gpu_groups([0, 1, 2], 2, None, 4, None)
    with pytest.raises(InputError, match="--gpus: lists a GPU twice"):
        gpu_groups([0, 0], 1, None, 4, None)
    with pytest.raises(InputError, match="--agents: use either"):
        gpu_groups([0], 1, 2, 4, None)
    with pytest.raises(InputError, match="--agents: this host has 8 GPU"):
        gpu_groups(None, 1, 2, 8, None)


def test_study_lock_on_sqlite_is_exclusive_across_holders(tmp_path: Path) -> None:
    from hpo_infer.db.lock import StudyLock

    url = f"sqlite:///{tmp_path / 's.db'}"
    a, b = StudyLock(url, "study:x"), StudyLock(url, "study:x", wait_s=0.3)
    a.acquire()
    with pytest.raises(StorageError, match="another agent holds it"):
        b.acquire()
    StudyLock(url, "study:other", wait_s=0.3).acquire()  # other studies are not blocked
    got = threading.Event()
    t = threading.Thread(target=lambda: (StudyLock(url, "study:x", wait_s=10).acquire(), got.set()))
    t.start()
    assert not got.wait(0.3)
    a.release()
    a.release()  # idempotent
    assert got.wait(5)
    t.join()


@pytest.mark.parametrize(
    "args,env,where",
    [
        (["--agents", "2"], {"HPO_INFER_HEARTBEAT_S": "soon"}, "HPO_INFER_HEARTBEAT_S"),
        (["--agents", "2"], {"HPO_INFER_HEARTBEAT_S": "5", "HPO_INFER_GRACE_S": "5"}, "HPO_INFER_GRACE_S"),
        (["--gpus", "0,1,2", "--gpus-per-trial", "2"], {}, "--gpus-per-trial"),
        (["--gpus", "0", "--agents", "2"], {}, "--agents"),
        (["--gpus", "a,b"], {}, "--gpus"),
    ],
)
def test_worker_bad_flags_exit_2_in_one_line(tmp_path: Path, args: list[str], env: dict[str, str], where: str) -> None:
    path = write_spec(tmp_path, fault_spec())
    res = run_cli("worker", str(path), "--storage", f"sqlite:///{tmp_path / 's.db'}", *args, env=env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpo-infer: error: {where}"), res.stderr
    assert not (tmp_path / "s.db").exists()


def test_worker_by_study_name_runs_the_stored_spec(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_spec(tmp_path, fault_spec(budget={"trials": 2}))
    res = run_cli("worker", str(path), "--storage", url, "--study", "mine", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    path.unlink()  # the fleet form needs only the study name and the storage
    res = run_cli("worker", "--study", "mine", "--storage", url, "--trials", "4", "--agents", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = optuna.load_study(study_name="mine", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    res = run_cli("worker", "--study", "nope", "--storage", url)
    assert res.returncode == 2 and res.stderr.startswith("hpo-infer: error: --study: no study named 'nope'"), res.stderr
    res = run_cli("worker", "--storage", url)
    assert res.returncode == 2 and "SPEC_FILE" in res.stderr
    copies = {t.number for t in study.trials if "duplicate_of" in t.user_attrs}  # re-proposals: told, not measured
    with sqlite3.connect(tmp_path / "s.db") as c:
        assert {r[0] for r in c.execute("SELECT DISTINCT trial_number FROM hpo_infer_measurement")} == {
            0,
            1,
            2,
            3,
        } - copies


# ---- agents sharing one study (SQLite, one host) ------------------------------------------------
def _study(url: str) -> optuna.Study:
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def test_wall_time_is_shared_by_all_agents(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    wall = 6.0
    path = write_spec(
        tmp_path,
        fault_spec(
            budget={"trials": 1000, "wall_time_s": wall}, fixed={"pass_s": 0.1}, sampler={"name": "random", "seed": 0}
        ),
    )
    res = run_cli(
        "worker",
        str(path),
        "--storage",
        url,
        "--agents",
        "2",
        cwd=tmp_path,
        env={"HPO_INFER_HEARTBEAT_S": "1"},
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("stopped (wall time)") == 2, res.stdout[-3000:]
    study = _study(url)
    deadline = study.user_attrs["hpo_infer_deadline"]
    starts = [t.datetime_start.timestamp() for t in study.trials]
    # The deadline is checked when a trial is taken; Optuna stamps datetime_start a moment later
    # (10 ms on a loaded 2-core machine), so allow that, not a whole trial.
    assert max(starts) <= deadline + 1.0, "no trial starts after the shared deadline"
    assert len({t.user_attrs["agent"] for t in study.trials}) == 2
    assert max(t.datetime_complete.timestamp() for t in study.trials) < deadline + 10
    assert all(t.state.is_finished() for t in study.trials)


def test_patience_is_counted_from_the_storage_across_agents(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    patience = 4
    path = write_spec(
        tmp_path, fault_spec(budget={"trials": 200, "patience": patience}, sampler={"name": "random", "seed": 3})
    )
    res = run_cli(
        "worker",
        str(path),
        "--storage",
        url,
        "--agents",
        "2",
        cwd=tmp_path,
        env={"HPO_INFER_HEARTBEAT_S": "1"},
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = _study(url)
    trials = study.trials
    assert len(trials) < 200 and all(t.state.is_finished() for t in trials)
    feasible = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("status") == "ok"]
    best = max(feasible, key=lambda t: t.value)
    after = [t for t in trials if t.number > best.number]
    # Each agent stops once `patience` trials have finished without a better one; a trial the
    # other agent was running at that moment still ends (and is counted).
    assert patience <= len(after) <= patience + 1, (best.number, len(after), len(trials))
    assert res.stdout.count("stopped (patience)") == 2


def test_each_agent_pins_its_trials_to_its_gpus(tmp_path: Path) -> None:
    import psutil

    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_spec(
        tmp_path, fault_spec(budget={"trials": 6}, fixed={"mode": "spawn_child", "pass_s": 0.3}, repeats=2)
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo_infer",
            "worker",
            str(path),
            "--storage",
            url,
            "--gpus",
            "2,3,5,7",
            "--gpus-per-trial",
            "2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            for p in trial_processes(psutil.Process(proc.pid)):
                seen.add(p.environ().get("CUDA_VISIBLE_DEVICES", "unset"))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert seen == {"2,3", "5,7"}, seen
    assert {t.user_attrs["agent"].split(" gpus ")[1] for t in _study(url).trials} == {"2,3", "5,7"}
