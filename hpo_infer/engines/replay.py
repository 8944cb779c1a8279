"""Replay engine: each trial's measurement is looked up in a recorded table instead of run.

Recorded landscapes (the paper's 20 models x A100/V100 x vLLM/HF, or a grid you measured
earlier) make sampler choices testable in seconds without a GPU, and answer "what would tuning
have found". It is an ordinary engine: its trials go through the same agent, worker process
and protocol as vLLM and HF, so every study feature (stop rules, pruning, re-validation,
export, transfer) works with it.

A spec names the table and what to replay in ``fixed``; every other key is a table column::

    engine: replay
    fixed: {table: ../../shared/data/paper-landscapes.csv, gpu: A100, engine: hf, model: Phi-2, max_new_tokens: 5}
    search_space:
      batch_size: {type: categorical, choices: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1028]}
      num_gpus: {type: categorical, choices: [1, 2, 4, 8]}

A fixed column filters rows (``gpu`` also names the study's GPU); a searched column is tuned.
``table``, ``value_column``, ``missing``, ``oom_partial``, ``snap``, ``noise`` and
``noise_source`` are options of the engine, not columns (``hpo-infer settings replay``). The table
is checked when the spec is loaded (:meth:`ReplayEngine.prepare_spec`), so a wrong path or filter is
a one-line error, not a study full of failed trials.

Latency columns (any name ending in ``_ms``: ``p99_ttft_ms``, ``p99_tpot_ms``) are measurements, not
settings: a trial's result carries their medians over the configuration's rows as its ``metrics``,
as a serving engine's does, so a recorded serving landscape replays throughput and latency together.
"""

from __future__ import annotations

import math
import os
import random
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo_infer import recorded
from hpo_infer.engines.base import AUTO, Emit, Engine, Setting
from hpo_infer.measurement.protocol import PHASE, REPEAT, STARTED
from hpo_infer.measurement.result import EngineResult
from hpo_infer.measurement.timing import spread

if TYPE_CHECKING:
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.measurement.protocol import TrialRequest
    from hpo_infer.spec import StudySpec

PAPER_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1028)  # the data says 1028, not 1024
PAPER_NUM_GPUS = (1, 2, 4, 8)
OPTIONS = ("table", "value_column", "missing", "oom_partial", "snap", "noise", "noise_source")


class ReplayInfeasible(RuntimeError):
    """The recorded run of this configuration ran out of memory or errored: the config is bad."""


class ReplayFailed(RuntimeError):
    """The recorded run was killed, or nothing was recorded: not the config's fault."""


class _Text(Setting):
    def accepts(self, value: Any) -> str | None:
        return None if isinstance(value, str) and value.strip() else f"must be a non-empty text, got {value!r}"


class _Column(Setting):
    def accepts(self, value: Any) -> str | None:
        return None if isinstance(value, (str, int, float, bool)) else f"must be a single value, got {value!r}"


class ReplayEngine(Engine):
    name = "replay"
    distribution = None
    settings = (
        _Text("table", "text", help="recorded table (CSV, or Parquet with pandas); relative to the spec file"),
        _Text("value_column", "text", recorded.VALUE, help="the table's throughput column"),
        Setting(
            "missing",
            "categorical",
            "error",
            choices=("error", "infeasible"),
            help="a configuration with no row: an error naming it, or infeasible "
            "(e.g. never run because it did not fit)",
        ),
        Setting(
            "oom_partial",
            "categorical",
            "infeasible",
            choices=("infeasible", "value"),
            help="an oom/error row that still carries a throughput: infeasible, or use its value as the paper did",
        ),
        Setting(
            "snap",
            "categorical",
            "exact",
            choices=("exact", "nearest"),
            help="nearest: a number between recorded values takes the nearest one (log scale), so an int range "
            "(e.g. batch_size 1..1024, log) replays a recorded powers-of-two grid",
        ),
        Setting("noise", "float", 0.0, low=0.0, high=1.0, help="relative standard deviation added to each timed pass"),
        Setting(
            "noise_source",
            "categorical",
            "relative",
            choices=("relative", "recorded"),
            help="recorded: draw each pass from the configuration's recorded repeats (or its _std column)",
        ),
        _Column("gpu", "categorical", AUTO, help="column: the GPU the rows were measured on; names the study's GPU"),
        Setting(
            "batch_size",
            "int",
            1,
            low=1,
            high=1 << 20,
            help="column: prompts per batch (HF pipeline's default 1)",
            space={"type": "categorical", "choices": list(PAPER_BATCH_SIZES)},
        ),
        Setting(
            "num_gpus",
            "int",
            1,
            low=1,
            high=1024,
            help="column: GPUs used (default 1)",
            space={"type": "categorical", "choices": list(PAPER_NUM_GPUS)},
        ),
    )

    @classmethod
    def measures(cls, name: str) -> bool:
        """A table's latency columns (``*_ms``) are its metrics: prepare_spec checks the table has them."""
        return name.endswith("_ms")

    @classmethod
    def setting(cls, name: str) -> Setting | None:
        """Every name is a setting: the declared ones, or a column of the table (checked at spec load)."""
        return super().setting(name) or _Column(name, "categorical", AUTO, help="table column")

    # ---- agent process: spec load and study key ------------------------------------------
    @classmethod
    def prepare_spec(cls, spec: "StudySpec", base_dir: Path | None) -> tuple[str, str] | None:
        """Resolve ``fixed.table`` against the spec's folder and check the spec against the table.

        Returns ``(key, problem)`` for the first problem, else None; rewrites ``fixed.table`` to
        the resolved path so workers started elsewhere find it.
        """
        fixed, space = spec.fixed, spec.space()
        for name in space:
            if name in OPTIONS:
                return f"search_space.{name}", "is an option of the replay engine, not a table column: put it in fixed"
        if "table" not in fixed:
            return "fixed.table", "required key is missing: the recorded table to replay (CSV or Parquet)"
        path = Path(os.path.expanduser(str(fixed["table"])))
        if not path.is_absolute() and not path.exists() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        if not path.is_file():
            return "fixed.table", f"no such file: {fixed['table']}"
        try:
            table = recorded.read(path, str(fixed.get("value_column", recorded.VALUE)))
        except recorded.TableError as exc:
            return "fixed.table", str(exc)
        fixed["table"] = str(path.resolve())
        filters = {k: v for k, v in fixed.items() if k not in OPTIONS}
        for key, name in [
            *(("slo", n) for n in spec.objective.slo),
            *(("metrics", n) for n in spec.objective.measured()),
        ]:
            if name not in table.columns:
                latency = [c for c in table.columns if c.endswith("_ms")]
                return (
                    f"objective.{key}.{name}",
                    f"is not a column of {table.name} (its latency columns: {', '.join(latency) or 'none'})",
                )
        for key, names in (("fixed", filters), ("search_space", space)):
            for name in names:
                if name not in table.columns:
                    hint = (
                        " (the replay engine's default search space is the paper's batch_size x num_gpus;"
                        " give search_space)"
                        if name in ("batch_size", "num_gpus") and key == "search_space"
                        else ""
                    )
                    return (
                        f"{key}.{name}",
                        f"is not a column of {table.name} (columns: {', '.join(table.columns)}){hint}",
                    )
        # Engine defaults of columns neither fixed nor searched filter rows too (see run()).
        implicit = {
            k: v
            for k, v in cls.defaults().items()
            if k in table.columns and k not in OPTIONS and k not in filters and k not in space
        }
        for name, value in {**filters, **implicit}.items():
            if not table.select({name: value}):
                why = f" (the replay engine's default; set fixed.{name})" if name in implicit else ""
                return (
                    f"fixed.{name}",
                    f"no row of {table.name} has {name}={value}{why} (it has: {_list(table.values_of(name))})",
                )
        filters = {**filters, **implicit}
        rows = table.select(filters)
        if not rows:
            return "fixed", f"no row of {table.name} has {recorded.fmt(filters)} together"
        return _varying_column(table, rows, filters, list(space))

    @classmethod
    def recorded_gpu(cls, spec: "StudySpec") -> "GPUInfo":
        """The GPU a replay study's key names: the ``gpu`` filter, times the most GPUs it may use."""
        from hpo_infer.hardware import GPUInfo

        n = spec.fixed.get("num_gpus")
        p = spec.space().get("num_gpus")
        if n is None and p is not None:
            n = max(p.choices) if p.type == "categorical" else p.high
        return GPUInfo(str(spec.fixed.get("gpu", "recorded")), int(n or 1))

    # ---- worker process ------------------------------------------------------------------
    @classmethod
    def lookup(cls, settings: dict[str, Any]) -> tuple[recorded.Table, dict[str, Any], recorded.Resolved]:
        """The table, the row criteria and what the rows say for one trial's settings.

        Shared by :meth:`run` and ``import-grid``, so an imported grid says what replaying it would.
        """
        p = {**cls.defaults(), **settings}
        table = recorded.read(p["table"], p["value_column"])
        unknown = [k for k in settings if k not in OPTIONS and k not in table.columns]
        if unknown:
            raise ValueError(f"{table.name}: {unknown[0]!r} is not a column (columns: {', '.join(table.columns)})")
        # Engine defaults (batch_size, num_gpus) count only where the table has the column.
        criteria = {k: v for k, v in p.items() if k not in OPTIONS and k in table.columns}
        if p["snap"] == "nearest":
            criteria = _snap(table, criteria)
        return table, criteria, recorded.resolve(table.select(criteria), p["oom_partial"], table.value_column)

    def run(self, request: "TrialRequest", emit: Emit) -> EngineResult:
        p = {**self.defaults(), **request.params}
        emit(PHASE, {"phase": "loading"})
        table, criteria, res = self.lookup(request.params)
        if res.status == recorded.MISSING:
            what = missing_message(table, criteria)
            if p["missing"] == "infeasible":
                raise ReplayInfeasible(f"{what}; treated as infeasible (missing: infeasible)")
            raise LookupError(what)
        if res.status == recorded.INFEASIBLE:
            oom = "out of memory (replayed): " if "oom" in res.reason else ""
            raise ReplayInfeasible(f"{oom}{table.name}: {recorded.fmt(criteria)}: {res.reason}")
        if res.status == recorded.FAILED:
            raise ReplayFailed(f"{table.name}: {recorded.fmt(criteria)}: {res.reason}")
        looked_up = {k: v for k, v in criteria.items() if recorded.norm(v) != recorded.norm(p.get(k))}
        emit(
            STARTED,
            {
                "start_s": 0.0,
                "resolved": {
                    "table": table.path,
                    "rows": [r.line for r in res.rows],
                    "recorded_tok_s": res.values,
                    **({"snapped": looked_up} if looked_up else {}),
                },
            },
        )
        emit(PHASE, {"phase": "measuring"})
        # Seeded by the request and the point: a replayed study draws the same noise every run.
        draw = _sampler(res, float(p["noise"]), p["noise_source"], f"{request.seed}/{sorted(criteria.items())}")
        rates, records = [], []
        for i in range(request.repeats):
            rate = draw()
            rec = {
                "config": 0,
                "repeat": i,
                "tokens": max(1, round(rate)),
                "seconds": 1.0,
                "tok_s": rate,
                "windows": [],
            }
            rates.append(rate)
            records.append(rec)
            emit(REPEAT, rec)
        return EngineResult(
            config=0,
            value=statistics.median(rates),
            spread=spread(rates),
            repeats=[{k: v for k, v in r.items() if k != "windows"} for r in records],
            warmup_s=0.0,
            metrics=res.metrics,  # the table's latency columns (p99_ttft_ms ...): medians of the rows
        )

    def classify(self, exc: BaseException) -> str:
        return "infeasible" if isinstance(exc, ReplayInfeasible) else "failed"


def _sampler(res: recorded.Resolved, noise: float, source: str, seed: str):
    """One timed pass's throughput: the recorded value, or a seeded draw around it."""
    value = float(res.value)  # type: ignore[arg-type]
    rng = random.Random(seed)
    if source == "recorded" and len(res.values) > 1:
        return lambda: rng.choice(res.values)
    sd = res.stdev if source == "recorded" and res.stdev else value * noise
    if not sd:
        return lambda: value
    return lambda: max(value * 0.01, rng.gauss(value, sd))


def _snap(table: recorded.Table, criteria: dict[str, Any]) -> dict[str, Any]:
    """Each number takes the nearest value its column recorded under the text criteria (gpu, model, ...).

    Log distance for positive numbers (batch sizes and GPU counts are powers-of-two grids), so
    700 -> 512 and 1024 -> 1028; ties go to the smaller value.
    """
    text = {k: v for k, v in criteria.items() if not _is_num(v)}
    rows = table.select(text)
    out = dict(criteria)
    for k, v in criteria.items():
        if k in text:
            continue
        recorded_vals = [x for x in table.values_of(k, rows) if _is_num(x)]
        if recorded_vals:
            out[k] = min(recorded_vals, key=lambda x: (_distance(float(v), float(x)), x))
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _distance(a: float, b: float) -> float:
    return abs(math.log(a) - math.log(b)) if a > 0 and b > 0 else abs(a - b)


def missing_message(table: recorded.Table, criteria: dict[str, Any]) -> str:
    """Name the setting that has no row: the one whose removal finds rows, with what was recorded."""
    culprits = [k for k in criteria if table.select({c: v for c, v in criteria.items() if c != k})]
    if len(culprits) == 1:
        k = culprits[0]
        rest = {c: v for c, v in criteria.items() if c != k}
        rec = table.values_of(k, table.select(rest))
        return f"{table.name}: no row for {k}={criteria[k]} with {recorded.fmt(rest)} (recorded {k}: {_list(rec)})"
    return f"{table.name}: no row for the setting combination {recorded.fmt(criteria)}"


def _varying_column(
    table: recorded.Table, rows: list[recorded.Row], filters: dict[str, Any], searched: list[str]
) -> tuple[str, str] | None:
    """A column that is neither filtered nor searched must not vary within one configuration."""
    skip = {*filters, *searched, recorded.STATUS, f"{table.value_column}_std"}
    for col in table.columns:
        if col in skip or col == table.value_column or table.is_row_id(col) or recorded.is_metric(col):
            continue
        groups: dict[tuple[Any, ...], set[Any]] = {}
        for r in rows:
            groups.setdefault(tuple(r.key(s) for s in searched), set()).add(r.key(col))
        if any(len(v) > 1 for v in groups.values()):
            return (
                "fixed",
                f"column {col!r} of {table.name} takes several values ({_list(table.values_of(col, rows))})"
                f" for one setting combination: add {col} to fixed to pick one",
            )
    return None


def _list(values: list[Any], n: int = 12) -> str:
    text = ", ".join(str(v) for v in values[:n])
    return text + (", ..." if len(values) > n else "")
