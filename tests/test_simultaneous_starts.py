"""Many agents started at once on a fresh storage: none crashes, the budget holds, and each agent
draws its own start-up points.

Before the schema was created under a lock, 3 of 8 ``tune`` started together on a new SQLite
file died with ``UNIQUE constraint failed: alembic_version.version_num`` (optuna issue #1092),
under a message that claimed 120 s of retries that never happened. And every agent built its
sampler with one seed, so agents that started together proposed the same points.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import fault_spec, write_spec
from optuna.trial import TrialState

from hpo_infer.study.trials import BASELINE, ROLE

N = 8


def _start_together(spec: Path, storage: str, n: int) -> list[subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_INFER_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpo_infer", "tune", str(spec), "--storage", storage],
            cwd=spec.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=400)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _study(storage: str) -> optuna.Study:
    from hpo_infer.storage_url import normalise

    url = normalise(storage)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def _check(results: list[subprocess.CompletedProcess], storage: str, budget: int) -> None:
    crashed = [(r.returncode, r.stderr[-500:]) for r in results if r.returncode != 0]
    assert not crashed, crashed
    assert all("Traceback" not in r.stderr for r in results)
    study = _study(storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == budget, states
    assert not {TrialState.RUNNING, TrialState.WAITING} & set(states)
    assert sum(1 for t in study.trials if t.user_attrs.get(ROLE) == BASELINE) == 1


def _spec(tmp_path: Path, **over) -> Path:
    spec = fault_spec(
        budget={"trials": N},
        search_space={"x": {"type": "int", "low": 1, "high": 1024}, "peak": {"type": "float", "low": 1e2, "high": 1e4}},
        sampler={"name": "random", "seed": 0},
        **over,
    )
    return write_spec(tmp_path, spec)


def test_eight_tunes_at_once_on_a_fresh_sqlite_file_none_crashes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'fresh.db'}"
    _check(_start_together(_spec(tmp_path), storage, N), storage, N)


@pytest.mark.postgres
def test_eight_tunes_at_once_on_a_fresh_postgres_without_db_upgrade_none_crashes(tmp_path: Path, pg_url: str) -> None:
    _check(_start_together(_spec(tmp_path), pg_url, N), pg_url, N)


def test_agents_that_start_together_measure_distinct_settings(tmp_path: Path) -> None:
    """Two agents, one seeded sampler, a continuous space: with one seed they proposed the same
    points; with a component per load of the study, every measured setting is new."""
    storage = f"sqlite:///{tmp_path / 'two.db'}"
    _check(_start_together(_spec(tmp_path, fixed={"pass_s": 0.05}), storage, 2), storage, N)
    study = _study(storage)
    sampled = [t for t in study.trials if t.user_attrs.get(ROLE) != BASELINE]
    assert not [t.number for t in sampled if "duplicate_of" in t.user_attrs], "a point was proposed twice"
    points = {(t.params["x"], round(t.params["peak"], 6)) for t in sampled}
    assert len(points) == len(sampled) == N - 1
    assert study.user_attrs["sampler_loads"] == 2
