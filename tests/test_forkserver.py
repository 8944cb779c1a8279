"""Forked trials keep the isolation of spawned ones: a crash, a hang, an out-of-memory and an
outside SIGKILL each end only their trial's process tree; one pre-imported server serves every
trial of an agent and survives them all; nothing is left behind. Real processes throughout (the
fault engine fakes the failures, on purpose).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import psutil
import pytest
from conftest import tagged

from hpo_infer.measurement.protocol import REPEAT, TrialRequest
from hpo_infer.trial import launcher
from hpo_infer.trial.process import NAME
from hpo_infer.trial.runner import COMPLETE, FAILED_S, INFEASIBLE_S, TIMEOUT, run_worker


def _request(**params: Any) -> TrialRequest:
    return TrialRequest(
        measurement={},
        engine="fault",
        params={"pass_s": 0.01, **params},
        model={"synthetic": "tiny-llama"},
        workload={"kind": "synthetic", "prompts": 4, "input_tokens": 4, "output_tokens": 4},
        repeats=2,
        seed=0,
    )


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch):
    """A tag in the environment every trial process (and its server) inherits; servers closed after."""
    t = uuid.uuid4().hex
    monkeypatch.setenv("HPO_TEST_TAG", t)
    monkeypatch.delenv(launcher.START_ENV, raising=False)
    launcher.close_all()  # servers earlier tests of this process left (the HF engine's) are not ours
    yield t
    launcher.close_all()


def _servers() -> list[int]:
    return [s.proc.pid for s in launcher._SERVERS.values() if s.alive()]


def _left(tag: str) -> list[str]:
    """What the tag's processes are, apart from the servers: nothing once a trial has ended."""
    time.sleep(0.2)
    servers = set(_servers())
    return [f"{p.pid} {p.name()}" for p in tagged(tag) if p.pid not in servers]


def _trial_pid(seen: list[int]) -> Any:
    """An on_event that notes the trial process (the server's child named hpo-trial)."""

    def on_event(ev: Any) -> bool:
        if not seen:
            (server,) = _servers()
            seen.extend(p.pid for p in psutil.Process(server).children() if p.name() == NAME)
        return True

    return on_event


def test_one_server_forks_every_trial_and_each_failure_ends_only_its_trial(tag: str) -> None:
    pids: list[int] = []
    ok = run_worker(_request(x=24), 30, _trial_pid(pids))
    assert ok.status == COMPLETE and ok.first.value and ok.first.value > 0, ok.error
    (server,) = _servers()
    assert len(pids) == 1 and psutil.Process(server).name() != NAME  # forked by the server, named for ps
    assert ok.imports_s is not None and ok.exit_s is not None
    assert _left(tag) == []

    crash = run_worker(_request(mode="crash_mid"), 30)
    assert crash.status == FAILED_S and crash.returncode == 4, crash.error
    oom = run_worker(_request(mode="oom"), 30)
    assert oom.status == INFEASIBLE_S and "out of memory" in (oom.first.reason or "")
    t0 = time.monotonic()
    hang = run_worker(_request(mode="hang"), 3)
    assert hang.status == TIMEOUT and time.monotonic() - t0 < 30
    orphan = run_worker(_request(mode="spawn_child"), 30)  # a daemonised grandchild: killed with its trial
    assert orphan.status == COMPLETE, orphan.error
    assert _left(tag) == []

    again: list[int] = []
    last = run_worker(_request(x=24), 30, _trial_pid(again))
    assert last.status == COMPLETE and last.first.value == pytest.approx(ok.first.value, rel=0.2)
    assert _servers() == [server] and again and again != pids  # the same server, a new child
    assert _left(tag) == []


def test_an_outside_sigkill_ends_the_trial_and_its_orphans_not_the_server(tag: str) -> None:
    """As the OOM killer does: SIGKILL to the trial process mid-measurement, after it started a
    daemonised grandchild. The grandchild re-parents to the server, which kills it."""
    run_worker(_request(), 30)  # the server is up
    (server,) = _servers()
    killed: list[int] = []

    def on_event(ev: Any) -> bool:
        if ev.kind == REPEAT and not killed:
            (child,) = [p for p in psutil.Process(server).children() if p.name() == NAME]
            killed.append(child.pid)
            os.kill(child.pid, signal.SIGKILL)
        return True

    out = run_worker(_request(mode="spawn_child", pass_s=0.5), 30, on_event)
    assert killed and out.status == FAILED_S and out.returncode == -signal.SIGKILL
    assert "SIGKILL" in (out.error or "")
    assert _left(tag) == []
    assert _servers() == [server]
    assert run_worker(_request(x=24), 30).status == COMPLETE


def test_spawn_is_kept_on_request(tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(launcher.START_ENV, "spawn")
    parents: list[int] = []

    def on_event(ev: Any) -> bool:
        # By tag, not as this process's children: in the full suite, this process (a subreaper
        # since its first in-process trial) also holds zombie trial processes of killed agents.
        if not parents:
            parents.extend(p.ppid() for p in tagged(tag) if p.name() == NAME)
        return True

    out = run_worker(_request(x=24), 30, on_event)
    assert out.status == COMPLETE and parents == [os.getpid()]
    assert _servers() == []


def _kill_agent_mid_trial(tag: str) -> list[str]:
    """Start an agent whose trial daemonises a grandchild, SIGKILL the agent mid-trial, and
    return what of it is still there once the server had time to clean up."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_forkserver import _request\n"
        "from hpo_infer.trial.runner import run_worker\n"
        "run_worker(_request(mode='spawn_child', pass_s=600), 900)\n"
    ) % os.path.dirname(__file__)
    agent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(tagged(tag)) < 4:  # agent, server, trial, grandchild
        time.sleep(0.05)
    assert any(p.name() == NAME for p in tagged(tag)), "the trial never started"
    agent.kill()
    agent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and tagged(tag):
        time.sleep(0.2)
    left = []
    for p in tagged(tag):
        with contextlib.suppress(psutil.Error):
            left.append(f"{p.name()} {p.status()}")
            p.kill()
    return left


def test_a_killed_agent_takes_its_server_and_trial_with_it(tag: str) -> None:
    """SIGKILL to the agent mid-trial: no trial process, server or grandchild survives it."""
    assert _kill_agent_mid_trial(tag) == []


def test_a_killed_agent_leaves_nothing_frozen_on_a_busy_machine(tag: str) -> None:
    """The agent's socket closes a moment before the kernel sends the server its parent-death
    signal, and the server, woken by it, is by then freezing its trial (SIGSTOP) to kill it. With
    SIGKILL as that signal, a busy machine (CI) left the trial stopped for good and its grandchild
    alive: 2 rounds of 20 here with three CPU burners. The server now takes SIGTERM, blocked
    while it shuts down (0 of 40)."""
    env = {k: v for k, v in os.environ.items() if k != "HPO_TEST_TAG"}  # not counted as the agent's
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env) for _ in range(3)]
    try:
        left = [_kill_agent_mid_trial(tag) for _ in range(8)]
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert all(round_left == [] for round_left in left), left
