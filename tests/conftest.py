"""Shared test helpers: run the real CLI in a subprocess, write specs, inspect storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    import optuna
    import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"


def run_cli(
    *args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``hpo-infer ARGS`` as a user would, through the installed interpreter."""
    e = dict(os.environ)
    e.pop("HPO_INFER_STORAGE", None)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hpo_infer", *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout
    )


def tagged(tag: str) -> list:
    """Processes whose environment carries HPO_TEST_TAG=tag: whatever a test run left behind."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("HPO_TEST_TAG") == tag:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def trial_processes(root: "psutil.Process") -> list:
    """The trial processes below ``root`` (an agent): named hpo-trial, forked by a fork server
    or spawned; not their own descendants (a forked engine core inherits the name)."""
    import psutil

    from hpo_infer.trial.process import NAME

    try:
        below = root.children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in below:
        try:
            if p.name() == NAME and psutil.Process(p.ppid()).name() != NAME:
                out.append(p)
        except psutil.Error:
            continue
    return out


def add_trial(study: "optuna.Study", state: "optuna.trial.TrialState", x: int, **attrs: Any) -> None:
    """A finished trial at ``x`` (value x when complete) with these user attrs (``system_attrs``
    apart), for tests of what is counted from a study's trials."""
    import optuna

    system = attrs.pop("system_attrs", {})
    study.add_trial(
        optuna.create_trial(
            state=state,
            params={"x": x},
            distributions={"x": optuna.distributions.IntDistribution(1, 64)},
            value=float(x) if state == optuna.trial.TrialState.COMPLETE else None,
            user_attrs=attrs,
            system_attrs=system,
        )
    )


def add_feasible_trials(
    study: "optuna.Study",
    rows: list[tuple[dict[str, Any], float | list[float], dict[str, Any]]],
    dists: dict[str, Any],
    fixed: dict[str, Any] | None = None,
) -> None:
    """Completed, feasible trials made by hand, a row each: (params, value or values, user attrs).
    A trial ran with ``fixed`` plus its params (its ``settings``), for tests of which trials the
    finalists are."""
    import optuna

    from hpo_infer.study.trials import CONSTRAINT

    fixed = fixed or {}
    for params, value, attrs in rows:
        study.add_trial(
            optuna.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                values=value if isinstance(value, list) else [value],
                user_attrs={"settings": {**fixed, **params}, "fixed": dict(fixed), **attrs},
                constraints={CONSTRAINT: 0.0},
            )
        )


def fault_spec(**over: Any) -> dict[str, Any]:
    """A fast spec on the fault engine (no torch), for agent/runner/sampler tests."""
    spec: dict[str, Any] = {
        "engine": "fault",
        "model": {"synthetic": "tiny-llama"},
        "workload": {"kind": "synthetic", "prompts": 4, "input_tokens": 4, "output_tokens": 4},
        "search_space": {"x": {"type": "int", "low": 1, "high": 64}, "y": {"type": "int", "low": 1, "high": 4}},
        "fixed": {"pass_s": 0.01},
        "sampler": {"name": "tpe", "seed": 0},
        "budget": {"trials": 6},
        "trial_timeout_s": 30,
        "repeats": 2,
        "validate_finalists": False,
    }
    for k, v in over.items():
        spec[k] = v
    return spec


def write_spec(tmp_path: Path, spec: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return p


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA


# ---- PostgreSQL, started by the test run itself (tests/pg.py) ---------------------------------
@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the session; each test gets its own database."""
    from pg import PgServer, find_bin

    if find_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries missing in CI: scripts/install-dev.sh installs them")
        pytest.skip("PostgreSQL server binaries not found (scripts/install-dev.sh installs them)")
    srv = PgServer().start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server; the URL carries a password."""
    import uuid

    return pg_server.create_db("t_" + uuid.uuid4().hex[:12])
