"""Timing of generate calls: cold passes, one warm-up of every shape, repeats until the
uncertainty is small.

Throughput = generated tokens / wall time of the timed generate calls (the windows an engine
reports; preparing a pass's prompts or resetting a cache is not timed). Engine start and warm-up
are excluded and reported apart. The rules, and why:

* **Every pass is cold.** A pass is given its index, and an engine serves each index fresh
  prompts (or resets its caches): vLLM's prefix cache served 87.5% of the prompt tokens of every
  pass after the first when passes repeated one prompt list (H200, +44-54% tok/s: DESIGN.md).
  The engine's own cache counters come back with each pass and are kept.
* **Warm-up is for first-seen shapes, and covers all of them**, once, uncounted: the engine's
  warm-up runs every shape the timed passes will run (HF: one batch of each batch shape). The
  older rule, "repeat the pass until two agree", rested on the cache artefact above and is gone.
* **A pass lasts long enough.** A timed repeat cycles the workload (cold each time) until it
  has run ``min_pass_s``; the number of cycles the first repeat needed is used for all of them,
  so every repeat measures the same work. (A 0.1 s pass measured 4,129 and 7,975 tok/s.)
* **Repeats until the uncertainty is small**: at least ``min_repeats``, then until the 95%
  confidence interval of the mean is within ``precision`` of it, at most ``max_repeats``
  (AIPerf's ci_width convergence, perf_analyzer's stability window). The value is the mean.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from hpo_infer.measurement.protocol import PHASE, REPEAT, Emit
from hpo_infer.measurement.result import EngineResult


@dataclass
class PassResult:
    """One pass over the workload: the tokens generated and the timed generate calls."""

    tokens: int
    windows: list[tuple[int, float]]  # (tokens, seconds) of each timed generate call
    cache: dict[str, int] | None = None  # the engine's prefix-cache counters over the pass: queries, hits (tokens)

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.windows)


MAX_CYCLES = 1000  # a bound on the passes of one repeat, whatever min_pass_s asks

# One pass: given its index (fresh prompts per index), returns what it generated and how long.
Pass = Callable[[int], PassResult]


@dataclass
class Rules:
    """How long and how often to measure (the spec's ``measurement`` section and ``repeats``)."""

    min_repeats: int = 3
    max_repeats: int = 10
    precision: float = 0.03  # 95% CI half-width of the mean, relative to it
    min_pass_s: float = 1.0
    cold: bool = True  # False only to show what warm passes do (tests, a measured comparison)

    @classmethod
    def from_request(cls, repeats: int, measurement: dict[str, Any] | None) -> "Rules":
        m = measurement or {}
        return cls(
            min_repeats=repeats,
            max_repeats=max(repeats, int(m.get("max_repeats", 10))),
            precision=float(m.get("precision", 0.03)),
            min_pass_s=float(m.get("min_pass_s", 1.0)),
            cold=bool(m.get("cold", True)),
        )


def ci95(values: list[float]) -> tuple[float, float]:
    """The 95% confidence interval of the mean (Student's t); a point for fewer than 2 values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def spread(values: list[float]) -> dict[str, float]:
    """Mean, median, min, max, standard deviation, CV, the 95% CI of the mean and its relative
    half-width, and the relative spread ((max-min)/median)."""
    med = statistics.median(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    lo, hi = ci95(values)
    return {
        "mean": mean,
        "median": med,
        "min": min(values),
        "max": max(values),
        "stdev": sd,
        "cv": sd / mean if mean else 0.0,
        "ci95_low": lo,
        "ci95_high": hi,
        "ci_rel": (hi - lo) / 2 / mean if mean else 0.0,
        "rel_spread": (max(values) - min(values)) / med if med else 0.0,
        "n": len(values),
    }


@dataclass
class _Repeat:
    passes: list[PassResult] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.passes)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)

    @property
    def cache(self) -> dict[str, Any] | None:
        seen = [p.cache for p in self.passes if p.cache is not None]
        if not seen:
            return None
        q, h = sum(c["queries"] for c in seen), sum(c["hits"] for c in seen)
        return {"queries": q, "hits": h, "hit_rate": h / q if q else 0.0}


def cache_flag(records: list[dict[str, Any]], expected_hit_rate: float, tolerance: float = 0.02) -> str | None:
    """A warning when a timed pass hit the prefix cache more than the workload's own shared
    prefixes explain (an earlier pass's cache served it, or vLLM counted recomputed tokens after
    preemption as hits: vLLM issue #25780); None when every pass is as cold as it should be."""
    over = [r for r in records if r.get("cache") and r["cache"]["hit_rate"] > expected_hit_rate + tolerance]
    if not over:
        return None
    worst = max(over, key=lambda r: r["cache"]["hit_rate"])
    return (
        f"prefix cache served {worst['cache']['hit_rate']:.1%} of the prompt tokens of timed repeat {worst['repeat']} "
        f"({len(over)} of {len(records)} repeats above the {expected_hit_rate:.1%} the workload's shared prefixes "
        "explain): the rate may be the cache's, not the engine's"
    )


def measure(
    run_pass: Pass,
    rules: Rules,
    emit: Emit,
    config: int = 0,
    warmup: Callable[[], PassResult] | None = None,
    expected_hit_rate: float | None = None,
) -> EngineResult:
    """Warm up once (every shape, uncounted), then timed repeats of ``cycles`` cold passes each,
    until the 95% CI of the mean is within ``rules.precision``; the mean and its spread.

    ``warmup`` runs the engine's own warm-up (a pass over every shape); without one, pass 0 is
    the warm-up. Timed passes take the indices after it, so each one gets fresh prompts.
    """
    emit(PHASE, {"phase": "warmup", "config": config})
    warm = warmup() if warmup is not None else run_pass(0)
    index = 1
    emit(PHASE, {"phase": "measuring", "config": config})
    rates: list[float] = []
    records: list[dict[str, Any]] = []
    cycles = 0  # decided by the first repeat: as many passes as min_pass_s takes
    while len(rates) < rules.max_repeats:
        rep = _Repeat()
        while True:
            rep.passes.append(run_pass(index))
            index += 1
            if len(rep.passes) >= (cycles or MAX_CYCLES) or (not cycles and rep.seconds >= rules.min_pass_s):
                break
        cycles = cycles or len(rep.passes)
        rate = rep.tokens / rep.seconds if rep.seconds > 0 else 0.0
        rates.append(rate)
        rec: dict[str, Any] = {
            "config": config,
            "repeat": len(rates) - 1,
            "tokens": rep.tokens,
            "seconds": rep.seconds,
            "tok_s": rate,
            "cycles": len(rep.passes),
            "windows": [{"tokens": t, "seconds": s} for p in rep.passes for t, s in p.windows],
        }
        if rep.cache is not None:
            rec["cache"] = rep.cache
        records.append(rec)
        emit(REPEAT, rec)
        if len(rates) >= rules.min_repeats and spread(rates)["ci_rel"] <= rules.precision:
            break
    warm_rate = warm.tokens / warm.seconds if warm.seconds > 0 else 0.0
    result = EngineResult(
        config=config,
        value=statistics.fmean(rates),
        spread=spread(rates),
        repeats=[{k: v for k, v in rec.items() if k != "windows"} for rec in records],
        warmup_s=warm.seconds,
        warmup_tok_s=[warm_rate],
    )
    if warm.cache is not None:
        result.resolved["warmup_cache"] = warm.cache
    if expected_hit_rate is not None:
        result.resolved["expected_hit_rate"] = expected_hit_rate
        result.cache_flag = cache_flag(records, expected_hit_rate)
    return result
