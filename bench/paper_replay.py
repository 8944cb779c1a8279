"""Shared by the two paper benchmarks: the paper's landscapes as replay specs, and one search.

Each landscape (gpu, engine, model; 5 generated tokens) of ``paper-landscapes.csv`` becomes a
replay spec validated by ``hpo_infer.spec.from_dict``, as a user's spec would be. A search drives
Optuna in process with the product's pieces: ``study.make_sampler``, ``agent.enqueue_baseline``
/ ``enqueue_grid``, ``space.suggest`` and ``ReplayEngine.lookup`` (the rules the replay engine
applies in its worker). What it skips is the worker process per trial (seconds each), which the
integration tests cover (tests/test_replay.py, tests/test_transfer.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from hpo_infer import recorded
from hpo_infer.agent.outcome import mark_feasible, mark_infeasible, retry
from hpo_infer.agent.packs import suggest
from hpo_infer.agent.seeding import enqueue_baseline, enqueue_grid
from hpo_infer.engines.replay import PAPER_BATCH_SIZES, PAPER_NUM_GPUS, ReplayEngine
from hpo_infer.spec import StudySpec, from_dict
from hpo_infer.spec import space as sp
from hpo_infer.study.samplers import make_sampler

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "paper-landscapes.csv"
TOKENS = 5  # the paper's tables, plots and HPO use 5 generated tokens only

# The paper's 44 points, written two ways a user could write them.
SPACES: dict[str, dict[str, Any]] = {
    # exact recorded values, as studies/replay-*.yaml and studies/paper/*.yaml write them
    "categorical": {
        "search_space": {
            "batch_size": {"type": "categorical", "choices": list(PAPER_BATCH_SIZES)},
            "num_gpus": {"type": "categorical", "choices": list(PAPER_NUM_GPUS)},
        },
        "snap": "exact",
    },
    # ordered ranges, as the engines' default spaces are written; the grid of an int+log range
    # is its powers of two (44 points), and replay snaps 1024 -> 1028, 700 -> 512
    "int-log": {
        "search_space": {
            "batch_size": {"type": "int", "low": 1, "high": 1024, "log": True},
            "num_gpus": {"type": "int", "low": 1, "high": 8, "log": True},
        },
        "snap": "nearest",
    },
}


def landscapes(data: Path) -> list[tuple[str, str, str]]:
    """(gpu, engine, model) of every landscape with 5-token rows, in file order."""
    table = recorded.read(data)
    seen: dict[tuple[str, str, str], None] = {}
    for r in table.select({"max_new_tokens": TOKENS}):
        seen.setdefault((str(r.cells["gpu"]), str(r.cells["engine"]), str(r.cells["model"])), None)
    return list(seen)


def replay_spec(
    data: Path,
    key: tuple[str, str, str],
    space: str = "categorical",
    sampler: str | None = None,
    seed: int | None = None,
    trials: int = 44,
    options: dict[str, Any] | None = None,
) -> StudySpec:
    """The spec a user would write to replay one landscape (paper semantics: absent rows and
    OOM runs without a value are infeasible; OOM runs with a partial value keep it, as the paper did)."""
    gpu, engine, model = key
    s = SPACES[space]
    raw: dict[str, Any] = {
        "engine": "replay",
        "model": {"id": model},
        "workload": {"kind": "synthetic", "prompts": 1033, "input_tokens": 1, "output_tokens": TOKENS},
        "fixed": {
            "table": str(data),
            "gpu": gpu,
            "engine": engine,
            "model": model,
            "max_new_tokens": TOKENS,
            "missing": "infeasible",
            "oom_partial": "value",
            "snap": s["snap"],
        },
        "search_space": s["search_space"],
        "budget": {"trials": trials},
        "repeats": 1,
        "validate_finalists": False,
    }
    if sampler is not None:
        raw["sampler"] = {"name": sampler, "seed": seed, "options": options or {}}
    return from_dict(raw, f"{engine}/{gpu}/{model}", storage_override="sqlite:///unused.db")


def value_of(settings: dict[str, Any]) -> recorded.Resolved:
    return ReplayEngine.lookup(settings)[2]


def optimum(spec: StudySpec) -> float:
    """The best recorded throughput over every point of the space (exhaustive)."""
    vals = [value_of({**spec.fixed, **pt}) for pt in sp.grid(spec.space())]
    return max(r.value for r in vals if r.status == recorded.FEASIBLE)  # type: ignore[type-var]


@dataclass
class Search:
    """One search: what each trial measured, in order (0.0 for an infeasible or failed trial)."""

    values: list[float] = field(default_factory=list)
    study: optuna.Study | None = None


def search(
    spec: StudySpec,
    max_trials: int,
    stop: Callable[[float], bool] | None = None,
    prepare: Callable[[optuna.Study], None] | None = None,
    after: Callable[[optuna.Study], None] | None = None,
) -> Search:
    """The agent's loop in process: baseline first (then ``prepare``'s enqueues, e.g. transfer's),
    the grid enqueued for the grid sampler, constraints set as the agent sets them, a failed
    trial retried once, ``after`` called after each trial (as the agent's trial callback)."""
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    (prepare or (lambda s: enqueue_baseline(s, spec)))(study)
    if spec.sampler.name == "grid":
        enqueue_grid(study, spec)
    out = Search(study=study)
    while len(out.values) < max_trials:
        if spec.sampler.name == "grid" and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
        trial = study.ask()
        params, settings = suggest(trial, spec)  # the agent's own: baseline params, fixed settings
        res = value_of(settings)
        if res.status == recorded.FEASIBLE:
            mark_feasible(trial, spec, {})
            study.tell(trial, float(res.value))  # type: ignore[arg-type]
            out.values.append(float(res.value))  # type: ignore[arg-type]
        elif res.status == recorded.FAILED:
            study.tell(trial, state=TrialState.FAIL)
            out.values.append(0.0)
            retry(study, trial, params, stopping=False)
        else:
            study.tell(trial, mark_infeasible(trial, spec))
            out.values.append(0.0)
        if after is not None:
            after(study)
        if stop is not None and stop(max(out.values)):
            break
    return out


def fmt_trials(n: float, cap: int) -> str:
    return f">{cap}" if math.isinf(n) else (f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}")
