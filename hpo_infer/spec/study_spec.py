"""Study spec: YAML -> validated :class:`StudySpec`, engine-aware, with one-line errors.

Every problem is reported as ``FILE: KEY: PROBLEM`` (an :class:`InputError`, exit code 2)
before anything is written to storage or measured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpo_infer.errors import InputError
from hpo_infer.spec.space import Param, _num
from hpo_infer.storage_url import DEFAULT_STORAGE, check_url

if TYPE_CHECKING:
    from hpo_infer.measurement.protocol import TrialRequest

_STRICT = ConfigDict(extra="forbid", strict=False)


class ModelSpec(BaseModel):
    model_config = _STRICT
    synthetic: Optional[Union[str, dict[str, Any]]] = None
    overrides: Optional[dict[str, Any]] = None
    name: Optional[str] = None
    id: Optional[str] = None
    path: Optional[str] = None

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in ("synthetic", "id", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'synthetic', 'id' or 'path'")
        if self.overrides is not None and self.synthetic is None:
            raise ValueError("'overrides' applies to synthetic models only")
        return self


class WorkloadSpec(BaseModel):
    model_config = _STRICT
    kind: Literal["synthetic", "jsonl", "humaneval"] = "synthetic"
    prompts: Optional[int] = Field(default=None, gt=0)
    input_tokens: Optional[Union[int, list[int]]] = None
    output_tokens: int = Field(gt=0)
    seed: int = 0
    path: Optional[str] = None
    field: Optional[str] = None
    limit: Optional[int] = Field(default=None, gt=0)
    # Synthetic: every prompt of a pass starts with the same this-many tokens (vllm bench serve's
    # --random-prefix-len): a prefix cache serving them within a pass is the workload's, not an artefact.
    prefix_tokens: Optional[int] = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _kind(self) -> "WorkloadSpec":
        if self.prefix_tokens and self.kind != "synthetic":
            raise ValueError("'prefix_tokens' is for synthetic workloads (a prompt file's prompts are as given)")
        if self.kind == "synthetic":
            if self.prompts is None or self.input_tokens is None:
                raise ValueError("synthetic workloads need 'prompts' and 'input_tokens'")
            if isinstance(self.input_tokens, list):
                if len(self.input_tokens) != 2 or not 0 < self.input_tokens[0] <= self.input_tokens[1]:
                    raise ValueError("'input_tokens' as a list is [min, max] with 0 < min <= max")
            elif self.input_tokens <= 0:
                raise ValueError("'input_tokens' must be > 0")
            if self.path is not None:
                raise ValueError("synthetic workloads take no 'path'")
            shortest = self.input_tokens if isinstance(self.input_tokens, int) else self.input_tokens[0]
            if self.prefix_tokens and self.prefix_tokens > shortest:
                raise ValueError(
                    f"'prefix_tokens' ({self.prefix_tokens}) is longer than the shortest prompt ({shortest})"
                )
        else:
            if self.path is None:
                raise ValueError(f"{self.kind} workloads need 'path'")
            if self.prompts is not None or self.input_tokens is not None:
                raise ValueError(f"{self.kind} workloads take their prompts from 'path' (use 'limit')")
        return self


class SamplerSpec(BaseModel):
    model_config = _STRICT
    name: Literal["auto", "tpe", "grid", "random", "gp", "cmaes", "nsga2"] = "auto"  # auto: see study.sampler_name
    seed: Optional[int] = None
    options: dict[str, Any] = Field(default_factory=dict)


class PrunerSpec(BaseModel):
    model_config = _STRICT
    name: Literal["median", "none"] = "none"
    options: dict[str, Any] = Field(default_factory=dict)


class BudgetSpec(BaseModel):
    model_config = _STRICT
    trials: Optional[int] = Field(default=None, gt=0)
    wall_time_s: Optional[float] = Field(default=None, gt=0)
    patience: Optional[int] = Field(default=None, gt=0, description="stop after N trials without improvement")

    @model_validator(mode="after")
    def _some(self) -> "BudgetSpec":
        if self.trials is None and self.wall_time_s is None:
            raise ValueError("set 'trials' and/or 'wall_time_s'")
        return self


class MeasurementSpec(BaseModel):
    """How each trial measures (see hpo_infer.measurement.timing): cold passes of at least
    ``min_pass_s``, repeated (``repeats`` at least) until the 95% CI of the mean is within
    ``precision`` of it, or ``max_repeats``."""

    model_config = _STRICT
    min_pass_s: float = Field(default=1.0, gt=0, le=3600)
    precision: float = Field(default=0.03, gt=0, le=1)
    max_repeats: int = Field(default=10, gt=0, le=1000)
    cold: bool = True  # false: passes may be served by an earlier pass's cache (to show the artefact)


class ObjectiveSpec(BaseModel):
    model_config = _STRICT
    # throughput: output tokens/s of the workload as given. goodput (serving engines): output
    # tokens/s at the highest request rate whose latencies meet every ``slo`` target, found per
    # trial by a bounded bisection below the server's saturation rate.
    metric: Literal["throughput", "goodput"] = "throughput"
    direction: Literal["maximize"] = "maximize"
    # Service-level objectives: metric name -> the most it may be (e.g. p99_ttft_ms: 500). A
    # trial that misses one is infeasible (an Optuna constraint > 0); the engine names its metrics.
    slo: dict[str, float] = Field(default_factory=dict)
    rate_steps: int = Field(default=4, ge=1, le=12, description="goodput: bisection steps below the saturation rate")
    # Multi-objective: the measured metrics to trade off, in order, each with its direction, e.g.
    # {throughput: maximize, p99_ttft_ms: minimize}. The first is the value (throughput or
    # goodput, maximised): every study's first objective is tokens/s. The study then has Optuna
    # directions and a Pareto front; ``slo`` targets still apply as constraints.
    metrics: Optional[dict[str, Literal["maximize", "minimize"]]] = None

    @model_validator(mode="after")
    def _goodput_needs_targets(self) -> "ObjectiveSpec":
        if self.metrics is not None:
            names = list(self.metrics)
            if len(names) < 2:
                raise ValueError("metrics: name two or more (e.g. {throughput: maximize, p99_ttft_ms: minimize})")
            if names[0] not in ("throughput", "goodput") or self.metrics[names[0]] != "maximize":
                first = "'throughput: maximize' or 'goodput: maximize'"
                raise ValueError(f"metrics: the first must be {first}, not {names[0]!r}")
            if "metric" in self.model_fields_set and self.metric != names[0]:
                raise ValueError(f"metric is {self.metric!r} but metrics starts with {names[0]!r}: say it once")
            if any(n in ("throughput", "goodput") for n in names[1:]):
                raise ValueError("metrics: throughput or goodput only first")
            self.metric = names[0]  # type: ignore[assignment]
        if self.metric == "goodput" and not self.slo:
            raise ValueError("metric goodput needs 'slo' targets (e.g. slo: {p99_ttft_ms: 500})")
        return self

    @property
    def multi(self) -> bool:
        """Several objectives: an Optuna study with directions and a Pareto front."""
        return bool(self.metrics)

    def directions(self) -> list[str]:
        return list(self.metrics.values()) if self.metrics else [self.direction]

    def measured(self) -> dict[str, str]:
        """The objectives after the value: engine metrics (latencies) and their directions."""
        return dict(list(self.metrics.items())[1:]) if self.metrics else {}


class StudySpec(BaseModel):
    model_config = _STRICT
    engine: str
    model: ModelSpec
    workload: WorkloadSpec
    search_space: Optional[dict[str, Param]] = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budget: BudgetSpec
    trial_timeout_s: float = Field(default=600, gt=0)
    repeats: int = Field(default=3, gt=0, le=100)
    measurement: MeasurementSpec = Field(default_factory=MeasurementSpec)
    validate_finalists: bool = True
    # Re-validation measures each finalist in this many fresh engine starts, interleaved
    # (A B C A B C): the baseline's starts give the study's noise floor.
    validation_rounds: int = Field(default=2, ge=1, le=10)
    # Up to this many trials that differ only in the engine's client-side settings (batch_size...)
    # are measured in one worker on one started engine: waiting grid points (grid studies), or a
    # sampler's proposal and the client-side points it proposes beside it (nested search).
    # None: 16 for grid, 1 (a fresh engine per trial) for the samplers; see ``per_engine``.
    trials_per_engine: Optional[int] = Field(default=None, ge=1, le=1024)
    storage: Optional[str] = None

    # Set by load(): where the spec came from, for messages.
    source: str = Field(default="<spec>", exclude=True)

    def space(self) -> dict[str, Param]:
        return self.search_space or {}

    @property
    def per_engine(self) -> int:
        """Trials per engine start. Unset: grid packs its points by 16 (they are all measured
        anyway); a sampler stays flat, one trial per start, unless nested search is asked for."""
        if self.trials_per_engine is not None:
            return self.trials_per_engine
        return 16 if self.sampler.name == "grid" else 1

    def request(self, configs: list[dict[str, Any]], repeats: int | None = None) -> "TrialRequest":
        """The worker request that measures ``configs`` (settings each) in turn, in one process."""
        from hpo_infer.measurement.protocol import TrialRequest

        extra: dict[str, Any] = {}
        if self.objective.metric == "goodput":
            extra["objective"] = self.objective.model_dump()
        return TrialRequest(
            measurement=self.measurement.model_dump(),
            engine=self.engine,
            params=configs[0],
            model=self.model.model_dump(exclude_none=True),
            workload=self.workload.model_dump(exclude_none=True),
            repeats=repeats or self.repeats,
            seed=self.workload.seed,
            configs=configs if len(configs) > 1 else [],
            extra=extra,
        )


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc if not (isinstance(x, str) and x.startswith("function-")))


def _pydantic_line(err: ValidationError) -> tuple[str, str]:
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if x not in ("int", "str", "list[int]", "dict[str,any]"))
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required key is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if e["type"] not in ("missing", "extra_forbidden", "value_error") and "input" in e:
        msg = f"{msg} (got {e['input']!r})"
    return _where(loc), msg


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file safely; a missing file or bad YAML is one line naming file and line."""
    src = str(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(src, "no such file")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(src, f"{line}invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise InputError(src, "not a UTF-8 text file") from None


def load(path: str | os.PathLike[str], storage_override: str | None = None) -> StudySpec:
    """Read and validate a spec file; raise :class:`InputError` naming file, key and problem."""
    raw = read_yaml(path)
    return from_dict(raw, str(path), storage_override, base_dir=Path(path).parent)


def from_dict(
    raw: Any, src: str = "<spec>", storage_override: str | None = None, base_dir: Path | None = None
) -> StudySpec:
    if not isinstance(raw, dict):
        raise InputError(src, "the spec must be a mapping of keys (engine, model, workload, ...)")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        where, msg = _pydantic_line(err)
        raise InputError(f"{src}: {where}" if where else src, msg) from None
    spec.source = src
    _resolve_paths(spec, base_dir)
    _check_engine(spec)
    _check_slo(spec)
    _check_engine_files(spec, base_dir)
    _check_sampler(spec)
    if spec.measurement.max_repeats < spec.repeats:
        raise InputError(
            f"{src}: measurement.max_repeats",
            f"{spec.measurement.max_repeats} is fewer than repeats ({spec.repeats}), the least a trial measures",
        )
    spec.storage = _pick_storage(spec, storage_override)
    return spec


def _resolve_paths(spec: StudySpec, base_dir: Path | None) -> None:
    """Relative file paths in a spec are relative to the spec file; each must exist."""

    def fix(value: str, key: str) -> str:
        p = Path(os.path.expanduser(value))
        if not p.is_absolute() and base_dir is not None and not p.exists():
            cand = base_dir / p
            if cand.exists():
                p = cand
        if not p.exists():
            raise InputError(f"{spec.source}: {key}", f"no such file: {value}")
        return str(p)

    if spec.workload.path is not None:
        spec.workload.path = fix(spec.workload.path, "workload.path")
    m = spec.model
    if isinstance(m.synthetic, str):
        from hpo_infer.model_source import PRESETS

        if m.synthetic not in PRESETS:
            if not m.synthetic.endswith(".json"):
                raise InputError(
                    f"{spec.source}: model.synthetic",
                    f"unknown preset {m.synthetic!r} (presets: {', '.join(PRESETS)}; or a path to a config.json)",
                )
            m.synthetic = fix(m.synthetic, "model.synthetic")
    elif isinstance(m.synthetic, dict) and "model_type" not in m.synthetic:
        raise InputError(f"{spec.source}: model.synthetic", "an inline config needs 'model_type'")
    if m.path is not None:
        m.path = fix(m.path, "model.path")


def _check_engine(spec: StudySpec) -> None:
    from hpo_infer.engines import engine_class, engine_names

    if spec.engine not in engine_names():
        raise InputError(
            f"{spec.source}: engine", f"unknown engine {spec.engine!r} (one of {', '.join(engine_names())})"
        )
    eng = engine_class(spec.engine)
    if spec.search_space is None:
        spec.search_space = {k: Param.model_validate(v) for k, v in eng.default_space().items()}
    seen: list[str] = []
    for name, p in spec.space().items():
        key = f"{spec.source}: search_space.{name}"
        s = eng.setting(name)
        if s is None:
            raise InputError(
                key,
                f"engine {spec.engine!r} has no setting {name!r} (it has: {', '.join(x.name for x in eng.settings)})",
            )
        if name in spec.fixed:
            raise InputError(key, "is both searched and in 'fixed'")
        probes = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        if p.type == "int":
            probes = [int(v) for v in probes]
        if s.kind in ("bool", "categorical") and p.type != "categorical":
            raise InputError(key, f"{s.kind} setting: use type categorical with choices")
        if s.kind == "int" and p.type == "float":
            raise InputError(key, "integer setting: use type int")
        for v in probes:
            why = s.accepts(v)
            if why:
                raise InputError(key, why)
        for parent, want in (p.when or {}).items():
            if parent not in seen:
                raise InputError(f"{key}.when", f"{parent!r} must be a search_space parameter listed before {name!r}")
            pp = spec.space()[parent]
            for v in want if isinstance(want, list) else [want]:
                if pp.type == "categorical" and v not in pp.choices:
                    raise InputError(f"{key}.when.{parent}", f"{v!r} is not one of its choices {pp.choices}")
        seen.append(name)
    for name, v in spec.fixed.items():
        s = eng.setting(name)
        key = f"{spec.source}: fixed.{name}"
        if s is None:
            raise InputError(key, f"engine {spec.engine!r} has no setting {name!r}")
        why = s.accepts(v)
        if why:
            raise InputError(key, why)


def _check_slo(spec: StudySpec) -> None:
    from hpo_infer.engines import engine_class, engine_names

    eng = engine_class(spec.engine)
    if spec.objective.metric == "goodput":
        if not eng.rate_search:
            has = [n for n in engine_names() if engine_class(n).rate_search]
            raise InputError(
                f"{spec.source}: objective.metric",
                f"engine {spec.engine!r} has no request rate to search (goodput engines: {', '.join(has)})",
            )
        if "request_rate" in spec.space() or "request_rate" in spec.fixed:
            where = "search_space.request_rate" if "request_rate" in spec.space() else "fixed.request_rate"
            raise InputError(
                f"{spec.source}: {where}", "metric goodput searches the request rate itself: leave request_rate out"
            )
    for name, target in spec.objective.slo.items():
        if target <= 0:
            raise InputError(f"{spec.source}: objective.slo.{name}", f"a target must be > 0, got {_num(target)}")
        _check_metric(spec, f"objective.slo.{name}", name)
    for name in spec.objective.measured():
        _check_metric(spec, f"objective.metrics.{name}", name)


def _check_metric(spec: StudySpec, key: str, name: str) -> None:
    """``name`` must be a metric the spec's engine measures."""
    from hpo_infer.engines import engine_class, engine_names

    eng = engine_class(spec.engine)
    if eng.measures(name):
        return
    has = [n for n in engine_names() if engine_class(n).metrics and not engine_class(n).for_tests]
    why = (
        f"it measures: {', '.join(eng.metrics)}"
        if eng.metrics
        else f"it measures throughput only; serving engines: {', '.join(has)}"
    )
    raise InputError(f"{spec.source}: {key}", f"engine {spec.engine!r} has no metric {name!r} ({why})")


def _check_engine_files(spec: StudySpec, base_dir: Path | None) -> None:
    """Engines that read files named in the spec (replay's recorded table) check them at load."""
    from hpo_infer.engines import engine_class

    problem = engine_class(spec.engine).prepare_spec(spec, base_dir)
    if problem:
        raise InputError(f"{spec.source}: {problem[0]}", problem[1])


def _check_sampler(spec: StudySpec) -> None:
    from hpo_infer.spec import space as sp

    key = f"{spec.source}: sampler.name"
    name = spec.sampler.name
    if name == "grid":
        for pname, p in spec.space().items():
            if p.type == "float" and p.step is None:
                raise InputError(
                    f"{spec.source}: search_space.{pname}", "grid search needs a 'step' for float parameters"
                )
        try:
            n = sp.grid_size(spec.space())
        except ValueError as exc:
            raise InputError(key, str(exc)) from None
        if n == 0:
            raise InputError(key, "the grid is empty")
    if name == "gp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise InputError(key, "the gp sampler needs torch (pip install 'hpo-infer[hf]'), or use tpe")
    if spec.objective.multi and spec.pruner.name != "none":
        raise InputError(f"{spec.source}: pruner.name", "Optuna prunes single-objective studies only: use none")
    if spec.objective.multi and name == "cmaes":
        raise InputError(key, "cmaes is single-objective; for objective.metrics use auto, tpe, nsga2, gp or random")
    if name == "cmaes":
        bad = [n for n, p in spec.space().items() if p.type == "categorical" or p.when]
        if bad:
            raise InputError(
                key,
                f"cmaes needs a numeric space without conditions; {bad[0]!r}"
                f" is categorical or conditional (use tpe or gp)",
            )
    if not spec.space():
        raise InputError(f"{spec.source}: search_space", "is empty: nothing to tune")


def _pick_storage(spec: StudySpec, override: str | None) -> str:
    """Flag > HPO_INFER_STORAGE > spec > default SQLite file in the working directory."""
    if override:
        url, where = override, "--storage"
    elif os.environ.get("HPO_INFER_STORAGE"):
        url, where = os.environ["HPO_INFER_STORAGE"], "HPO_INFER_STORAGE"
    elif spec.storage:
        url, where = spec.storage, f"{spec.source}: storage"
    else:
        url, where = DEFAULT_STORAGE, "default storage"
    problem = check_url(url)
    if problem:
        raise InputError(where, problem)
    return url
