"""Write what a trial measured (every repeat, window and metric) and each export into our tables.

The agent calls :meth:`Recorder.trial` after each trial, the ``export`` command
:meth:`Recorder.export`. Writes go through :func:`~hpo_infer.db.retry.call_with_retry` and
replace a trial's earlier rows, so a write sent twice leaves one copy.
"""

from __future__ import annotations

import hashlib
import json
import socket
from typing import TYPE_CHECKING, Any, Iterator

from hpo_infer.db.retry import call_with_retry
from hpo_infer.db.storage import engine_kwargs
from hpo_infer.db.tables import Environment, Export, Measurement
from hpo_infer.errors import first_line
from hpo_infer.storage_url import mask, normalise

if TYPE_CHECKING:
    from hpo_infer.trial.runner import Outcome

ENV_COLUMNS = (
    "host",
    "gpu_name",
    "gpu_count",
    "gpu_driver",
    "gpu_memory_bytes",
    "cuda",
    "torch",
    "engine",
    "engine_version",
    "python",
    "platform",
)


def rows(out: "Outcome") -> Iterator[dict[str, Any]]:
    """(config_index, repeat, window, metric, value) of everything one worker session measured."""

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    yield {"config_index": None, "repeat": None, "window": None, "metric": "wall_s", "value": out.wall_s}
    for ci, r in enumerate(out.configs):
        for metric in ("value", "start_s", "warmup_s", "peak_mem_bytes"):
            v = num(getattr(r, metric))
            if v is not None:
                yield {"config_index": ci, "repeat": None, "window": None, "metric": metric, "value": v}
        for rep in r.windows:  # one per timed pass the worker reported, pruned trials included
            ri = rep.get("repeat")
            cache = rep.get("cache") or {}
            counts = [(m, rep.get(m)) for m in ("tok_s", "tokens", "seconds", "cycles")]
            counts += [("prefix_cache_queries", cache.get("queries")), ("prefix_cache_hits", cache.get("hits"))]
            for metric, raw in counts:
                v = num(raw)
                if v is not None:
                    yield {"config_index": ci, "repeat": ri, "window": None, "metric": metric, "value": v}
            for wi, w in enumerate(rep.get("windows") or []):
                tokens, seconds = num(w.get("tokens")), num(w.get("seconds"))
                for metric, v in (("tokens", tokens), ("seconds", seconds)):
                    if v is not None:
                        yield {"config_index": ci, "repeat": ri, "window": wi, "metric": metric, "value": v}
                if tokens is not None and seconds:
                    yield {"config_index": ci, "repeat": ri, "window": wi, "metric": "tok_s", "value": tokens / seconds}


class Recorder:
    """Our tables in one study database; one engine (connection pool) per agent."""

    def __init__(self, url: str, engine: Any = None) -> None:
        """``engine``: share a pool (the agent passes Optuna's, so a fleet opens fewer connections)."""
        from sqlalchemy import create_engine

        self.url = url
        self._own = engine is None
        self.engine = engine if engine is not None else create_engine(normalise(url), **engine_kwargs(url))

    def close(self) -> None:
        if self._own:
            self.engine.dispose()

    def _environment_id(self, session: Any, env: dict[str, Any]) -> int | None:
        from sqlalchemy import select
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        if not env:
            return None
        env = json.loads(mask(json.dumps(env, sort_keys=True, default=str)))
        fp = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()
        values = {c: env.get(c) for c in ENV_COLUMNS}
        values = {
            k: (str(v) if v is not None and k not in ("gpu_count", "gpu_memory_bytes") else v)
            for k, v in values.items()
        }
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        # Agents on one host share a fingerprint: insert it once, whoever comes first.
        session.execute(
            insert(Environment)
            .values(fingerprint=fp, details=env, **values)
            .on_conflict_do_nothing(index_elements=["fingerprint"])
        )
        return session.execute(select(Environment.id).where(Environment.fingerprint == fp)).scalar_one()

    def trial(self, study_name: str, trial_number: int, trial_id: int | None, out: "Outcome") -> int:
        """Replace the rows of one trial by what ``out`` measured; returns how many were written."""
        from sqlalchemy import delete
        from sqlalchemy.orm import Session

        items = list(rows(out))

        def write() -> int:
            with Session(self.engine) as s, s.begin():
                env_id = self._environment_id(s, out.env)
                s.execute(
                    delete(Measurement).where(
                        Measurement.study_name == study_name, Measurement.trial_number == trial_number
                    )
                )
                s.add_all(
                    Measurement(
                        study_name=study_name, trial_number=trial_number, trial_id=trial_id, environment_id=env_id, **r
                    )
                    for r in items
                )
            return len(items)

        return call_with_retry(write, "writing measurements")

    def export(self, study_name: str, record: dict[str, Any], fmt: str, destination: str) -> int:
        """One row per export; the record is stored with passwords masked."""
        from sqlalchemy.orm import Session

        from hpo_infer import __version__

        safe = json.loads(mask(json.dumps(record, default=str)))

        def write() -> int:
            with Session(self.engine) as s, s.begin():
                row = Export(
                    study_name=study_name,
                    trial_number=safe.get("trial"),
                    format=fmt,
                    destination=mask(destination),
                    throughput_tok_s=safe.get("throughput_tok_s"),
                    baseline_tok_s=safe.get("baseline_tok_s"),
                    record=safe,
                    host=socket.gethostname(),
                    hpo_infer_version=__version__,
                )
                s.add(row)
                s.flush()
                return int(row.id)

        return call_with_retry(write, "recording the export")


def record_export(study: Any, record: dict[str, Any], fmt: str, destination: str | None) -> str | None:
    """The ``export`` command's hook: one row in hpo_infer_export; returns a warning or None."""
    from hpo_infer.db import schema
    from hpo_infer.study.optuna_api import url_of

    url = url_of(study)
    if url is None:
        return None
    try:
        schema.ensure(url)
        rec = Recorder(url)
        try:
            rec.export(study.study_name, record, fmt, destination or "-")
        finally:
            rec.close()
    except Exception as exc:  # noqa: BLE001 - the export itself succeeded; say why it was not recorded
        return f"export not recorded in the database: {mask(first_line(exc))}"
    return None
