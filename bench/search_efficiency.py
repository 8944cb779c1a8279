"""How fast each Optuna sampler finds the optimum of the paper's measured landscapes (issue 6).

For each landscape of ``paper-landscapes.csv`` (20 models x A100/V100 x vLLM/HF, batch size x
GPU count, 5 generated tokens: 79 landscapes, Phi-1 has no HF rows on the V100), each sampler
and each seed, a study runs as ``hpo-infer tune`` would run it: the engine defaults first (the
baseline, batch 1 on 1 GPU; it counts as trial 1), then the sampler. Reported: the number of
trials until the best so far reaches 95%, 98% and 99% of the landscape's optimum (median over
seeds per landscape, then the median landscape), and the share of runs that reach 99% within
10, 11 (a quarter of the 44 points: issue 6's bar) and 20 trials.

The space is the paper's 44 points, written two ways: ``categorical`` (the recorded values, as
studies/paper/*.yaml write them) and ``int-log`` (ordered int ranges as the engines' default
spaces are written; the replay engine snaps to the nearest recorded point). CMA-ES applies only
to the numeric one. ``grid`` is the grid enqueued in order (one run: it has no randomness).

For speed the trials are looked up in process (``bench/paper_replay.py``: the product's sampler
factory, baseline/grid enqueue, space semantics and replay lookup rules) instead of one worker
process per trial; tests/test_replay.py runs the same lookups through the real worker path.
GP costs 0.07 s (categorical) to 0.25 s (int-log) per trial on one core, so it runs 10 seeds
(``--gp-seeds``) and stops at 20 trials (``--gp-max-trials``), and on the int-log space only
when asked (``--gp-spaces categorical,int-log``: ~10 minutes more on 2 cores); the others run
20 seeds up to 44 trials.

    .venv/bin/python bench/search_efficiency.py [../shared/data/paper-landscapes.csv] [--procs 2]
    .venv/bin/python bench/search_efficiency.py --samplers gp --spaces int-log --gp-spaces int-log
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_replay import DEFAULT_DATA, ROOT, SPACES, fmt_trials, landscapes, optimum, replay_spec, search  # noqa: E402

LEVELS = (0.95, 0.98, 0.99)
WITHIN = (10, 11, 20)
SAMPLERS = ("gp", "tpe", "random", "cmaes", "grid")


def _init() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)  # GP uses torch: one thread per process, --procs processes
    except ImportError:
        pass


@functools.lru_cache(maxsize=None)
def _landscape(
    data: str, key: tuple[str, str, str], space: str, sampler: str, cap: int, options: str
) -> tuple[Any, float]:
    """The spec (validated once per landscape and sampler in each process) and its optimum."""
    spec = replay_spec(Path(data), key, space, sampler, 0, cap, json.loads(options))
    return spec, optimum(spec)


def run_one(job: tuple[str, tuple[str, str, str], str, str, int, int, str]) -> dict[str, Any]:
    data, key, space, sampler, seed, cap, options = job
    base, best = _landscape(data, tuple(key), space, sampler, cap, options)
    spec = base.model_copy(update={"sampler": base.sampler.model_copy(update={"seed": seed})})
    t0 = time.perf_counter()
    res = search(spec, cap, stop=lambda b: b >= 0.99 * best)
    hits: dict[str, int | None] = {}
    run_best = 0.0
    for level in LEVELS:
        hits[str(level)] = None
    for i, v in enumerate(res.values, 1):
        run_best = max(run_best, v)
        for level in LEVELS:
            if hits[str(level)] is None and run_best >= level * best:
                hits[str(level)] = i
    return {
        "key": list(key),
        "space": space,
        "sampler": sampler,
        "seed": seed,
        "cap": cap,
        "hits": hits,
        "trials": len(res.values),
        "seconds": time.perf_counter() - t0,
    }


def jobs(
    data: Path,
    seeds: int,
    gp_seeds: int,
    gp_cap: int,
    cap: int,
    samplers: list[str],
    spaces: list[str],
    gp_spaces: list[str],
    gp_options: str = "{}",
) -> list[tuple]:
    from hpo_infer.errors import InputError

    keys = landscapes(data)
    out = []
    for space in spaces:
        for sampler in samplers:
            if sampler == "gp" and space not in gp_spaces:
                continue
            try:  # "where it applies": the spec validation decides (cmaes needs a numeric space)
                replay_spec(data, keys[0], space, sampler, 0, cap)
            except InputError:
                continue
            n = 1 if sampler == "grid" else gp_seeds if sampler == "gp" else seeds
            c = gp_cap if sampler == "gp" else cap
            opts = gp_options if sampler == "gp" else "{}"
            out += [(str(data), k, space, sampler, s, c, opts) for k in keys for s in range(n)]
    out.sort(key=lambda j: j[3] != "gp")  # the slow ones first, so the pool ends together
    return out


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["sampler"], r["space"])].append(r)
    rows = []
    for (sampler, space), rs in groups.items():
        cap = rs[0]["cap"]
        per_land: dict[tuple, list[dict]] = defaultdict(list)
        for r in rs:
            per_land[tuple(r["key"])].append(r)
        row: dict[str, Any] = {
            "sampler": sampler,
            "space": space,
            "landscapes": len(per_land),
            "seeds": max(len(v) for v in per_land.values()),
            "cap": cap,
            "seconds": sum(r["seconds"] for r in rs),
        }
        for level in LEVELS:
            meds = [statistics.median(_n(r, level) for r in v) for v in per_land.values()]
            row[f"median_{level}"] = statistics.median(meds)
        for w in WITHIN:
            row[f"within_{w}"] = sum(_n(r, 0.99) <= w for r in rs) / len(rs) if w <= cap else None
        rows.append(row)
    order = {s: i for i, s in enumerate(SAMPLERS)}
    return sorted(rows, key=lambda r: (list(SPACES).index(r["space"]), order.get(r["sampler"], 99)))


def _n(r: dict[str, Any], level: float) -> float:
    h = r["hits"][str(level)]
    return math.inf if h is None else h


def by_group(results: list[dict[str, Any]], sampler: str, space: str) -> list[tuple[str, float, float]]:
    """Median trials to 99% and share within 11, per engine and GPU, for one sampler."""
    out = []
    for engine in ("hf", "vllm"):
        for gpu in ("A100", "V100"):
            rs = [
                r
                for r in results
                if r["sampler"] == sampler and r["space"] == space and r["key"][1] == engine and r["key"][0] == gpu
            ]
            if not rs:
                continue
            per: dict[tuple, list] = defaultdict(list)
            for r in rs:
                per[tuple(r["key"])].append(_n(r, 0.99))
            out.append(
                (
                    f"{engine} {gpu} ({len(per)})",
                    statistics.median(statistics.median(v) for v in per.values()),
                    sum(_n(r, 0.99) <= 11 for r in rs) / len(rs),
                )
            )
    return out


def default_sampler(data: Path) -> tuple[str, str]:
    """What a spec without a ``sampler`` key gets on this space, as the product resolves it."""
    from hpo_infer.study.samplers import sampler_name

    spec = replay_spec(data, landscapes(data)[0])
    return spec.sampler.name, sampler_name(spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "data",
        nargs="?",
        default=str(DEFAULT_DATA),
        help="paper-landscapes.csv (default: ../shared/data/ beside the repo)",
    )
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--gp-seeds", type=int, default=10)
    ap.add_argument("--max-trials", type=int, default=44)
    ap.add_argument("--gp-max-trials", type=int, default=20)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--spaces", default=",".join(SPACES))
    ap.add_argument(
        "--gp-spaces", default="categorical", help="spaces GP runs on (int-log: ~4 s per run, ~10 min more on 2 cores)"
    )
    ap.add_argument("--gp-options", default="{}", help="GP sampler options as JSON, e.g. '{\"n_startup_trials\": 3}'")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--json", help="also write every run's result here")
    a = ap.parse_args()
    data = Path(a.data)
    if not data.is_absolute() and not data.exists():
        data = ROOT / data
    if not data.is_file():
        print(f"search_efficiency: {a.data}: no such file (pass the path of paper-landscapes.csv)", file=sys.stderr)
        return 2
    a.data_path = str(data)
    t0 = time.time()
    todo = jobs(
        data,
        a.seeds,
        a.gp_seeds,
        a.gp_max_trials,
        a.max_trials,
        a.samplers.split(","),
        a.spaces.split(","),
        a.gp_spaces.split(","),
        a.gp_options,
    )
    with mp.get_context("fork").Pool(a.procs, initializer=_init) as pool:
        results = list(pool.imap_unordered(run_one, todo, chunksize=4))
    wall = time.time() - t0
    if a.json:
        Path(a.json).write_text(json.dumps(results))
    print_tables(summarise(results), results, wall, a)
    return 0


def print_tables(rows: list[dict[str, Any]], results: list[dict[str, Any]], wall: float, a: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    dflt, resolved = default_sampler(Path(a.data_path))
    t = Table(
        title=f"Trials to reach the optimum of the paper's {rows[0]['landscapes']}"
        f" landscapes (baseline counts as trial 1)"
    )
    for col in ("sampler", "space", "seeds", "95%", "98%", "99%", "99% in ≤10", "in ≤11", "in ≤20", "search s"):
        t.add_column(col, justify="left" if col in ("sampler", "space") else "right")
    for r in rows:
        name = r["sampler"] + (" (default)" if r["sampler"] == resolved else "")
        seeds = "1 (ordered)" if r["sampler"] == "grid" else str(r["seeds"])
        t.add_row(
            name,
            r["space"],
            seeds,
            *(fmt_trials(r[f"median_{lv}"], r["cap"]) for lv in LEVELS),
            *("-" if r[f"within_{w}"] is None else f"{r[f'within_{w}']:.0%}" for w in WITHIN),
            f"{r['seconds']:.0f}",
        )
    console = Console()
    console.print(t)
    console.print(
        "95/98/99%: trials until the best so far reaches that share of the optimum; median over seeds per "
        "landscape, then over landscapes. '≤N': share of all runs reaching 99% within N trials. "
        f">{a.max_trials} / >{a.gp_max_trials}: not reached by the run's cap (GP: {a.gp_max_trials})."
    )
    g = Table(title="by engine and GPU: median trials to 99% / share within 11")
    g.add_column("landscapes")
    combos = [(r["sampler"], r["space"]) for r in rows if r["sampler"] in ("gp", "tpe")]
    for s, sp_ in combos:
        g.add_column(f"{s} {sp_}", justify="right")
    labels = [x[0] for x in by_group(results, combos[0][0], combos[0][1])] if combos else []
    cols = [by_group(results, s, sp_) for s, sp_ in combos]
    caps = [next(r["cap"] for r in rows if (r["sampler"], r["space"]) == c) for c in combos]
    for i, label in enumerate(labels):
        g.add_row(label, *(f"{fmt_trials(c[i][1], cap)} / {c[i][2]:.0%}" for c, cap in zip(cols, caps)))
    if combos:
        console.print(g)
    console.print(
        f"{len(results)} runs in {wall:.0f} s wall on {a.procs} processes; default sampler: {dflt!r} -> {resolved}"
    )


if __name__ == "__main__":
    sys.exit(main())
