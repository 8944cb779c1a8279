"""The study spec: a YAML file validated into a :class:`StudySpec`, with one-line errors that name
the file and key. ``space`` turns its search space into Optuna distributions."""

from hpo_infer.spec.space import Param
from hpo_infer.spec.study_spec import (
    BudgetSpec,
    MeasurementSpec,
    ModelSpec,
    ObjectiveSpec,
    PrunerSpec,
    SamplerSpec,
    StudySpec,
    WorkloadSpec,
    from_dict,
    load,
    read_yaml,
)

__all__ = [
    "BudgetSpec",
    "MeasurementSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "Param",
    "PrunerSpec",
    "SamplerSpec",
    "StudySpec",
    "WorkloadSpec",
    "from_dict",
    "load",
    "read_yaml",
]
