"""The paper's metric on a transfer study: the gain of the re-tuned best over the config carried
over from the old GPU (arXiv 2408.01050, RQ4), and over the engine defaults. Pure over trials, so
the GPU-change benchmark can ask it after 5, 10, 20, ... trials."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from hpo_infer.study.trials import BASELINE, RANK, ROLE, TRANSFER, gain_pct, meets_constraints, tok_s

if TYPE_CHECKING:
    import optuna


@dataclass
class Gain:
    """The paper's metric on one transfer study, computed from its trials."""

    trials: int
    best_trial: int | None = None
    best_tok_s: float | None = None
    best_settings: dict[str, Any] | None = None
    carried_trial: int | None = None  # the carried-over config that ran (the paper's baseline)
    carried_rank: int | None = None  # 0: the source's best itself; > 0: a fallback
    carried_tok_s: float | None = None
    baseline_tok_s: float | None = None  # the engine defaults on the new GPU
    gain_vs_carried_pct: float | None = None
    gain_vs_defaults_pct: float | None = None


def feasible(t: "optuna.trial.FrozenTrial") -> bool:
    from optuna.trial import TrialState

    return t.state == TrialState.COMPLETE and (tok_s(t) or 0.0) > 0 and meets_constraints(t)


def gains(trials: Sequence["optuna.trial.FrozenTrial"]) -> Gain:
    """Gain of the best feasible trial over the carried-over config and over the defaults.

    Pure over a list of trials, so the GPU-change benchmark can ask it after 5, 10, 20, ... trials.
    """
    ok = [t for t in trials if feasible(t)]
    g = Gain(trials=len(trials))
    if not ok:
        return g
    best = max(ok, key=lambda t: tok_s(t) or 0.0)
    g.best_trial, g.best_tok_s = best.number, tok_s(best)
    g.best_settings = best.user_attrs.get("settings", dict(best.params))
    carried = sorted((t for t in ok if RANK in t.user_attrs), key=lambda t: (t.user_attrs[RANK], t.number))
    if carried:
        c = carried[0]
        g.carried_trial, g.carried_rank, g.carried_tok_s = c.number, int(c.user_attrs[RANK]), tok_s(c)
        g.gain_vs_carried_pct = gain_pct(tok_s(best), tok_s(c))
    base = next((t for t in ok if t.user_attrs.get(ROLE) == BASELINE), None)
    if base is not None:
        g.baseline_tok_s = tok_s(base)
        g.gain_vs_defaults_pct = gain_pct(tok_s(best), tok_s(base))
    return g


def summary(study: "optuna.Study") -> dict[str, Any] | None:
    """What ``export`` and the report carry for a transfer study (None for other studies)."""
    info = study.user_attrs.get(TRANSFER)
    if not info:
        return None
    return {**{k: v for k, v in info.items() if k != "gain"}, **asdict(gains(study.get_trials(deepcopy=False)))}


def describe(g: Gain, source: str) -> str:
    """The paper's metric in one or two lines."""
    lines = []
    if g.gain_vs_carried_pct is None:
        lines.append(f"no carried-over config from {source} ran on this GPU: the paper's metric is undefined")
    else:
        which = (
            "the source's best"
            if g.carried_rank == 0
            else f"the source's #{g.carried_rank + 1} (its better ones failed here)"
        )
        lines.append(
            f"re-tuned best {g.best_tok_s:,.1f} tok/s (trial {g.best_trial}) vs carried-over {which} "
            f"{g.carried_tok_s:,.1f} tok/s (trial {g.carried_trial})"
            f": {g.gain_vs_carried_pct:+.2f}% (the paper's metric)"
        )
    if g.gain_vs_defaults_pct is not None:
        lines.append(f"vs the engine defaults {g.baseline_tok_s:,.1f} tok/s: {g.gain_vs_defaults_pct:+.2f}%")
    return "\n".join(lines)
