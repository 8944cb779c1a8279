"""A pre-imported parent that forks one trial process per request: ``python -m hpo_infer.trial.forkserver``.

Spawning ``python -m hpo_infer.trial.process`` for each trial re-imports torch, transformers and
vLLM every time (5 s on this CPU, 26 s with vLLM on an H200). The fork server imports them once
per agent and engine, with no CUDA touched, then forks a child per trial. The child is the same
trial process as a spawned one (:func:`hpo_infer.trial.process.entry`): its own session, the
agent's stdin/stdout/log pipes, the trial's environment, and its own tree killed when it ends.
So a crash, an out-of-memory or a hang still ends only that trial's process tree.

Wire: the agent and the server share a ``SOCK_SEQPACKET`` socket. A request is one JSON message
``{"env": {...}}`` with four file descriptors (SCM_RIGHTS): the child's stdin, stdout, stderr and
an answer socket. On that answer socket the server writes ``{"pid": N}`` once forked and
``{"rc": N}`` once the child is reaped and the orphans it left (they re-parent to the server, a
subreaper) are killed. Several agents of one process may share a server: children run at once.
The server ends when the agent closes its socket or the agent process is gone (its parent-death
signal; it also checks its parent every second).

The parent-death signal is SIGTERM, handled, not SIGKILL: an agent killed outright closes its
socket a moment before the kernel sends that signal, and the server, woken by the closed socket,
is by then freezing its children (SIGSTOP) to kill them. A SIGKILL landing between the freeze and
the kill left a trial stopped for good with its grandchild alive (CI, the SIGKILLed-agent test).
So SIGTERM only asks the server to shut down, and is blocked while it does.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from hpo_infer.trial.tree import MARK, PR_SET_PDEATHSIG, become_subreaper, kill_marked, kill_tree, prctl

MAX_MESSAGE = 1 << 20  # a request carries the trial's environment
PARENT_POLL_S = 1.0  # how often the server checks that its agent is still there


def preload(modules: list[str]) -> list[str]:
    """Import ``module`` or ``module:attr`` (a lazy attribute such as ``vllm:LLM``); the ones that
    failed, with why (the trial's own import then fails and says so in its log)."""
    failed = []
    for name in modules:
        mod, _, attr = name.partition(":")
        try:
            m = importlib.import_module(mod)
            if attr:
                getattr(m, attr)
        except Exception as exc:  # noqa: BLE001 - a missing optional engine must not stop the others
            failed.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
    return failed


def _threads() -> int:
    """OS threads of this process: forking is only safe with one."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class Server:
    """The server's side: its socket, its wake-up pipe for SIGCHLD, and the children it runs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parent = os.getppid()
        self.live: dict[int, tuple[socket.socket, str]] = {}  # pid -> (answer socket, trial mark)
        self.stopping = False  # set by SIGTERM: the agent is gone (parent-death signal) or asks
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd is written
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def loop(self) -> None:
        while not self.stopping and os.getppid() == self.parent:
            ready, _, _ = select.select([self.sock, self.wake_r], [], [], PARENT_POLL_S)
            if self.wake_r in ready:
                while _drain(self.wake_r):
                    pass
            self.reap()
            if self.sock in ready and not self.take():
                break
        self.shutdown()

    def take(self) -> bool:
        """Fork a child for the next request; False when the agent has closed the socket."""
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
        except OSError:
            return False
        if not msg:
            return False
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            return True
        env = json.loads(msg)["env"]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.child(env, fds)
        for fd in fds[:3]:
            os.close(fd)
        answer = socket.socket(fileno=fds[3])
        self.live[pid] = (answer, env.get(MARK, ""))
        _send(answer, {"pid": pid})
        return True

    def child(self, env: dict[str, str], fds: list[int]) -> None:
        """In the forked child: become the trial process; never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            self.sock.close()
            for answer, _ in self.live.values():
                answer.close()
            os.setsid()
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            for fd in fds:
                os.close(fd)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the trial's stdin, for its lifetime
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            os.environ.clear()
            os.environ.update(env)
            gc.unfreeze()
            from hpo_infer.trial.process import entry

            code = entry()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the log says why; the exit status says it failed
            traceback.print_exc()
        finally:
            os._exit(code)

    def reap(self) -> None:
        """Collect ended children; kill what each left behind, then tell its agent the status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.live:
                continue  # an orphan of a trial, re-parented here and now ended
            answer, mark = self.live.pop(pid)
            if mark:
                kill_marked(mark)
            _send(answer, {"rc": os.waitstatus_to_exitcode(status)})
            answer.close()

    def shutdown(self) -> None:
        """Kill every child's tree; no signal may stop this half-way (a frozen tree would stay)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        for pid in list(self.live):
            kill_tree(pid)
        kill_tree(os.getpid(), include_root=False)
        self.reap()


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _send(sock: socket.socket, data: dict[str, Any]) -> None:
    try:
        sock.sendall((json.dumps(data) + "\n").encode())
    except OSError:
        pass  # the agent gave up on this trial; nothing waits for the answer


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    parent = os.getppid()
    # The agent gone: SIGTERM. Until Server handles it (no child yet), it simply ends the server.
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return 1
    become_subreaper()
    failed = preload(argv[1:])
    gc.collect()
    gc.freeze()  # the imported heap stays shared with the children (no copy-on-write from the GC)
    threads = _threads()
    if threads > 1:
        sys.stderr.write(f"fork server: {threads} threads after the imports; forking anyway\n")
    sock.send(json.dumps({"ready": True, "failed": failed, "threads": threads}).encode())
    Server(sock).loop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
