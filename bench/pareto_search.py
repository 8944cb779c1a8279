"""Which sampler finds the throughput-latency front in fewest trials? (issue 20: multi-objective studies)

Replays two-objective landscapes (``bench/pareto_landscape.py`` writes them: the H100 serving
grid's burst probes, and a 48-point synthetic landscape with a known front) through the replay
engine's lookup rules (``ReplayEngine.lookup``: the median of a configuration's rows, for the
throughput and for each ``*_ms`` latency column), in process, one Optuna study per arm and
seed, as ``bench/paper_replay.py`` and ``bench/serving_search.py`` do. Objectives: maximise
``throughput_tok_s``, minimise ``p99_ttft_ms``. Arms:

- ``so+constraint``: today's single-objective study: TPE (hpo-infer's options: n_startup_trials
  5, multivariate) maximising throughput, with p99 TTFT <= a budget (the landscape's median TTFT)
  as an Optuna constraint, set as the agent sets an SLO (``slo_p99_ttft_ms`` = TTFT / budget - 1);
- ``random``; ``nsga2`` (NSGAIISampler, ``--population``); ``tpe`` (multi-objective TPESampler,
  n_startup_trials 5, multivariate); ``gp`` (multi-objective GPSampler, n_startup_trials 1 as the
  product sets it: Optuna 5's logEHVI);
- ``grid``: auto_tune.sh's order (max_num_seqs outer, max_num_batched_tokens inner, ascending),
  every point, one run.

Every arm's first trial is the engine defaults, enqueued as the agent's ``enqueue_baseline`` does
(only the parameters the space contains; the H100 defaults 1024 / 8192 lie outside auto_tune.sh's
grid, so that trial has no parameters and the lookup takes the defaults). Every trial also gets
the agent's ``feasible`` constraint (0: it ran). ``--no-defaults`` drops that trial.

Measures, per run: the hypervolume (``optuna._hypervolume.compute_hypervolume``) of the measured
points after n = 1..N trials, as a share of the true front's (every configuration of the table),
one reference point per landscape (throughput 0, p99 TTFT 1.1 x the landscape's largest); the
trials until it reaches 95% ("not reached" counts as N+1); the distinct configurations measured
by N (what costs engine starts: the agent answers a re-proposed point with the earlier result);
the sampler's own time per trial (``ask``).

    nice -n 19 .venv/bin/python bench/pareto_search.py [--seeds 20] [--trials-h100 9] [--trials-synthetic 25]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from hpo_infer.engines.replay import ReplayEngine
from hpo_infer.study.samplers import InSpaceOnly

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "pareto"
TTFT = "p99_ttft_ms"
ROLE = "hpo_infer_role"  # the agent's attribute for the baseline (study/trials.py ROLE)
ARMS = ("so+constraint", "random", "nsga2", "tpe", "gp")
TARGET = 0.95


@dataclass(frozen=True)
class Landscape:
    name: str
    table: Path
    fixed: dict[str, Any]
    space: dict[str, list[int]]  # in auto_tune.sh's order: outer parameter first, ascending values
    defaults: dict[str, int]
    trials: int
    population: int  # NSGA-II's population for this budget

    def grid(self) -> list[dict[str, int]]:
        (a, xs), (b, ys) = self.space.items()
        return [{a: x, b: y} for x in xs for y in ys]

    def in_space(self, pt: dict[str, Any]) -> bool:
        return all(v in self.space.get(k, ()) for k, v in pt.items())


LANDSCAPES = {
    "h100": Landscape(
        "h100-serve-2obj (H100, vLLM serve, 8B: burst probes)",
        RESULTS / "h100-serve-2obj.csv",
        {"gpu": "H100-80GB-HBM3", "engine": "vllm-serve", "model": "synthetic-llama-3.1-8b"},
        {"max_num_seqs": [128, 256], "max_num_batched_tokens": [512, 1024, 2048, 4096]},
        {"max_num_seqs": 1024, "max_num_batched_tokens": 8192},
        trials=9,  # the defaults + the 8 grid points
        population=4,
    ),
    "synthetic": Landscape(
        "synthetic-2obj (48 points, formula in bench/pareto_landscape.py)",
        RESULTS / "synthetic-2obj.csv",
        {"gpu": "synthetic", "engine": "vllm-serve", "model": "synthetic-2obj"},
        {
            "max_num_seqs": [8, 16, 32, 64, 128, 256, 512, 1024],
            "max_num_batched_tokens": [512, 1024, 2048, 4096, 8192, 16384],
        },
        {"max_num_seqs": 1024, "max_num_batched_tokens": 8192},
        trials=25,
        population=6,
    ),
}


def measure(land: Landscape, settings: dict[str, Any]) -> tuple[float, float]:
    """(throughput, p99 TTFT) of one configuration, by the replay engine's lookup rules."""
    _, criteria, res = ReplayEngine.lookup({"table": str(land.table), **land.fixed, **settings})
    if res.status != "ok" or TTFT not in res.metrics:
        raise SystemExit(f"pareto_search: {land.table.name}: {criteria}: {res.status} {res.reason} (no {TTFT}?)")
    return float(res.value), float(res.metrics[TTFT])  # type: ignore[arg-type]


@dataclass
class Truth:
    points: dict[tuple[int, ...], tuple[float, float]]
    ref_ttft: float
    hv: float
    budget: float  # so+constraint's TTFT budget: the median TTFT of the landscape's configurations
    front: list[tuple[int, ...]] = field(default_factory=list)


def hypervolume(points: list[tuple[float, float]], ref_ttft: float) -> float:
    """Optuna's own routine; throughput is maximised, so it enters negated (Optuna minimises)."""
    if not points:
        return 0.0
    loss = np.array([[-t, lat] for t, lat in points], dtype=float)
    return float(compute_hypervolume(loss, np.array([0.0, ref_ttft])))


def truth(land: Landscape) -> Truth:
    pts = {tuple(p.values()): measure(land, p) for p in land.grid()}
    if not land.in_space(land.defaults):
        pts[tuple(land.defaults.values())] = measure(land, land.defaults)
    ref = 1.1 * max(lat for _, lat in pts.values())
    front = [
        k
        for k, (t, lat) in pts.items()
        if not any(t2 >= t and l2 <= lat and (t2, l2) != (t, lat) for t2, l2 in pts.values())
    ]
    return Truth(
        pts, ref, hypervolume(list(pts.values()), ref), statistics.median(lat for _, lat in pts.values()), sorted(front)
    )


def sampler(arm: str, seed: int | None, land: Landscape, raw: bool = False) -> optuna.samplers.BaseSampler:
    """The arm's Optuna sampler, shown the trials that are points of the space as the product's
    ``make_sampler`` shows them (``InSpaceOnly``); ``raw``: Optuna's sampler as it is."""
    inner = _sampler(arm, seed, land)
    return inner if raw else InSpaceOnly(inner, set(land.space))


def _sampler(arm: str, seed: int | None, land: Landscape) -> optuna.samplers.BaseSampler:
    if arm in ("tpe", "so+constraint"):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True)
    if arm == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=1)
    if arm == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=land.population)
    return optuna.samplers.RandomSampler(seed=seed)  # random; grid only takes enqueued trials


@dataclass
class Run:
    hv: list[float]  # share of the true front's hypervolume after 1..n trials
    distinct: list[int]  # distinct configurations measured after 1..n trials
    ask_s: float  # the sampler's mean seconds per trial

    def to_target(self) -> float:
        return next((i for i, h in enumerate(self.hv, 1) if h >= TARGET - 1e-12), math.inf)


def run(land: Landscape, tr: Truth, arm: str, seed: int | None, n: int, defaults: bool, raw: bool = False) -> Run:
    multi = arm not in ("so+constraint",)
    study = optuna.create_study(
        directions=["maximize", "minimize"] if multi else ["maximize"], sampler=sampler(arm, seed, land, raw)
    )
    if defaults:  # agent.seeding.enqueue_baseline: the defaults' values the space contains
        study.enqueue_trial(
            {k: v for k, v in land.defaults.items() if land.in_space({k: v})}, user_attrs={ROLE: "baseline"}
        )
    if arm == "grid":
        first = tuple(land.defaults.values()) if defaults else None
        for pt in land.grid():
            if tuple(pt.values()) != first:
                study.enqueue_trial(pt, user_attrs={ROLE: "grid"})
        n = len(study.get_trials(states=(optuna.trial.TrialState.WAITING,)))
    seen: list[tuple[float, float]] = []
    configs: set[tuple[int, ...]] = set()
    out = Run([], [], 0.0)
    ask = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask()
        if trial.user_attrs.get(ROLE) == "baseline":  # packs.suggest: only the parameters it was enqueued with
            given = {k: v for k, v in land.defaults.items() if land.in_space({k: v})}
            settings = {**land.defaults, **{k: trial.suggest_categorical(k, land.space[k]) for k in given}}
        else:
            settings = {k: trial.suggest_categorical(k, v) for k, v in land.space.items()}  # type: ignore[arg-type]
        ask += time.perf_counter() - t0
        tput, ttft = measure(land, settings)
        trial.set_constraint("feasible", 0.0)  # agent.outcome.mark_feasible
        if not multi:
            trial.set_constraint(f"slo_{TTFT}", ttft / tr.budget - 1.0)  # agent.outcome.slo_constraints
        t0 = time.perf_counter()
        study.tell(trial, [tput, ttft] if multi else tput)
        ask += time.perf_counter() - t0
        seen.append((tput, ttft))
        configs.add(tuple(settings[k] for k in land.defaults))
        out.hv.append(hypervolume(seen, tr.ref_ttft) / tr.hv)
        out.distinct.append(len(configs))
    out.ask_s = ask / max(1, n)
    return out


def checkpoints(n: int) -> list[int]:
    return sorted({1, *range(3 if n <= 10 else 5, n + 1, 2 if n <= 10 else 5), n})


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank (so p90 of 20 runs is the 18th)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def fmt_n(x: float, cap: int) -> str:
    return f">{cap}" if x > cap else f"{x:g}"


def report(
    console: Any, land: Landscape, tr: Truth, arms: list[str], seeds: int, n: int, defaults: bool, raw: bool = False
) -> None:
    from rich.table import Table

    names = list(land.defaults)
    lt = Table(title=f"{land.name}: true front ({len(tr.front)} of {len(tr.points)} configurations)")
    for c in (*names, "throughput tok/s", "p99 TTFT ms"):
        lt.add_column(c, justify="right")
    for k in sorted(tr.front, key=lambda k: tr.points[k][1]):
        lt.add_row(*(str(x) for x in k), f"{tr.points[k][0]:,.1f}", f"{tr.points[k][1]:,.1f}")
    console.print(lt)
    base = f"defaults' trial {'first' if defaults else 'left out'}"
    console.print(
        f"reference point: throughput 0, p99 TTFT {tr.ref_ttft:,.1f} ms; true HV {tr.hv:,.0f}; "
        f"so+constraint's budget: p99 TTFT <= {tr.budget:,.1f} ms (median); {base}"
    )
    cps = checkpoints(n)
    view = "Optuna's samplers as they are" if raw else "samplers as make_sampler wraps them (InSpaceOnly)"
    rt = Table(title=f"{land.name}: share of the true front's hypervolume ({seeds} seeds, N = {n}, {base}; {view})")
    for c in (
        "arm",
        "runs",
        *(f"HV% n={c}" for c in cps),
        f"HV% n={n} p10",
        "to 95%: median",
        "p90",
        "reached",
        f"distinct@{n}",
        "ask s/trial",
    ):
        rt.add_column(c, justify="left" if c == "arm" else "right")
    for arm in ["grid", *arms]:
        t0 = time.perf_counter()
        rs = [
            run(land, tr, arm, None if arm == "grid" else seed, n, defaults, raw)
            for seed in range(1 if arm == "grid" else seeds)
        ]
        L = n if arm != "grid" else len(rs[0].hv)
        at = [[r.hv[min(c, len(r.hv)) - 1] for r in rs] for c in cps]
        to = [r.to_target() for r in rs]
        to_c = [x if x <= L else L + 1 for x in to]
        label = "grid (auto_tune.sh order)" + (f", all {L}" if L != n else "")
        rt.add_row(
            label if arm == "grid" else arm,
            str(len(rs)),
            *(f"{100 * statistics.median(x):.1f}" for x in at),
            f"{100 * pct(at[-1], 0.1):.1f}",
            fmt_n(statistics.median(to_c), L),
            fmt_n(pct(to_c, 0.9), L),
            f"{sum(x <= n for x in to)}/{len(rs)}",
            f"{statistics.median(r.distinct[min(n, len(r.distinct)) - 1] for r in rs):g}",
            f"{statistics.mean(r.ask_s for r in rs):.3f}" if arm != "grid" else "-",
        )
        console.log(f"{land.table.name} {arm}: {time.perf_counter() - t0:.1f} s", style="dim")
    console.print(rt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials-h100", type=int, default=LANDSCAPES["h100"].trials, help="N on the H100 landscape")
    ap.add_argument(
        "--trials-synthetic", type=int, default=LANDSCAPES["synthetic"].trials, help="N on the synthetic one"
    )
    ap.add_argument("--landscapes", default="h100,synthetic")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--population", type=int, default=None, help="NSGA-II population (default: 4 on H100, 6 synthetic)")
    ap.add_argument("--no-defaults", action="store_true", help="no defaults' trial first")
    ap.add_argument(
        "--raw-samplers", action="store_true", help="Optuna's samplers as they are, not InSpaceOnly (make_sampler's)"
    )
    ap.add_argument("--synthetic-table", default=None, help="another synthetic table (pareto_landscape.py --out)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for GP (1: one core's time per trial)")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        import torch

        torch.set_num_threads(a.threads)
    except ImportError:
        pass
    from rich.console import Console

    console = Console(width=200)
    for key in a.landscapes.split(","):
        land = LANDSCAPES[key]
        if a.population:
            land = Landscape(**{**land.__dict__, "population": a.population})
        if key == "synthetic" and a.synthetic_table:
            land = Landscape(**{**land.__dict__, "table": Path(a.synthetic_table).resolve()})
        if not land.table.is_file():
            print(f"pareto_search: {land.table}: no such file (run bench/pareto_landscape.py)", file=sys.stderr)
            return 2
        n = a.trials_h100 if key == "h100" else a.trials_synthetic
        tr = truth(land)
        report(console, land, tr, a.arms.split(","), a.seeds, n, not a.no_defaults, a.raw_samplers)
    console.print(
        "HV%: median share of the true front's hypervolume after n trials (p10: the worst 10% of runs); "
        "'to 95%': trials until 95% (median and 90th percentile over seeds; '>N' = not reached in N); "
        "'reached': runs that got there within N; 'distinct': configurations measured by N (engine starts); "
        "'ask s': the sampler's seconds per trial (ask + tell)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
