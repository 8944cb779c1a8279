"""Where a study's device time went: measuring, or the overhead around it (imports, engine
start, warm-up, exit) that every worker pays. Read from the trials' attributes only, so it
works on any stored study, and says which part to cut when GPU seconds go to anything but
measuring.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpo_infer.study.trials import DUPLICATE_OF

SHARED = "engine_shared"  # trial attr of a pack member: {"trials": [...], "wall_s": whole worker}
PARTS = ("start_s", "warmup_s", "imports_s", "exit_s")


@dataclass
class Overhead:
    """The device-time figures of one study (None: nothing to compute them from)."""

    workers: int = 0  # worker processes launched (a shared-engine pack is one)
    wall_s: float = 0.0  # their wall time, summed: the device time the study held
    measure_s: float = 0.0  # seconds of timed passes, summed
    measured: int = 0  # complete trials with timed passes
    share: float | None = None  # measure_s / wall_s
    per_measured_s: float | None = None  # wall_s / measured
    overhead_s: float | None = None  # median over measured trials of wall - measure_s
    parts: dict[str, float | None] = field(default_factory=dict)  # medians of PARTS
    compile: dict[str, int] = field(default_factory=dict)  # "cold" / "warm" / "eager" starts
    device: str = "device"  # "GPU" | "CPU" | "device"

    def line(self) -> str:
        """One line for a person: the time held, how much of it measured, what the rest went to."""
        head = f"{self.device} time"
        if not self.workers:
            return f"{head}: no worker has run yet"
        s = f"{head}: {self.wall_s:.0f} s in {self.workers} worker{'s' if self.workers != 1 else ''}"
        if self.share is not None:
            s += f", {self.share * 100:.0f}% measuring"
        if self.per_measured_s is not None:
            s += f", {self.per_measured_s:.1f} s per measured trial"
        if self.overhead_s is not None:
            names = {"start_s": "start", "warmup_s": "warm-up", "imports_s": "imports", "exit_s": "exit"}
            got = [f"{names[k]} {v:.1f}" for k, v in self.parts.items() if v is not None]
            s += f"; overhead per trial median {self.overhead_s:.1f} s" + (f" ({', '.join(got)})" if got else "")
        if self.compile:
            order = [k for k in ("cold", "warm", "eager") if k in self.compile]
            s += "; compile starts: " + ", ".join(f"{self.compile[k]} {k}" for k in order)
        return s


def _is_worker(t: optuna.trial.FrozenTrial) -> bool:
    """A trial whose settings a worker ran: not a told-back duplicate, not refused before launch."""
    a = t.user_attrs
    return "wall_s" in a and DUPLICATE_OF not in a and a.get("launched", True) is not False


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def study_overhead(study: optuna.Study) -> Overhead:
    """The device-time figures of ``study`` from its trials' attributes (see :class:`Overhead`)."""
    trials = [t for t in study.get_trials(deepcopy=False) if _is_worker(t)]
    walls: dict[Any, float] = {}  # one entry per worker: a pack's wall counts once
    for t in trials:
        shared = t.user_attrs.get(SHARED)
        if isinstance(shared, dict) and shared.get("trials"):
            walls.setdefault(tuple(shared["trials"]), float(shared.get("wall_s") or 0.0))
        else:
            walls[t.number] = float(t.user_attrs.get("wall_s") or 0.0)
    measured = [
        t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("measure_s") is not None
    ]
    done = [t.user_attrs for t in measured]
    wall = sum(walls.values())
    meas = sum(float(t.user_attrs.get("measure_s") or 0.0) for t in trials)
    compile_starts = collections.Counter((t.user_attrs.get("resolved") or {}).get("compile_start") for t in trials)
    compile_starts.pop(None, None)
    return Overhead(
        workers=len(walls),
        wall_s=round(wall, 3),
        measure_s=round(meas, 3),
        measured=len(measured),
        share=meas / wall if wall > 0 else None,
        per_measured_s=wall / len(measured) if measured else None,
        overhead_s=_median([float(a["wall_s"]) - float(a["measure_s"]) for a in done]),
        parts={k: _median([float(a[k]) for a in done if a.get(k) is not None]) for k in PARTS},
        compile=dict(compile_starts),
        device=device_word(study),
    )


def device_word(study: optuna.Study) -> str:
    """ "GPU" or "CPU": what the workers measured on, from their environment fingerprints
    (``gpu_name`` is "cpu" on a host without an NVIDIA GPU); else the study's ``gpu`` attr."""
    names = {
        str((t.user_attrs.get("env") or {}).get("gpu_name") or "")
        for t in study.get_trials(deepcopy=False)
        if (t.user_attrs.get("env") or {}).get("gpu_name")
    }
    if not names:
        gpu = study.user_attrs.get("gpu")
        if not gpu:
            return "device"
        names = {str(gpu)}
    return "CPU" if all(n.lower() == "cpu" for n in names) else "GPU"
