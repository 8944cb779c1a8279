"""Storage URLs: SQLite (embedded default) or PostgreSQL (shared by a fleet). Passwords masked."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

DEFAULT_STORAGE = "sqlite:///hpo-infer.db"
HEARTBEAT_S = 10  # default; HPO_INFER_HEARTBEAT_S overrides (tests use 1 s)
GRACE_S = 30  # default 3 heartbeats; HPO_INFER_GRACE_S overrides. Must outlast a database restart.


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


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        from hpo_infer.errors import InputError

        raise InputError(name, f"must be a whole number of seconds > 0, got {raw!r}")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from HPO_INFER_HEARTBEAT_S / HPO_INFER_GRACE_S.

    Optuna takes whole seconds. The grace period must outlast a database restart: a trial whose
    heartbeat is older than it is failed and retried by another agent.
    """
    hb = _positive_int_env("HPO_INFER_HEARTBEAT_S", HEARTBEAT_S)
    grace = _positive_int_env("HPO_INFER_GRACE_S", max(GRACE_S if hb == HEARTBEAT_S else 3 * hb, hb + 1))
    if grace <= hb:
        from hpo_infer.errors import InputError

        raise InputError("HPO_INFER_GRACE_S", f"grace period ({grace} s) must be longer than the heartbeat interval ({hb} s)")
    return hb, grace


def open_storage(url: str, heartbeat: bool = True, skip_table_creation: bool = False):
    """An Optuna RDBStorage with heartbeats, so trials of a dead agent are retried by others.

    Every storage call is retried with backoff while the database is unreachable (a restart,
    a failover), see :mod:`hpo_infer.db.retry`. Agents pass ``skip_table_creation=True``: the
    schema is created once by ``hpo-infer db upgrade`` (many processes creating a fresh schema
    at once crash, optuna issue #1092).
    """
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from hpo_infer.db.retry import ResilientRDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        hb, grace = heartbeat_settings()
        kwargs = {
            "heartbeat_interval": hb,
            "grace_period": grace,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2),
        }
    # Our own lines report failed trials; Optuna's warnings would repeat them with tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return ResilientRDBStorage(
        normalise(url), engine_kwargs=engine_kwargs(url), skip_table_creation=skip_table_creation, **kwargs
    )


def url_of(study: Any) -> str | None:
    """The (normalised) URL of a study's RDB storage, or None for other storages."""
    backend = getattr(study._storage, "_backend", study._storage)
    return getattr(backend, "url", None)
