"""The Pareto front of a multi-objective study (``objective.metrics``), and the pick within a budget.

Every study's first objective is tokens/s (maximised); the others are measured metrics, each
with its direction. The front is the feasible, once-measured trials that no other such trial
beats on every objective. A pick is the front's most tokens/s among the points within every
bound of a budget such as ``p99_ttft_ms<=200``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import optuna
from optuna.study import StudyDirection

from hpo_infer.study.trials import DUPLICATE_OF, feasible_trials, tok_s


def directions(study: optuna.Study) -> list[str]:
    return ["maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions]


def objective_names(study: optuna.Study) -> list[str]:
    """The objectives' names as the spec gave them: throughput (or goodput), then the metrics."""
    spec_objective = (study.user_attrs.get("spec") or {}).get("objective") or {}
    return list(spec_objective.get("metrics") or {}) or [spec_objective.get("metric", "throughput")]


def front_of(
    trials: list[optuna.trial.FrozenTrial],
    dirs: list[str],
    values: Callable[[optuna.trial.FrozenTrial], Sequence[float] | None] = lambda t: t.values,
) -> list[optuna.trial.FrozenTrial]:
    """The trials no other beats on every objective (ties kept), most tokens/s first. The
    objectives are each trial's ``values`` (by default what it was told), in ``dirs``'s directions."""
    signs = [1.0 if d == "maximize" else -1.0 for d in dirs]
    keys = {t.number: [s * float(v) for s, v in zip(signs, vs)] for t in trials if (vs := values(t))}

    def dominated(k: list[float]) -> bool:
        return any(all(a >= b for a, b in zip(o, k)) and o != k for o in keys.values())

    out = [t for t in trials if t.number in keys and not dominated(keys[t.number])]
    return sorted(out, key=lambda t: -(tok_s(t) or 0.0))


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's front: feasible (constraints met) trials, a re-proposed point once."""
    points = [t for t in feasible_trials(study) if DUPLICATE_OF not in t.user_attrs]
    return front_of(points, directions(study))


@dataclass(frozen=True)
class Bound:
    name: str
    op: str  # "<=" or ">="
    limit: float

    def holds(self, got: float | None) -> bool:
        return got is not None and (got <= self.limit if self.op == "<=" else got >= self.limit)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.limit:g}"


_BOUND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


def parse_pick(text: str) -> list[Bound]:
    """``"p99_ttft_ms<=200, p99_tpot_ms<=25"`` -> bounds; ValueError says what is wrong."""
    out = []
    for part in [p for p in text.split(",") if p.strip()]:
        m = _BOUND.match(part)
        if not m:
            raise ValueError(f"{part.strip()!r} is not NAME<=NUMBER or NAME>=NUMBER")
        try:
            limit = float(m.group(3))
        except ValueError:
            raise ValueError(f"{m.group(3)!r} in {part.strip()!r} is not a number") from None
        out.append(Bound(m.group(1), m.group(2), limit))
    if not out:
        raise ValueError("is empty: give a budget such as p99_ttft_ms<=200")
    return out


def measured(t: optuna.trial.FrozenTrial, name: str) -> float | None:
    """A trial's measure of ``name``: tokens/s for throughput/goodput, else its metric."""
    if name in ("throughput", "goodput", "tok_s", "throughput_tok_s"):
        return tok_s(t)
    got = (t.user_attrs.get("metrics") or {}).get(name)
    return float(got) if isinstance(got, (int, float)) else None


def pick(points: list[optuna.trial.FrozenTrial], bounds: list[Bound]) -> optuna.trial.FrozenTrial | None:
    """The most tokens/s among ``points`` within every bound (None: no point is)."""
    ok = [t for t in points if all(b.holds(measured(t, b.name)) for b in bounds)]
    return max(ok, key=lambda t: tok_s(t) or 0.0) if ok else None


def names_measured(points: list[optuna.trial.FrozenTrial]) -> set[str]:
    """Metric names every one of ``points`` measured (what a bound may name)."""
    sets = [set((t.user_attrs.get("metrics") or {}).keys()) for t in points]
    return set.intersection(*sets) if sets else set()
