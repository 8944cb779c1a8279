"""optuna-dashboard on a real study, loaded in headless Chromium (Debian's), notes included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import fault_spec, run_cli, tagged, write_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def dashboard(tmp_path: Path):
    spec = write_spec(
        tmp_path,
        fault_spec(
            budget={"trials": 4},
            search_space={
                "x": {"type": "int", "low": 1, "high": 64},
                "mode": {"type": "categorical", "choices": ["ok", "oom"]},
            },
            sampler={"name": "random", "seed": 5},
        ),
    )
    db = tmp_path / "s.db"
    res = run_cli("tune", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    port = _free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo_infer", "dashboard", "--storage", f"sqlite:///{db}", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                _get(f"{base}/api/studies")
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail((tmp_path / "dashboard.log").read_text())
        yield base, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_dashboard_serves_the_study_with_notes_on_loopback(dashboard) -> None:
    base, proc = dashboard
    studies = _get(f"{base}/api/studies")["study_summaries"]
    assert len(studies) == 1
    name = studies[0]["study_name"]
    assert name.startswith("fault:")
    detail = _get(f"{base}/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 4
    notes = [t["note"]["body"] for t in detail["trials"]]
    assert all(n.startswith("## Trial") for n in notes), notes
    ok = [n for n in notes if ": ok" in n.splitlines()[0]]
    assert ok and all("tok/s" in n and "engine start" in n for n in ok)
    infeasible = [n for n in notes if "infeasible" in n.splitlines()[0]]
    assert all("out of memory" in n for n in infeasible)
    assert "engine" in detail["note"]["body"]
    assert detail["objective_names"] == ["output tokens/s"]  # what the value is, not "Objective 0"
    # Bound to loopback only.
    kids = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    addrs = {c.laddr.ip for p in kids for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert addrs == {"127.0.0.1"}


def test_dashboard_in_headless_chromium(dashboard, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must install Debian's chromium")
        pytest.skip("chromium is not installed")
    base, _ = dashboard
    study = _get(f"{base}/api/studies")["study_summaries"][0]
    url = f"{base}/dashboard/studies/{study['study_id']}/trials"
    profile = tempfile.mkdtemp()
    try:
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        # The study's overview (its history plot) names the value by the study's metric name.
        overview = subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                url.removesuffix("/trials"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        shot = tmp_path / "trials.png"
        subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--window-size=1400,1000",
                f"--screenshot={shot}",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert study["study_name"] in dom
    assert "4 Trials" in dom
    assert "output tokens/s" in overview
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = Path(os.environ.get("HPO_TEST_ARTIFACTS", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "dashboard-trials.png")


def test_dashboard_help_warns_about_authentication() -> None:
    res = run_cli("dashboard", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "NO authentication" in text and "127.0.0.1" in text


@pytest.mark.postgres
def test_dashboard_keeps_the_password_out_of_every_command_line_and_sigterm_ends_it(pg_url: str) -> None:
    """optuna-dashboard runs inside ``hpo-infer dashboard``: no child whose argv ``ps`` shows with
    the password, and a SIGTERM to the command alone (docker stop, systemd) leaves nothing behind."""
    from urllib.parse import urlparse

    password = urlparse(pg_url).password
    assert password
    tag = uuid.uuid4().hex
    port = _free_port()
    env = {**os.environ, "HPO_INFER_STORAGE": pg_url, "HPO_TEST_TAG": tag}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo_infer", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(300):
            try:
                assert _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"] == []
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the dashboard never answered")
        mine = tagged(tag)
        assert [p.pid for p in mine] == [proc.pid], "optuna-dashboard runs in the command's own process"
        leaks = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if password in " ".join(p.info["cmdline"] or []):
                leaks.append(p.info)
        assert not leaks, "the password is on a command line"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read() if proc.stdout else ""
    assert rc == 0, out
    assert password not in out and "Traceback" not in out
    assert not tagged(tag), "processes left behind"
