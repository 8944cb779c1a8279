"""Engine registry. Engine modules are import-light; heavy imports happen inside ``run``."""

from __future__ import annotations

import importlib

from hpo_infer.engines.base import AUTO, Engine, Setting

_REGISTRY = {
    "hf": "hpo_infer.engines.hf:HFEngine",
    "vllm": "hpo_infer.engines.vllm:VLLMEngine",
    "vllm-serve": "hpo_infer.engines.vllm_serve:VLLMServeEngine",
    "replay": "hpo_infer.engines.replay:ReplayEngine",
    "fault": "hpo_infer.engines.fault:FaultEngine",
}

__all__ = ["AUTO", "Engine", "Setting", "engine_class", "engine_names", "load_engine"]


def engine_names() -> list[str]:
    return sorted(_REGISTRY)


def engine_class(name: str) -> type[Engine]:
    module, _, attr = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_engine(name: str) -> Engine:
    return engine_class(name)()
