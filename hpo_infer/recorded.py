"""Recorded measurement tables: what the replay engine, ``import-grid`` and the benchmarks read.

A table (CSV; Parquet when pandas is installed) has one row per measured run: setting columns
(``batch_size``, ``num_gpus``, ...), columns that say what was measured (``gpu``, ``engine``,
``model``, ``max_new_tokens``), a throughput column and, optionally, a ``status`` column
(``ok`` | ``oom`` | ``error`` | ``killed``). Several rows of one configuration are repeats: their
spread is the recorded noise. ``../shared/data/paper-landscapes.csv`` is such a table.

A table may also carry latencies: any column whose name ends in ``_ms`` (``p99_ttft_ms``,
``p99_tpot_ms``) is a metric, not a setting; a configuration's metrics are the medians over its
usable rows (:attr:`Resolved.metrics`), as its throughput is.

Cells are typed on reading (``5`` -> int, ``0.5`` -> float, ``true`` -> bool), so a spec's
``batch_size: 1028`` matches the cell ``1028``.
"""

from __future__ import annotations

import csv
import functools
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

VALUE = "throughput_tok_s"
METRIC_SUFFIX = "_ms"  # a latency column (p99_ttft_ms ...): measured per row, never a setting
STATUS = "status"
OK = "ok"
INFEASIBLE_STATUSES = ("oom", "error", "infeasible")  # the configuration itself cannot run
FAILED_STATUSES = ("killed", "failed")  # the run broke for another reason
STATUSES = (OK, *INFEASIBLE_STATUSES, *FAILED_STATUSES)

# What one configuration's rows add up to (see :func:`resolve`).
FEASIBLE = "ok"
INFEASIBLE = "infeasible"
FAILED = "failed"
MISSING = "missing"


class TableError(ValueError):
    """A table that cannot be used; the message names the file, line or column, and the problem."""


@dataclass(frozen=True)
class Row:
    line: int  # line in the file (the header is line 1), for messages
    cells: dict[str, Any]
    value: float | None
    status: str
    keys: dict[str, tuple[int, Any]] = field(default_factory=dict, compare=False)  # norm() of each cell

    def __post_init__(self) -> None:
        self.keys.update({k: norm(v) for k, v in self.cells.items()})

    def key(self, column: str) -> tuple[int, Any]:
        return self.keys.get(column) or norm(None)


@dataclass
class Table:
    path: str
    columns: list[str]
    rows: list[Row]
    value_column: str = VALUE
    _indexes: dict[str, dict[tuple[int, Any], list[Row]]] = field(default_factory=dict, repr=False, compare=False)
    _selected: dict[tuple[Any, ...], list[Row]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def values_of(self, column: str, rows: Iterable[Row] | None = None) -> list[Any]:
        """Distinct values of a column, sorted (numbers before text)."""
        vals = {r.key(column): r.cells.get(column) for r in (self.rows if rows is None else rows)}
        return [vals[k] for k in sorted(vals, key=lambda k: (k[0], k[1]))]

    def select(self, criteria: dict[str, Any], rows: Iterable[Row] | None = None) -> list[Row]:
        want = [(k, norm(v)) for k, v in criteria.items()]
        if rows is not None:
            return [r for r in rows if all(r.key(k) == v for k, v in want)]
        memo = tuple(sorted(want, key=lambda kv: kv[0]))
        if memo not in self._selected:  # trials and benchmarks ask for the same points again and again
            if len(self._selected) > 100_000:
                self._selected.clear()
            bucket = min((self._index(k).get(v, []) for k, v in want), key=len, default=self.rows)
            self._selected[memo] = [r for r in bucket if all(r.key(k) == v for k, v in want)]
        return list(self._selected[memo])

    def _index(self, column: str) -> dict[tuple[int, Any], list[Row]]:
        if column not in self._indexes:
            idx: dict[tuple[int, Any], list[Row]] = {}
            for r in self.rows:
                idx.setdefault(r.key(column), []).append(r)
            self._indexes[column] = idx
        return self._indexes[column]

    def is_row_id(self, column: str) -> bool:
        """A column with a different value on every row (``source_row``) labels rows, it is no setting."""
        return len(self.rows) > 1 and len({r.key(column) for r in self.rows}) == len(self.rows)


@dataclass
class Resolved:
    """What the rows of one configuration say: a value, infeasible, failed, or nothing recorded."""

    status: str
    value: float | None = None
    values: list[float] = field(default_factory=list)  # usable recorded values (repeats)
    stdev: float | None = None  # a recorded ``<value>_std`` column, when the table has one
    rows: list[Row] = field(default_factory=list)
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # median of each ``_ms`` column over the usable rows


def norm(v: Any) -> tuple[int, Any]:
    """A comparison key: 8 == 8.0 == "8", True == "true"; text compares as text."""
    if isinstance(v, bool):
        return (1, str(v).lower())
    if isinstance(v, (int, float)):
        return (0, float(v))
    if isinstance(v, str):
        typed = cell(v)
        if not isinstance(typed, str):
            return norm(typed)
        return (1, v)
    return (2, "" if v is None else str(v))


def cell(text: str) -> Any:
    """A CSV cell as the value a spec would write: int, float, bool or text ('' -> None)."""
    t = text.strip()
    if t == "":
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t[0] not in "+-.0123456789":
        return t
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def fmt(criteria: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in criteria.items())


def read(path: str | os.PathLike[str], value_column: str = VALUE) -> Table:
    """Read and check a table; cached per file version, since trials and benchmarks re-read it."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise TableError(f"{path}: no such file") from None
    return _read(str(p), st.st_mtime_ns, st.st_size, value_column)


@functools.lru_cache(maxsize=8)
def _read(path: str, _mtime: int, _size: int, value_column: str) -> Table:
    if path.endswith((".parquet", ".pq")):
        columns, records = _parquet(path)
    else:
        columns, records = _csv(path)
    if value_column not in columns:
        raise TableError(
            f"{path}: no column {value_column!r} (columns: {', '.join(columns)})"
            f"; name the throughput column with value_column"
        )
    rows = []
    for line, raw in records:
        cells = {c: (cell(v) if isinstance(v, str) else v) for c, v in raw.items()}
        value = cells.pop(value_column)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TableError(f"{path}: line {line}: {value_column} must be a number, got {raw[value_column]!r}")
        status = str(cells.pop(STATUS)).lower() if cells.get(STATUS) is not None else None
        if status is None:
            status = OK if value is not None else "error"
        elif status not in STATUSES:
            raise TableError(f"{path}: line {line}: status {status!r} is not one of {', '.join(STATUSES)}")
        cells = {k: (None if isinstance(v, float) and v != v else v) for k, v in cells.items()}  # NaN: empty
        rows.append(Row(line, cells, None if value is None or value != value else float(value), status))
    if not rows:
        raise TableError(f"{path}: the table has no rows")
    return Table(path, [c for c in columns], rows, value_column)


def _csv(path: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            if not columns:
                raise TableError(f"{path}: empty file: expected a CSV header line")
            if len(set(columns)) != len(columns):
                raise TableError(f"{path}: line 1: duplicate column names")
            records = []
            for raw in reader:
                if None in raw or any(v is None for v in raw.values()):
                    raise TableError(f"{path}: line {reader.line_num}: expected {len(columns)} cells")
                records.append((reader.line_num, raw))
    except UnicodeDecodeError:
        raise TableError(f"{path}: not a UTF-8 CSV file (Parquet files must end in .parquet)") from None
    except csv.Error as exc:
        raise TableError(f"{path}: not a CSV file: {exc}") from None
    return columns, records


def _parquet(path: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    try:
        import pandas as pd
    except ImportError:
        raise TableError(
            f"{path}: reading Parquet needs pandas and pyarrow (pip install pandas pyarrow), or save the table as CSV"
        ) from None
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader error becomes one line
        raise TableError(f"{path}: cannot read Parquet: {str(exc).splitlines()[0]}") from None
    columns = [str(c) for c in df.columns]
    records = [
        (i + 2, {c: (v.item() if hasattr(v, "item") else v) for c, v in zip(columns, row)})
        for i, row in enumerate(df.itertuples(index=False))
    ]
    return columns, records


def resolve(rows: list[Row], oom_partial: str = "infeasible", value_column: str = VALUE) -> Resolved:
    """What a configuration's rows say.

    A row with a positive value and status ``ok`` is usable. An ``oom``/``error`` row that still
    carries a value (the run stopped at its first out-of-memory batch; the paper kept these
    values) is usable only with ``oom_partial="value"``. Otherwise any ``oom``/``error`` row makes
    the configuration infeasible, and ``killed`` rows alone make it failed.
    """
    if not rows:
        return Resolved(MISSING, reason="no row recorded")
    usable = [
        r
        for r in rows
        if r.value is not None
        and r.value > 0
        and (r.status == OK or (oom_partial == "value" and r.status in INFEASIBLE_STATUSES))
    ]
    lines = ", ".join(str(r.line) for r in rows[:5])
    if usable:
        vals = [float(r.value) for r in usable]  # type: ignore[arg-type]
        stds = [r.cells.get(f"{value_column}_std") for r in usable]
        std = float(stds[0]) if len(usable) == 1 and isinstance(stds[0], (int, float)) else None
        return Resolved(FEASIBLE, statistics.median(vals), vals, std, rows, metrics=metrics(usable))
    bad = [r for r in rows if r.status in INFEASIBLE_STATUSES]
    if bad:
        return Resolved(INFEASIBLE, rows=rows, reason=f"recorded status {bad[0].status} (line {lines})")
    if any(r.status in FAILED_STATUSES for r in rows):
        return Resolved(FAILED, rows=rows, reason=f"recorded run was {rows[0].status} (line {lines})")
    return Resolved(FAILED, rows=rows, reason=f"recorded status ok without a throughput > 0 (line {lines})")


def is_metric(column: str) -> bool:
    """A latency column (``p99_ttft_ms``): what a row measured besides its throughput."""
    return column.endswith(METRIC_SUFFIX)


def metrics(rows: list[Row]) -> dict[str, float]:
    """Each latency column's median over ``rows``, where some row has a number in it."""
    out: dict[str, float] = {}
    for col in sorted({c for r in rows for c in r.cells if is_metric(c)}):
        xs = [float(v) for v in (r.cells.get(col) for r in rows) if _is_number(v)]
        if xs:
            out[col] = statistics.median(xs)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
