"""Search space: spec parameters -> Optuna distributions, conditional suggestion, grid points."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

if TYPE_CHECKING:
    from hpo_infer.spec import Param

GRID_LIMIT = 100_000


def distribution(p: "Param") -> BaseDistribution:
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    if p.type == "float":
        return FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
    return CategoricalDistribution(list(p.choices))


def active(p: "Param", params: dict[str, Any]) -> bool:
    """A conditional parameter exists only when every ``when`` parent has one of the values."""
    if not p.when:
        return True
    for parent, want in p.when.items():
        values = want if isinstance(want, list) else [want]
        if parent not in params or params[parent] not in values:
            return False
    return True


def suggest(trial: optuna.Trial, space: dict[str, "Param"]) -> dict[str, Any]:
    """Ask the trial for every active parameter, in spec order (parents come first)."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        if not active(p, params):
            continue
        if p.type == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        elif p.type == "float":
            params[name] = trial.suggest_float(name, float(p.low), float(p.high), log=p.log, step=p.step)
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return params


def values(p: "Param") -> list[Any]:
    """The finite values of one parameter for a grid; int+log means powers of two."""
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int":
        lo, hi = int(p.low), int(p.high)
        if p.log:
            out = [2**k for k in range(math.ceil(math.log2(lo)), int(math.log2(hi)) + 1)]
            return sorted({lo, *out, hi})
        return list(range(lo, hi + 1, int(p.step or 1)))
    n = int(round((p.high - p.low) / p.step))
    return [round(p.low + i * p.step, 12) for i in range(n + 1)]


def grid(space: dict[str, "Param"]) -> list[dict[str, Any]]:
    """Every point of a finite (possibly conditional) space, each exactly once."""
    points: list[dict[str, Any]] = [{}]
    for name, p in space.items():
        vals = values(p)
        nxt = []
        for pt in points:
            if active(p, pt):
                nxt.extend({**pt, name: v} for v in vals)
            else:
                nxt.append(pt)
        points = nxt
        if len(points) > GRID_LIMIT:
            raise ValueError(f"grid has more than {GRID_LIMIT} points")
    # Dedupe (conditional branches can coincide) while keeping order.
    seen, out = set(), []
    for pt in points:
        key = tuple(sorted(pt.items(), key=lambda kv: kv[0]))
        if key not in seen:
            seen.add(key)
            out.append(pt)
    return out


def grid_size(space: dict[str, "Param"]) -> int:
    return len(grid(space))


def contains(space: dict[str, "Param"], params: dict[str, Any]) -> bool:
    """Whether ``params`` is a point of the space (used to enqueue carried-over configs)."""
    for name, value in params.items():
        p = space.get(name)
        if p is None:
            return False
        try:
            if not distribution(p)._contains(distribution(p).to_internal_repr(value)):
                return False
        except (ValueError, TypeError):
            return False
    return True


