"""Trial runner: starts a trial process (:mod:`~hpo_infer.trial.launcher`) and follows its JSON-line protocol.

The worker runs in its own process session (so a Ctrl-C on the terminal does not reach it
directly), with ``CUDA_VISIBLE_DEVICES`` pinned to the agent's GPUs and a hard timeout. When
the trial ends for any reason, the worker's whole process tree is killed — never anything
else on the machine (no ``pkill -f vllm``).
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from hpo_infer.measurement.protocol import ENV, FAILED, INFEASIBLE, REPEAT, RESULT, STARTED, Event, TrialRequest
from hpo_infer.measurement.result import EngineResult
from hpo_infer.trial import launcher
from hpo_infer.trial.tree import MARK, become_subreaper, kill_marked, kill_tree

# Outcome statuses.
COMPLETE = "complete"
INFEASIBLE_S = "infeasible"
FAILED_S = "failed"
TIMEOUT = "timeout"
STOPPED = "stopped"  # pruned by the agent or interrupted by a signal
STOP_GRACE_S = 2.0  # how long a worker killed by a signal waits for the agent's own stop flag

LOG_TAIL_LINES = 40


@dataclass
class ConfigResult:
    status: str = FAILED_S
    value: float | None = None
    spread: dict[str, float] = field(default_factory=dict)
    repeats: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    start_s: float | None = None
    resolved: dict[str, Any] = field(default_factory=dict)
    peak_mem_bytes: int | None = None
    warmup_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # latencies etc. that objective.slo may bound
    cache_flag: str | None = None  # a timed pass served by the prefix cache beyond the workload's own prefixes
    reason: str | None = None
    error: str | None = None
    reached: bool = False  # the worker got to this config (sent any event for it)

    def complete(self, res: EngineResult) -> None:
        """Take the engine's result. ``start_s`` and ``resolved`` came with the ``started`` event: the
        result replaces start_s and adds to resolved only where it carries them."""
        self.status = COMPLETE
        self.value = res.value
        self.spread = res.spread
        self.repeats = res.repeats
        self.peak_mem_bytes = res.peak_mem_bytes
        self.warmup_s = res.warmup_s
        self.metrics = res.metrics
        self.cache_flag = res.cache_flag
        if res.start_s is not None:
            self.start_s = res.start_s
        if res.resolved:
            self.resolved = {**self.resolved, **res.resolved}


@dataclass
class Outcome:
    """What one worker session produced: one ConfigResult per configuration measured."""

    status: str
    configs: list[ConfigResult]
    env: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    returncode: int | None = None
    error: str | None = None
    log_tail: str = ""
    # Seconds from the launch to the worker's first event (its imports and engine load: Python,
    # torch, vLLM), and from its last measurement event to its end (engine shutdown, exit).
    imports_s: float | None = None
    exit_s: float | None = None

    @property
    def first(self) -> ConfigResult:
        return self.configs[0]

    def only(self, i: int) -> "Outcome":
        """Config ``i`` as if it had been measured alone (one trial of a shared-engine pack): its
        own status where it ended, else the session's (timeout, stop); the wall time shared out."""
        r = self.configs[i]
        status = r.status if r.status in (COMPLETE, INFEASIBLE_S) else self.status
        wall = self.wall_s / len(self.configs)
        share = len(self.configs)
        return Outcome(
            status,
            [r],
            self.env,
            wall,
            self.returncode,
            r.error or self.error,
            self.log_tail,
            None if self.imports_s is None else self.imports_s / share,
            None if self.exit_s is None else self.exit_s / share,
        )


def worker_env(gpus: list[int] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    return env


def preload_modules(engine: str) -> list[str]:
    """What the fork server imports for ``engine`` (the engine's own module is import-light)."""
    from hpo_infer.engines import engine_class

    return list(engine_class(engine).preload_modules())


def run_worker(
    request: TrialRequest,
    timeout_s: float,
    on_event: Callable[[Event], bool] | None = None,
    gpus: list[int] | None = None,
    stop: threading.Event | None = None,
    command: list[str] | None = None,
) -> Outcome:
    """Run one worker to completion, timeout, or until ``on_event`` returns False / ``stop`` is set."""
    n_configs = max(1, len(request.configs))
    results = [ConfigResult() for _ in range(n_configs)]
    env_fp: dict[str, Any] = {}
    log = tempfile.TemporaryFile(mode="w+b")
    t0 = time.monotonic()
    become_subreaper()  # a worker killed from outside lets its orphans go: to us, not to init
    mark = uuid.uuid4().hex
    try:
        proc = launcher.launch(
            preload_modules(request.engine), {**worker_env(gpus), MARK: mark}, log, t0 + timeout_s, command
        )
    except launcher.LaunchTimeout as exc:
        log.close()
        results[0].error = f"worker timed out after {timeout_s:g} s: {exc}"
        return Outcome(TIMEOUT, results, {}, time.monotonic() - t0, None, results[0].error)
    lines: queue.Queue[bytes | None] = queue.Queue()
    garbage: collections.deque[str] = collections.deque(maxlen=10)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(request.to_json().encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass

    status: str | None = None
    deadline = t0 + timeout_s
    eof = False
    first_event: float | None = None  # when the worker sent its first event (imports done)
    last_answer: float | None = None  # when it sent its last result, infeasible or failed event
    while not eof:
        if stop is not None and stop.is_set():
            status = STOPPED
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = TIMEOUT
            break
        try:
            raw = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if raw is None:
            eof = True
            break
        ev = Event.from_line(raw.decode("utf-8", "replace"))
        if ev is None:
            garbage.append(raw.decode("utf-8", "replace").rstrip()[:300])
            continue
        now = time.monotonic()
        if first_event is None:
            first_event = now
        if ev.kind in (RESULT, INFEASIBLE, FAILED):
            last_answer = now
        _apply(ev, results, env_fp)
        if on_event is not None and on_event(ev) is False:
            status = STOPPED
            break

    if eof:
        try:
            proc.wait(timeout=max(5.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = TIMEOUT
    kill_tree(proc.pid)
    proc.wait()
    kill_marked(mark)  # orphans of a worker that died first (they re-parented to us)
    answered = all(r.status in (COMPLETE, INFEASIBLE_S) for r in results)  # every config has its result
    if status is None and stop is not None and not answered and _by_signal(proc.returncode) and stop.wait(STOP_GRACE_S):
        # A signal to the whole job (scancel, a pod eviction, Ctrl-C in a terminal) reaches the
        # worker and the agent at once, and the worker's end is often seen first: the trial was
        # interrupted, not failed (7 of 7 scancels once lost their running trial that way).
        status = STOPPED
    end = time.monotonic()
    wall = end - t0
    log.seek(0)
    tail_lines = log.read().decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
    log.close()
    if garbage:
        tail_lines.append("[non-protocol stdout] " + " | ".join(garbage))
    tail = "\n".join(tail_lines)

    if status is None:
        if answered:
            status = COMPLETE if any(r.status == COMPLETE for r in results) else INFEASIBLE_S
        else:
            status = FAILED_S
    error = None
    if status == TIMEOUT:
        error = f"worker timed out after {timeout_s:g} s"
    elif status == FAILED_S:
        errs = [r.error for r in results if r.error]
        error = errs[0] if errs else _exit_reason(proc.returncode, tail_lines)
    for r in results:
        if r.status == FAILED_S and r.error is None:
            r.error = error
    imports_s = None if first_event is None else round(first_event - t0, 3)
    exit_s = None if last_answer is None or status != COMPLETE else round(end - last_answer, 3)
    return Outcome(status, results, env_fp, wall, proc.returncode, error, tail, imports_s, exit_s)


def _by_signal(rc: int | None) -> bool:
    """Ended by a signal: killed (rc < 0), or exited from its SIGTERM/SIGINT/SIGHUP handler (128 + n)."""
    return rc is not None and (rc < 0 or rc - 128 in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))


def _exit_reason(rc: int | None, tail: list[str]) -> str:
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        why = f"worker killed by {name}"
    else:
        why = f"worker exited with code {rc} before reporting a result"
    last = next((ln for ln in reversed(tail) if ln.strip()), "")
    return f"{why}: {last[:300]}" if last else why


def _apply(ev: Event, results: list[ConfigResult], env_fp: dict[str, Any]) -> None:
    if ev.kind == ENV:
        env_fp.update(ev.data)
        return
    i = int(ev.data.get("config", 0))
    if not 0 <= i < len(results):
        return
    r = results[i]
    r.reached = True
    d = ev.data
    if ev.kind == STARTED:
        r.start_s = d.get("start_s")
        r.resolved = d.get("resolved") or {}
    elif ev.kind == REPEAT:
        r.windows.append({k: d.get(k) for k in ("repeat", "tokens", "seconds", "tok_s", "cycles", "cache", "windows")})
    elif ev.kind == RESULT:
        r.complete(EngineResult.from_dict(d))
    elif ev.kind == INFEASIBLE:
        r.status = INFEASIBLE_S
        r.reason = d.get("reason")
        r.error = d.get("error")
    elif ev.kind == FAILED:
        r.status = FAILED_S
        r.error = d.get("error")
