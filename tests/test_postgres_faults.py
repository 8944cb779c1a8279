"""An agent killed mid-trial, and a fleet stopped by SIGTERM, on a real PostgreSQL server.

SIGKILL gives the agent no chance to clean up: its trial worker must still die (the worker asks
the kernel for SIGTERM when its parent dies, and is a subreaper, so even the fault engine's
daemonised grandchild goes), and the trial must be retried by another agent once its heartbeat
is stale (Optuna's RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import run_cli, tagged, trial_processes, write_spec
from optuna.trial import TrialState
from test_postgres import FAST_HEARTBEAT, assert_grid_once, grid_spec, load, start_worker

pytestmark = pytest.mark.postgres


def _trial_tree(agent: psutil.Process, timeout: float = 90) -> tuple[psutil.Process, psutil.Process]:
    """Wait until ``agent`` runs a trial: its worker process and the worker's daemonised child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for p in trial_processes(agent):
                kids = [k for k in p.children(recursive=True) if "time.sleep(600)" in " ".join(k.cmdline())]
                if kids:
                    return p, kids[0]
        except psutil.Error:
            pass
        time.sleep(0.05)
    raise AssertionError("the agent never ran a trial")


def test_sigkill_an_agent_mid_trial_its_worker_tree_dies_and_another_agent_retries_it(
    tmp_path: Path, pg_url: str
) -> None:
    spec = grid_spec(
        search_space={
            "x": {"type": "int", "low": 20, "high": 26, "step": 2},
            "y": {"type": "int", "low": 1, "high": 2},
        },
        fixed={"mode": "spawn_child", "pass_s": 0.5},
        repeats=3,
        trials_per_engine=1,  # one trial per worker: these tests follow one trial's fate
    )
    path = write_spec(tmp_path, spec)
    assert run_cli("db", "upgrade", "--storage", pg_url).returncode == 0
    tag = uuid.uuid4().hex
    procs = [
        start_worker(path, pg_url, "--agents", "1", tag=tag, env=FAST_HEARTBEAT, log=tmp_path / f"a{i}.log")
        for i in range(3)
    ]
    try:
        victim = procs[0]
        mine = f"{socket.gethostname()}:{victim.pid}"
        study = None
        deadline = time.monotonic() + 120
        killed = None
        while killed is None and time.monotonic() < deadline:
            worker, grandchild = _trial_tree(psutil.Process(victim.pid))
            if study is None:
                study = load(pg_url)
                continue  # loading took a while: look at the tree again
            running = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("agent") == mine
            ]
            if running and worker.is_running() and grandchild.is_running():
                assert len(running) == 1, "an agent runs one trial at a time"
                killed = running[0]
        assert killed is not None, "never caught the victim inside a trial"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        gone, alive = psutil.wait_procs([worker, grandchild], timeout=15)
        assert not alive, f"left behind by the killed agent: {[(p.pid, p.cmdline(), p.ppid()) for p in alive]}"

        for p in procs[1:]:
            assert p.wait(timeout=300) == 0, (tmp_path / "a1.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    time.sleep(0.5)
    assert not tagged(tag), "processes left behind"

    study = load(pg_url)
    trials = study.get_trials(deepcopy=False)
    assert study.trials[killed.number].state == TrialState.FAIL  # stale heartbeat: failed by a survivor
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["agent"] != mine
    assert_grid_once(study, spec)


def test_sigterm_stops_every_agent_cleanly_exit_0_and_the_interrupted_trials_run_on_resume(
    tmp_path: Path, pg_url: str
) -> None:
    spec = grid_spec(
        search_space={
            "x": {"type": "int", "low": 20, "high": 26, "step": 2},
            "y": {"type": "int", "low": 1, "high": 2},
        },
        fixed={"mode": "spawn_child", "pass_s": 0.3},
        repeats=3,
        trials_per_engine=1,  # one trial per worker: these tests follow one trial's fate
    )
    path = write_spec(tmp_path, spec)
    tag = uuid.uuid4().hex
    parent = start_worker(path, pg_url, "--agents", "2", tag=tag, env=FAST_HEARTBEAT, log=tmp_path / "w.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both agents inside a trial
            trees = [c for c in psutil.Process(parent.pid).children() if trial_processes(c)]
            if len(trees) == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("agents never ran trials at the same time")
        t0 = time.monotonic()
        parent.send_signal(signal.SIGTERM)
        rc = parent.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if parent.poll() is None:
            parent.kill()
    out = (tmp_path / "w.log").read_text()
    assert rc == 0, out[-3000:]
    assert took < 20, f"stopping took {took:.1f} s: the running trials must be ended, not waited for"
    assert "Traceback" not in out
    time.sleep(0.5)
    assert not tagged(tag), "processes left behind"
    study = load(pg_url)
    states = collections.Counter(t.state for t in study.trials)
    assert not states[TrialState.RUNNING]
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted_in") is not None]
    assert len(interrupted) == 2 and all(t.state == TrialState.WAITING for t in interrupted)
    for t in interrupted:
        assert study.trials[t.user_attrs["interrupted_in"]].state == TrialState.FAIL
        assert study.trials[t.user_attrs["interrupted_in"]].params == t.system_attrs["fixed_params"]

    # Run it again: the interrupted points are measured, each grid point once.
    res = run_cli(
        "worker", str(path), "--storage", pg_url, "--agents", "2", cwd=tmp_path, env=FAST_HEARTBEAT, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert_grid_once(load(pg_url), spec)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_failed_under_a_live_agent_is_let_go_and_the_agent_carries_on(tmp_path: Path, pg_url: str) -> None:
    """What a database outage longer than the grace period does: another agent fails our trial
    as stale (and queues its retry) while we still run it. We end our worker and go on."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from hpo_infer.storage_url import normalise

    spec = grid_spec(
        search_space={
            "x": {"type": "int", "low": 20, "high": 22, "step": 2},
            "y": {"type": "int", "low": 1, "high": 2},
        },
        fixed={"mode": "spawn_child", "pass_s": 0.5},
        repeats=4,
        trials_per_engine=1,  # one trial per worker: these tests follow one trial's fate
    )
    path = write_spec(tmp_path, spec)
    tag = uuid.uuid4().hex
    proc = start_worker(path, pg_url, "--agents", "1", tag=tag, env=FAST_HEARTBEAT, log=tmp_path / "w.log")
    try:
        worker, grandchild = _trial_tree(psutil.Process(proc.pid))
        storage = optuna.storages.RDBStorage(normalise(pg_url), skip_table_creation=True)
        study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
        (t,) = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # as fail_stale_trials does
        RetryHeartbeatStaleTrialCallback(max_retry=2)(study, storage.get_trial(t._trial_id))
        gone, alive = psutil.wait_procs([worker, grandchild], timeout=15)
        assert not alive, "the worker of a trial taken over is ended"
        rc = proc.wait(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "w.log").read_text()
    assert rc == 0, out[-3000:]
    assert f"trial {t.number} was failed by another agent" in out
    time.sleep(0.5)
    assert not tagged(tag)
    study = load(pg_url)
    assert_grid_once(study, spec)
    (retry,) = [r for r in study.trials if r.system_attrs.get("failed_trial") == t.number]
    assert retry.state == TrialState.COMPLETE


def test_sigkill_an_agent_mid_pack_every_trial_of_its_pack_is_retried_once(tmp_path: Path, pg_url: str) -> None:
    """Points that share one engine start (a pack) die together with their agent: a survivor
    fails each as stale and measures its retry; no point is lost or measured twice."""
    spec = grid_spec(
        search_space={
            "x": {"type": "int", "low": 20, "high": 26, "step": 2},
            "y": {"type": "int", "low": 1, "high": 1},
        },
        fixed={"mode": "spawn_child", "pass_s": 0.5},
        repeats=3,
    )
    path = write_spec(tmp_path, spec)
    assert run_cli("db", "upgrade", "--storage", pg_url).returncode == 0
    tag = uuid.uuid4().hex
    victim = start_worker(path, pg_url, "--agents", "1", tag=tag, env=FAST_HEARTBEAT, log=tmp_path / "a0.log")
    try:
        mine = f"{socket.gethostname()}:{victim.pid}"
        worker, grandchild = _trial_tree(psutil.Process(victim.pid))
        study = load(pg_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("agent") == mine
            ]
            if len(running) >= 2:  # the pack's trials are all RUNNING while its worker measures
                break
            time.sleep(0.2)
        assert len(running) >= 2, "the victim never held a pack"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        gone, alive = psutil.wait_procs([worker, grandchild], timeout=15)
        assert not alive, "the killed agent's worker tree survived"
        survivor = start_worker(path, pg_url, "--agents", "1", tag=tag, env=FAST_HEARTBEAT, log=tmp_path / "a1.log")
        assert survivor.wait(timeout=300) == 0, (tmp_path / "a1.log").read_text()[-3000:]
    finally:
        for p in (victim, locals().get("survivor")):
            if p is not None and p.poll() is None:
                p.kill()
    time.sleep(0.5)
    assert not tagged(tag), "processes left behind"
    study = load(pg_url)
    killed = {t.number for t in running}
    for n in killed:
        assert study.trials[n].state == TrialState.FAIL
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == n]
        assert retry.state == TrialState.COMPLETE and retry.user_attrs["agent"] != mine
    assert_grid_once(study, spec)
