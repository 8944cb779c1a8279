"""A lock shared by every agent of a study, held by the database (or the SQLite file).

Some steps must not run in two agents at once, or work is lost or repeated: creating the schema
(optuna issue #1092), seeding a study (baseline and grid enqueued once), and deciding to take
a trial (the budget counted and a waiting grid point popped by one agent at a time). On
PostgreSQL this is a session advisory lock (``pg_try_advisory_lock``), which the server drops
by itself if the holder dies; on SQLite, whose agents share one host, an ``flock`` on a file
in ``FILE.db.locks/`` (one per lock name), which the kernel drops likewise.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any

from hpo_infer.db.retry import call_with_retry
from hpo_infer.errors import StorageError
from hpo_infer.storage_url import normalise

WAIT_S = 1800.0  # long: the agent seeding a large grid holds the lock while it enqueues


def lock_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across hosts and Python runs."""
    return int.from_bytes(hashlib.sha256(f"hpo-infer:{name}".encode()).digest()[:8], "big", signed=True)


class StudyLock:
    """``with StudyLock(url, name):`` — or acquire()/release(), where release is idempotent."""

    def __init__(self, url: str, name: str, wait_s: float = WAIT_S) -> None:
        self.url = normalise(url)
        self.name = name
        self.wait_s = wait_s
        self._held: Any = None
        self._engine: Any = None

    @property
    def held(self) -> bool:
        return self._held is not None

    def acquire(self) -> None:
        if self._held is not None:
            return
        deadline = time.monotonic() + self.wait_s
        while True:
            if call_with_retry(self._try, "lock"):
                return
            if time.monotonic() > deadline:
                raise StorageError(f"waited {self.wait_s:g} s for the lock of {self.name!r}: another agent holds it")
            time.sleep(0.01 + random.random() * 0.04)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if self.url.startswith("sqlite"):
            held.close()  # closing the file drops the flock
            return
        try:
            held.exec_driver_sql(f"SELECT pg_advisory_unlock({lock_key(self.name)})")
            held.commit()
            held.close()
        except Exception:  # noqa: BLE001 - a dead connection has lost the lock anyway
            try:
                held.invalidate()
            except Exception:  # noqa: BLE001
                pass

    def _try(self) -> bool:
        if self.url.startswith("sqlite"):
            return self._try_file()
        from sqlalchemy import create_engine

        if self._engine is None:
            self._engine = create_engine(self.url, pool_pre_ping=True, pool_size=1, max_overflow=0)
        conn = self._engine.connect()
        try:
            got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({lock_key(self.name)})").scalar()
            conn.commit()
        except Exception:
            conn.invalidate()
            raise
        if got:
            self._held = conn
            return True
        conn.close()
        return False

    def _try_file(self) -> bool:
        import fcntl

        from sqlalchemy.engine import make_url

        db = Path(make_url(self.url).database or "hpo-infer.db").expanduser().resolve()
        folder = Path(f"{db}.locks")
        try:
            folder.mkdir(exist_ok=True)
            f = open(folder / f"{lock_key(self.name) & 0xFFFFFFFFFFFFFFFF:016x}", "a+")  # noqa: SIM115 - held open while locked
        except OSError as exc:  # a read-only or full directory: say so in one line
            raise StorageError(
                f"cannot lock {db}: {exc.strerror or exc} (the study lock is a file in {folder})"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._held = f
        return True

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
