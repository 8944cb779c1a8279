"""How a trial process is started: forked by a pre-imported server (default) or spawned afresh.

Both give the runner the same handle: ``pid``, ``stdin``, ``stdout``, ``wait()`` and
``returncode``, with the trial in its own session and its stderr in the trial log. One fork
server runs per engine and worker environment (``CUDA_VISIBLE_DEVICES``...), started the first
time a trial needs it: its imports are that first trial's, every later trial starts in
milliseconds. ``HPO_INFER_TRIAL_START=spawn`` keeps the old path; a server that cannot be
reached falls back to it for that trial.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Protocol

from hpo_infer.trial.tree import MARK, kill_tree

START_ENV = "HPO_INFER_TRIAL_START"  # "spawn": a fresh interpreter per trial, as before forking
PROCESS_COMMAND = [sys.executable, "-m", "hpo_infer.trial.process"]
REAP_WAIT_S = 60.0  # how long a killed child's exit status may take to come back
log = logging.getLogger("hpo_infer.trial")


class TrialProcess(Protocol):
    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    returncode: int | None

    def wait(self, timeout: float | None = None) -> int: ...


class LaunchTimeout(Exception):
    """The trial's time ran out before its process could start (a fork server still importing)."""


class _Lines:
    """JSON lines read from a socket with a deadline (socket files lose data after a timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message; None at end of stream; ``subprocess.TimeoutExpired`` on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("fork server", timeout or 0)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)


class Forked:
    """A trial process forked by a server: not our child, so its exit status comes by message."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes], answers: _Lines) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None
        self._answers = answers

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            msg = self._answers.read(REAP_WAIT_S if timeout is None else timeout)
            # No answer: the server died with the child (its parent-death signal killed it).
            self.returncode = int(msg["rc"]) if msg and "rc" in msg else -9
            self._answers.sock.close()
        return self.returncode


class ForkServer:
    """The agent's handle on one server process."""

    def __init__(self, modules: list[str], env: dict[str, str], deadline: float) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpo_infer.trial.forkserver", str(theirs.fileno()), *modules],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self.sock = mine
        self.ready: dict[str, Any] = {}
        mine.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            self.ready = json.loads(mine.recv(65536) or b"{}")
        except (socket.timeout, ValueError):
            self.close()
            raise LaunchTimeout("the fork server was still importing when the trial's time ran out") from None
        finally:
            mine.settimeout(None)
        if not self.ready.get("ready"):
            self.close()
            raise OSError(f"the fork server ended at start: {self.tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode("utf-8", "replace").splitlines()
        return lines[-1][:300] if lines else f"exit code {self.proc.poll()}"

    def fork(self, env: dict[str, str], stderr: IO[bytes], deadline: float) -> Forked:
        """Ask for a child with ``env``; its pid once forked (OSError: the server is gone)."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        mine, theirs = socket.socketpair()
        try:
            socket.send_fds(
                self.sock, [json.dumps({"env": env}).encode()], [in_r, out_w, stderr.fileno(), theirs.fileno()]
            )
        except OSError:
            for fd in (in_w, out_r):
                os.close(fd)
            mine.close()
            raise
        finally:
            for fd in (in_r, out_w):
                os.close(fd)
            theirs.close()
        answers = _Lines(mine)
        try:
            first = answers.read(max(0.001, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            first = None
        if first is None or "pid" not in first:
            os.close(in_w)
            os.close(out_r)
            mine.close()
            raise OSError(f"the fork server did not fork: {self.tail()}")
        return Forked(int(first["pid"]), os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb"), answers)

    def close(self) -> None:
        self.sock.close()  # the server sees the end of its socket and exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            self.proc.wait()
        self.log.close()


_SERVERS: dict[str, ForkServer] = {}
_LOCK = threading.Lock()


def _server(modules: list[str], env: dict[str, str], deadline: float) -> ForkServer:
    """The live server for these imports and this environment, started if there is none."""
    key = json.dumps([modules, sorted(env.items())])
    with _LOCK:
        server = _SERVERS.get(key)
        if server is not None and not server.alive():
            server.close()
            server = None
        if server is None:
            server = _SERVERS[key] = ForkServer(modules, env, deadline)
        return server


def _discard(server: ForkServer) -> None:
    with _LOCK:
        for key, s in list(_SERVERS.items()):
            if s is server:
                del _SERVERS[key]
    server.close()


@atexit.register
def close_all() -> None:
    """End every fork server of this process (the agent is done)."""
    with _LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for s in servers:
        s.close()


def spawn(env: dict[str, str], stderr: IO[bytes], command: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command or PROCESS_COMMAND,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        start_new_session=True,
    )


def launch(
    modules: list[str], env: dict[str, str], stderr: IO[bytes], deadline: float, command: list[str] | None = None
) -> TrialProcess:
    """A running trial process with ``env`` (which carries the trial's mark): forked, or spawned
    when asked for (``command``, ``HPO_INFER_TRIAL_START=spawn``) or when the server failed."""
    if command is not None or env.get(START_ENV) == "spawn":
        return spawn(env, stderr, command)
    server_env = {k: v for k, v in env.items() if k != MARK}
    server = None
    try:
        server = _server(modules, server_env, deadline)  # LaunchTimeout propagates: the trial timed out
        return server.fork(env, stderr, deadline)
    except OSError as exc:
        log.warning("fork server failed (%s); spawning this trial", str(exc)[:300])
        if server is not None:
            _discard(server)
        return spawn(env, stderr)
