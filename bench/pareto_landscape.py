"""The two-objective landscapes of ``bench/pareto_search.py`` (issue 20): throughput and p99 TTFT.

Both are recorded tables the replay engine reads (``hpo_infer/recorded.py``): one row per
measured run, the settings, ``throughput_tok_s`` and latency columns (``*_ms``: the replay engine
reports their medians over a configuration's rows as the trial's ``metrics``). Written to
``bench/results/pareto/``:

``h100-serve-2obj.csv``, measured: derived row by row from
``bench/results/serve-h100/goodput-probes.csv`` (vLLM 0.24 ``vllm serve``, synthetic
Llama-3.1-8B on one H100, 256 random prompts of 128 in / 128 out; BENCHMARKS.md, issue 8). That
file has one line per load run ("probe") of each goodput trial; probe 1 of every trial is the
burst (``offered_req_s`` = ``burst``: all 256 requests at once), the server's saturation. Each
trial (``run``, ``trial``) gives one row here: its burst probe's ``output_tok_s`` as
``throughput_tok_s`` and its ``p99_ttft_ms`` and ``p99_tpot_ms``; the row label is
``run{run}-trial{trial}``. The 14 trials give 9 configurations: auto_tune.sh's grid
max_num_seqs {128, 256} x max_num_batched_tokens {512, 1024, 2048, 4096} and vLLM's defaults
(1024 / 8192); the defaults and the four max_num_seqs 128 points were measured in both runs (2
rows: the replay takes the medians), the rest once. Burst figures, not goodput: every
configuration at the same offered load, so throughput and TTFT are measured under one condition.

``synthetic-2obj.csv``, a formula with a known front: max_num_seqs S in {8 .. 1024} (powers of
two) x max_num_batched_tokens B in {512 .. 16384} (powers of two), 48 points, one row each::

    throughput_tok_s = 12000 * (1 - exp(-S / 128)) * (1 - exp(-B / 2048)) * j1
    p99_ttft_ms      = (20 + S * (0.2 + 0.5 * B / 4096) + 20000 / B) * j2

Throughput rises with both and saturates (decode concurrency in S, the prefill budget per step
in B). TTFT rises with S (more sequences share every step: the queue ahead of a new request's
prefill) and more so with large B (longer steps), and falls with B below ~1k tokens (a prompt's
prefill is chunked over more steps). ``j1``, ``j2`` are a fixed per-point jitter, exp(N(0,
0.05)) from ``random.Random(0)`` drawn in row order, a stand-in for one trial's measurement noise
(0 with ``--jitter 0``). The engine defaults are vLLM's on a large GPU, 1024 / 8192, a point of
the grid. The front is exact: the non-dominated rows of the file.

    .venv/bin/python bench/pareto_landscape.py [--jitter 0.05]
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "pareto"
PROBES = ROOT / "bench" / "results" / "serve-h100" / "goodput-probes.csv"
HEADER = [
    "row",
    "gpu",
    "engine",
    "model",
    "max_num_seqs",
    "max_num_batched_tokens",
    "throughput_tok_s",
    "p99_ttft_ms",
    "p99_tpot_ms",
    "status",
]
H100 = ("H100-80GB-HBM3", "vllm-serve", "synthetic-llama-3.1-8b")
SYN = ("synthetic", "vllm-serve", "synthetic-2obj")
SEQS = [8, 16, 32, 64, 128, 256, 512, 1024]
TOKENS = [512, 1024, 2048, 4096, 8192, 16384]


def h100_rows(probes: Path = PROBES) -> list[list[object]]:
    """One row per goodput trial: its burst probe (probe 1) as throughput, p99 TTFT, p99 TPOT."""
    rows = []
    with probes.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["probe"] != "1":
                continue
            assert r["offered_req_s"] == "burst", f"probe 1 of run {r['run']} trial {r['trial']} is not the burst"
            rows.append(
                [
                    f"run{r['run']}-trial{r['trial']}",
                    *H100,
                    int(r["max_num_seqs"]),
                    int(r["max_num_batched_tokens"]),
                    float(r["output_tok_s"]),
                    float(r["p99_ttft_ms"]),
                    float(r["p99_tpot_ms"]),
                    "ok",
                ]
            )
    return rows


def synthetic(s: int, b: int) -> tuple[float, float, float]:
    """Throughput (tok/s), p99 TTFT and p99 TPOT (ms) of the formula, without jitter."""
    tput = 12000 * (1 - math.exp(-s / 128)) * (1 - math.exp(-b / 2048))
    ttft = 20 + s * (0.2 + 0.5 * b / 4096) + 20000 / b
    tpot = 6 + 0.01 * s + b / 4096  # not an objective; carried so the table looks like a serving one
    return tput, ttft, tpot


def synthetic_rows(jitter: float = 0.05, seed: int = 0) -> list[list[object]]:
    rng = random.Random(seed)
    rows = []
    for s in SEQS:
        for b in TOKENS:
            tput, ttft, tpot = synthetic(s, b)
            j1, j2 = (math.exp(rng.gauss(0, jitter)) if jitter else 1.0 for _ in range(2))
            rows.append([f"s{s}-b{b}", *SYN, s, b, round(tput * j1, 1), round(ttft * j2, 1), round(tpot, 2), "ok"])
    return rows


def write(path: Path, rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jitter", type=float, default=0.05, help="synthetic: sd of the log jitter (0: the bare formula)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    out = Path(a.out)
    write(out / "h100-serve-2obj.csv", h100_rows())
    write(out / "synthetic-2obj.csv", synthetic_rows(a.jitter))
    print(f"wrote {out / 'h100-serve-2obj.csv'} and {out / 'synthetic-2obj.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
