"""Every study names its value (Optuna's metric names): what the dashboard and plots label it."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from conftest import fault_spec

from hpo_infer.hardware import GPUInfo
from hpo_infer.spec.study_spec import ObjectiveSpec, from_dict
from hpo_infer.study.create import create_or_load

CPU = GPUInfo(name="cpu", count=1)


def _storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_a_throughput_study_is_named_output_tokens_per_s(tmp_path: Path) -> None:
    spec = from_dict(fault_spec())
    study = create_or_load(spec, _storage(tmp_path), "s", CPU)
    assert study.metric_names == ["output tokens/s"]
    again = optuna.load_study(study_name="s", storage=_storage(tmp_path))
    assert again.metric_names == ["output tokens/s"]


def test_a_goodput_study_is_named_goodput(tmp_path: Path) -> None:
    spec = from_dict(fault_spec())
    spec = spec.model_copy(update={"objective": ObjectiveSpec(metric="goodput", slo={"p99_ttft_ms": 500})})
    study = create_or_load(spec, _storage(tmp_path), "g", CPU)
    assert study.metric_names == ["goodput output tokens/s"]


def test_a_resumed_study_without_names_gets_them_and_named_ones_are_kept(tmp_path: Path) -> None:
    spec = from_dict(fault_spec())
    optuna.create_study(study_name="old", storage=_storage(tmp_path), direction="maximize")
    assert optuna.load_study(study_name="old", storage=_storage(tmp_path)).metric_names is None
    assert create_or_load(spec, _storage(tmp_path), "old", CPU).metric_names == ["output tokens/s"]

    named = optuna.create_study(study_name="named", storage=_storage(tmp_path), direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        named.set_metric_names(["tokens/s as named before"])
    assert create_or_load(spec, _storage(tmp_path), "named", CPU).metric_names == ["tokens/s as named before"]
