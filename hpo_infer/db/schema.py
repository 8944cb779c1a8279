"""Create or migrate the whole schema once: Optuna's tables, then ours (``hpo-infer db upgrade``).

Optuna's revision lives in ``alembic_version``, ours in ``hpo_infer_alembic_version``; each
history migrates only its own tables. The upgrade runs under a database lock, so several
``db upgrade`` (say, one per pod) at once are safe: the first does the work, the rest find
everything at head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo_infer.db.storage import engine_kwargs
from hpo_infer.db.tables import TABLES, VERSION_TABLE
from hpo_infer.storage_url import mask, normalise

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class SchemaState:
    """Where each history stands: None for a current revision means the tables are not there."""

    optuna_current: str | None
    optuna_head: str
    ours_current: str | None
    ours_head: str
    studies: int | None

    @property
    def ready(self) -> bool:
        return self.optuna_current == self.optuna_head and self.ours_current == self.ours_head


def _our_config(connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _optuna_script() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from hpo_infer.study.optuna_api import alembic_dir

    cfg = Config()
    cfg.set_main_option("script_location", alembic_dir())
    return ScriptDirectory.from_config(cfg)


def _our_script() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_our_config())


def state(url: str) -> SchemaState:
    """Read-only: the revisions in the database against the heads this install knows."""
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    u = make_url(normalise(url))
    if u.get_backend_name() == "sqlite" and not Path(u.database or "").expanduser().exists():
        # Looking must not create the file.
        return SchemaState(None, _optuna_script().get_current_head(), None, _our_script().get_current_head(), None)
    engine = create_engine(normalise(url), **engine_kwargs(url))
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            optuna_rev = (
                MigrationContext.configure(conn).get_current_revision() if "alembic_version" in tables else None
            )
            ours_rev = (
                MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
                if VERSION_TABLE in tables
                else None
            )
            studies = conn.execute(text("SELECT COUNT(*) FROM studies")).scalar() if "studies" in tables else None
    finally:
        engine.dispose()
    return SchemaState(
        optuna_rev, _optuna_script().get_current_head(), ours_rev, _our_script().get_current_head(), studies
    )


def upgrade(url: str) -> tuple[SchemaState, SchemaState]:
    """Create or migrate Optuna's schema and ours, under the schema lock.

    Returns the state found once the lock was ours, and the state after.
    """
    from alembic import command
    from sqlalchemy import create_engine

    from hpo_infer.db.lock import StudyLock

    lock = StudyLock(url, "schema")
    with lock:
        before = state(url)
        if before.ready:
            lock.close()
            return before, before
        _optuna_upgrade(url)
        engine = create_engine(normalise(url), **engine_kwargs(url))
        try:
            with engine.begin() as conn:
                command.upgrade(_our_config(conn), "head")
        finally:
            engine.dispose()
    lock.close()
    return before, state(url)


def _optuna_upgrade(url: str) -> None:
    """Optuna creates its tables and stamps its revision when its storage is first opened."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = RDBStorage(normalise(url), engine_kwargs=engine_kwargs(url), skip_compatibility_check=True)
    try:
        if storage.get_current_version() != storage.get_head_version():
            storage.upgrade()
    finally:
        storage.engine.dispose()


def ensure(url: str) -> SchemaState:
    """What an agent does at start: nothing when both are at head, else the (locked) upgrade."""
    st = state(url)
    return st if st.ready else upgrade(url)[1]


def connect_ready(url: str) -> Any:
    """What a long job (an agent, a campaign) opens: the schema created or migrated under the
    schema lock first, then the storage, both retried while the database is unreachable.

    Without the lock, agents started at once on a fresh storage race to create the tables (optuna
    issue #1092): 3 of 8 ``tune`` started together on a new SQLite file died with
    ``UNIQUE constraint failed: alembic_version.version_num``.
    """
    from hpo_infer.db.retry import call_with_retry, retry_window_s
    from hpo_infer.db.storage import cannot_open, connect
    from hpo_infer.errors import StorageError

    window = retry_window_s()
    try:
        call_with_retry(lambda: ensure(url), "creating the schema", window)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one line
        raise cannot_open(url, exc, window) from None
    return connect(url, long_job=True, skip_table_creation=True)


def describe(url: str, st: SchemaState) -> list[str]:
    """Lines for ``hpo-infer db current``."""

    def line(name: str, cur: str | None, head: str) -> str:
        if cur is None:
            return f"{name:<10}not created (head {head}): run hpo-infer db upgrade"
        if cur == head:
            return f"{name:<10}{cur} (head): up to date"
        return f"{name:<10}{cur} (head {head}): run hpo-infer db upgrade"

    return [
        f"{'storage':<10}{mask(url)}",
        line("optuna", st.optuna_current, st.optuna_head),
        line("hpo-infer", st.ours_current, st.ours_head),
        f"{'tables':<10}{', '.join(TABLES)}",
        f"{'studies':<10}{st.studies if st.studies is not None else '-'}",
    ]
