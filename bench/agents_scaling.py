"""Trials per minute with 1, 2 and 4 agents on one study (fault engine, PostgreSQL).

Each trial is a real worker process that "starts an engine" (sleeps ``--start-s``) and then
times its passes (sleeps ``--pass-s`` each): like a GPU trial, the agent mostly waits, so
agents should scale almost linearly until the database or the CPU (2 cores here) is the limit.

    .venv/bin/python bench/agents_scaling.py                      # throwaway PostgreSQL (tests/pg.py)
    .venv/bin/python bench/agents_scaling.py --storage sqlite     # a SQLite file instead
    .venv/bin/python bench/agents_scaling.py --storage postgresql://USER:PW@HOST/DB   # empty database

trials/min counts finished trials over the span from the first trial's start to the last
trial's end (agent start-up excluded); "steady" only over the window in which every agent was
working (between its own first and last trial: no staggered start, no ramp-down at the budget's
end); "end to end" divides by the whole command's wall time, process start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def spec(trials: int, start_s: float, pass_s: float, repeats: int) -> dict[str, Any]:
    return {
        "engine": "fault",
        "model": {"synthetic": "tiny-llama"},
        "workload": {"kind": "synthetic", "prompts": 4, "input_tokens": 4, "output_tokens": 4},
        "search_space": {"x": {"type": "int", "low": 1, "high": 64}, "y": {"type": "int", "low": 1, "high": 4}},
        "fixed": {"start_s": start_s, "pass_s": pass_s},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": trials},
        "trial_timeout_s": 120,
        "repeats": repeats,
        "validate_finalists": False,
    }


def run_one(url: str, agents: int, trials: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import optuna

    from hpo_infer.storage_url import normalise

    path = work / f"spec-{agents}.yaml"
    path.write_text(yaml.safe_dump(spec(trials, args.start_s, args.pass_s, args.repeats), sort_keys=False))
    env = {**os.environ, "HPO_INFER_STORAGE": url}
    subprocess.run([sys.executable, "-m", "hpo_infer", "db", "upgrade"], env=env, check=True, capture_output=True)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "hpo_infer", "worker", str(path), "--agents", str(agents)],
        env=env,
        capture_output=True,
        text=True,
        cwd=work,
    )
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"worker with {agents} agents failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    storage = optuna.storages.RDBStorage(normalise(url), skip_table_creation=True)
    (name,) = optuna.get_all_study_names(storage)
    trials_ = optuna.load_study(study_name=name, storage=storage).trials
    done = [t for t in trials_ if t.state.is_finished()]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    storage.engine.dispose()
    # Steady state: the window in which every agent was between its first and its last trial.
    by_agent: dict[str, list[Any]] = {}
    for t in done:
        by_agent.setdefault(t.user_attrs.get("agent", "?"), []).append(t)
    w0 = max(min(t.datetime_start for t in ts) for ts in by_agent.values())
    w1 = min(max(t.datetime_complete for t in ts) for ts in by_agent.values())
    window = (w1 - w0).total_seconds()
    inside = sum(
        max(0.0, (min(t.datetime_complete, w1) - max(t.datetime_start, w0)).total_seconds())
        / max(1e-9, (t.datetime_complete - t.datetime_start).total_seconds())
        for t in done
    )
    return {
        "agents": agents,
        "trials": len(done),
        "states": sorted({t.state.name for t in trials_}),
        "span_s": round(span, 2),
        "wall_s": round(wall, 2),
        "trials_per_min": round(len(done) / span * 60, 2),
        "steady_per_min": round(inside / window * 60, 2) if window > 0 else None,
        "agents_seen": len(by_agent),
        "end_to_end_per_min": round(len(done) / wall * 60, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", default="1,2,4", help="agent counts to measure, comma-separated")
    ap.add_argument("--trials-per-agent", type=int, default=12)
    ap.add_argument("--start-s", type=float, default=2.0, help="simulated engine start per trial")
    ap.add_argument("--pass-s", type=float, default=0.1, help="seconds per timed pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--storage", default="postgres", help="'postgres' (throwaway server), 'sqlite', or an URL of an empty database"
    )
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    counts = [int(x) for x in args.agents.split(",")]

    server = None
    work = Path(tempfile.mkdtemp(prefix="hpo-bench-"))
    try:
        if args.storage == "postgres":
            sys.path.insert(0, str(ROOT / "tests"))
            from pg import PgServer

            server = PgServer().start()
        rows = []
        for n in counts:
            if server is not None:
                url = server.create_db(f"bench_{n}_{uuid.uuid4().hex[:6]}")
            elif args.storage == "sqlite":
                url = f"sqlite:///{work / f'bench-{n}.db'}"
            else:
                url = args.storage
            rows.append(run_one(url, n, n * args.trials_per_agent, args, work))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.cleanup()

    from rich.console import Console
    from rich.table import Table

    base = rows[0]["trials_per_min"] / rows[0]["agents"]
    table = Table(
        title=f"agents on one study ({args.storage if args.storage in ('postgres', 'sqlite') else 'given database'}; "
        f"trial = {args.start_s:g} s start + {args.repeats + 1} x {args.pass_s:g} s passes + worker process)"
    )
    steady0 = rows[0]["steady_per_min"] / rows[0]["agents"]
    for col in (
        "agents",
        "trials",
        "span s",
        "trials/min",
        "speedup",
        "steady trials/min",
        "steady speedup",
        "end-to-end trials/min",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["agents"]),
            str(r["trials"]),
            f"{r['span_s']:.1f}",
            f"{r['trials_per_min']:.1f}",
            f"{r['trials_per_min'] / base:.2f}x",
            f"{r['steady_per_min']:.1f}",
            f"{r['steady_per_min'] / steady0:.2f}x",
            f"{r['end_to_end_per_min']:.1f}",
        )
    Console(width=max(120, Console().width)).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
