"""Our tables (SQLAlchemy 2 models), beside Optuna's in the same database.

Every name starts with ``hpo_infer_`` so it never meets one of Optuna's (``studies``,
``trials``, ``alembic_version``, ...). Rows refer to Optuna's studies and trials by study name
and trial number (and the trial id as a plain number), never by foreign key: Optuna migrates
its own tables on its own schedule, and a study can be deleted without touching ours.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

VERSION_TABLE = "hpo_infer_alembic_version"
PREFIX = "hpo_infer_"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (rowid, autoincrement) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Environment(Base):
    """Where measurements were taken: one row per distinct fingerprint (host, GPU, software)."""

    __tablename__ = "hpo_infer_environment"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the JSON below
    host: Mapped[Optional[str]] = mapped_column(String(255))
    gpu_name: Mapped[Optional[str]] = mapped_column(String(255))
    gpu_count: Mapped[Optional[int]] = mapped_column(Integer)
    gpu_driver: Mapped[Optional[str]] = mapped_column(String(64))
    gpu_memory_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    cuda: Mapped[Optional[str]] = mapped_column(String(64))
    torch: Mapped[Optional[str]] = mapped_column(String(64))
    engine: Mapped[Optional[str]] = mapped_column(String(64))
    engine_version: Mapped[Optional[str]] = mapped_column(String(64))
    python: Mapped[Optional[str]] = mapped_column(String(32))
    platform: Mapped[Optional[str]] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole fingerprint as the worker sent it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Measurement(Base):
    """One number: a metric of one window of one repeat of one configuration of one trial.

    ``repeat`` NULL: a per-configuration number (value, start_s, warmup_s, peak_mem_bytes);
    ``window`` NULL: the whole repeat; ``config_index`` NULL: the whole worker session (wall_s).
    """

    __tablename__ = "hpo_infer_measurement"
    __table_args__ = (Index("ix_hpo_infer_measurement_study_trial", "study_name", "trial_number"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(512))
    trial_number: Mapped[int] = mapped_column(Integer)
    trial_id: Mapped[Optional[int]] = mapped_column(BigInteger)  # Optuna's id, no foreign key
    config_index: Mapped[Optional[int]] = mapped_column(Integer)
    repeat: Mapped[Optional[int]] = mapped_column(Integer)
    window: Mapped[Optional[int]] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    environment_id: Mapped[Optional[int]] = mapped_column(ForeignKey("hpo_infer_environment.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Export(Base):
    """One ``hpo-infer export``: what was exported, from which trial, in which format, to where."""

    __tablename__ = "hpo_infer_export"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    trial_number: Mapped[Optional[int]] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(Text)  # a file path, or "-" for stdout
    throughput_tok_s: Mapped[Optional[float]] = mapped_column(Float)
    baseline_tok_s: Mapped[Optional[float]] = mapped_column(Float)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)  # the exported record, passwords masked
    host: Mapped[Optional[str]] = mapped_column(String(255))
    hpo_infer_version: Mapped[Optional[str]] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


TABLES = tuple(Base.metadata.tables)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's filter: only our tables (and their columns, indexes); Optuna's are its own business."""
    if type_ == "table":
        return bool(name) and name.startswith(PREFIX) and name != VERSION_TABLE
    table = getattr(obj, "table", None)
    if table is not None:
        return str(table.name).startswith(PREFIX)
    return True
