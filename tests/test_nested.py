"""Nested search: a sampler's proposal and the client-side points it proposes beside it share one
engine start (``trials_per_engine`` > 1 for a sampler; grid keeps its packs of 16).

The fault engine's ``x`` is client-side (as a batch size is) and ``y`` engine-level; a start
costs ``start_s``, which a worker reports only for the config that started the engine, so the
trials with ``start_s > 0`` count the engine starts. In memory, the agent in process; a few s.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from conftest import fault_spec
from optuna.trial import TrialState

from hpo_infer import spec as spec_mod
from hpo_infer.agent import packs
from hpo_infer.agent.loop import Agent
from hpo_infer.agent.stop_rules import retried, spent
from hpo_infer.engines import load_engine
from hpo_infer.study.samplers import make_sampler
from hpo_infer.study.trials import BASELINE, CONSTRAINT, DUPLICATE_OF, ROLE

START_S = 0.05


def _spec(**over: Any) -> spec_mod.StudySpec:
    raw = fault_spec(repeats=1, **over)
    raw["fixed"] = {"pass_s": 0.01, "start_s": START_S, **raw["fixed"]}
    return spec_mod.from_dict(raw, "spec")


def _study(spec: spec_mod.StudySpec) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(direction="maximize", sampler=make_sampler(spec))


def _tune(spec: spec_mod.StudySpec) -> list[optuna.trial.FrozenTrial]:
    study = _study(spec)
    agent = Agent(spec, study)
    try:
        agent.run()
    finally:
        agent.close()
    return study.get_trials(deepcopy=False)


def _starts(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(1 for t in trials if (t.user_attrs.get("start_s") or 0) > 0)


def _lead_and_inner(spec: spec_mod.StudySpec, study: optuna.Study) -> tuple[packs.Member, list[packs.Member]]:
    lead = packs.member(study.ask(), spec, "me")
    return lead, packs.inner_members(study, spec, load_engine(spec.engine), lead.trial, lead.settings, "me")


def test_per_engine_defaults_keep_grid_packs_and_flat_samplers() -> None:
    assert _spec().per_engine == 1  # a sampler stays flat unless asked
    assert _spec(sampler={"name": "grid"}).per_engine == 16
    assert _spec(trials_per_engine=3).per_engine == 3
    assert _spec(sampler={"name": "grid"}, trials_per_engine=1).per_engine == 1


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_inner_points_pin_the_leads_engine_settings(sampler: str) -> None:
    if sampler == "gp":
        pytest.importorskip("torch")
    spec = _spec(trials_per_engine=4, sampler={"name": sampler, "seed": 1}, budget={"trials": 50})
    study = _study(spec)
    base = study.sampler
    for _ in range(6):
        lead, inner = _lead_and_inner(spec, study)
        assert len(inner) == 3 and study.sampler is base  # the study's own sampler back
        for m in inner:
            assert m.params["y"] == lead.params["y"] and m.pack_of == lead.trial.number
            assert m.trial.user_attrs["pack_of"] == lead.trial.number
            assert m.trial.user_attrs["settings"] == m.settings and m.trial.user_attrs["agent"] == "me"
        for m in [lead, *inner]:
            m.trial.set_constraint(CONSTRAINT, 0.0)  # as the agent sets it (GP models constraints)
            study.tell(m.trial, float(m.params["x"] * m.params["y"]))
    xs = {m.params["x"] for m in inner}
    assert len(xs) > 1, "the sampler proposes the client-side values"


def test_no_inner_points_when_flat_grid_queued_or_no_budget() -> None:
    flat = _spec()
    study = _study(flat)
    assert _lead_and_inner(flat, study)[1] == []
    spec = _spec(trials_per_engine=4, budget={"trials": 2})
    study = _study(spec)
    assert len(_lead_and_inner(spec, study)[1]) == 1  # the lead counts: room for one more
    assert _lead_and_inner(spec, study)[1] == []
    study = _study(spec)
    study.enqueue_trial({"x": 1, "y": 1}, user_attrs={ROLE: BASELINE})
    assert _lead_and_inner(spec, study)[1] == []  # a queued trial is measured as asked


def test_engine_level_only_space_has_no_inner_points() -> None:
    spec = _spec(trials_per_engine=4, search_space={"y": {"type": "int", "low": 1, "high": 4}})
    assert _lead_and_inner(spec, _study(spec))[1] == []


def test_conditions_hold_in_inner_points() -> None:
    space = {
        "latency": {"type": "categorical", "choices": ["off", "on"]},
        "x": {"type": "int", "low": 1, "high": 64, "when": {"latency": "on"}},
    }
    spec = _spec(trials_per_engine=3, search_space=space, sampler={"name": "tpe", "seed": 3}, budget={"trials": 60})
    study = _study(spec)
    for _ in range(8):
        lead, inner = _lead_and_inner(spec, study)
        for m in inner:
            assert m.params["latency"] == lead.params["latency"]
            assert ("x" in m.params) == (lead.params["latency"] == "on")
        for m in [lead, *inner]:
            study.tell(m.trial, float(m.params.get("x", 1)))


def test_repeated_settings_are_copied_not_measured_twice() -> None:
    space = {"x": {"type": "categorical", "choices": [8]}, "y": {"type": "categorical", "choices": [1]}}
    spec = _spec(trials_per_engine=3, search_space=space, sampler={"name": "random", "seed": 0})
    study = _study(spec)
    lead, inner = _lead_and_inner(spec, study)
    assert [m.copy_of for m in inner] == [lead.trial.number] * 2  # told the lead's result once measured
    for m in [lead, *inner]:
        study.tell(m.trial, 5.0) if m is lead else study.tell(m.trial, state=TrialState.FAIL)
    lead2, inner2 = _lead_and_inner(spec, study)
    assert all(m.early == 5.0 and m.trial.user_attrs[DUPLICATE_OF] == lead.trial.number for m in inner2)


def test_nested_tpe_measures_three_points_per_engine_start() -> None:
    trials = _tune(_spec(trials_per_engine=3, budget={"trials": 10}))
    sampled = [t for t in trials if t.user_attrs.get(ROLE) != BASELINE]
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    again = retried(trials)
    assert sum(spent(t, again) for t in trials) == 10, "the budget is never overrun"
    assert _starts(trials) == 4, "the baseline's start, then one per pack of three"
    leads = {t.number: t for t in sampled if "pack_of" not in t.user_attrs}
    inner = [t for t in sampled if "pack_of" in t.user_attrs]
    assert len(leads) == 3 and len(inner) == 6
    for t in inner:
        lead = leads[t.user_attrs["pack_of"]]
        assert t.params["y"] == lead.params["y"]
        assert sorted(t.user_attrs["engine_shared"]["trials"]) == sorted(
            [lead.number, *(i.number for i in inner if i.user_attrs["pack_of"] == lead.number)]
        )


def test_flat_search_starts_the_engine_for_every_trial() -> None:
    trials = _tune(_spec(budget={"trials": 5}))
    assert len(trials) == 5 and _starts(trials) == 5
    assert not any("engine_shared" in t.user_attrs or "pack_of" in t.user_attrs for t in trials)


def test_a_pack_repeating_settings_measures_each_once() -> None:
    space = {"x": {"type": "categorical", "choices": [8, 16]}, "y": {"type": "categorical", "choices": [1, 2]}}
    spec = _spec(trials_per_engine=4, search_space=space, sampler={"name": "random", "seed": 0}, budget={"trials": 9})
    trials = _tune(spec)
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    measured = [t.user_attrs["settings"] for t in trials if "worker_status" in t.user_attrs]
    assert len(measured) == len({tuple(sorted(s.items())) for s in measured}), "no settings measured twice"
    by_number = {t.number: t for t in trials}
    assert any(DUPLICATE_OF in t.user_attrs for t in trials), "two x values, packs of four: some repeat"
    for t in trials:
        if DUPLICATE_OF in t.user_attrs:
            assert t.value == by_number[t.user_attrs[DUPLICATE_OF]].value


def test_a_condition_on_a_client_side_value_still_measures_the_point() -> None:
    """y exists only at x=16: an inner x=8 drops the lead's y, so its engine differs and its
    worker starts one for it; every point is measured (or told a measured twin's result)."""
    space = {
        "x": {"type": "categorical", "choices": [8, 16]},
        "y": {"type": "int", "low": 1, "high": 4, "when": {"x": 16}},
    }
    trials = _tune(_spec(trials_per_engine=3, search_space=space, budget={"trials": 10}))
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert ("y" in t.params) == (t.params.get("x") == 16)
        assert "worker_status" in t.user_attrs or DUPLICATE_OF in t.user_attrs
