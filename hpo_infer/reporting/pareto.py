"""Throughput vs latency: the measured configurations that no other one beats on both.

A single-objective serving study maximises one number (output tokens/s, or goodput under
targets), but whoever picks a server configuration also weighs its latency. Its front is read
from what each trial already measured (its ``metrics``), so it costs no extra runs. A
multi-objective study (``objective.metrics``) searches the front itself: its front is the one
over its objectives (:mod:`hpo_infer.study.front`).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from hpo_infer.study import front as study_front
from hpo_infer.study.trials import DUPLICATE_OF, meets_constraints, tok_s

DEFAULT_AXES = ("p99_ttft_ms", "p99_tpot_ms")


def targets(study: optuna.Study) -> dict[str, float]:
    """The study's SLO targets, as its stored spec names them (empty: none)."""
    return ((study.user_attrs.get("spec") or {}).get("objective") or {}).get("slo") or {}


def axes(study: optuna.Study) -> list[str]:
    """The latencies to trade against throughput: a multi-objective study's other objectives,
    else the study's SLO targets, else p99 TTFT and TPOT."""
    if len(study.directions) > 1:
        return study_front.objective_names(study)[1:]
    names = [k for k in targets(study) if k.endswith("_ms")] or list(DEFAULT_AXES)
    # TTFT first: it is the one a plot shows, and the one queueing moves most.
    return sorted(names, key=lambda n: (DEFAULT_AXES.index(n) if n in DEFAULT_AXES else len(DEFAULT_AXES), n))


def points(study: optuna.Study, names: list[str]) -> list[optuna.trial.FrozenTrial]:
    """Trials that measured a throughput and every latency (a point measured twice counts once)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = t.user_attrs.get("metrics") or {}
        if DUPLICATE_OF not in t.user_attrs and tok_s(t) and all(isinstance(m.get(n), (int, float)) for n in names):
            out.append(t)
    return out


def front(study: optuna.Study, names: list[str] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Non-dominated trials (more tokens/s, less of every latency), most tokens/s first.

    SLO-missing trials take part: the front shows the trade-off, and
    :func:`~hpo_infer.study.trials.meets_constraints` says which points the targets allow.
    """
    if len(study.directions) > 1:  # the search's own front: its objectives, feasible trials
        return study_front.front(study)
    names = names or axes(study)

    def measured(t: optuna.trial.FrozenTrial) -> list[float]:
        return [tok_s(t), *(t.user_attrs["metrics"][n] for n in names)]  # type: ignore[list-item]

    return study_front.front_of(points(study, names), ["maximize", *["minimize"] * len(names)], measured)


def record(t: optuna.trial.FrozenTrial, names: list[str]) -> dict[str, Any]:
    """One front point as export writes it."""
    m = t.user_attrs.get("metrics") or {}
    return {
        "trial": t.number,
        "settings": t.user_attrs.get("settings", t.params),
        "throughput_tok_s": tok_s(t),
        "latency_ms": {n: m.get(n) for n in names},
        "meets_targets": meets_constraints(t),
        **({"goodput_request_rate": m["goodput_request_rate"]} if "goodput_request_rate" in m else {}),
    }
