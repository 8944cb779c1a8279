"""Trials to the best server configuration on a measured goodput landscape vs auto_tune.sh's grid (issue 8).

vLLM's ``benchmarks/auto_tune/auto_tune.sh`` runs every point of max_num_seqs x
max_num_batched_tokens (8 server configurations with its default lists), each with its own
request-rate descent. hpo-infer's serving study measures the same points with a bounded goodput
search per configuration; this benchmark asks how many of them a sampler needs before it has
measured the grid's best, by replaying a landscape that was measured point by point on a GPU
(``bench/results/serve-h100/goodput-landscape.csv``, H100, see BENCHMARKS.md). Several rows of a
configuration are its repeats; the replay takes their median, as the replay engine does.

Each run is a study as ``hpo-infer tune`` runs it, in process (``bench/paper_replay.py``'s
search: the product's sampler factory, space and replay lookup rules), without the defaults'
trial, which every arm measures once (add 1 to every count). Reported per sampler over seeds:
trials until the best so far is the grid's best configuration, and until it is within 5% and
10% of it; ``distinct`` counts configurations measured by then, which is what costs GPU time:
a sampler may propose a point twice, and the agent then tells it the earlier result (a trial
of the budget, no engine start). The grid arm is the grid in auto_tune.sh's order.

    .venv/bin/python bench/serving_search.py [TABLE] [--seeds 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_replay import ROOT, search, value_of  # noqa: E402

DEFAULT_TABLE = ROOT / "bench" / "results" / "serve-h100" / "goodput-landscape.csv"
SEQS = [128, 256]  # auto_tune.sh's default lists
TOKENS = [512, 1024, 2048, 4096]
LEVELS = {"best": 0.0, "within 5%": 0.05, "within 10%": 0.10}


def spec_for(table: Path, sampler: str, seed: int | None, cap: int) -> Any:
    from hpo_infer.spec import from_dict

    raw = {
        "engine": "replay",
        "model": {"id": "synthetic-llama-3.1-8b"},
        "workload": {"kind": "synthetic", "prompts": 256, "input_tokens": 128, "output_tokens": 128},
        "fixed": {
            "table": str(table),
            "gpu": "H100-80GB-HBM3",
            "engine": "vllm-serve",
            "model": "synthetic-llama-3.1-8b",
        },
        "search_space": {
            "max_num_seqs": {"type": "categorical", "choices": SEQS},
            "max_num_batched_tokens": {"type": "categorical", "choices": TOKENS},
        },
        "sampler": {"name": sampler, "seed": seed},
        "budget": {"trials": cap},
        "repeats": 1,
        "validate_finalists": False,
    }
    return from_dict(raw, f"serving-replay/{sampler}", storage_override="sqlite:///unused.db")


def landscape(table: Path) -> dict[tuple[int, int], float]:
    spec = spec_for(table, "random", 0, 1)
    return {
        (s, t): float(value_of({**spec.fixed, "max_num_seqs": s, "max_num_batched_tokens": t}).value)  # type: ignore[arg-type]
        for s in SEQS
        for t in TOKENS
    }


def run(table: Path, sampler: str, seed: int | None, cap: int, best: float) -> dict[str, Any]:
    spec = spec_for(table, sampler, seed, cap)
    res = search(spec, cap, stop=lambda b: b >= best, prepare=lambda s: None)
    assert res.study is not None
    points = [
        (t.params["max_num_seqs"], t.params["max_num_batched_tokens"])
        for t in res.study.trials
        if t.state.is_finished()
    ]
    out: dict[str, Any] = {}
    for name, tol in LEVELS.items():
        run_best, seen, hit = 0.0, set(), None
        for i, (v, pt) in enumerate(zip(res.values, points), 1):
            run_best = max(run_best, v)
            seen.add(pt)
            if run_best >= best * (1 - tol) - 1e-9:
                hit = (i, len(seen))
                break
        out[name] = hit
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "table", nargs="?", default=str(DEFAULT_TABLE), help="measured goodput landscape (recorded-table CSV)"
    )
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--samplers", default="tpe,gp,random")
    ap.add_argument("--max-trials", type=int, default=32)
    a = ap.parse_args()
    table = Path(a.table)
    if not table.is_file():
        print(f"serving_search: {a.table}: no such file (pass a measured goodput landscape CSV)", file=sys.stderr)
        return 2
    import optuna
    from rich.console import Console
    from rich.table import Table

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    land = landscape(table)
    best = max(land.values())
    console = Console(width=150)
    lt = Table(title=f"measured goodput landscape (output tok/s, median of its rows): {table.name}")
    lt.add_column("max_num_seqs \\ max_num_batched_tokens")
    for t in TOKENS:
        lt.add_column(str(t), justify="right")
    for s in SEQS:
        lt.add_row(str(s), *(f"{land[(s, t)]:,.1f}" + (" *" if land[(s, t)] == best else "") for t in TOKENS))
    console.print(lt)

    rt = Table(
        title="trials until the grid's best is measured "
        f"(defaults' trial not counted; {a.seeds} seeds, cap {a.max_trials})"
    )
    for col in ("arm", "runs", *(f"to {n}" for n in LEVELS), "distinct to best", "best in ≤8", "search s"):
        rt.add_column(col, justify="left" if col == "arm" else "right")
    grid = run(table, "grid", None, len(land), best)
    rt.add_row("grid, auto_tune.sh's order", "1", *(f"{grid[n][0]}" for n in LEVELS), f"{grid['best'][1]}", "yes", "-")
    rt.add_row("auto_tune.sh (runs all)", "1", *("8" for _ in LEVELS), "8", "yes", "-")
    for sampler in a.samplers.split(","):
        t0 = time.perf_counter()
        rs = [run(table, sampler, seed, a.max_trials, best) for seed in range(a.seeds)]
        cells = []
        for n in LEVELS:
            xs = sorted(r[n][0] if r[n] else a.max_trials + 1 for r in rs)
            q = statistics.quantiles(xs, n=4)
            cells.append(f"{statistics.median(xs):g} ({q[0]:g}-{q[2]:g})")
        distinct = statistics.median(r["best"][1] if r["best"] else len(land) for r in rs)
        within8 = sum(1 for r in rs if r["best"] and r["best"][0] <= 8) / len(rs)
        rt.add_row(sampler, str(len(rs)), *cells, f"{distinct:g}", f"{within8:.0%}", f"{time.perf_counter() - t0:.1f}")
    console.print(rt)
    console.print(
        f"'to X': median trials (25th-75th percentile) until the best so far is the grid's best or within "
        f"5%/10% of it; a run that never gets there within the cap counts as {a.max_trials + 1}. 'distinct': "
        "configurations measured by then. Add 1 trial everywhere for the defaults."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
