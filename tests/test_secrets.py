"""A planted storage password must appear nowhere: not in any command's output, log, trial
attribute, dashboard note, export, report file, or row of any table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import fault_spec, run_cli, write_spec
from test_postgres import db_text


@pytest.mark.postgres
def test_planted_password_leaks_nowhere(tmp_path: Path, pg_url: str, pg_server: Any) -> None:
    secret = pg_server.password
    assert secret in pg_url
    spec = fault_spec(
        budget={"trials": 5},
        validate_finalists=True,
        search_space={
            "x": {"type": "int", "low": 1, "high": 64},
            "mode": {"type": "categorical", "choices": ["ok", "oom", "crash_mid"]},
        },
        sampler={"name": "random", "seed": 4},
    )
    path = write_spec(tmp_path, spec)
    outputs: list[str] = []

    def cli(*args: str, ok: bool = True, env: dict[str, str] | None = None) -> None:
        res = run_cli(*args, cwd=tmp_path, env=env)
        outputs.append(res.stdout + res.stderr)
        if ok:
            assert res.returncode == 0, (args, res.stderr[-2000:])

    cli("db", "upgrade", "--storage", pg_url)
    cli("tune", str(path), "--storage", pg_url)
    cli("tune", str(path), env={"HPO_INFER_STORAGE": pg_url})  # the variable form too
    cli("db", "current", "--storage", pg_url)
    cli("studies", "--storage", pg_url)
    cli("compare", "--storage", pg_url)
    cli("compare", "--json", "--storage", pg_url)
    for fmt in ("yaml", "json"):
        cli("export", str(path), "--storage", pg_url, "--format", fmt, "--out", str(tmp_path / f"best.{fmt}"))
    cli("report", str(path), "--storage", pg_url, "--out", str(tmp_path / "report"))
    cli("doctor", "--engine", "hf", "--storage", pg_url, ok=False)
    # Errors that carry the URL: a wrong database name, an unreachable port.
    bad_db = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    cli("studies", "--storage", bad_db, ok=False)
    unreachable = pg_url.replace(f":{pg_server.port}/", ":1/")
    cli("studies", "--storage", unreachable, ok=False, env={"HPO_INFER_DB_RETRY_S": "1"})

    assert "***" in "".join(outputs), "the masked URL is shown where the URL is"
    for out in outputs:
        assert secret not in out
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    everything = db_text(pg_url)  # trial user attrs, dashboard notes (study system attrs), our tables
    assert "## Trial" in everything and "tok/s" in everything
    assert secret not in everything
