"""Roofline: the most output tokens/s a model could reach on a GPU, to judge a measured best.

Two ceilings, the lower one binds:

* **compute**: every token (prompt and output) costs ``2 x params_per_token`` FLOPs in the
  matmuls plus causal attention (``2 x layers x heads x head_dim x T(T+1)`` per request of
  ``T`` tokens), at the GPU's peak. The peak is the datasheet's *dense* bf16/fp16 tensor-core
  figure (no sparsity) unless ``tflops=`` is given: DESIGN.md's ~24,600 tok/s for Llama-3-8B
  used ~790 TFLOP/s measured on an H100 SXM (80% of its 989).
* **memory traffic**: each decode step reads the weights once plus the KV cache of every
  sequence in the batch; the batch is as large as the KV cache memory left after the weights
  allows. Optimistic on purpose (a bound): activations and fragmentation are ignored.

For Llama-3.1-8B at 128 in / 128 out the compute ceiling binds on every GPU in the table but
the L4 (24 GB at 300 GB/s). With 790 TFLOP/s on an H100 this gives ~26,200 tok/s: DESIGN.md's
24,600 counted all 8.0e9 parameters, the embedding table included, which costs no matmul FLOPs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hpo_infer.model_source import params_per_token


@dataclass(frozen=True)
class GPUSpec:
    name: str
    tflops: float  # dense bf16 (fp16 on V100) tensor-core peak, datasheet
    hbm_gb_s: float  # memory bandwidth, GB/s (1e9)
    memory_gb: float
    note: str = ""


# NVIDIA datasheet figures (dense, i.e. half the "with sparsity" numbers).
GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("H100 SXM", 989.4, 3350, 80),
        GPUSpec("H100 PCIe", 756.0, 2000, 80),
        GPUSpec("H100 NVL", 835.0, 3900, 94),
        GPUSpec("H200", 989.4, 4800, 141, "SXM; same compute as H100 SXM, more and faster memory"),
        GPUSpec("A100 80GB", 312.0, 2039, 80, "SXM4; the PCIe card has 1935 GB/s"),
        GPUSpec("A100 40GB", 312.0, 1555, 40),
        GPUSpec("V100", 125.0, 900, 32, "no bf16: fp16 tensor-core peak (SXM2)"),
        GPUSpec("L4", 121.0, 300, 24),
        GPUSpec("L40S", 362.0, 864, 48),
        GPUSpec("A10", 125.0, 600, 24),
        GPUSpec("A10G", 70.0, 600, 24, "AWS variant of the A10: less tensor compute, same memory"),
        GPUSpec("RTX 4090", 165.2, 1008, 24, "bf16 with fp32 accumulate"),
    )
}

# NVML names ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla V100-SXM2-32GB") -> table.
_PATTERNS = (
    (r"H200", "H200"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIE", "H100 PCIe"),
    (r"H100", "H100 SXM"),
    (r"A100.*40\s*G", "A100 40GB"),
    (r"A100", "A100 80GB"),
    (r"V100", "V100"),
    (r"L40S", "L40S"),
    (r"(^|[^A-Z0-9])L4([^0-9]|$)", "L4"),
    (r"A10G", "A10G"),
    (r"(^|[^A-Z0-9])A10([^0-9G]|$)", "A10"),
    (r"4090", "RTX 4090"),
)


def lookup(gpu_name: str) -> GPUSpec:
    """The table entry for a GPU name as NVML or a user writes it; ValueError when unknown."""
    up = gpu_name.upper()
    for key, g in GPUS.items():
        if up == key.upper():
            return g
    for pattern, key in _PATTERNS:
        if re.search(pattern, up):
            return GPUS[key]
    raise ValueError(f"no roofline data for GPU {gpu_name!r} (known: {', '.join(GPUS)})")


@dataclass(frozen=True)
class Roofline:
    gpu: str
    n_gpus: int
    peak_tflops: float  # per GPU, as used
    flops_per_request: float
    compute_tok_s: float  # output tokens/s at the compute ceiling
    memory_tok_s: float  # output tokens/s at the memory-traffic ceiling
    max_batch: int  # sequences whose KV cache fits beside the weights

    @property
    def bound_tok_s(self) -> float:
        return min(self.compute_tok_s, self.memory_tok_s)

    @property
    def bound_by(self) -> str:
        return "compute" if self.compute_tok_s <= self.memory_tok_s else "memory"


def _arch(cfg: dict[str, Any]) -> tuple[int, int, int, int]:
    h = cfg.get("hidden_size") or cfg.get("n_embd")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    return int(layers), int(heads), int(kv), int(head_dim)


def roofline(
    model_cfg: dict[str, Any],
    gpu_name: str,
    n_gpus: int = 1,
    input_tokens: int = 128,
    output_tokens: int = 128,
    tflops: float | None = None,
    bytes_per_param: float = 2.0,
    memory_utilization: float = 0.9,
) -> Roofline:
    """Both ceilings for a batched offline workload of fixed-length requests."""
    g = lookup(gpu_name)
    peak = float(tflops or g.tflops)
    n = params_per_token(model_cfg)
    layers, heads, kv, head_dim = _arch(model_cfg)
    total = input_tokens + output_tokens
    flops = 2.0 * n * total + 2.0 * layers * heads * head_dim * total * (total + 1)
    compute = peak * 1e12 * n_gpus / flops * output_tokens

    weights = n * bytes_per_param
    kv_per_token = 2.0 * layers * kv * head_dim * bytes_per_param
    free = n_gpus * g.memory_gb * 1e9 * memory_utilization - weights
    batch = max(0, int(free // (kv_per_token * total)))
    if batch == 0:
        memory = 0.0
    else:
        step_bytes = weights + batch * kv_per_token * (input_tokens + output_tokens / 2)
        memory = batch / (step_bytes / (g.hbm_gb_s * 1e9 * n_gpus))
    return Roofline(g.name, n_gpus, peak, flops, compute, memory, batch)


def compute_bound_tok_s(
    model_cfg: dict[str, Any],
    gpu_name: str,
    n_gpus: int = 1,
    input_tokens: int = 128,
    output_tokens: int = 128,
    tflops: float | None = None,
) -> float:
    """The roofline bound in output tokens/s: the lower of the compute and memory ceilings."""
    return roofline(model_cfg, gpu_name, n_gpus, input_tokens, output_tokens, tflops).bound_tok_s
