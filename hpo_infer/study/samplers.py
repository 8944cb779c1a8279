"""The spec's sampler and pruner, as Optuna objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo_infer.study import optuna_api
from hpo_infer.study.trials import BASELINE, ROLE

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec


SALT = 1_000_003  # a prime: ``seed + offset + SALT * salt`` keeps (offset, salt) pairs apart


class InSpaceOnly(optuna.samplers.BaseSampler):
    """The spec's sampler, shown only the trials that are points of the search space.

    The baseline (the engine's defaults) is enqueued with the defaults that lie in the space; a
    default outside it (vLLM's max_num_seqs 1024 in auto_tune.sh's {128, 256}) leaves the baseline
    without that parameter. Optuna's intersection search space, what GP, NSGA-II and multivariate
    TPE model, is over every finished trial: one without a parameter empties it for the whole
    study, and every later point was drawn at random (bench/pareto_search.py, BENCHMARKS.md). A
    baseline that is no point of the space tells the model nothing about the space, so the
    sampler does not see it; one with every parameter is a point, and is seen.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, names: set[str]) -> None:
        self.inner = inner
        self.names = names  # the space's parameters that every point has (no condition)

    def _off_space(self, t: FrozenTrial) -> bool:
        return t.user_attrs.get(ROLE) == BASELINE and not self.names <= t.params.keys()

    def _view(self, study: optuna.Study) -> Any:
        return optuna_api.StudyView(study, self._off_space)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)


def make_sampler(spec: "StudySpec", offset: int = 0, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler (shown the trials that are points of the space: :class:`InSpaceOnly`).
    ``offset`` (trials already in the study) shifts the seed on resume: a seeded sampler
    restarted with the same seed proposes the same start-up points again. ``salt`` (which load
    of the study this is) sets apart agents that start together."""
    names = {n for n, p in spec.space().items() if not p.when}
    return InSpaceOnly(_make(spec, offset, salt), names)


def _make(spec: "StudySpec", offset: int, salt: int) -> optuna.samplers.BaseSampler:
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
