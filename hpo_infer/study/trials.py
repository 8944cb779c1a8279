"""Our keys on Optuna trials and studies, and the questions every reader asks of a study's
trials: which are feasible, which is the baseline, how they rank."""

from __future__ import annotations

from typing import Any

import optuna

# Keys of our attributes on Optuna trials and studies.
ROLE = "hpo_infer_role"  # "baseline" | "grid" | "carried_over" | "warm_start"
BASELINE = "baseline"
CONSTRAINT = "feasible"  # constraint name: > 0 means infeasible
# Trial attr: the number of the earlier trial that measured these very settings. Samplers
# re-propose points of small discrete spaces; the agent tells the earlier result instead of
# measuring again, so the point has one representative in rankings (the earlier trial).
DUPLICATE_OF = "duplicate_of"
# status of a trial Optuna had asked for when a signal came, before it had settings: FAIL in
# Optuna (its objective raised), measured nothing, spent no budget, and nothing to queue again.
NOT_STARTED = "not started"
VALIDATION = "validation"  # study attr: the re-measured finalists and the verdict
TRANSFER = "transfer"  # study attr of a transfer study: where it came from, and the gains
CARRIED = "carried_over"  # role: the source study's best, enqueued right after the baseline
WARM = "warm_start"  # role: the source's next best configs
RANK = "carried_rank"  # trial attr: 0 for the source's best, 1, 2, ... for the next


def gain_pct(value: float, reference: float) -> float:
    """How much ``value`` beats ``reference``, in percent (inf against a zero reference)."""
    return (value - reference) / reference * 100 if reference else float("inf")


def meets_constraints(t: optuna.trial.FrozenTrial) -> bool:
    """Feasible and within every SLO target: no Optuna constraint above 0."""
    return all(v <= 0 for v in t.constraints.values())


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if meets_constraints(t)]


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    for t in feasible_trials(study):
        if t.user_attrs.get(ROLE) == BASELINE:
            return t
    return None


Values = float | list[float]  # what a trial is told: one value, or one per objective (objective.metrics)


def tok_s(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's tokens/s: its value, the first objective of every study (``FrozenTrial.value``
    raises in a multi-objective study)."""
    return t.values[0] if t.values else None


def told(t: optuna.trial.FrozenTrial) -> Values:
    """What the trial was told, as an objective returns it: one value, or one per objective."""
    return t.values[0] if len(t.values) == 1 else list(t.values)


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials, most tokens/s first; a re-proposed point counts once (its first measurement)."""
    points = [t for t in feasible_trials(study) if DUPLICATE_OF not in t.user_attrs]
    return sorted(points, key=lambda t: tok_s(t) or 0.0, reverse=True)


def settings_of(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The engine settings a trial ran with: its params plus the spec's fixed settings."""
    return {**t.user_attrs.get("fixed", {}), **t.params}


def uncertainty(t: optuna.trial.FrozenTrial) -> str:
    """How sure a trial's value is: repeats, the 95% CI of the mean and the CV (a trial measured
    before they were kept shows its relative spread)."""
    sp = t.user_attrs.get("spread") or {}
    if not sp:
        return "-"
    if "ci_rel" in sp:
        return f"n={int(sp.get('n', 0))}, ±{sp['ci_rel'] * 100:.1f}% (95% CI), CV {sp.get('cv', 0) * 100:.1f}%"
    return f"n={int(sp.get('n', 0))}, ±{sp.get('rel_spread', 0) * 50:.1f}%"


def cache_warnings(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """One line per trial whose timed passes the prefix cache served beyond the workload's prefixes."""
    return [f"trial {t.number}: {t.user_attrs['cache_flag']}" for t in trials if t.user_attrs.get("cache_flag")]
