"""Study naming and resume, samplers (grid once, seeded), pruner, conditions, export formats."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import fault_spec, run_cli, write_spec

from hpo_infer.spec import Param
from hpo_infer.spec import space as sp


def _study(db: Path) -> optuna.Study:
    (s,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    return optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}")


def _tune(tmp_path: Path, spec: dict, *flags: str, name: str = "spec.yaml"):
    path = write_spec(tmp_path, spec, name)
    db = tmp_path / "s.db"
    res = run_cli("tune", str(path), "--storage", f"sqlite:///{db}", *flags, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return _study(db), res


def test_study_name_is_stable_and_rerun_resumes(tmp_path: Path) -> None:
    study, res = _tune(tmp_path, fault_spec(budget={"trials": 3}))
    assert study.study_name == "fault:synthetic-tiny-llama:cpux1:syn-i4-o4-n4"
    assert study.study_name in res.stdout
    assert len(study.trials) == 3
    assert study.trials[0].user_attrs["hpo_infer_role"] == "baseline"
    assert study.user_attrs["engine"] == "fault" and study.user_attrs["gpu"] == "cpu"
    study2, res2 = _tune(tmp_path, fault_spec(budget={"trials": 5}))
    assert study2.study_name == study.study_name
    assert len(study2.trials) == 5, "the same spec resumes the same study up to the new budget"
    assert [t.user_attrs.get("hpo_infer_role") for t in study2.trials].count("baseline") == 1


def test_grid_measures_every_point_exactly_once(tmp_path: Path) -> None:
    spec = fault_spec(
        search_space={"x": {"type": "int", "low": 1, "high": 6}, "y": {"type": "categorical", "choices": [1, 2, 3]}},
        sampler={"name": "grid"},
        budget={"trials": 100},
        repeats=1,
    )
    study, _ = _tune(tmp_path, spec)
    points = [(t.params["x"], t.params["y"]) for t in study.trials]
    assert sorted(points) == sorted((x, y) for x in range(1, 7) for y in (1, 2, 3))
    assert len(points) == len(set(points)) == 18
    # Running again measures nothing more.
    study2, _ = _tune(tmp_path, spec)
    assert len(study2.trials) == 18


def test_grid_with_conditions_enumerates_each_branch_once() -> None:
    space = {
        "cache_implementation": Param(type="categorical", choices=["dynamic", "static"]),
        "torch_compile": Param(type="categorical", choices=["off", "default"], when={"cache_implementation": "static"}),
        "batch_size": Param(type="int", low=1, high=8, log=True),
    }
    pts = sp.grid(space)
    assert len(pts) == (1 + 2) * 4
    assert all(("torch_compile" in p) == (p["cache_implementation"] == "static") for p in pts)
    assert sorted({p["batch_size"] for p in pts}) == [1, 2, 4, 8]


def test_conditional_parameter_exists_only_with_its_parent(tmp_path: Path) -> None:
    spec = fault_spec(
        search_space={
            "mode": {"type": "categorical", "choices": ["ok", "garbage"]},
            "y": {"type": "int", "low": 1, "high": 4, "when": {"mode": "garbage"}},
        },
        sampler={"name": "random", "seed": 0},
        budget={"trials": 8},
    )
    study, _ = _tune(tmp_path, spec)
    for t in study.trials[1:]:
        assert ("y" in t.params) == (t.params["mode"] == "garbage")


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_samplers_are_seedable(tmp_path: Path, sampler: str) -> None:
    spec = fault_spec(sampler={"name": sampler, "seed": 7}, budget={"trials": 6}, repeats=1)
    a, _ = _tune(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path, spec)
    (tmp_path / "b").mkdir()
    b, _ = _tune(tmp_path / "b", spec)
    # TPE's first trials are its seeded random start-up; random is seeded throughout.
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


@pytest.mark.parametrize("sampler", ["gp", "cmaes"])
def test_gp_and_cmaes_run(tmp_path: Path, sampler: str) -> None:
    study, _ = _tune(tmp_path, fault_spec(sampler={"name": sampler, "seed": 0}, budget={"trials": 5}, repeats=1))
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5


def test_median_pruner_prunes_bad_trials_but_never_the_baseline(tmp_path: Path) -> None:
    spec = fault_spec(
        pruner={"name": "median"}, sampler={"name": "random", "seed": 2}, budget={"trials": 12}, repeats=3
    )
    study, _ = _tune(tmp_path, spec)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    best_pruned = max(max(t.intermediate_values.values()) for t in pruned)
    assert best_pruned < study.best_value


def test_finalists_are_revalidated_and_export_carries_the_evidence(tmp_path: Path) -> None:
    # Passes of 0.1 s: on a loaded machine, scheduling jitter on 20 ms sleeps swamped a 5x gap.
    spec = fault_spec(validate_finalists=True, budget={"trials": 6}, repeats=3, fixed={"pass_s": 0.1, "noise": 0.01})
    study, res = _tune(tmp_path, spec)
    v = study.user_attrs["validation"]
    assert set(v["measured"]) == {"baseline", "best", "runner_up"}
    # Each finalist in its own engine starts, interleaved: 3 repeats in each of the rounds.
    assert len(v["measured"]["best"]["repeats"]) == 3 * v["rounds"] and len(v["measured"]["best"]["start_values"]) == 2
    assert v["best_vs_baseline"]["significant"] is True
    assert "larger than the noise" in res.stdout
    db = f"sqlite:///{tmp_path / 's.db'}"
    out = run_cli("export", study.study_name, "--storage", db, "--format", "yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rec = yaml.safe_load(out.stdout)
    assert rec["settings"] == study.best_trial.user_attrs["settings"]
    assert rec["throughput_tok_s"] == pytest.approx(study.best_value)
    assert rec["baseline_tok_s"] == pytest.approx(study.trials[0].value)
    assert rec["gain_pct"] > 0
    assert rec["environment"]["host"]
    assert "larger than the noise" in rec["verdict"]
    js = run_cli("export", str(tmp_path / "spec.yaml"), "--storage", db, "--format", "json", cwd=tmp_path)
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout)["study"] == study.study_name


def test_a_tie_is_called_a_tie(tmp_path: Path) -> None:
    """y=1 (the baseline) and y=3 have the same true throughput; with noise, no winner is crowned."""
    spec = fault_spec(
        validate_finalists=True,
        search_space={"y": {"type": "categorical", "choices": [1, 3]}},
        fixed={"pass_s": 0.02, "noise": 0.2, "x": 24},
        sampler={"name": "grid"},
        budget={"trials": 10},
        repeats=3,
    )
    study, res = _tune(tmp_path, spec)
    assert sorted(t.params["y"] for t in study.trials) == [1, 3]
    v = study.user_attrs["validation"]
    assert v["measured"]["best"]["settings"]["y"] == 3  # the baseline itself is never "best"
    assert v["best_vs_baseline"]["significant"] is False  # the noise is seeded: deterministic
    assert "a tie" in " ".join(res.stdout.split())


def test_export_errors(tmp_path: Path) -> None:
    study, _ = _tune(tmp_path, fault_spec(budget={"trials": 2}))
    db = f"sqlite:///{tmp_path / 's.db'}"
    r = run_cli("export", "no-such-study", "--storage", db)
    assert (
        r.returncode == 2 and "no study named 'no-such-study'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )
    r = run_cli("export", study.study_name, "--storage", db, "--format", "vllm-cli")
    assert r.returncode == 2 and "vllm-cli exports vLLM studies" in r.stderr


def test_resuming_a_seeded_study_does_not_repeat_its_start_up_points(tmp_path: Path) -> None:
    """A seeded sampler restarted with the same seed would propose the same points again."""
    spec = fault_spec(
        sampler={"name": "tpe", "seed": 0},
        budget={"trials": 3},
        repeats=1,
        search_space={"x": {"type": "int", "low": 1, "high": 1024}, "y": {"type": "int", "low": 1, "high": 16}},
    )
    _tune(tmp_path, spec)
    spec["budget"] = {"trials": 6}
    study, _ = _tune(tmp_path, spec)
    sampled = [tuple(sorted(t.params.items())) for t in study.trials[1:]]
    assert len(sampled) == 5 and len(set(sampled)) == 5, sampled


def test_a_significant_loss_is_not_called_a_tie() -> None:
    from hpo_infer.study.verdict import describe

    v = {"best_vs_baseline": {"gain_pct": -55.6, "p_value": 0.004, "significant": True}}
    assert "worse than the engine defaults" in describe(v) and "tie" not in describe(v)


def test_a_re_proposed_point_is_not_measured_again_and_a_measured_space_ends_the_study(tmp_path: Path) -> None:
    """TPE re-proposes points of a 4-point space; each is measured once, its repeats are told the
    first result, rankings hold each point once, and the study ends when all 4 are measured."""
    from hpo_infer.study.trials import ranked

    spec = fault_spec(
        sampler={"name": "tpe", "seed": 0},
        budget={"trials": 40},
        repeats=1,
        search_space={
            "x": {"type": "categorical", "choices": [8, 64]},
            "y": {"type": "categorical", "choices": [1, 4]},
        },
    )
    study, res = _tune(tmp_path, spec)
    sampled = [t for t in study.trials if t.user_attrs.get("hpo_infer_role") != "baseline"]
    measured = [t for t in sampled if "duplicate_of" not in t.user_attrs]
    copies = [t for t in sampled if "duplicate_of" in t.user_attrs]
    assert sorted((t.params["x"], t.params["y"]) for t in measured) == [(8, 1), (8, 4), (64, 1), (64, 4)]
    assert all("wall_s" in t.user_attrs for t in measured)
    assert copies, "seed 0 re-proposes a measured point within the 5 start-up trials"
    for c in copies:
        twin = study.trials[c.user_attrs["duplicate_of"]]
        assert twin.params == c.params and twin.value == c.value and "wall_s" not in c.user_attrs
        assert c.constraints == twin.constraints
    assert len(study.trials) < 40 and "every point measured" in res.stdout, res.stdout[-2000:]
    assert f"same settings as trial {copies[0].user_attrs['duplicate_of']}: not measured again" in " ".join(
        res.stdout.split()
    )
    best = ranked(study)
    assert len({json.dumps(t.params, sort_keys=True) for t in best}) == len(best)


def test_pareto_front_of_throughput_vs_latency_in_report_and_export(tmp_path: Path) -> None:
    """The fault engine's known trade-off: throughput peaks at x=24, y=2 while TTFT grows with x and
    TPOT with y. The front is the defaults (x=1, y=1) and x in {8, 16, 24} x y in {1, 2}; x=56 and
    y=4 lose on throughput at no latency gain."""
    spec = fault_spec(
        sampler={"name": "grid"},
        budget={"trials": 20},
        repeats=1,
        fixed={"pass_s": 0.02, "latency": "on"},
        search_space={
            "x": {"type": "categorical", "choices": [8, 16, 24, 56]},
            "y": {"type": "categorical", "choices": [1, 2, 4]},
        },
    )
    study, _ = _tune(tmp_path, spec)
    db = f"sqlite:///{tmp_path / 's.db'}"
    exp = run_cli("export", study.study_name, "--storage", db, "--format", "json", "--pareto")
    assert exp.returncode == 0, exp.stderr
    rec = json.loads(exp.stdout)
    assert rec["latency_axes"] == ["p99_ttft_ms", "p99_tpot_ms"]
    points = sorted((p["settings"].get("x", 1), p["settings"].get("y", 1)) for p in rec["pareto"])
    assert points == [(1, 1), (8, 1), (8, 2), (16, 1), (16, 2), (24, 1), (24, 2)]
    tok = [p["throughput_tok_s"] for p in rec["pareto"]]
    assert tok == sorted(tok, reverse=True) and rec["pareto"][0]["settings"]["x"] == 24
    out = tmp_path / "rep"
    rep = run_cli("report", study.study_name, "--storage", db, "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "summary.md").read_text()
    assert "## Throughput vs latency (Pareto front)" in md and (out / "pareto.png").stat().st_size > 5000
    assert md.count("| yes |") == 7
    # Bad input: a format the front has no form in, and a study that measured no latency.
    bad = run_cli("export", study.study_name, "--storage", db, "--format", "vllm-cli", "--pareto")
    assert bad.returncode == 2 and "--format" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "plain").mkdir()
    plain, _ = _tune(tmp_path / "plain", fault_spec(budget={"trials": 2}, repeats=1))
    none = run_cli("export", plain.study_name, "--storage", f"sqlite:///{tmp_path / 'plain' / 's.db'}", "--pareto")
    assert none.returncode == 2 and "--pareto" in none.stderr and "no trial with latency metrics" in none.stderr
