"""Storage unreachable at start: `tune` waits with backoff, then says so in one line (password
masked); a quick command fails at once."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import fault_spec, run_cli, write_spec


def test_unreachable_storage_at_start(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, fault_spec())
    url = "postgresql://tuner:hunter2-secret@127.0.0.1:1/hpo"
    t0 = time.monotonic()
    res = run_cli("tune", str(spec), "--storage", url, cwd=tmp_path, env={"HPO_INFER_DB_RETRY_S": "4"})
    took = time.monotonic() - t0
    assert res.returncode == 1
    assert "retrying for up to 4 s" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "hpo-infer: storage error: cannot open postgresql://tuner:***@127.0.0.1:1/hpo (retried for 4 s)"
    )
    assert "hunter2-secret" not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert 3.5 < took < 60
    quick = run_cli("studies", "--storage", url, cwd=tmp_path, env={"HPO_INFER_DB_RETRY_S": "30"})
    assert quick.returncode == 1 and "retried" not in quick.stderr
    assert len(quick.stderr.strip().splitlines()) == 1
