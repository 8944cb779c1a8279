"""What an engine's ``run()`` returns: one typed result, serialised in one place.

Why a class and not a dict: the result is built in ``measure()``, completed by each engine
(start time, resolved defaults, memory, latencies), sent as the worker's RESULT event and read
back by the agent. As a plain dict, a new field meant editing five or six files that each spelt
its keys by hand; here it is one field with its type and default, and :meth:`EngineResult.to_dict`
and :meth:`EngineResult.from_dict` are the only places that know the wire form.

Bottom layer: imports nothing from hpo_infer outside ``hpo_infer.measurement``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class EngineResult:
    """One configuration's measurement, as the worker reports it.

    Optional fields stay None (or empty) when an engine does not report them; the agent then
    keeps what the ``started`` event said (``start_s``, ``resolved``) instead of overwriting it.
    """

    value: float  # the objective: median generated tokens/s of the timed repeats
    config: int = 0  # index of the configuration in the worker's request (the worker sets it)
    spread: dict[str, float] = field(default_factory=dict)  # median, min, max, stdev, rel_spread, n
    # One per timed pass: {"config", "repeat", "tokens", "seconds", "tok_s"} (windows ride on REPEAT events).
    repeats: list[dict[str, Any]] = field(default_factory=list)
    warmup_s: float | None = None  # seconds spent warming up, outside the timed repeats
    warmup_tok_s: list[float] = field(default_factory=list)  # throughput of each warm-up pass
    start_s: float | None = None  # engine start (load) time; 0.0 for an engine kept from the last config
    # What the engine chose at start-up, merged over the ``started`` event's (vllm-serve adds
    # ``goodput_search`` here once the request-rate search is done).
    resolved: dict[str, Any] = field(default_factory=dict)
    peak_mem_bytes: int | None = None  # GPU memory in use (or RSS on CPU) at the end of the measurement
    # Latencies and counts a spec's ``objective.slo`` may bound (vllm-serve: p99_ttft_ms ...,
    # goodput_request_rate, request_throughput, completed, failed).
    metrics: dict[str, float] = field(default_factory=dict)
    # Set when a timed pass hit the prefix cache more than the workload's shared prefixes explain.
    cache_flag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The RESULT event's data: plain JSON types only (anything else, e.g. a Path, as its str)."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineResult:
        """Read a RESULT event's data. Unknown keys are ignored (a newer worker, an older agent);
        missing or null ones take the field's default. ``value`` is required."""
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in _FIELDS and v is not None}
        kw["value"] = float(d["value"])
        if "config" in kw:
            kw["config"] = int(kw["config"])
        for name in ("warmup_s", "start_s"):
            if name in kw:
                kw[name] = float(kw[name])
        if "peak_mem_bytes" in kw:
            kw["peak_mem_bytes"] = int(kw["peak_mem_bytes"])
        for name in ("spread", "resolved", "metrics"):
            if name in kw:
                kw[name] = dict(kw[name])
        for name in ("repeats", "warmup_tok_s"):
            if name in kw:
                kw[name] = list(kw[name])
        return cls(**kw)

    def __getitem__(self, key: str) -> Any:
        """Read a field by its wire name (``res["value"]``), for callers written against the old dict."""
        if not isinstance(key, str) or key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)


_FIELDS = frozenset(f.name for f in fields(EngineResult))
