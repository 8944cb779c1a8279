"""Trials that share one worker: a pack on one engine start, and the settings each gets.

Grid points that differ only in an engine's client-side settings (vLLM ``batch_size``...) are
taken together under the study lock and measured by one worker on one started engine. Nested
search does the same for the samplers: beside its own proposal, the sampler proposes more
client-side points with the engine-level ones pinned. A re-proposal of settings already
measured is told the earlier result instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_infer.agent.stop_rules import retried, spent
from hpo_infer.spec import space as sp
from hpo_infer.study import optuna_api
from hpo_infer.study.trials import BASELINE, DUPLICATE_OF, ROLE, Values, told

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
    early: Values | None = None  # the value(s) when decided without launching (engine check)
    engine_started: bool = False  # the worker started the engine (for some member)
    out: "Outcome | None" = None
    rates: list[float] = field(default_factory=list)
    copy_of: int | None = None  # an earlier member of its pack with these settings: told its result


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


def copy_twin(trial: optuna.Trial, twin: FrozenTrial, value: Values | None = None) -> Values:
    """Tell ``trial`` what ``twin`` measured: value(s), constraints (feasible, SLO) and verdict.
    ``value``: the twin's, when it is not told yet (the lead of a nested pack)."""
    for k in ("status", "failure", "launched", "metrics", "spread"):
        if k in twin.user_attrs:
            trial.set_user_attr(k, twin.user_attrs[k])
    trial.set_user_attr(DUPLICATE_OF, twin.number)
    for name, v in twin.constraints.items():
        trial.set_constraint(name, v)
    return told(twin) if value is None else value


def _room(study: optuna.Study, spec: "StudySpec") -> int | None:
    """Trials the budget still allows, counted as the stop rules count (running ones included,
    a failure queued again excluded), so a pack never overruns it. None: no trial budget."""
    if spec.budget.trials is None:
        return None
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    taken = sum(1 for t in trials if spent(t, again) or t.state == TrialState.RUNNING)
    return max(0, spec.budget.trials - taken)


def answer_twin(study: optuna.Study, m: Member) -> FrozenTrial | None:
    """A sampler's proposal of settings measured before is told that result (``early``), not measured."""
    twin = measured_twin(study, m)
    if twin is not None:
        m.early = copy_twin(m.trial, twin)
    return twin


def take_pack(
    study: optuna.Study, spec: "StudySpec", engine: "Engine", fixed: dict[str, Any] | None
) -> list[optuna.Trial]:
    """Grid points still waiting that differ from this trial's only in client-side settings
    (batch_size...): taken now, under the study lock, to share one engine start with it."""
    limit = spec.per_engine - 1
    if limit < 1 or spec.sampler.name != "grid" or fixed is None:
        return []
    # The baseline may lead a pack: its settings are the engine defaults, which reuse_key
    # fills in, so a grid point at the default engine settings shares its start.
    key = engine.reuse_key({**spec.fixed, **fixed})
    if key is None:
        return []
    room = _room(study, spec)
    limit = limit if room is None else min(limit, room)
    out: list[optuna.Trial] = []
    for t in study.get_trials(deepcopy=False):
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


def _inner_count(study: optuna.Study, spec: "StudySpec", engine: "Engine", lead: optuna.Trial) -> int:
    """How many inner points a sampler's proposal gets: ``per_engine - 1`` within the budget, none
    for grid (its packs are take_pack's), queued trials, or a space with no client-side setting."""
    if spec.sampler.name == "grid" or spec.per_engine < 2:
        return 0
    if not any(name in engine.client_side for name in spec.space()):
        return 0
    if optuna_api.enqueued_params(lead, study) is not None:
        return 0  # the baseline, a retry, a transferred point: measured as asked
    room = _room(study, spec)
    return spec.per_engine - 1 if room is None else min(spec.per_engine - 1, room)


def inner_members(
    study: optuna.Study,
    spec: "StudySpec",
    engine: "Engine",
    lead_trial: optuna.Trial,
    lead_settings: dict[str, Any],
    agent_name: str,
) -> list[Member]:
    """Nested search: more client-side points on the lead's engine start. The study's sampler
    proposes them with the lead's engine-level parameters pinned (PartialFixedSampler); asked
    now, under the study lock, so other agents count them against the budget at once. Where a
    condition (``when``) on a client-side value switches an engine-level parameter on or off,
    that point's engine differs: its worker starts one for it, and it is measured all the same."""
    n = _inner_count(study, spec, engine, lead_trial)
    if n < 1:
        return []
    pinned = {k: v for k, v in lead_trial.params.items() if k not in engine.client_side}
    base = study.sampler
    optuna_api.forget_fits(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.PartialFixedSampler(pinned, base)
    out: list[Member] = []
    try:
        for _ in range(n):
            trial = optuna_api.ask_fresh(study)
            trial.set_user_attr("pack_of", lead_trial.number)
            out.append(member(trial, spec, agent_name, pack_of=lead_trial.number))
    finally:
        study.sampler = base
        optuna_api.forget_fits(base)  # its fits were of the pinned space
    _no_second_measure(study, lead_trial.number, lead_settings, out)
    return out


def _no_second_measure(study: optuna.Study, lead: int, lead_settings: dict[str, Any], inner: list[Member]) -> None:
    """Settings measured before get that result now (``early``); settings already in the pack
    (the lead's, an earlier inner point's) get it once measured (``copy_of``): one measurement
    each, and the sampler still sees its proposal answered."""
    seen: list[tuple[dict[str, Any], int]] = [(lead_settings, lead)]
    for m in inner:
        if answer_twin(study, m) is not None:
            continue
        m.copy_of = next((number for settings, number in seen if settings == m.settings), None)
        if m.copy_of is None:
            seen.append((m.settings, m.trial.number))


def pack(
    study: optuna.Study,
    spec: "StudySpec",
    engine: "Engine",
    trial: optuna.Trial,
    fixed: dict[str, Any] | None,
    agent_name: str,
) -> list[Member]:
    """The trial in hand first, then the trials that share its engine start: waiting grid points
    (``fixed``: it was queued) or the sampler's inner points (nested search). Under the lock."""
    lead = member(trial, spec, agent_name)
    if fixed is None:
        return [lead, *inner_members(study, spec, engine, trial, lead.settings, agent_name)]
    extras = take_pack(study, spec, engine, fixed)
    return [lead, *(member(t, spec, agent_name, pack_of=trial.number) for t in extras)]


def tell_copies(
    study: optuna.Study, members: list[Member], lead_value: Values | None, tell: Callable[[Member], None]
) -> None:
    """Tell each member that repeats an earlier member's settings that member's result, once it
    has one (``lead_value``: the lead's, None if it has none). A copy of a member that failed
    fails too, spending no budget (no worker ran for it); the sampler may propose it again."""
    lead = members[0]
    for m in members:
        if m.copy_of is None:
            continue
        src = next(x for x in members if x.trial.number == m.copy_of)
        frozen = optuna_api.stored(study, src.trial)
        value = lead_value if src is lead else (told(frozen) if frozen.state == TrialState.COMPLETE else None)
        if value is None:
            m.trial.set_user_attr("failure", f"not measured: trial {src.trial.number} of its pack has these settings")
            study.tell(m.trial, state=TrialState.FAIL)
            continue
        m.early = copy_twin(m.trial, frozen, value)
        tell(m)
