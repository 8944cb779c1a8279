"""HuggingFace transformers engine: the paper's ``pipeline("text-generation")`` path and the
``model.generate`` path, with the settings people tune on it.

Import-light: torch and transformers are imported inside :meth:`HFEngine.run` only.
"""

from __future__ import annotations

import json
import resource
import time
from typing import TYPE_CHECKING, Any

from hpo_infer.engines.base import Emit, Engine, Setting
from hpo_infer.measurement.protocol import PHASE, STARTED

if TYPE_CHECKING:
    from hpo_infer.measurement.protocol import TrialRequest
    from hpo_infer.measurement.result import EngineResult

_INFEASIBLE_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cudagraphs",  # static cache + reduce-overhead: "accessing tensor output of CUDAGraphs ..."
    "not supported",
    "does not support",
    "flash_attn",
    "flashattention",
)


# What the fork server imports for HF trials (the model class itself loads lazily, per model).
PRELOAD = (
    "torch",
    "transformers:AutoModelForCausalLM",
    "transformers:AutoTokenizer",
    "transformers:pipeline",
    "accelerate",
)


class HFEngine(Engine):
    name = "hf"
    distribution = "transformers"
    native_export = "hf-kwargs"
    title = "HuggingFace"
    import_name = "transformers"
    preload = PRELOAD
    client_side = ("batch_size", "path", "cache_implementation")  # arguments of each generate call
    _kept: tuple[str, Any, Any] | None = None  # (reuse key, tokenizer, model) left loaded
    settings = (
        Setting(
            "path",
            "categorical",
            "pipeline",
            choices=("pipeline", "generate"),
            help="pipeline('text-generation') as the paper measured, or model.generate on padded batches",
        ),
        Setting(
            "batch_size",
            "int",
            1,
            low=1,
            high=65536,
            help="prompts per forward batch (the paper's batch size)",
            space={"type": "int", "low": 1, "high": 256, "log": True},
        ),
        Setting(
            "dtype",
            "categorical",
            "float32",
            choices=("float32", "bfloat16", "float16"),
            space={"type": "categorical", "choices": ["float32", "bfloat16"]},
        ),
        Setting(
            "attn_implementation",
            "categorical",
            "sdpa",
            choices=("eager", "sdpa", "flash_attention_2"),
            space={"type": "categorical", "choices": ["eager", "sdpa"]},
        ),
        Setting(
            "cache_implementation",
            "categorical",
            "dynamic",
            choices=("dynamic", "static"),
            space={"type": "categorical", "choices": ["dynamic", "static"]},
        ),
        Setting(
            "torch_compile",
            "categorical",
            "off",
            choices=("off", "default", "reduce-overhead", "max-autotune"),
            help="torch.compile the forward pass with this mode",
        ),
        Setting("num_gpus", "int", 1, low=1, high=64, help="GPUs the model is spread over (device_map)"),
        Setting(
            "device_map",
            "categorical",
            "auto",
            choices=("auto", "balanced", "sequential"),
            help="how layers are placed over num_gpus GPUs (accelerate)",
        ),
    )

    def check(self, params: dict[str, Any], host_gpus: int) -> str | None:
        n = params.get("num_gpus", 1)
        if n > max(host_gpus, 1):
            return f"num_gpus={n} but the host has {host_gpus} GPU(s)"
        return None

    def classify(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}".lower()
        if isinstance(exc, (MemoryError, ValueError, ImportError, NotImplementedError)):
            return "infeasible"
        if any(m in text for m in _INFEASIBLE_MARKERS):
            return "infeasible"
        return "failed"

    @classmethod
    def export_native(cls, settings: dict[str, Any], model: str, extra: tuple[str, ...] = ()) -> str:
        return json.dumps(cls.kwargs(settings), indent=2)

    @classmethod
    def kwargs(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings as the keyword arguments transformers takes, grouped by the call they go to."""
        p = {**cls.defaults(), **settings}
        load: dict[str, Any] = {"dtype": p["dtype"], "attn_implementation": p["attn_implementation"]}
        if p["num_gpus"] > 1:
            load["device_map"] = p["device_map"]
        out: dict[str, Any] = {
            "from_pretrained": load,
            "generate": {"cache_implementation": p["cache_implementation"], "do_sample": False},
        }
        if p["path"] == "pipeline":
            out["pipeline"] = {"task": "text-generation", "batch_size": p["batch_size"]}
        else:
            out["batch_size"] = p["batch_size"]
        if p["torch_compile"] != "off":
            out["torch_compile"] = {"mode": p["torch_compile"]}
        if p["num_gpus"] > 1:
            out["visible_gpus"] = p["num_gpus"]
        return out

    # ---- worker side -------------------------------------------------------------------
    def run(self, request: "TrialRequest", emit: Emit) -> "EngineResult":
        """Load (or reuse) the model, then measure. The loaded model is kept for the next config
        of this worker when only client-side settings differ (:meth:`reuse_key`)."""
        import torch

        p = {**self.defaults(), **request.params}
        emit(PHASE, {"phase": "loading"})
        cuda = torch.cuda.is_available()
        key = json.dumps([self.reuse_key(p), request.model, request.seed], sort_keys=True, default=str)
        reused = self._kept is not None and self._kept[0] == key
        if reused:
            tok, model, start_s = self._kept[1], self._kept[2], 0.0  # same load settings: no new start
        else:
            self.close()
            t0 = time.perf_counter()
            tok, model = self._load(request, p, cuda)
            start_s = time.perf_counter() - t0
            self._kept = (key, tok, model)
        device = next(model.parameters()).device
        emit(STARTED, {"start_s": start_s, "resolved": {**p, "device": str(device), "engine_reused": reused}})
        try:
            return self._measure(request, emit, p, tok, model, device, cuda, start_s)
        except BaseException:
            self.close()  # a model that broke mid-run (OOM) is not handed to the next config
            raise

    def close(self) -> None:
        """Drop the kept model and give its GPU memory back before the next one loads."""
        if self._kept is None:
            return
        self._kept = None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, request: "TrialRequest", p: dict[str, Any], cuda: bool) -> tuple[Any, Any]:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from hpo_infer import model_source as models

        path = models.resolve(request.model)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        dtype = getattr(torch, p["dtype"])
        n_gpus = int(p["num_gpus"])
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": p["attn_implementation"]}
        if "synthetic" in request.model:
            config = AutoConfig.from_pretrained(path)
            torch.manual_seed(request.seed)
            model = _random_model(AutoModelForCausalLM, config, kwargs, cuda, n_gpus, p["device_map"])
        else:
            if cuda:
                kwargs["device_map"] = p["device_map"] if n_gpus > 1 else "cuda:0"
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        model.eval()
        model.generation_config.pad_token_id = tok.pad_token_id
        if p["torch_compile"] != "off":
            model.forward = torch.compile(model.forward, mode=p["torch_compile"])
        return tok, model

    def _measure(
        self,
        request: "TrialRequest",
        emit: Emit,
        p: dict[str, Any],
        tok: Any,
        model: Any,
        device: Any,
        cuda: bool,
        start_s: float,
    ) -> "EngineResult":
        import torch

        from hpo_infer import workload
        from hpo_infer.measurement.timing import PassResult, Rules, measure

        w = workload.load(request.workload, vocab_size=len(tok))
        texts = [tok.decode(ids) for ids in w.prompts] if w.is_tokens else list(w.prompts)
        ids = w.prompts if w.is_tokens else [tok(t)["input_ids"] for t in texts]
        bs = int(p["batch_size"])
        n_out = w.output_tokens
        gen_kwargs = {
            "max_new_tokens": n_out,
            "min_new_tokens": n_out,
            "do_sample": False,
            "cache_implementation": p["cache_implementation"],
        }
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        def generate_batches(batches: list[list[list[int]]]) -> PassResult:
            windows = []
            for chunk in batches:
                t = time.perf_counter()
                enc = tok.pad({"input_ids": chunk}, return_tensors="pt", padding=True).to(device)
                with torch.inference_mode():
                    out = model.generate(**enc, **gen_kwargs)
                sync()
                made = int(out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1]))
                windows.append((made, time.perf_counter() - t))
            return PassResult(sum(w[0] for w in windows), windows)

        batches = [ids[i : i + bs] for i in range(0, len(ids), bs)]
        # HF keeps no cache across generate calls, so every pass over the same prompts is cold.
        # Its first-seen shapes are not: a static cache and torch.compile compile per (batch,
        # padded length), so the warm-up runs one batch of every shape the passes run.
        firsts = list({(len(b), max(len(x) for x in b)): i for i, b in reversed(list(enumerate(batches)))}.values())
        if p["path"] == "generate":
            run_pass = lambda i: generate_batches(batches)  # noqa: E731
            warm = lambda: generate_batches([batches[i] for i in sorted(firsts)])  # noqa: E731
        else:
            from transformers import pipeline

            pipe = pipeline("text-generation", model=model, tokenizer=tok)

            def pipe_pass(items: list[str]) -> PassResult:
                t = time.perf_counter()
                with torch.inference_mode():
                    pipe(items, batch_size=bs, return_full_text=False, **gen_kwargs)
                sync()
                made = n_out * len(items)
                return PassResult(made, [(made, time.perf_counter() - t)])

            def pipe_warm() -> PassResult:
                parts = [pipe_pass(texts[i * bs : (i + 1) * bs]) for i in sorted(firsts)]
                return PassResult(sum(x.tokens for x in parts), [w for x in parts for w in x.windows])

            run_pass = lambda i: pipe_pass(texts)  # noqa: E731
            warm = pipe_warm
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = measure(run_pass, Rules.from_request(request.repeats, request.measurement), emit, warmup=warm)
        result.start_s = start_s
        result.peak_mem_bytes = (
            int(torch.cuda.max_memory_allocated())
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        return result


def _random_model(auto_cls, config, kwargs: dict[str, Any], cuda: bool, n_gpus: int, device_map: str):
    """Random weights straight on the device(s): no weight file is ever written or read."""
    import torch

    if not cuda:
        return auto_cls.from_config(config, **kwargs)
    if n_gpus <= 1:
        with torch.device("cuda:0"):
            return auto_cls.from_config(config, **kwargs)
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights():
        model = auto_cls.from_config(config, **kwargs)
    mm = {i: torch.cuda.get_device_properties(i).total_memory * 0.9 for i in range(n_gpus)}
    placement = (
        infer_auto_device_map(
            model,
            max_memory=mm,
            no_split_module_classes=model._no_split_modules,
            dtype=kwargs["dtype"],
        )
        if device_map != "sequential"
        else infer_auto_device_map(model, max_memory=mm, dtype=kwargs["dtype"])
    )
    for name, param in list(model.named_parameters()):  # buffers (rotary tables) stay as built
        dev = _device_for(name, placement)
        value = torch.empty(param.shape, dtype=param.dtype, device=dev).normal_(0, 0.02)
        set_module_tensor_to_device(model, name, dev, value=value)
    return dispatch_model(model, device_map=placement)


def _device_for(name: str, placement: dict[str, Any]) -> Any:
    best = ""
    for key in placement:
        if (key == "" or name == key or name.startswith(key + ".")) and len(key) >= len(best):
            best = key
    return placement[best]
