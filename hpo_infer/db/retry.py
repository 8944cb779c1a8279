"""Retries with backoff around storage calls, so agents ride out a database restart.

``pool_pre_ping`` replaces connections that died while idle, but a call made while the server
is down (or whose connection is cut mid-call) still fails. Optuna's RDBStorage turns that into
``StorageInternalError``; an agent would then crash and its running trial would be retried by
others. Instead each storage call is retried until the server is back, up to
``HPO_INFER_DB_RETRY_S`` seconds (default 120), then the error is raised.

Limits: a write whose commit reached the server but whose answer was lost is sent again. For
trial state changes that is recognised (the trial already has the state); a trial created twice
that way would be a spare RUNNING trial, failed later by the heartbeat check.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import time
from typing import Any, Callable, TypeVar

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage

from hpo_infer.errors import first_line
from hpo_infer.storage_url import mask

log = logging.getLogger("hpo_infer.storage")
T = TypeVar("T")
DEFAULT_RETRY_S = 120.0


def retry_window_s() -> float:
    raw = os.environ.get("HPO_INFER_DB_RETRY_S", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_RETRY_S
    except ValueError:
        from hpo_infer.errors import InputError

        raise InputError("HPO_INFER_DB_RETRY_S", f"must be a number of seconds, got {raw!r}") from None


# Operational errors that waiting will not fix: a wrong schema or password, and a storage that
# cannot take writes (a read-only directory, a full disk, a file that is not a database).
PERMANENT = (
    "no such table",
    "no such column",
    "syntax error",
    "password authentication failed",
    "does not exist",
    "readonly database",
    "read-only file system",
    "disk is full",
    "no space left on device",
    "disk i/o error",
    "file is not a database",
    "malformed",
    "unable to open database file",
)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM)


def storage_cause(exc: BaseException) -> BaseException | None:
    """The innermost error of the database or of the file under it in ``exc``'s chain (Optuna
    wraps "database or disk is full" in "An exception is raised during the commit"); None: none."""
    found = None
    e: BaseException | None = exc
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        if type(e).__module__.split(".")[0] in ("sqlalchemy", "sqlite3", "psycopg") or (
            isinstance(e, OSError) and e.errno in STORAGE_ERRNOS
        ):
            found = e
        e = e.__cause__ or e.__context__
    return found


def is_storage_failure(exc: BaseException) -> bool:
    """An error of the database or of the file under it (after any retries): one line, not a traceback."""
    return storage_cause(exc) is not None


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, a lock timeout or a deadlock: worth trying again."""
    import sqlalchemy.exc as sa_exc

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(p in str(x).lower() for x in chain for p in PERMANENT):
        return False
    for x in chain:
        if isinstance(x, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if isinstance(x, sa_exc.DBAPIError) and x.connection_invalidated:
            return True
        if type(x).__module__.startswith(("psycopg", "sqlite3")) and type(x).__name__ in (
            "OperationalError",
            "InterfaceError",
        ):
            return True
    return False


def call_with_retry(fn: Callable[[], T], what: str, window_s: float | None = None) -> T:
    """Run ``fn``; on a transient database error, back off (0.1 s doubling to 2 s) and try again
    until ``window_s`` has passed: the last sleep is cut short so that a last try lands on the
    deadline (the window was cut early before: "retried for 4 s" was 2.9 s)."""
    window = retry_window_s() if window_s is None else window_s
    deadline = time.monotonic() + window
    delay = 0.1
    failures = 0
    while True:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient
            remaining = deadline - time.monotonic()
            if not is_transient(exc) or remaining <= 0:
                raise  # the whole window was tried: "retried for N s" means N s
            failures += 1
            if failures == 1:
                first = mask(first_line(exc))
                log.warning("storage unreachable during %s (%s); retrying for up to %.0f s", what, first[:200], window)
            time.sleep(min(delay * (0.5 + random.random()), remaining))  # the last try lands at the deadline
            delay = min(delay * 2, 2.0)
            continue
        if failures:
            log.warning("storage reachable again after %d failed attempt(s) of %s", failures, what)
        return out


# Every method Optuna's storage front (_CachedStorage, fail_stale_trials, the heartbeat thread)
# calls on the RDB backend. tests/test_db.py checks the list covers BaseStorage's methods.
RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


def _retrying(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        return call_with_retry(lambda: method(self, *args, **kwargs), name)

    return wrapper


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls survive a database restart (see the module docstring).

    Opening the storage is not retried: a wrong URL or password fails at once.
    """

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        attempts = {"n": 0}

        def once() -> bool:
            attempts["n"] += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                # A retry after a commit whose answer was lost: the trial already has the state.
                if attempts["n"] > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return call_with_retry(once, "set_trial_state_values")


for _name in RETRIED:
    if hasattr(RDBStorage, _name):
        setattr(ResilientRDBStorage, _name, _retrying(_name, getattr(RDBStorage, _name)))
