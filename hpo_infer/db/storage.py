"""Opening the study storage: Optuna's RDBStorage with heartbeats and retries."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hpo_infer.storage_url import normalise

if TYPE_CHECKING:
    from hpo_infer.errors import StorageError

HEARTBEAT_S = 10  # default; HPO_INFER_HEARTBEAT_S overrides (tests use 1 s)
GRACE_S = 30  # default 3 heartbeats; HPO_INFER_GRACE_S overrides. Must outlast a database restart.


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

        raise InputError(
            "HPO_INFER_GRACE_S", f"grace period ({grace} s) must be longer than the heartbeat interval ({hb} s)"
        )
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


def connect(url: str, long_job: bool = False, skip_table_creation: bool = False) -> Any:
    """Open the study storage: the one way every command and agent opens it.

    A long job (an agent, a campaign) waits for an unreachable database with backoff for
    ``HPO_INFER_DB_RETRY_S`` (a database restarting under a fleet) and beats for its trials; a
    quick command fails at once. Either way the error is one line with the password masked.
    """
    from hpo_infer.db.retry import call_with_retry, retry_window_s

    window = retry_window_s() if long_job else 0.0
    try:
        return call_with_retry(
            lambda: open_storage(url, heartbeat=long_job, skip_table_creation=skip_table_creation),
            "opening the storage",
            window,
        )
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one line
        raise cannot_open(url, exc, window) from None


def cannot_open(url: str, exc: BaseException, window: float) -> "StorageError":
    """The one line for a storage that could not be opened (or its schema created). It says
    "(retried for N s)" only where that is true: a transient error tried for the whole window
    (an IntegrityError of a schema race was once reported as 120 s of retries that never happened)."""
    from hpo_infer.db.retry import is_transient
    from hpo_infer.errors import StorageError, first_line
    from hpo_infer.storage_url import mask

    waited = f" (retried for {window:g} s)" if window and is_transient(exc) else ""
    return StorageError(f"cannot open {mask(url)}{waited}: {mask(first_line(exc))}")
