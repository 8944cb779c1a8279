"""What travels between the agent and its worker process, serialised in one place.

The agent writes one :class:`TrialRequest` as JSON to the worker's stdin. The worker answers
with JSON lines on its stdout, one :class:`Event` each. Anything else on that stream (an engine
that prints) is kept for the log tail and otherwise ignored.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TextIO

Emit = Callable[[str, dict[str, Any]], None]
"""How an engine sends an event (kind, data) from inside the trial process."""

# Event kinds, in the order a healthy worker sends them.
ENV = "env"  # environment fingerprint: host, GPU, driver, CUDA, torch, engine version
PHASE = "phase"  # {"phase": "loading" | "warmup" | "measuring" | ...}
STARTED = "started"  # engine is up: {"start_s", "env": fingerprint, "resolved": {...}}
REPEAT = "repeat"  # one timed pass: {"config", "repeat", "tokens", "seconds", "tok_s", "windows"}
RESULT = "result"  # EngineResult.to_dict(): value, repeats, spread, start_s, resolved, metrics ...
INFEASIBLE = "infeasible"  # {"config", "reason", "error"}: the config cannot work
FAILED = "failed"  # {"error"}: something broke that is not the config's fault


@dataclass
class TrialRequest:
    """Everything a worker needs to measure one or more configurations of one engine."""

    engine: str
    params: dict[str, Any]
    model: dict[str, Any]
    workload: dict[str, Any]
    repeats: int = 3
    seed: int = 0
    # For re-validation of finalists in one worker session: several configs, measured in turn.
    configs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific (e.g. fault mode)
    # How to measure: min_pass_s, precision, max_repeats, cold (the spec's measurement section).
    measurement: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrialRequest":
        return cls(**json.loads(text))


@dataclass
class Event:
    kind: str
    data: dict[str, Any]

    def to_line(self) -> str:
        return json.dumps({"event": self.kind, **self.data}, default=str) + "\n"

    @classmethod
    def from_line(cls, line: str) -> "Event | None":
        """Parse a protocol line; None for anything that is not one (engine chatter, garbage)."""
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
            return None
        kind = obj.pop("event")
        return cls(kind, obj)


class Channel:
    """The protocol stream: the original stdout, kept aside before stdout is sent to stderr."""

    def __init__(self) -> None:
        fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self.out: TextIO = os.fdopen(fd, "w", buffering=1)

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.out.write(Event(kind, data).to_line())
        self.out.flush()


CHANNEL: Channel | None = None  # the trial process's stream, once opened (the fault engine writes garbage on it)


def open_channel() -> Channel:
    """Keep the protocol stream aside in the trial process; everything else printed goes to the log."""
    global CHANNEL
    CHANNEL = Channel()
    return CHANNEL
