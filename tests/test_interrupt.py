"""Ctrl-C and SIGTERM during a trial of `hpo-infer tune`: the trial is recorded (not left
RUNNING), the worker tree is killed, and the same command resumes the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import fault_spec, run_cli, tagged, write_spec


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_trial_records_it_kills_the_tree_and_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    spec = write_spec(
        tmp_path, fault_spec(fixed={"pass_s": 1.0, "mode": "spawn_child"}, budget={"trials": 3}, repeats=4)
    )
    db = tmp_path / "s.db"
    tag = uuid.uuid4().hex
    env = {**os.environ, "HPO_TEST_TAG": tag}
    env.pop("HPO_INFER_STORAGE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo_infer", "tune", str(spec), "--storage", f"sqlite:///{db}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until a worker (and its daemonised grandchild) is measuring.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len([p for p in tagged(tag) if p.pid != proc.pid]) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no worker started")
    time.sleep(1.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "run the same command again to resume" in err
    time.sleep(0.5)
    assert not tagged(tag), "worker tree survived the signal"
    (s,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert interrupted, states
    assert all(t.user_attrs.get("requeued") for t in interrupted)
    # The same command resumes: the interrupted trial runs again and the budget completes
    # (an interrupted trial spends none of the 3-trial budget: its queued copy does).
    res = run_cli("tune", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path, env={"HPO_TEST_TAG": tag})
    assert res.returncode == 0, res.stderr[-2000:]
    study = optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3, [(t.number, t.state) for t in study.trials]
    assert any(t.user_attrs.get("interrupted_in") is not None for t in done)
    assert not tagged(tag)
