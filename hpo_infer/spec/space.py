"""Search space: spec parameters -> Optuna distributions, conditional suggestion, grid points."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ConfigDict, model_validator

GRID_LIMIT = 100_000
_STRICT = ConfigDict(extra="forbid", strict=False)


class Param(BaseModel):
    """One search-space parameter."""

    model_config = _STRICT
    type: Literal["int", "float", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    choices: Optional[list[Any]] = None
    when: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _shape(self) -> Param:
        if self.type == "categorical":
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("categorical takes 'choices' only, not low/high/step/log")
            if not self.choices:
                raise ValueError("'choices' must be a non-empty list")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError("'choices' has duplicates")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"empty range: low ({_num(self.low)}) > high ({_num(self.high)})")
        if self.type == "int":
            for k in ("low", "high", "step"):
                v = getattr(self, k)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"'{k}' must be an integer for type int, got {v}")
            self.low, self.high = int(self.low), int(self.high)
        if self.step is not None and self.step <= 0:
            raise ValueError(f"'step' must be > 0, got {_num(self.step)}")
        if self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            raise ValueError("'log' and 'step' cannot be combined")
        if self.log and self.low <= 0:
            raise ValueError(f"'log' needs low > 0, got {_num(self.low)}")
        return self


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def distribution(p: Param) -> BaseDistribution:
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    if p.type == "float":
        return FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
    return CategoricalDistribution(list(p.choices))


def active(p: Param, params: dict[str, Any]) -> bool:
    """A conditional parameter exists only when every ``when`` parent has one of the values."""
    if not p.when:
        return True
    for parent, want in p.when.items():
        values = want if isinstance(want, list) else [want]
        if parent not in params or params[parent] not in values:
            return False
    return True


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
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


def values(p: Param) -> list[Any]:
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


def grid(space: dict[str, Param]) -> list[dict[str, Any]]:
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


def grid_size(space: dict[str, Param]) -> int:
    return len(grid(space))


def contains(space: dict[str, Param], params: dict[str, Any]) -> bool:
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
