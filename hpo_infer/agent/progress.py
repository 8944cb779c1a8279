"""What the CLI shows while an agent works: the agent only updates these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Progress:
    done: int = 0
    best: float | None = None
    trial: int | None = None
    phase: str = "starting"
    last: Any = None  # the FrozenTrial that just finished
    listeners: list[Callable[["Progress"], None]] = field(default_factory=list)

    def update(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        for fn in self.listeners:
            fn(self)
