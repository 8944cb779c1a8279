"""The sampler models the search space even when the baseline (the engine's defaults) is no
point of it: a default outside the space leaves the baseline trial without that parameter, and
Optuna's intersection search space (what GP, NSGA-II and multivariate TPE model) then held
nothing, so every later proposal was random. Real Optuna samplers on an in-memory study.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from conftest import fault_spec
from optuna.trial import TrialState

from hpo_infer.agent.seeding import enqueue_baseline
from hpo_infer.spec.study_spec import from_dict
from hpo_infer.study.samplers import make_sampler
from hpo_infer.study.trials import BASELINE, ROLE


def _study(sampler: str, x_low: int, metrics: bool = False) -> tuple[optuna.Study, Any]:
    """A fault-engine study whose baseline ran and four more trials; x's default is 1."""
    over: dict[str, Any] = {"sampler": {"name": sampler, "seed": 0}}
    if metrics:
        over["objective"] = {"metrics": {"throughput": "maximize", "p99_ttft_ms": "minimize"}}
        over["fixed"] = {"latency": "on"}
    spec = from_dict(
        fault_spec(
            search_space={"x": {"type": "int", "low": x_low, "high": 64}, "y": {"type": "int", "low": 1, "high": 4}},
            **over,
        ),
        "s.yaml",
        "sqlite:///unused.db",
    )
    study = optuna.create_study(directions=spec.objective.directions(), sampler=make_sampler(spec))
    enqueue_baseline(study, spec)
    for _ in range(5):
        t = study.ask()
        if t.user_attrs.get(ROLE) != BASELINE or "x" in t.user_attrs["baseline_params"]:  # as packs.suggest
            t.suggest_int("x", x_low, 64)
        t.suggest_int("y", 1, 4)
        x = t.params.get("x", 1)
        study.tell(t, [float(x), 20.0 + 3 * x] if metrics else float(x))
    return study, study.ask()


@pytest.mark.parametrize("sampler, metrics", [("gp", False), ("tpe", False), ("gp", True), ("nsga2", True)])
def test_a_baseline_outside_the_space_does_not_empty_the_modelled_space(sampler: str, metrics: bool) -> None:
    study, trial = _study(sampler, x_low=8, metrics=metrics)
    (base,) = [t for t in study.trials if t.user_attrs.get(ROLE) == BASELINE]
    assert base.params.keys() == {"y"} and base.state == TrialState.COMPLETE  # x=1 is outside 8..64
    frozen = study._storage.get_trial(trial._trial_id)
    # What Optuna's samplers would model of the whole study: the intersection, x gone.
    assert set(optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))) == {"y"}
    assert set(study.sampler.infer_relative_search_space(study, frozen)) == {"x", "y"}


def test_a_baseline_inside_the_space_is_a_point_the_sampler_sees() -> None:
    study, trial = _study("gp", x_low=1)
    (base,) = [t for t in study.trials if t.user_attrs.get(ROLE) == BASELINE]
    assert base.params == {"x": 1, "y": 1}
    seen = study.sampler._view(study).get_trials()
    assert base.number in [t.number for t in seen]
    frozen = study._storage.get_trial(trial._trial_id)
    assert set(study.sampler.infer_relative_search_space(study, frozen)) == {"x", "y"}
