"""Crashes, hangs, OOM and garbage, with real worker processes (the fault engine fakes them).

Each is classified as designed — infeasible (the config's fault: the sampler learns) or failed
and retried once (the machine's fault) — the study goes on, and no process is left behind.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import fault_spec, run_cli, tagged, write_spec


def _tune(tmp_path: Path, spec: dict, timeout: float = 300) -> tuple[optuna.Study, str, float]:
    tag = uuid.uuid4().hex
    path = write_spec(tmp_path, spec)
    db = tmp_path / "s.db"
    t0 = time.monotonic()
    res = run_cli(
        "tune", str(path), "--storage", f"sqlite:///{db}", cwd=tmp_path, env={"HPO_TEST_TAG": tag}, timeout=timeout
    )
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    time.sleep(0.5)
    left = tagged(tag)
    assert not left, f"processes left behind: {[p.cmdline() for p in left]}"
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    return study, res.stdout + res.stderr, took


def _by_status(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for t in study.trials:
        key = "failed" if t.state == optuna.trial.TrialState.FAIL else t.user_attrs.get("status", t.state.name)
        out.setdefault(key, []).append(t)
    return out


@pytest.mark.parametrize("mode", ["crash_start", "crash_mid"])
def test_crash_fails_the_trial_retries_it_once_and_the_study_goes_on(tmp_path: Path, mode: str) -> None:
    spec = fault_spec(
        search_space={
            "mode": {"type": "categorical", "choices": ["ok", mode]},
            "x": {"type": "int", "low": 1, "high": 64},
        },
        sampler={"name": "random", "seed": 1},
        budget={"trials": 8},
    )
    study, out, _ = _tune(tmp_path, spec)
    st = _by_status(study)
    assert st.get("failed") and st.get("ok"), {k: len(v) for k, v in st.items()}
    assert all(t.params.get("mode") == mode for t in st["failed"])
    assert all(t.params.get("mode", "ok") == "ok" for t in st["ok"])
    for t in st["failed"]:
        assert "worker" in t.user_attrs["failure"] and "code" in t.user_attrs["failure"]
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") is not None]
    assert retried, "a failed trial is retried once"
    ran = [t for t in retried if t.state != optuna.trial.TrialState.WAITING]
    assert ran, "the retry runs within the budget"
    for t in ran:
        assert study.trials[t.user_attrs["retry_of"]].params == t.params
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert "failed" in out


def test_hang_is_killed_at_the_timeout(tmp_path: Path) -> None:
    spec = fault_spec(fixed={"mode": "hang", "pass_s": 0.01}, budget={"trials": 2}, trial_timeout_s=4)
    study, _, took = _tune(tmp_path, spec)
    fails = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    # Each of the 2 budgeted trials failed, was retried once, and failed again: the first
    # failures spent no budget (their retries did).
    assert len(fails) == 4
    assert len([t for t in fails if t.user_attrs.get("retry_of") is not None]) == 2
    for t in fails:
        assert "timed out after 4 s" in t.user_attrs["error"]
        assert 3.5 < t.user_attrs["wall_s"] < 20
    assert took < 120


@pytest.mark.parametrize("mode,reason", [("oom", "out of memory"), ("reject", "rejected")])
def test_oom_and_rejected_configs_are_infeasible_not_failed(tmp_path: Path, mode: str, reason: str) -> None:
    spec = fault_spec(
        search_space={
            "mode": {"type": "categorical", "choices": ["ok", mode]},
            "x": {"type": "int", "low": 1, "high": 64},
        },
        sampler={"name": "random", "seed": 3},
        budget={"trials": 8},
    )
    study, _, _ = _tune(tmp_path, spec)
    inf = [t for t in study.trials if t.user_attrs.get("status") == "infeasible"]
    assert inf
    for t in inf:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.constraints and max(t.constraints.values()) > 0
        assert reason in t.user_attrs["failure"].lower()
        assert t.params["mode"] == mode
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    # the best trial is feasible
    assert study.best_trial.params.get("mode", "ok") == "ok"


def test_out_of_memory_region_is_learned_from_x(tmp_path: Path) -> None:
    """OOM above max_x: infeasible trials carry a violated constraint; none becomes the best."""
    spec = fault_spec(fixed={"pass_s": 0.01, "max_x": 16}, budget={"trials": 10})
    study, _, _ = _tune(tmp_path, spec)
    for t in study.trials:
        if t.params.get("x", 1) > 16:
            assert t.user_attrs["status"] == "infeasible"
    assert study.best_trial.params.get("x", 1) <= 16


def test_garbage_on_stdout_is_ignored_and_kept_in_the_log(tmp_path: Path) -> None:
    spec = fault_spec(fixed={"mode": "garbage", "pass_s": 0.01}, budget={"trials": 2})
    study, _, _ = _tune(tmp_path, spec)
    assert all(t.user_attrs["status"] == "ok" and t.value > 0 for t in study.trials)


def test_daemonised_grandchild_is_killed_with_the_worker(tmp_path: Path) -> None:
    spec = fault_spec(fixed={"mode": "spawn_child", "pass_s": 0.01}, budget={"trials": 2})
    study, _, _ = _tune(tmp_path, spec)  # _tune asserts that nothing tagged survives
    assert all(t.user_attrs["status"] == "ok" for t in study.trials)


def test_slow_start_is_recorded_apart_from_measuring(tmp_path: Path) -> None:
    spec = fault_spec(fixed={"mode": "slow_start", "start_s": 1.5, "pass_s": 0.05}, budget={"trials": 1}, repeats=3)
    study, _, _ = _tune(tmp_path, spec)
    t = study.trials[0]
    assert t.user_attrs["start_s"] == pytest.approx(1.5)
    assert t.user_attrs["measure_s"] == pytest.approx(0.15, rel=0.5)
    assert t.user_attrs["wall_s"] > 1.5 + t.user_attrs["measure_s"]
    assert len(t.user_attrs["repeats"]) == 3
