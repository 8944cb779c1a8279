"""Trials that share one worker: a grid pack on one engine start, and the settings each gets.

Grid points that differ only in an engine's client-side settings (vLLM ``batch_size``...) are
taken together under the study lock and measured by one worker on one started engine. A
sampler's re-proposal of settings already measured is told the earlier result instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_infer.agent.stop_rules import retried, spent
from hpo_infer.spec import space as sp
from hpo_infer.study import optuna_api
from hpo_infer.study.trials import BASELINE, DUPLICATE_OF, ROLE

if TYPE_CHECKING:
    from hpo_infer.engines import Engine
    from hpo_infer.spec import StudySpec
    from hpo_infer.trial.runner import Outcome


@dataclass
class Member:
    """One trial of a worker session: alone, or in a pack that shares one engine start."""

    trial: optuna.Trial
    params: dict[str, Any]
    settings: dict[str, Any]
    role: Any
    pack_of: int | None = None  # the number of the trial whose worker this one shares
    early: float | None = None  # the value when decided without launching (engine check)
    engine_started: bool = False  # the worker started the engine (for some member)
    out: "Outcome | None" = None
    rates: list[float] = field(default_factory=list)


def suggest(trial: optuna.Trial, spec: "StudySpec") -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's parameters, and the settings its worker gets. The baseline suggests only the
    parameters it was enqueued with; the engine's defaults decide everything else."""
    space = spec.space()
    if trial.user_attrs.get(ROLE) == BASELINE:
        names = trial.user_attrs.get("baseline_params", [])
        params = sp.suggest(trial, {n: space[n].model_copy(update={"when": None}) for n in names})
        return params, dict(spec.fixed)
    params = sp.suggest(trial, space)
    return params, {**spec.fixed, **params}


def member(trial: optuna.Trial, spec: "StudySpec", agent_name: str, pack_of: int | None = None) -> Member:
    """A trial ready for its worker, its settings recorded on it."""
    params, settings = suggest(trial, spec)
    trial.set_user_attr("settings", settings)
    trial.set_user_attr("fixed", dict(spec.fixed))
    trial.set_user_attr("agent", agent_name)
    return Member(trial, params, settings, trial.user_attrs.get(ROLE), pack_of)


def measured_twin(study: optuna.Study, m: Member) -> FrozenTrial | None:
    """An earlier completed trial with these very settings. TPE and GP re-propose measured
    points of small discrete spaces (Optuna's FAQ answers it the same way): the earlier
    result stands, as a trial of its own, without a second engine start."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (
            t.number != m.trial.number
            and DUPLICATE_OF not in t.user_attrs
            and t.user_attrs.get("settings") == m.settings
        ):
            return t
    return None


def copy_twin(trial: optuna.Trial, twin: FrozenTrial) -> float:
    """Tell ``trial`` what ``twin`` measured: value, constraints (feasible, SLO) and verdict."""
    for k in ("status", "failure", "launched", "metrics", "spread"):
        if k in twin.user_attrs:
            trial.set_user_attr(k, twin.user_attrs[k])
    trial.set_user_attr(DUPLICATE_OF, twin.number)
    for name, v in twin.constraints.items():
        trial.set_constraint(name, v)
    return float(twin.value)  # type: ignore[arg-type]


def take_pack(
    study: optuna.Study, spec: "StudySpec", engine: "Engine", fixed: dict[str, Any] | None
) -> list[optuna.Trial]:
    """Grid points still waiting that differ from this trial's only in client-side settings
    (batch_size...): taken now, under the study lock, to share one engine start with it."""
    limit = spec.trials_per_engine - 1
    if limit < 1 or spec.sampler.name != "grid" or fixed is None:
        return []
    # The baseline may lead a pack: its settings are the engine defaults, which reuse_key
    # fills in, so a grid point at the default engine settings shares its start.
    key = engine.reuse_key({**spec.fixed, **fixed})
    if key is None:
        return []
    trials = study.get_trials(deepcopy=False)
    if spec.budget.trials is not None:  # the budget counts every trial taken
        again = retried(trials)
        taken = sum(1 for t in trials if spent(t, again) or t.state == TrialState.RUNNING)
        limit = min(limit, spec.budget.trials - taken)
    out: list[optuna.Trial] = []
    for t in trials:
        if len(out) >= limit:
            break
        point = optuna_api.enqueued_params(t)
        if t.state != TrialState.WAITING or point is None or t.user_attrs.get(ROLE) == BASELINE:
            continue
        if engine.reuse_key({**spec.fixed, **point}) == key:
            live = optuna_api.take_waiting(study, t)
            if live is not None:
                out.append(live)
    return out
