"""Nested search against flat search on the paper's landscapes: engine starts to the optimum.

Each of the 79 landscapes of ``paper-landscapes.csv`` (bench/paper_replay.py: batch size x GPU
count, 44 points) is searched with ``trials_per_engine`` K = 1 (flat: one engine start per
trial, today's default), 3 and 4 (nested: the sampler's proposal and K-1 batch sizes the
sampler proposes with its GPU count pinned, on one engine start). Batch size is client-side
here, as it is in vLLM (prompts per ``generate()`` call) and HF's pipeline; the GPU count
(tensor parallelism, ``device_map``) needs a fresh engine. The replay engine has no client-side
setting, so the benchmark gives it one (:class:`ClientBatch`).

The study loop runs in process, as bench/paper_replay.py's ``search`` does, with the agent's
own pieces: the baseline enqueued first (its own start), ``packs.pack`` under what would be the
lock (``inner_members``: PartialFixedSampler, the budget room, twins and in-pack copies),
``answer_twin`` for a re-proposed lead, ``tell_copies`` before the lead is told, a failed trial
retried once. An engine start is one worker launch: a pack (or a flat trial) with at least one
member to measure; a trial told a twin's or a pack mate's result starts nothing.

Reported per sampler and K: engine starts until the best so far reaches 95% and 99% of the
landscape's optimum (median over seeds per landscape, then the median landscape), the share of
runs at 99% within 5 and 10 starts, the mean best found (share of the optimum) after 3, 5 and 8
starts, and the trials (measurements) to 99%.

    .venv/bin/python bench/nested_search.py [../shared/data/paper-landscapes.csv] [--seeds 10] [--procs 2]
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from paper_replay import DEFAULT_DATA, fmt_trials, landscapes, replay_spec, value_of  # noqa: E402

from hpo_infer import recorded  # noqa: E402
from hpo_infer.agent import packs  # noqa: E402
from hpo_infer.agent.outcome import mark_feasible, mark_infeasible, retry  # noqa: E402
from hpo_infer.agent.seeding import enqueue_baseline  # noqa: E402
from hpo_infer.engines.replay import ReplayEngine  # noqa: E402
from hpo_infer.spec import StudySpec  # noqa: E402
from hpo_infer.spec import space as sp  # noqa: E402
from hpo_infer.study import optuna_api  # noqa: E402
from hpo_infer.study.samplers import make_sampler  # noqa: E402

LEVELS = (0.95, 0.99)
WITHIN = (5, 10)
AT = (3, 5, 8)
KS = (1, 3, 4)
MAX_TRIALS = 200  # a sampler re-proposing measured points spends trials, not starts: stop somewhere


class ClientBatch(ReplayEngine):
    """The replay engine with batch size client-side (configs differing only in it share a start)."""

    client_side = ("batch_size",)


ENGINE = ClientBatch()
Point = tuple[Any, Any]


def _point(settings: dict[str, Any]) -> Point:
    return settings.get("batch_size", 1), settings.get("num_gpus", 1)  # the replay engine's defaults


@functools.lru_cache(maxsize=None)
def _landscape(data: str, key: tuple[str, str, str], sampler: str) -> tuple[StudySpec, dict[Point, Any], float]:
    """The spec, every point's recorded outcome (looked up once) and the optimum."""
    spec = replay_spec(Path(data), key, "categorical", sampler, 0, MAX_TRIALS)
    table = {_point(pt): value_of({**spec.fixed, **pt}) for pt in sp.grid(spec.space())}
    table.setdefault((1, 1), value_of(dict(spec.fixed)))
    best = max(r.value for r in table.values() if r.status == recorded.FEASIBLE)
    return spec, table, float(best)


def _measure(spec: StudySpec, m: packs.Member, table: dict[Point, Any]) -> float | None:
    """What the worker would report: the recorded value (constraints set as the agent sets them),
    0 for an infeasible point, None for a failed run."""
    if m.early is not None:
        return m.early
    res = table[_point(m.settings)]
    if res.status == recorded.FEASIBLE:
        mark_feasible(m.trial, spec, {})
        return float(res.value)
    if res.status == recorded.FAILED:
        return None
    return mark_infeasible(m.trial, spec)


def _tell(study: optuna.Study, m: packs.Member, value: float | None) -> None:
    if value is None:
        study.tell(m.trial, state=TrialState.FAIL)
        retry(study, m.trial, m.params, stopping=False)
    else:
        study.tell(m.trial, value)


def _one_pack(study: optuna.Study, spec: StudySpec, table: dict[Point, Any]) -> tuple[bool, list[float | None]]:
    """One turn of the agent's objective: whether it started an engine, and what its trials got."""
    trial = study.ask()
    fixed = optuna_api.enqueued_params(trial, study)
    members = packs.pack(study, spec, ENGINE, trial, fixed, "bench")
    if fixed is None:
        packs.answer_twin(study, members[0])
    started = any(m.early is None and m.copy_of is None for m in members)
    values = []
    for m in members[1:]:
        if m.copy_of is None:
            v = _measure(spec, m, table)
            _tell(study, m, v)
            values.append(v)

    def told(c: packs.Member) -> None:
        study.tell(c.trial, c.early)
        values.append(c.early)

    lead = _measure(spec, members[0], table)
    packs.tell_copies(study, members, lead, told)
    _tell(study, members[0], lead)
    return started, [lead, *values]


def run_one(job: tuple[str, tuple[str, str, str], str, int, int, int]) -> dict[str, Any]:
    data, key, sampler, k, seed, cap = job
    base, table, opt = _landscape(data, tuple(key), sampler)
    spec = base.model_copy(update={"sampler": base.sampler.model_copy(update={"seed": seed}), "trials_per_engine": k})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    enqueue_baseline(study, spec)
    curve: list[float] = []  # best so far after each engine start
    best, trials, trials_99 = 0.0, 0, None
    while len(curve) < cap and trials < MAX_TRIALS and best < opt:
        started, values = _one_pack(study, spec, table)
        trials += len(values)
        best = max([best, *(v for v in values if v is not None)])
        if trials_99 is None and best >= 0.99 * opt:
            trials_99 = trials
        if started:
            curve.append(best)
    curve += [best] * (cap - len(curve))  # at the optimum (or out of trials): it stays there
    hits = {lv: next((i + 1 for i, b in enumerate(curve) if b >= lv * opt), None) for lv in LEVELS}
    return {
        "key": key,
        "sampler": sampler,
        "k": k,
        "hits": hits,
        "at": {n: curve[n - 1] / opt for n in AT},
        "trials_99": trials_99,
    }


def _n(x: int | None) -> float:
    return math.inf if x is None else x


def _median_landscape(per: dict[tuple, list[dict]], of: Any) -> float:
    """Median over seeds per landscape, then the median landscape (as search_efficiency.py)."""
    return statistics.median(statistics.median(of(r) for r in v) for v in per.values())


def summarise(results: list[dict[str, Any]], cap: int) -> list[list[str]]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["sampler"], r["k"])].append(r)
    rows = []
    for (sampler, k), rs in sorted(groups.items()):
        per: dict[tuple, list[dict]] = defaultdict(list)
        for r in rs:
            per[tuple(r["key"])].append(r)
        med = {lv: _median_landscape(per, lambda r, lv=lv: _n(r["hits"][lv])) for lv in LEVELS}
        t99 = _median_landscape(per, lambda r: _n(r["trials_99"]))
        rows.append(
            [
                sampler,
                "1 (flat)" if k == 1 else str(k),
                str(len(per)),
                str(max(len(v) for v in per.values())),
                *(fmt_trials(med[lv], cap) for lv in LEVELS),
                *(f"{sum(_n(r['hits'][0.99]) <= w for r in rs) / len(rs):.0%}" for w in WITHIN),
                *(f"{statistics.mean(r['at'][n] for r in rs):.1%}" for n in AT),
                fmt_trials(t99, MAX_TRIALS),
            ]
        )
    return rows


HEAD = [
    "sampler",
    "K",
    "landscapes",
    "seeds",
    "starts to 95%",
    "starts to 99%",
    "99% in ≤5 starts",
    "≤10 starts",
    "best @3 starts",
    "@5",
    "@8",
    "trials to 99%",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="paper-landscapes.csv")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--samplers", default="tpe,random")
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--max-starts", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()
    data = Path(a.data)
    if not data.is_file():
        print(f"nested_search: {a.data}: no such file (pass the path of paper-landscapes.csv)", file=sys.stderr)
        return 2
    keys = landscapes(data)
    todo = [
        (str(data), k, s, int(kk), seed, a.max_starts)
        for s in a.samplers.split(",")
        for kk in a.ks.split(",")
        for k in keys
        for seed in range(a.seeds)
    ]
    t0 = time.time()
    with mp.get_context("fork").Pool(a.procs, initializer=_quiet) as pool:
        results = list(pool.imap_unordered(run_one, todo, chunksize=8))
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for row in summarise(results, a.max_starts):
        print("| " + " | ".join(row) + " |")
    print(f"\n{len(results)} runs in {time.time() - t0:.0f} s on {a.procs} processes; >{a.max_starts}: not reached")
    return 0


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")


if __name__ == "__main__":
    sys.exit(main())
