"""One Optuna study per (engine, model, GPU, workload): the study's name, stable across runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo_infer.model_source import model_label
from hpo_infer.workload import label as workload_label

if TYPE_CHECKING:
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import StudySpec


def key_gpu(spec: "StudySpec", gpu: "GPUInfo") -> "GPUInfo":
    """The GPU a study's key names: the host's, or the one an engine replays measurements of."""
    from hpo_infer.engines import engine_class

    return engine_class(spec.engine).recorded_gpu(spec) or gpu


def study_name(spec: "StudySpec", gpu: "GPUInfo") -> str:
    """``{engine}:{model}:{gpu}x{n}:{workload}``, stable across runs, so re-running resumes."""
    gpu = key_gpu(spec, gpu)
    parts = [
        spec.engine,
        model_label(spec.model.model_dump(exclude_none=True)),
        gpu.label,
        workload_label(spec.workload.model_dump(exclude_none=True)),
    ]
    if spec.objective.slo:  # other targets, other feasible set: another study, not a resume
        parts.append("slo-" + ",".join(f"{k}={v:g}" for k, v in sorted(spec.objective.slo.items())))
    if spec.objective.metric != "throughput":  # another value per trial: another study
        parts.append(spec.objective.metric)
    if spec.objective.multi:  # other objectives (Optuna directions): another study, never a resume
        parts.append("vs-" + ",".join(f"{k}-{v[:3]}" for k, v in spec.objective.measured().items()))
    return ":".join(parts)
