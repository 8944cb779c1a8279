"""Create a study, or load it to resume: the sampler re-seeded, the study's facts recorded once."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer import __version__
from hpo_infer.model_source import model_label
from hpo_infer.study.naming import key_gpu
from hpo_infer.study.samplers import make_pruner, make_sampler

if TYPE_CHECKING:
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import StudySpec
    from hpo_infer.spec.study_spec import ObjectiveSpec


SAMPLER_LOADS = "sampler_loads"  # study attr: how many times the study was loaded to run (a seed component)

# What a trial's value is, per objective.metric (see ObjectiveSpec): shown by Optuna's dashboard
# and plots in place of "Objective Value".
METRIC_NAMES = {"throughput": "output tokens/s", "goodput": "goodput output tokens/s"}


def metric_names(objective: "ObjectiveSpec") -> list[str]:
    """The study's metric names: the value's, then each further objective's (its own name)."""
    return [METRIC_NAMES[objective.metric], *objective.measured()]


def _name_metric(study: optuna.Study, spec: "StudySpec") -> None:
    """Name the value on a new study, and on a resumed one created before studies were named."""
    if study.metric_names is not None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names(spec.objective))


def create_or_load(spec: "StudySpec", storage: Any, name: str, gpu: "GPUInfo") -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        directions=spec.objective.directions(),
        load_if_exists=True,
    )
    _name_metric(study, spec)
    existing = len(study.get_trials(deepcopy=False))
    attrs = study.user_attrs
    # Every load of the study (an agent, a resume) draws its own start-up points: agents that
    # start together see the same trial count, and with one seed they proposed the same points
    # (an array of 3 SLURM tasks measured 4-6 distinct settings in 9 trials). Called under the
    # study lock (agent.start), so no two loads get one number.
    loads = int(attrs.get(SAMPLER_LOADS, 0))
    study.set_user_attr(SAMPLER_LOADS, loads + 1)
    if existing or loads:
        study.sampler = make_sampler(spec, offset=existing, salt=loads)
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
