"""The spec's sampler and pruner, as Optuna objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec


SALT = 1_000_003  # a prime: ``seed + offset + SALT * salt`` keeps (offset, salt) pairs apart


def make_sampler(spec: "StudySpec", offset: int = 0, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. ``offset`` (trials already in the study) shifts the seed on resume:
    a seeded sampler restarted with the same seed proposes the same start-up points again.
    ``salt`` (which load of the study this is) sets apart agents that start together."""
    s = spec.sampler
    if s.seed is not None and (offset or salt):
        s = s.model_copy(update={"seed": (s.seed + offset + SALT * salt) % 2**32})
    opts = dict(s.options)
    name = sampler_name(spec)
    if name == "tpe":
        opts.setdefault("n_startup_trials", 5)
        opts.setdefault("multivariate", True)
        opts.setdefault("group", any(p.when for p in spec.space().values()))
        return optuna.samplers.TPESampler(seed=s.seed, **opts)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if name == "gp":
        # One start-up trial (the baseline), not Optuna's 10: on the paper's 79 measured landscapes
        # the median one needed 10 trials to 99% of its optimum with 1, 11 with 2, 11.5 with 3 and
        # 15 with 5 (baseline included; BENCHMARKS.md, bench/search_efficiency.py).
        opts.setdefault("n_startup_trials", 1)
        return optuna.samplers.GPSampler(seed=s.seed, **opts)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed, **opts)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, **opts)
    # Grid: every point is enqueued up front (see agent.enqueue_grid); the sampler only ever
    # sees enqueued trials, so no point is measured twice, even with many agents.
    return optuna.samplers.RandomSampler(seed=s.seed)


def sampler_name(spec: "StudySpec") -> str:
    """The sampler a spec gets; ``auto`` (the default) is GP, or TPE where GP does not fit.

    GP found the optimum of the paper's measured landscapes in fewer trials than TPE
    (bench/search_efficiency.py), and, multi-objective (objective.metrics, Optuna's logEHVI),
    99.4% of a synthetic throughput-TTFT front's hypervolume in 25 trials where TPE, NSGA-II,
    random and a single-objective search with a TTFT constraint had 86-89% (bench/pareto_search.py).
    TPE stays for spaces with conditional parameters (GP models a fixed space and would sample
    those at random) and where torch, which GP needs, is missing.
    """
    name = spec.sampler.name
    if name != "auto":
        return name
    import importlib.util

    if any(p.when for p in spec.space().values()) or importlib.util.find_spec("torch") is None:
        return "tpe"
    return "gp"


def make_pruner(spec: "StudySpec") -> optuna.pruners.BasePruner:
    if spec.pruner.name == "median":
        opts = {"n_startup_trials": 3, "n_warmup_steps": 0, **spec.pruner.options}
        return optuna.pruners.MedianPruner(**opts)
    return optuna.pruners.NopPruner()
