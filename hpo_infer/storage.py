"""Storage URLs: SQLite (embedded default) or PostgreSQL (shared by a fleet). Passwords masked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DEFAULT_STORAGE = "sqlite:///hpo-infer.db"
HEARTBEAT_S = 10
GRACE_S = 30


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a study storage, or None. Never touches the database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return f"not a database URL: {mask(url)!r} (use sqlite:///FILE or postgresql://USER@HOST/DB)"
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            return "sqlite needs a file (sqlite:///FILE): an in-memory database would lose every trial"
        parent = Path(u.database).expanduser().resolve().parent
        if not parent.is_dir():
            return f"directory {parent} of the sqlite file does not exist"
        return None
    if backend == "postgresql":
        if not u.database:
            return f"no database name in {mask(url)!r}"
        return None
    return f"unsupported database {backend!r} in {mask(url)!r} (use sqlite or postgresql)"


def normalise(url: str) -> str:
    """postgresql:// uses psycopg 3, the driver the ``postgres`` extra installs."""
    if re.match(r"^postgres(ql)?://", url):
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
    return url


def mask(text: str) -> str:
    """Replace any password in URLs inside ``text`` by ***."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", str(text))


def engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Agents on one host share the file: wait on locks instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


def open_storage(url: str, heartbeat: bool = True):
    """An Optuna RDBStorage with heartbeats, so trials of a dead agent are retried by others."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": HEARTBEAT_S,
            "grace_period": GRACE_S,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2),
        }
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Our own lines report failed trials; Optuna's warnings would repeat them with tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return RDBStorage(normalise(url), engine_kwargs=engine_kwargs(url), **kwargs)
