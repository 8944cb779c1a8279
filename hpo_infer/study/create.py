"""Create a study, or load it to resume: the sampler re-seeded, the study's facts recorded once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer import __version__
from hpo_infer.model_source import model_label
from hpo_infer.study.naming import key_gpu
from hpo_infer.study.samplers import make_pruner, make_sampler

if TYPE_CHECKING:
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import StudySpec


def create_or_load(spec: "StudySpec", storage: Any, name: str, gpu: "GPUInfo") -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction=spec.objective.direction,
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
