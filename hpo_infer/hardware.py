"""What hardware a study runs on: GPU detection (nvidia-ml-py), fingerprint, roofline bound."""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo_infer.engines.base import Engine


@dataclass(frozen=True)
class GPUInfo:
    name: str  # "cpu" when there is no NVIDIA GPU
    count: int
    driver: str | None = None
    memory_bytes: int | None = None

    @property
    def label(self) -> str:
        """Short, stable name used in study keys, e.g. ``H100-80GB-HBM3x1`` or ``cpux1``."""
        short = re.sub(r"^NVIDIA[ _-]*", "", self.name).strip()
        short = re.sub(r"[^A-Za-z0-9.]+", "-", short).strip("-") or "gpu"
        return f"{short}x{self.count}"

    @classmethod
    def from_label(cls, label: str) -> "GPUInfo | None":
        """``H100-80GB-HBM3x1`` -> the GPU whose study-name label it is (studies measured on another host)."""
        m = re.fullmatch(r"(.+)x(\d+)", label.strip())
        return cls(m.group(1), int(m.group(2))) if m else None


def _visible_indices(total: int) -> list[int]:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None:
        return list(range(total))
    out = []
    for tok in vis.split(","):
        tok = tok.strip()
        if tok.isdigit() and int(tok) < total:
            out.append(int(tok))
    return out


def detect_gpus() -> GPUInfo:
    """NVIDIA GPUs visible to this process, via NVML; ``cpu`` when none (or no driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: a CPU host
        return GPUInfo("cpu", 1)
    try:
        idx = _visible_indices(pynvml.nvmlDeviceGetCount())
        if not idx:
            return GPUInfo("cpu", 1)
        h = pynvml.nvmlDeviceGetHandleByIndex(idx[0])
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        mem = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
        return GPUInfo(name, len(idx), driver, mem)
    finally:
        pynvml.nvmlShutdown()


def fingerprint(engine: "Engine | None" = None) -> dict[str, Any]:
    """Environment a measurement was taken in; called inside the worker, where torch may be."""
    gpu = detect_gpus()
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu_name": gpu.name,
        "gpu_count": gpu.count,
        "gpu_driver": gpu.driver,
        "gpu_memory_bytes": gpu.memory_bytes,
        "cpu_count": os.cpu_count(),
    }
    env["torch"] = env["cuda"] = None
    if engine is None or engine.uses_torch:
        try:
            import torch

            env["torch"] = torch.__version__
            env["cuda"] = torch.version.cuda
        except ImportError:
            pass
    if engine is not None:
        env["engine"] = engine.name
        env["engine_version"] = engine.version()
    return env
