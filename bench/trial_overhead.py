"""Trial overhead, spawned vs forked trial processes, on one study spec (default: the quickstart).

Each variant runs the spec's whole study afresh (its own SQLite file, same seed) with
``HPO_INFER_TRIAL_START=spawn`` (a fresh interpreter per trial: the old path) or ``fork`` (the
pre-imported fork server). Variants alternate in the order given (default ABBA: spawn, fork,
fork, spawn) so that a drift of the machine does not side with one path.

    .venv/bin/python bench/trial_overhead.py                         # the quickstart, ABBA
    .venv/bin/python bench/trial_overhead.py --spec studies/x.yaml --order spawn,fork --out results.json
    .venv/bin/python bench/trial_overhead.py --pairs 8 --settings '{"batch_size": 8, "path": "generate"}'

Per run: the tune command's wall time; per trial, its overhead (worker wall minus measured
seconds) and its parts (imports, engine start, warm-up, exit); and the values, so the two
paths can be checked to measure the same thing: the geometric mean over configurations that
both measured of fork's value over spawn's. Studies on the two paths propose different settings
once their values differ by noise, so ``--pairs N`` settles it directly: one configuration
(``--settings``), measured N times on each path, alternating spawn, fork, fork, spawn, ... in one
process; it prints the paired fork/spawn ratio with its 95% confidence interval.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("imports_s", "start_s", "warmup_s", "measure_s", "exit_s")


def run(spec: Path, variant: str, work: Path, extra: list[str]) -> dict[str, Any]:
    db = work / f"{variant}-{time.monotonic_ns()}.db"
    env = {**os.environ, "HPO_INFER_TRIAL_START": variant}
    env.pop("HPO_INFER_STORAGE", None)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "hpo_infer", "tune", str(spec), "--storage", f"sqlite:///{db}", "--no-validate", *extra],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"{variant}: tune failed ({res.returncode}): {res.stderr[-2000:]}")
    (name,) = optuna.get_all_study_names(f"sqlite:///{db}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "wall_s" in t.user_attrs]
    rows = []
    for t in trials:
        a = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "settings": a.get("settings"),
                "value": t.value,
                "wall_s": a["wall_s"],
                "overhead_s": a["wall_s"] - (a.get("measure_s") or 0.0),
                **{p: a.get(p) for p in PARTS},
            }
        )
    return {"variant": variant, "tune_wall_s": wall, "trials": rows}


def median(rows: list[dict[str, Any]], key: str, skip_first: bool = False) -> float | None:
    vals = [r[key] for r in rows[1 if skip_first else 0 :] if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def agreement(runs: list[dict[str, Any]]) -> tuple[float | None, int]:
    """Geometric mean of fork/spawn values over the settings both paths measured, and how many."""
    by: dict[str, dict[str, list[float]]] = {"spawn": {}, "fork": {}}
    for r in runs:
        for t in r["trials"]:
            by[r["variant"]].setdefault(json.dumps(t["settings"], sort_keys=True), []).append(t["value"])
    common = sorted(set(by["spawn"]) & set(by["fork"]))
    if not common:
        return None, 0
    logs = [math.log(statistics.mean(by["fork"][k]) / statistics.mean(by["spawn"][k])) for k in common]
    return math.exp(statistics.mean(logs)), len(common)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| run | path | trials | tune wall s | overhead/trial median s | after the first "
        "| imports | start | warm-up | exit |"
    )
    lines = [head, "|" + "---|" * 10]
    for i, r in enumerate(runs, 1):
        t = r["trials"]

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        lines.append(
            f"| {i} | {r['variant']} | {len(t)} | {r['tune_wall_s']:.1f} | {f(median(t, 'overhead_s'))} | "
            f"{f(median(t, 'overhead_s', True))} | {f(median(t, 'imports_s'))} | {f(median(t, 'start_s'))} | "
            f"{f(median(t, 'warmup_s'))} | {f(median(t, 'exit_s'))} |"
        )
    ratio, n = agreement(runs)
    if ratio is not None:
        lines.append(f"\nvalues, fork/spawn geometric mean over {n} settings both measured: {ratio:.3f}")
    return "\n".join(lines)


def pairs(spec_path: Path, settings: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The same configuration measured ``n`` times on each path, in ABBA order."""
    from hpo_infer.spec.study_spec import load
    from hpo_infer.trial.runner import run_worker

    spec = load(spec_path)
    rows = []
    for i in range(2 * n):
        variant = ("spawn", "fork", "fork", "spawn")[i % 4]
        os.environ["HPO_INFER_TRIAL_START"] = variant
        out = run_worker(spec.request([{**spec.fixed, **settings}]), spec.trial_timeout_s)
        if out.first.value is None:
            raise SystemExit(f"{variant}: {out.status}: {out.error}")
        rows.append({"variant": variant, "value": out.first.value, "wall_s": out.wall_s})
        print(f"{i + 1:2d} {variant:5s} {out.first.value:10.1f} tok/s  wall {out.wall_s:6.2f} s", flush=True)
    return rows


def paired_ratio(rows: list[dict[str, Any]], num: str = "fork", den: str = "spawn") -> tuple[float, float, float]:
    """num/den (variants): geometric mean of each adjacent pair's ratio, with a t 95% interval."""
    from scipy import stats

    logs = []
    for a, b in zip(rows[0::2], rows[1::2]):
        top, bottom = (b, a) if a["variant"] == den else (a, b)
        logs.append(math.log(top["value"] / bottom["value"]))
    m = statistics.mean(logs)
    if len(logs) < 2:
        return math.exp(m), math.nan, math.nan
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "quickstart.yaml")
    ap.add_argument("--order", default="spawn,fork,fork,spawn")
    ap.add_argument("--out", type=Path, default=None, help="write every run's trials here (JSON)")
    ap.add_argument("--pairs", type=int, default=0, help="measure --settings N times on each path instead")
    ap.add_argument("--settings", type=json.loads, default={}, help="the configuration --pairs measures (JSON)")
    ap.add_argument("tune_args", nargs="*", help="more arguments for hpo-infer tune (after --)")
    args = ap.parse_args()
    if args.pairs:
        rows = pairs(args.spec.resolve(), args.settings, args.pairs)
        ratio, low, high = paired_ratio(rows)
        print(f"fork/spawn over {args.pairs} pairs: {ratio:.3f} (95% CI {low:.3f}-{high:.3f})")
        for v in ("spawn", "fork"):
            vals = [r["value"] for r in rows if r["variant"] == v]
            print(f"{v}: median {statistics.median(vals):.1f} tok/s, min {min(vals):.1f}, max {max(vals):.1f}")
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
        return
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for variant in args.order.split(","):
            runs.append(run(args.spec.resolve(), variant, Path(d), args.tune_args))
            print(f"{variant}: {runs[-1]['tune_wall_s']:.1f} s, {len(runs[-1]['trials'])} trials", flush=True)
            if args.out:  # after every run: a run cut short by a time limit keeps the ones before
                args.out.write_text(json.dumps(runs, indent=1, default=str))
    print(table(runs))


if __name__ == "__main__":
    main()
