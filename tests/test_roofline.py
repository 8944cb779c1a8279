"""Roofline bound: FLOPs per token and memory traffic against the GPU table."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from hpo_infer import roofline
from hpo_infer.model_source import PRESETS

LLAMA_8B = SHARED_DATA / "model-configs" / "llama-3.1-8b.json"


@pytest.fixture
def llama8b() -> dict:
    if not LLAMA_8B.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    return json.loads(LLAMA_8B.read_text())


@pytest.mark.parametrize(
    "nvml, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("Tesla V100-SXM2-32GB", "V100"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("h100 sxm", "H100 SXM"),
    ],
)
def test_lookup_nvml_names(nvml: str, key: str) -> None:
    assert roofline.lookup(nvml).name == key


def test_unknown_gpu_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no roofline data for GPU 'cpu'.*H100 SXM"):
        roofline.lookup("cpu")


def test_design_anchor_llama8b_h100(llama8b: dict) -> None:
    # DESIGN.md: ~24,600 tok/s at ~790 TFLOP/s with 8e9 params; our 7.5e9 matmul params give more.
    at_790 = roofline.compute_bound_tok_s(llama8b, "NVIDIA H100 80GB HBM3", tflops=790)
    assert 25_500 < at_790 < 27_000
    expected = 790e12 / (2 * 8e9 * 256) * 128
    assert at_790 == pytest.approx(expected * 8e9 / 7.5e9, rel=0.02)
    r = roofline.roofline(llama8b, "H100 SXM")
    assert r.peak_tflops == pytest.approx(989.4)
    assert r.bound_by == "compute"
    assert r.bound_tok_s == pytest.approx(at_790 * 989.4 / 790, rel=1e-9)
    assert 1_000 < r.max_batch < 3_000  # ~57 GB of KV at 128 KiB/token over 256 tokens


def test_scales_with_gpus_and_peak(llama8b: dict) -> None:
    one = roofline.roofline(llama8b, "A100 80GB")
    two = roofline.roofline(llama8b, "A100 80GB", n_gpus=2)
    assert two.compute_tok_s == pytest.approx(2 * one.compute_tok_s)
    assert two.memory_tok_s > one.memory_tok_s
    assert roofline.roofline(llama8b, "H200").compute_tok_s == pytest.approx(
        roofline.roofline(llama8b, "H100 SXM").compute_tok_s
    )
    assert roofline.roofline(llama8b, "H200").memory_tok_s > roofline.roofline(llama8b, "H100 SXM").memory_tok_s


def test_memory_bound_binds_on_a_small_slow_card(llama8b: dict) -> None:
    r = roofline.roofline(llama8b, "L4")
    assert r.bound_by == "memory"
    assert r.bound_tok_s == r.memory_tok_s < r.compute_tok_s


def test_model_that_does_not_fit_has_zero_bound() -> None:
    huge = {
        **PRESETS["tiny-llama"],
        "hidden_size": 16384,
        "intermediate_size": 65536,
        "num_hidden_layers": 120,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "head_dim": 128,
    }
    r = roofline.roofline(huge, "L4")
    assert r.max_batch == 0 and r.bound_tok_s == 0.0


def test_longer_requests_cost_more_per_output_token(llama8b: dict) -> None:
    short = roofline.compute_bound_tok_s(llama8b, "H100 SXM", input_tokens=128, output_tokens=128)
    long_prompt = roofline.compute_bound_tok_s(llama8b, "H100 SXM", input_tokens=1024, output_tokens=128)
    assert long_prompt < short / 4
