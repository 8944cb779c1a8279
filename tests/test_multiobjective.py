"""Multi-objective studies (``objective.metrics``) on the fault engine's latency mode: tokens/s
rises with x up to 24 while p99 TTFT = 20 + 3x ms rises all the way, a known trade-off.

Created with Optuna directions and metric names, searched, resumed by the same command,
re-validated (the front re-measured, neighbours inside the noise marked), and exported: the whole
front, or the point a latency budget picks, in every format. Bad specs are one line, exit 2.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import add_feasible_trials, fault_spec, run_cli, write_spec
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo_infer.study.front import front, front_of

METRICS = {"throughput": "maximize", "p99_ttft_ms": "minimize"}


def _spec(tmp_path: Path, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "search_space": {"x": {"type": "int", "low": 1, "high": 48}, "y": {"type": "int", "low": 1, "high": 3}},
        "objective": {"metrics": METRICS},
        "sampler": {"name": "auto", "seed": 0},
        "budget": {"trials": 8},
        "storage": f"sqlite:///{tmp_path / 'mo.db'}",
    }
    return fault_spec(fixed={"pass_s": 0.01, "latency": "on", **over.pop("fixed", {})}, **{**base, **over})


def _study(tmp_path: Path) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def _tune_revalidated(tmp_path: Path, **over: Any) -> tuple[subprocess.CompletedProcess, optuna.Study]:
    """``tune`` on the spec, its finalists re-measured in two engine starts each; its output and study."""
    quick = {"min_pass_s": 0.01, "max_repeats": 4}
    spec = _spec(tmp_path, measurement=quick, validate_finalists=True, validation_rounds=2, **over)
    r = run_cli("tune", str(write_spec(tmp_path, spec)), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r, _study(tmp_path)


def test_a_multi_objective_study_searches_the_front_and_resumes(tmp_path: Path) -> None:
    path = write_spec(tmp_path, _spec(tmp_path))
    r = run_cli("tune", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Pareto front" in r.stdout and "--pick 'p99_ttft_ms<=" in r.stdout
    study = _study(tmp_path)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["output tokens/s", "p99_ttft_ms"]  # what the dashboard labels its axes
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 8
    for t in done:  # the second value is the latency the engine measured, not a stand-in
        assert t.values[1] == pytest.approx(t.user_attrs["metrics"]["p99_ttft_ms"])
        assert t.values[1] == pytest.approx(20 + 3 * t.params.get("x", 1))
    ours = {t.number for t in front(study)}
    assert ours == {t.number for t in study.best_trials}  # Optuna's own front agrees
    assert len(ours) >= 2  # a trade-off, not one winner

    # The same command with a larger budget carries on: the 8 trials kept, 4 more searched.
    r = run_cli("tune", str(path), "--trials", "12", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    again = _study(tmp_path)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 12
    assert again.directions == study.directions
    assert [t.values for t in again.trials[:8]] == [t.values for t in study.trials[:8]]


def test_revalidation_re_measures_the_front_and_marks_ties(tmp_path: Path) -> None:
    # Grid points on the rising side of the trade-off: x=23 and x=24 are 0.4% apart in tokens/s
    # and 3% in TTFT, inside a 20% noise on both; x=10 is far from either, and from the baseline
    # (x=1: 42% fewer tokens/s, half the TTFT), which is on the front and compared as a point of it.
    r, study = _tune_revalidated(
        tmp_path,
        fixed={"noise": 0.2, "y": 2},
        search_space={"x": {"type": "categorical", "choices": [10, 23, 24]}},
        sampler={"name": "grid"},
        repeats=4,
    )
    v = study.user_attrs["validation"]
    got = {(p["trial"], p["next"]["trial"]): p["next"]["within_noise"] for p in v["front"] if "next" in p}
    x = {t.number: t.params.get("x", 1) for t in study.trials}
    by_x = {(x[a], x[b]): tie for (a, b), tie in got.items()}
    assert by_x == {(24, 23): True, (23, 10): False, (10, 1): False}, v["front"]
    assert v["measured"]["baseline"]["status"] == "complete"
    assert len(v["measured"]["front_1"]["start_values"]) == 2  # each point in two fresh engine starts
    assert "inside the noise of each other" in v["summary"]
    tie = next(p for p in v["front"] if p.get("next", {}).get("within_noise"))
    assert f"tie with trial {tie['next']['trial']}" in r.stdout


def test_when_the_defaults_are_the_whole_front_the_next_configuration_is_compared_with_them(tmp_path: Path) -> None:
    # TPOT is 4 + y ms and y=1 (the default) beats y=4 on tokens/s 2.5x too: the baseline
    # dominates, so the front has nothing else to re-measure. As a single-objective study does
    # when the defaults measured best, the next configuration is re-measured beside them.
    _, study = _tune_revalidated(
        tmp_path,
        fixed={"noise": 0.02, "x": 24},
        objective={"metrics": {"throughput": "maximize", "p99_tpot_ms": "minimize"}},
        search_space={"y": {"type": "int", "low": 4, "high": 4}},
        sampler={"name": "random", "seed": 0},
        budget={"trials": 2},
    )
    base, other = study.trials
    assert [t.number for t in front(study)] == [base.number]
    v = study.user_attrs["validation"]
    assert v["baseline_is_best"] is True and set(v["measured"]) == {"baseline", "runner_up"}
    assert v["measured"]["runner_up"]["trial"] == other.number
    assert len(v["measured"]["runner_up"]["start_values"]) == 2
    (mark, last) = v["front"]
    assert mark["trial"] == base.number and mark["next"]["trial"] == other.number
    assert mark["next"]["within_noise"] is False and mark["next"]["gain_pct"] > 100 and "next" not in last
    assert v["summary"].startswith(
        f"the engine defaults are the whole front; the next configuration (trial {other.number})"
    )
    assert "every gap larger than the noise" in v["summary"]


def test_the_defaults_are_compared_with_the_front_even_off_it() -> None:
    """A front point inside the noise of the defaults is the finding a user must not miss, so the
    baseline joins the neighbours compared even when a point dominates it."""
    from hpo_infer.agent.revalidate import front_candidates
    from hpo_infer.study.trials import BASELINE, ROLE

    study = optuna.create_study(directions=["maximize", "minimize"])
    rows = [({}, [900.0, 50.0], {ROLE: BASELINE}), ({"x": 8}, [950.0, 45.0], {}), ({"x": 30}, [1200.0, 90.0], {}),
            ({"x": 2}, [500.0, 60.0], {})]  # fmt: skip
    add_feasible_trials(study, rows, {"x": optuna.distributions.IntDistribution(1, 64)})
    cands, compared = front_candidates(study, "fault")
    assert [(role, t.number) for role, t in cands] == [("baseline", 0), ("front_1", 2), ("front_2", 1)]
    assert compared == ["baseline", "front_1", "front_2"]


def test_export_the_front_or_the_pick_within_a_budget(tmp_path: Path) -> None:
    path = write_spec(tmp_path, _spec(tmp_path, budget={"trials": 10}))
    assert run_cli("tune", str(path), cwd=tmp_path).returncode == 0
    study = _study(tmp_path)
    points = front_of([t for t in study.trials if t.state == TrialState.COMPLETE], ["maximize", "minimize"])
    budget = sorted(t.values[1] for t in points)[len(points) // 2]
    expect = max((t for t in points if t.values[1] <= budget), key=lambda t: t.values[0])

    r = run_cli("export", str(path), "--pick", f"p99_ttft_ms<={budget}", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["trial"] == expect.number and rec["settings"] == expect.user_attrs["settings"]
    assert rec["pick"]["budget"] == f"p99_ttft_ms<={budget:g}"
    r = run_cli("export", str(path), "--pick", f"p99_ttft_ms<={budget}", "--format", "yaml", cwd=tmp_path)
    assert yaml.safe_load(r.stdout)["trial"] == expect.number

    r = run_cli("export", str(path), "--pareto", "--format", "yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {p["trial"] for p in yaml.safe_load(r.stdout)["pareto"]} == {t.number for t in front(study)}

    tightest = min(t.values[1] for t in points)
    for args, why in [
        (["--pick", f"p99_ttft_ms<={tightest - 1}"], "no point of the front meets"),
        (["--pick", "p99_foo_ms<=3"], "do not measure 'p99_foo_ms'"),
        (["--pick", "p99_ttft_ms<3"], "is not NAME<=NUMBER"),
        (["--pick", "p99_ttft_ms<=80", "--pareto"], "give one of the two"),
    ]:
        r = run_cli("export", str(path), *args, cwd=tmp_path)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_slo_targets_stay_constraints_on_top(tmp_path: Path) -> None:
    # p99 TPOT = 4 + y ms: a target of 5.5 allows y = 1 only; the front is of feasible trials.
    spec = _spec(tmp_path, budget={"trials": 10})
    spec["objective"]["slo"] = {"p99_tpot_ms": 5.5}
    path = write_spec(tmp_path, spec)
    r = run_cli("tune", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    study = _study(tmp_path)
    assert study.study_name.endswith(":slo-p99_tpot_ms=5.5:vs-p99_ttft_ms-min")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    missed = [t for t in done if t.params.get("y", 1) > 1]
    assert missed, "the search never tried y > 1"
    for t in missed:
        assert t.constraints["slo_p99_tpot_ms"] > 0 and t.user_attrs["failure"].startswith("SLO missed: p99_tpot_ms")
    on_front = {t.number for t in front(study)}
    assert on_front == {t.number for t in study.best_trials} and not on_front & {t.number for t in missed}
    r = run_cli("export", str(path), "--pick", "p99_ttft_ms<=1000", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["settings"].get("y", 1) == 1, r.stderr


@pytest.mark.parametrize(
    "objective, sampler, pruner, key, why",
    [
        ({"metrics": {"throughput": "maximize"}}, "auto", "none", "objective", "name two or more"),
        ({"metrics": {"p99_ttft_ms": "minimize", "throughput": "maximize"}}, "auto", "none", "objective", "first"),
        ({"metrics": {"throughput": "minimize", "p99_ttft_ms": "minimize"}}, "auto", "none", "objective", "first"),
        ({"metrics": {"throughput": "maximize", "p99_foo_ms": "minimize"}}, "auto", "none", "p99_foo_ms", "no metric"),
        ({"metrics": METRICS, "metric": "goodput", "slo": {"p99_ttft_ms": 9}}, "auto", "none", "objective", "once"),
        ({"metrics": METRICS}, "cmaes", "none", "sampler.name", "single-objective"),
        ({"metrics": METRICS}, "tpe", "median", "pruner.name", "single-objective"),
    ],
)
def test_bad_multi_objective_specs_are_one_line_errors_and_write_nothing(
    tmp_path: Path, objective: dict[str, Any], sampler: str, pruner: str, key: str, why: str
) -> None:
    spec = _spec(tmp_path, sampler={"name": sampler}, pruner={"name": pruner})
    spec["objective"] = objective
    r = run_cli("tune", str(write_spec(tmp_path, spec)), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and key in line and why in line and "Traceback" not in line, line
    assert not (tmp_path / "mo.db").exists()
