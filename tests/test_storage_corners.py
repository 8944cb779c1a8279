"""Storage corners: a file that is not a database, a read-only directory, a disk that fills
mid-study. Each gives one clear line (no traceback, no retry window claimed) and loses nothing
measured. (PostgreSQL killed and restarted mid-trial: tests/test_postgres.py.)

The read-only and full filesystems are real: small tmpfs mounts, which need root (as CI runs);
elsewhere these two tests skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from conftest import fault_spec, run_cli, write_spec
from optuna.trial import TrialState

HB = {"HPO_INFER_HEARTBEAT_S": "1", "HPO_INFER_GRACE_S": "2", "HPO_INFER_DB_RETRY_S": "2"}


def _one_error_line(res: subprocess.CompletedProcess, start: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("hpo-infer:")]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith(start), lines[0]
    assert "retried for" not in lines[0], "no retry happened: none may be claimed"
    return lines[0]


@contextlib.contextmanager
def _tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    path.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True)
    if got.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must be able to mount a tmpfs: {got.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


@pytest.mark.parametrize("content", [os.urandom(4096), b"hello, not a database\n" * 40])
def test_a_file_that_is_not_a_database_is_one_line_and_left_as_it_was(tmp_path: Path, content: bytes) -> None:
    spec = write_spec(tmp_path, fault_spec(budget={"trials": 2}))
    db = tmp_path / "junk.db"
    db.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_cli("tune", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path, env=HB)
    assert res.returncode == 1
    line = _one_error_line(res, f"hpo-infer: storage error: cannot open sqlite:///{db}")
    assert "file is not a database" in line
    assert db.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written beside it"


def test_a_read_only_directory_is_one_line_and_the_study_in_it_still_reads(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, fault_spec(budget={"trials": 2}))
    with _tmpfs(tmp_path / "ro", 4096) as ro:
        url = f"sqlite:///{ro / 's.db'}"
        assert run_cli("tune", str(spec), "--storage", url, cwd=tmp_path, env=HB).returncode == 0
        _remount(ro, "ro")
        more = write_spec(tmp_path, fault_spec(budget={"trials": 4}), "more.yaml")
        res = run_cli("tune", str(more), "--storage", url, cwd=tmp_path, env=HB)
        assert res.returncode == 1
        line = _one_error_line(res, "hpo-infer: storage error:")
        assert "read-only file system" in line.lower() or "readonly database" in line.lower(), line
        res = run_cli("tune", str(spec), "--storage", f"sqlite:///{ro / 'new.db'}", cwd=tmp_path, env=HB)
        assert res.returncode == 1
        assert "read-only file system" in _one_error_line(res, "hpo-infer: storage error:").lower()
        # What was measured is still there, and read-only commands read it.
        assert [t.state for t in _trials(url)] == [TrialState.COMPLETE] * 2
        res = run_cli("studies", "--storage", url, cwd=tmp_path)
        assert res.returncode == 0 and "fault:" in res.stdout, res.stderr


def test_a_disk_that_fills_mid_study_stops_in_one_line_that_keeps_the_measurement(tmp_path: Path) -> None:
    """The filesystem fills while trials are written: the agent stops with one line that carries
    what the trial in hand measured; the trials stored before are intact, and once there is room
    the same command finishes the study."""
    spec = write_spec(tmp_path, fault_spec(budget={"trials": 8}, fixed={"pass_s": 0.005}, repeats=2))
    template = tmp_path / "schema.db"
    assert run_cli("db", "upgrade", "--storage", f"sqlite:///{template}").returncode == 0
    size_kib = template.stat().st_size // 1024 + 32  # the schema and room for a few trials
    with _tmpfs(tmp_path / "small", size_kib) as small:
        db = small / "s.db"
        db.write_bytes(template.read_bytes())
        url = f"sqlite:///{db}"
        res = run_cli("tune", str(spec), "--storage", url, cwd=tmp_path, env=HB, timeout=300)
        assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
        line = _one_error_line(res, "hpo-infer: storage error: the storage refused a write:")
        assert "disk is full" in line or "no space left" in line.lower(), line
        stored = [t for t in _trials(url) if t.state == TrialState.COMPLETE]
        assert 2 <= len(stored) < 8, "the disk filled neither too early nor never"
        if "measured" in line:  # the trial in hand had finished measuring: its value is in the line
            assert " tok/s (repeats " in line and "not stored" in line
        _remount(small, f"size={size_kib * 8}k")
        res = run_cli("tune", str(spec), "--storage", url, cwd=tmp_path, env=HB, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        trials = _trials(url)
        assert [t.number for t in stored] == [t.number for t in trials[: len(stored)]]
        assert all(trials[t.number].value == t.value for t in stored), "a stored measurement changed"
        assert not {TrialState.RUNNING, TrialState.WAITING} & {t.state for t in trials}
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 8, "the refused trial spent no budget"
