"""Timing of generate calls: warm-up of the timed shape, repeats, steady state, spread.

Throughput = generated tokens / wall time of the timed generate calls. Engine start and
warm-up are excluded and reported apart. A warm-up of another shape under-measured HF batch
128 by 2.3x on an H100, and vLLM's first full-size run after start ran 25-30% slow, so the
warm-up is the timed pass itself, repeated until two passes agree.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from hpo_infer.measurement.protocol import PHASE, REPEAT, Emit
from hpo_infer.measurement.result import EngineResult

# One timed pass: returns (generated tokens, list of per-window (tokens, seconds)).
Pass = Callable[[], tuple[int, list[tuple[int, float]]]]


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max, standard deviation and relative spread ((max-min)/median)."""
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "rel_spread": (max(values) - min(values)) / med if med else 0.0,
        "n": len(values),
    }


def timed(run_pass: Pass) -> tuple[int, float, list[tuple[int, float]]]:
    t0 = time.perf_counter()
    tokens, windows = run_pass()
    return tokens, time.perf_counter() - t0, windows


def measure(
    run_pass: Pass,
    repeats: int,
    emit: Emit,
    config: int = 0,
    warmup_pass: Pass | None = None,
    max_warmups: int = 3,
    settle_tol: float = 0.05,
) -> EngineResult:
    """Warm up until steady, then time ``repeats`` passes; returns the median and its spread
    (the engine completes the :class:`EngineResult` with its start time, memory, ...).

    With an explicit ``warmup_pass`` (a cheaper pass of the timed shape), it runs once. Without
    one, the timed pass warms up itself: passes run until one agrees with the pass before it
    within ``settle_tol`` (at most ``max_warmups`` unsettled passes). That settled pass is
    already a steady measurement, so it counts as the first repeat instead of being thrown away.
    """
    emit(PHASE, {"phase": "warmup", "config": config})
    warm_rates: list[float] = []
    warm_s = 0.0
    first: tuple[int, float, list[tuple[int, float]]] | None = None
    if warmup_pass is not None:
        tokens, seconds, _w = timed(warmup_pass)
        warm_s += seconds
        warm_rates.append(tokens / seconds if seconds > 0 else 0.0)
    else:
        while True:
            tokens, seconds, windows = timed(run_pass)
            rate = tokens / seconds if seconds > 0 else 0.0
            if warm_rates and abs(rate - warm_rates[-1]) <= settle_tol * max(warm_rates[-1], 1e-9):
                first = (tokens, seconds, windows)
                break
            warm_s += seconds
            warm_rates.append(rate)
            if len(warm_rates) >= max_warmups:
                break
    emit(PHASE, {"phase": "measuring", "config": config})
    rates: list[float] = []
    records = []
    for r in range(repeats):
        if r == 0 and first is not None:
            tokens, seconds, windows = first
        else:
            tokens, seconds, windows = timed(run_pass)
        rate = tokens / seconds if seconds > 0 else 0.0
        rates.append(rate)
        rec = {
            "config": config,
            "repeat": r,
            "tokens": tokens,
            "seconds": seconds,
            "tok_s": rate,
            "windows": [{"tokens": t, "seconds": s} for t, s in windows],
        }
        records.append(rec)
        emit(REPEAT, rec)
    return EngineResult(
        config=config,
        value=statistics.median(rates),
        spread=spread(rates),
        repeats=[{k: v for k, v in rec.items() if k != "windows"} for rec in records],
        warmup_s=warm_s,
        warmup_tok_s=warm_rates,
    )
