"""One Optuna study per (engine, model, GPU, workload): naming, sampler/pruner factory, creation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer import __version__
from hpo_infer.models import model_label
from hpo_infer.workload import label as workload_label

if TYPE_CHECKING:
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import StudySpec

# Keys of our attributes on Optuna trials and studies.
ROLE = "hpo_infer_role"  # "baseline" | "grid" | "carried_over" | "warm_start"
BASELINE = "baseline"
CONSTRAINT = "feasible"  # constraint name: > 0 means infeasible
# Trial attr: the number of the earlier trial that measured these very settings. Samplers
# re-propose points of small discrete spaces; the agent tells the earlier result instead of
# measuring again, so the point has one representative in rankings (the earlier trial).
DUPLICATE_OF = "duplicate_of"


def key_gpu(spec: "StudySpec", gpu: "GPUInfo") -> "GPUInfo":
    """The GPU a study's key names: the host's, or the one an engine replays measurements of."""
    from hpo_infer.engines import engine_class

    recorded = getattr(engine_class(spec.engine), "recorded_gpu", None)
    return recorded(spec) if recorded is not None else gpu


def study_name(spec: "StudySpec", gpu: "GPUInfo") -> str:
    """``{engine}:{model}:{gpu}x{n}:{workload}``, stable across runs, so re-running resumes."""
    gpu = key_gpu(spec, gpu)
    parts = [spec.engine, model_label(spec.model.model_dump(exclude_none=True)), gpu.label,
             workload_label(spec.workload.model_dump(exclude_none=True))]
    if spec.objective.slo:  # other targets, other feasible set: another study, not a resume
        parts.append("slo-" + ",".join(f"{k}={v:g}" for k, v in sorted(spec.objective.slo.items())))
    if spec.objective.metric != "throughput":  # another value per trial: another study
        parts.append(spec.objective.metric)
    return ":".join(parts)


def make_sampler(spec: "StudySpec", offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. ``offset`` (trials already in the study) shifts the seed on resume:
    a seeded sampler restarted with the same seed proposes the same start-up points again."""
    s = spec.sampler
    if s.seed is not None and offset:
        s = s.model_copy(update={"seed": s.seed + offset})
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
    # Grid: every point is enqueued up front (see agent.enqueue_grid); the sampler only ever
    # sees enqueued trials, so no point is measured twice, even with many agents.
    return optuna.samplers.RandomSampler(seed=s.seed)


def sampler_name(spec: "StudySpec") -> str:
    """The sampler a spec gets; ``auto`` (the default) is GP, or TPE where GP does not fit.

    GP found the optimum of the paper's measured landscapes in fewer trials than TPE
    (bench/search_efficiency.py). TPE stays for spaces with conditional parameters (GP models a
    fixed space and would sample those at random) and where torch, which GP needs, is missing.
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


def create_or_load(spec: "StudySpec", storage: Any, name: str, gpu: "GPUInfo") -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction="maximize",
        load_if_exists=True,
    )
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = make_sampler(spec, offset=existing)
    attrs = study.user_attrs
    gpu = key_gpu(spec, gpu)
    if "engine" not in attrs:
        from hpo_infer.engines import engine_class

        info = {
            "engine": spec.engine,
            "engine_version": engine_class(spec.engine).version(),
            "model": model_label(spec.model.model_dump(exclude_none=True)),
            "model_spec": spec.model.model_dump(exclude_none=True),
            "workload": spec.workload.model_dump(exclude_none=True),
            "gpu": gpu.name,
            "gpu_count": gpu.count,
            "hpo_infer_version": __version__,
            "optuna_version": optuna.__version__,
            "spec": spec.model_dump(mode="json", exclude={"storage"}),
        }
        for k, v in info.items():
            study.set_user_attr(k, v)
    return study


def meets_constraints(t: optuna.trial.FrozenTrial) -> bool:
    """Feasible and within every SLO target: no Optuna constraint above 0."""
    return all(v <= 0 for v in t.constraints.values())


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if meets_constraints(t)]


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    for t in feasible_trials(study):
        if t.user_attrs.get(ROLE) == BASELINE:
            return t
    return None


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials, best first; a re-proposed point counts once (its first measurement)."""
    points = [t for t in feasible_trials(study) if DUPLICATE_OF not in t.user_attrs]
    return sorted(points, key=lambda t: t.value or 0.0, reverse=True)


def settings_of(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The engine settings a trial ran with: its params plus the spec's fixed settings."""
    return {**t.user_attrs.get("fixed", {}), **t.params}
