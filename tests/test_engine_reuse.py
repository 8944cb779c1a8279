"""Grid points that differ only in client-side settings share one engine start (a pack).

The fault engine's ``x`` is client-side (as a batch size is) and its start costs ``start_s``:
a pack must pay it once, keep every point's own measurement, and survive a member that kills
the worker without losing or repeating any point.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import fault_spec, run_cli, write_spec

XS = [8, 16, 24, 32]


def _grid(tmp_path: Path, **over) -> optuna.Study:
    spec = fault_spec(
        search_space={"x": {"type": "categorical", "choices": XS}, "y": {"type": "categorical", "choices": [1, 2]}},
        sampler={"name": "grid"},
        budget={"trials": 100},
        repeats=1,
        trial_timeout_s=60,
        **over,
    )
    spec["fixed"] = {"pass_s": 0.01, "start_s": 1.0, **spec.get("fixed_extra", {})}
    spec.pop("fixed_extra", None)
    db = tmp_path / "s.db"
    res = run_cli("tune", str(write_spec(tmp_path, spec)), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (s,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    return optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}")


def _grid_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.user_attrs.get("hpo_infer_role") == "grid"]


def test_points_that_differ_in_batch_size_share_one_engine_start(tmp_path: Path) -> None:
    study = _grid(tmp_path)
    grid = _grid_trials(study)
    assert sorted((t.params["x"], t.params["y"]) for t in grid) == sorted((x, y) for x in XS for y in (1, 2))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in grid)
    # The baseline (engine defaults: y=1, x left to the engine) leads the y=1 pack: same engine.
    base = next(t for t in study.trials if t.user_attrs.get("hpo_infer_role") == "baseline")
    assert base.params == {"y": 1}
    for y in (1, 2):
        same = [t for t in grid if t.params["y"] == y] + ([base] if y == 1 else [])
        starts = sorted(t.user_attrs["start_s"] for t in same)
        assert starts == [0.0] * (len(same) - 1) + [1.0], f"y={y}: one start for the pack, got {starts}"
        packs = {tuple(t.user_attrs["engine_shared"]["trials"]) for t in same}
        assert len(packs) == 1 and sorted(next(iter(packs))) == sorted(t.number for t in same)
        assert sum(t.user_attrs["resolved"]["engine_reused"] for t in same) == len(same) - 1
    # Each point keeps its own measurement: the landscape's order survives the sharing.
    by_x = {t.params["x"]: t.value for t in grid if t.params["y"] == 2}
    assert by_x[24] > max(by_x[16], by_x[32]) and min(by_x[16], by_x[32]) > by_x[8], by_x  # peak at x=24


def test_one_trial_per_engine_restarts_every_time(tmp_path: Path) -> None:
    study = _grid(tmp_path, trials_per_engine=1)
    grid = _grid_trials(study)
    assert len(grid) == 8
    assert all(t.user_attrs["start_s"] == 1.0 for t in grid)
    assert not any("engine_shared" in t.user_attrs for t in grid)


def test_a_member_that_kills_the_worker_loses_no_other_point(tmp_path: Path) -> None:
    spec_over = {"fixed_extra": {"crash_x": 24}}
    study = _grid(tmp_path, **spec_over)
    grid = _grid_trials(study)
    complete = {(t.params["x"], t.params["y"]) for t in grid if t.state == optuna.trial.TrialState.COMPLETE}
    assert complete == {(x, y) for x in XS for y in (1, 2) if x != 24}, "every other point measured"
    crashed = [t for t in grid if t.params["x"] == 24]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in crashed)
    assert len(crashed) == 2 * 2, "the crashing point: tried once, retried once, per y"
    # Points after the crash in its pack were not measured and were queued again, uncounted.
    unreached = [t for t in grid if t.user_attrs.get("failure", "").startswith("not measured")]
    assert unreached and all(t.params["x"] == 32 for t in unreached)
    assert all(t.user_attrs.get("retries", 0) == 0 for t in unreached)
    # Nothing measured twice: one COMPLETE trial per point.
    points = [(t.params["x"], t.params["y"]) for t in grid if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(points) == len(set(points))


@pytest.mark.parametrize("bad", [0, 2000])
def test_trials_per_engine_is_checked(tmp_path: Path, bad: int) -> None:
    spec = fault_spec(trials_per_engine=bad)
    res = run_cli("tune", str(write_spec(tmp_path, spec)), "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert res.returncode == 2
    assert "trials_per_engine" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s.db").exists()


def test_hf_grid_over_batch_size_loads_the_model_once(tmp_path: Path) -> None:
    """The real HF engine: one model load for the pack, each batch size measured on it."""
    spec = {
        "engine": "hf",
        "model": {"synthetic": "tiny-llama"},
        "workload": {"kind": "synthetic", "prompts": 16, "input_tokens": 8, "output_tokens": 4},
        "search_space": {"batch_size": {"type": "categorical", "choices": [1, 4, 16]}},
        "fixed": {"path": "generate"},
        "sampler": {"name": "grid"},
        "budget": {"trials": 10},
        "repeats": 1,
        "trial_timeout_s": 120,
        "validate_finalists": False,
    }
    db = tmp_path / "s.db"
    res = run_cli("tune", str(write_spec(tmp_path, spec)), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (s,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}")
    grid = _grid_trials(study)
    assert sorted(t.params["batch_size"] for t in grid) == [4, 16]  # 1 is the baseline (the engine default)
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["status"] == "ok" for t in grid)
    # The baseline (HF's default batch size 1) loads the model; both grid points reuse it.
    base = next(t for t in study.trials if t.user_attrs.get("hpo_infer_role") == "baseline")
    assert base.user_attrs["start_s"] > 0 and base.user_attrs["resolved"]["engine_reused"] is False
    assert [t.user_attrs["start_s"] for t in grid] == [0.0, 0.0]
    assert all(t.user_attrs["resolved"]["engine_reused"] for t in grid)
    rate = {t.params["batch_size"]: t.value for t in grid}
    assert rate[16] > rate[4], rate  # batching still pays on the shared model
