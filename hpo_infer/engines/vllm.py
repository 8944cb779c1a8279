"""vLLM engine: offline ``vllm.LLM`` inside the isolated worker, and the settings people tune.

Import-light: vllm (and torch) are imported inside :meth:`VLLMEngine.run` only, in the
worker. The CLI process checks a spec against the installed vLLM through a child process
(:func:`hpo_infer.engines.vllm_check.preflight`), never by importing it.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hpo_infer.engines.base import AUTO, Emit, Engine, Setting
from hpo_infer.measurement.protocol import PHASE, STARTED

if TYPE_CHECKING:
    from hpo_infer.measurement.protocol import TrialRequest
    from hpo_infer.measurement.result import EngineResult
    from hpo_infer.spec import StudySpec

# Text of a failure that means the configuration cannot work (the sampler should avoid it).
_INFEASIBLE_MARKERS = (
    "out of memory",
    "outofmemory",
    "no available memory for the cache blocks",
    "larger than the available kv cache memory",
    "not enough kv cache",
    "insufficient memory",
    "available memory on node",  # CPU backend: gpu_memory_utilization above free RAM
    "not supported",
    "unsupported",
    "does not support",
)
_CONFIG_ERRORS = ("ValueError", "ValidationError", "NotImplementedError")
# An error line as vLLM's engine processes log it: "(EngineCore pid=1) ERROR ... [core.py:9] ValueError: ...".
_ERROR_LINE = re.compile(r"(?:^|\]\s)([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")
_WRAPPERS = ("Engine core initialization failed", "EngineDeadError", "WorkerProc initialization failed")


# The settings people tune, one row each (the STYLE's one table per engine): spec validation,
# the default space, the baseline and the `vllm serve` export all read it.
SETTINGS = (
    Setting(
        "max_num_seqs",
        "int",
        AUTO,
        low=1,
        high=1_000_000,
        flag="--max-num-seqs",
        help="most sequences in one scheduler step (vLLM picks it per GPU and usage context)",
        space={"type": "int", "low": 32, "high": 2048, "log": True},
    ),
    Setting(
        "max_num_batched_tokens",
        "int",
        AUTO,
        low=1,
        high=100_000_000,
        flag="--max-num-batched-tokens",
        help="token budget of one scheduler step (vLLM picks it per GPU and usage context)",
        space={"type": "int", "low": 2048, "high": 65536, "log": True},
    ),
    Setting(
        "gpu_memory_utilization",
        "float",
        AUTO,
        low=0.0,
        high=1.0,
        flag="--gpu-memory-utilization",
        help="share of GPU memory vLLM may take (weights + activations + KV cache); on CPU, of RAM",
        space={"type": "float", "low": 0.80, "high": 0.95},
    ),
    Setting(
        "block_size",
        "int",
        AUTO,
        low=1,
        high=4096,
        flag="--block-size",
        help="tokens per KV-cache block (the attention backend decides which it supports)",
        space={"type": "categorical", "choices": [16, 32, 64]},
    ),
    Setting(
        "enable_chunked_prefill",
        "bool",
        AUTO,
        flag="--enable-chunked-prefill",
        help="split long prefills across steps, mixing them with decodes",
        space={"type": "categorical", "choices": [True, False]},
    ),
    Setting(
        "enable_prefix_caching",
        "bool",
        AUTO,
        flag="--enable-prefix-caching",
        help="reuse KV blocks of shared prompt prefixes",
        space={"type": "categorical", "choices": [True, False]},
    ),
    Setting(
        "enforce_eager",
        "bool",
        False,
        flag="--enforce-eager",
        help="true: no CUDA graphs (and no torch.compile on CPU); eager PyTorch only",
        space={"type": "categorical", "choices": [False, True]},
    ),
    # Values are checked against the installed vLLM (its list grows with every release).
    Setting(
        "kv_cache_dtype",
        "categorical",
        "auto",
        flag="--kv-cache-dtype",
        help="KV-cache element type (auto = the model dtype; fp8 halves KV memory); any the installed vLLM takes",
        space={"type": "categorical", "choices": ["auto", "fp8"]},
    ),
    Setting(
        "dtype",
        "categorical",
        "auto",
        flag="--dtype",
        help="weights/activations dtype (auto = from the model config); any the installed vLLM takes",
    ),
    Setting(
        "tensor_parallel_size",
        "int",
        1,
        low=1,
        high=1024,
        flag="--tensor-parallel-size",
        help="GPUs the model is sharded over",
    ),
    Setting(
        "max_model_len",
        "int",
        AUTO,
        low=1,
        high=100_000_000,
        flag="--max-model-len",
        help="longest sequence (prompt + output) vLLM accepts; default: the model's context",
    ),
    Setting(
        "batch_size",
        "int",
        AUTO,
        low=1,
        high=100_000_000,
        help="client side: prompts per LLM.generate call (the paper's batch size); default all at once",
    ),
)


# Our settings that enter vLLM's torch.compile cache key (the torch_compile_cache/<hash> folder):
# VllmConfig.compute_hash (vllm/config/vllm.py) hashes the model, cache, parallel, scheduler and
# compilation configs. CacheConfig keeps block_size and cache_dtype (gpu_memory_utilization and
# enable_prefix_caching are ignored, vllm/config/cache.py); ModelConfig keeps dtype and
# max_model_len (enforce_eager is ignored there, vllm/config/model.py); ParallelConfig the TP
# size. SchedulerConfig adds no factor itself, but CompilationConfig hashes every field
# (vllm/config/compilation.py), and VllmConfig derives two of them from the scheduler: the
# compile-range split point max_num_batched_tokens, and the CUDA-graph capture sizes, up to
# min(2 * max_num_seqs, 512, max_num_batched_tokens). enforce_eager sets compilation mode NONE:
# no compile at all. The model, vLLM version, traced code and env vars enter the key too, but
# are the same within one study.
COMPILE_KEY = (
    "max_num_batched_tokens",
    "max_num_seqs",
    "block_size",
    "max_model_len",
    "enforce_eager",
    "kv_cache_dtype",
    "dtype",
    "tensor_parallel_size",
)
# Above this max_num_seqs the capture sizes stop growing (2 * 256 = vLLM's 512 cap): one key.
_SEQS_CAP = 256


class VLLMEngine(Engine):
    name = "vllm"
    distribution = "vllm"
    client_side = ("batch_size",)
    native_export = "vllm-cli"
    title = "vLLM"
    import_name = "vllm"
    # vLLM's engine core then forks from the trial process too (CUDA is not initialised in it).
    preload = ("torch", "vllm:LLM", "vllm:SamplingParams", "transformers:AutoTokenizer")
    _kept: tuple[str, Any, Any] | None = None  # (reuse key, LLM, prompts) of the engine left started
    settings = SETTINGS

    # ---- agent side ----------------------------------------------------------------------
    def check(self, params: dict[str, Any], host_gpus: int) -> str | None:
        tp = int(params.get("tensor_parallel_size", 1))
        if tp > 1 and tp > host_gpus:
            return f"tensor_parallel_size={tp} but the host has {host_gpus} GPU(s)"
        tokens, seqs = params.get("max_num_batched_tokens"), params.get("max_num_seqs")
        if tokens is not None and seqs is not None and tokens < seqs:
            return f"max_num_batched_tokens ({tokens}) < max_num_seqs ({seqs}): vLLM rejects it"
        max_len = params.get("max_model_len")
        # Without max_model_len the model's context length decides; vLLM's own config check
        # then rejects the pair in the worker, before any GPU memory is taken.
        if (
            params.get("enable_chunked_prefill") is False
            and tokens is not None
            and max_len is not None
            and tokens < max_len
        ):
            return (
                f"max_num_batched_tokens ({tokens}) < max_model_len ({max_len}) without chunked prefill: "
                "prompts longer than one step could never be scheduled"
            )
        return None

    @classmethod
    def preflight(cls, spec: "StudySpec") -> None:
        """Names and values the installed vLLM's own parser rejects: refused before any trial."""
        from hpo_infer.engines.vllm_check import preflight

        preflight(spec)

    @classmethod
    def export_native(cls, settings: dict[str, Any], model: str, extra: tuple[str, ...] = ()) -> str:
        import shlex

        return " ".join(shlex.quote(a) for a in ["vllm", "serve", model, *extra, *cls.cli_flags(settings)])

    @classmethod
    def cli_flags(cls, settings: dict[str, Any]) -> list[str]:
        """Settings as ``vllm serve`` flags, in table order; client-side and engine-resolved ones left out."""
        out: list[str] = []
        for s in cls.settings:
            v = settings.get(s.name)
            if s.flag is None or v is None or v == AUTO:
                continue
            if s.kind == "bool":
                out.append(s.flag if v else "--no-" + s.flag[2:])
            else:
                out += [s.flag, str(v)]
        return out

    @classmethod
    def engine_kwargs(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings as ``vllm.LLM`` keyword arguments (the names of vLLM's EngineArgs)."""
        return {
            s.name: settings[s.name]
            for s in cls.settings
            if s.flag is not None and settings.get(s.name) not in (None, AUTO)
        }

    def classify(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, MemoryError) or any(m in text.lower() for m in _INFEASIBLE_MARKERS):
            return "infeasible"
        if isinstance(exc, (ValueError, NotImplementedError)) or text.startswith(_CONFIG_ERRORS):
            return "infeasible"  # vLLM's config validation rejected the combination
        root = getattr(exc, "root_cause", "") or ""
        if root.startswith(_CONFIG_ERRORS):
            return "infeasible"
        return "failed"

    # ---- worker side ---------------------------------------------------------------------
    def run(self, request: "TrialRequest", emit: Emit) -> "EngineResult":
        os.environ.setdefault("VLLM_CACHE_ROOT", str(compile_cache_dir()))
        with _StderrTail() as tail:
            try:
                return self._run(request, emit)
            except (ValueError, NotImplementedError, MemoryError):
                raise  # raised here, in this process: the message is already the cause
            except Exception as exc:  # noqa: BLE001 - re-raised with the root cause vLLM logged
                root = tail.root_cause()
                if root and root not in str(exc):
                    raise VLLMError(f"{root} (vLLM raised {type(exc).__name__}: {exc})", root) from exc
                raise

    def _run(self, request: "TrialRequest", emit: Emit) -> "EngineResult":
        """Start (or reuse) the engine, then measure. The started engine is kept for the next
        config of this worker when only client-side settings differ (:meth:`reuse_key`)."""
        import vllm
        from vllm import LLM, SamplingParams

        from hpo_infer import model_source as models
        from hpo_infer.measurement.timing import PassResult, Rules, measure

        p = dict(request.params)
        emit(PHASE, {"phase": "loading"})
        key = json.dumps(
            [self.reuse_key(p), request.model, request.workload, request.seed], sort_keys=True, default=str
        )
        before: set[str] = set()  # vLLM's compiled-graph folders before and after a start
        compiled: set[str] = set()
        try:
            kept = self._kept
            if kept is not None and kept[0] == key:
                llm, prompts, start_s = kept[1], kept[2], 0.0  # same engine settings: no new start
            else:
                self.close()
                path = models.resolve(request.model)
                synthetic = "synthetic" in request.model
                kwargs = self.engine_kwargs(p)
                if synthetic:  # random weights, no tokenizer in the engine: prompts go in as token ids
                    kwargs.update(load_format="dummy", skip_tokenizer_init=True)
                kwargs["disable_log_stats"] = False  # the prefix-cache counters of every pass
                before = compile_entries(cache_root_now())
                t0 = time.perf_counter()
                llm = LLM(model=path, seed=request.seed, **kwargs)
                start_s = time.perf_counter() - t0
                compiled = compile_entries(cache_root_now())
                self._kept = (key, llm, None)
                prompts = _Prompts(request, llm, path, synthetic)
                self._kept = (key, llm, prompts)
            bs = int(p.get("batch_size") or prompts.count)
            resolved = {
                **_resolved(llm),
                "batch_size": min(bs, prompts.count),
                "vllm_version": vllm.__version__,
                "compile_cache": os.environ.get("VLLM_CACHE_ROOT"),
                "engine_reused": kept is not None and kept[0] == key,
            }
            if not resolved["engine_reused"]:  # a start: did it compile, or load the cache?
                resolved.update(compile_start(before, compiled, {**p, **_keyed(resolved)}))
            emit(STARTED, {"start_s": start_s, "resolved": resolved})
            rules = Rules.from_request(request.repeats, request.measurement)
            n_out = int(request.workload["output_tokens"])
            sampling = SamplingParams(max_tokens=n_out, min_tokens=n_out, ignore_eos=True, temperature=0.0)

            def run(batch: list[Any]) -> PassResult:
                if rules.cold:
                    # Fixed prompts: no pass may be served by the one before. Fresh prompts too:
                    # on the H200 a cache filling with earlier passes' blocks slowed later passes
                    # (eviction), 16,804 -> 14,820 tok/s over six repeats (BENCHMARKS.md).
                    llm.reset_prefix_cache()
                before = _cache_counters(llm)
                windows = []
                for i in range(0, len(batch), bs):
                    t = time.perf_counter()
                    outs = llm.generate(batch[i : i + bs], sampling, use_tqdm=False)
                    windows.append((sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - t))
                return PassResult(sum(w[0] for w in windows), windows, _cache_delta(before, _cache_counters(llm)))

            # Warm-up: fresh prompts through every step shape the timed passes run (filling the
            # batch, decoding at max_num_seqs, draining); CUDA graphs were captured at start.
            warm_n = max(64, int(resolved.get("max_num_seqs") or 0))
            result = measure(
                lambda i: run(prompts.draw(i if rules.cold else 0)),
                rules,
                emit,
                warmup=lambda: run(prompts.draw(0)[:warm_n]),
                expected_hit_rate=prompts.expected_hit_rate(int(resolved.get("block_size") or 16)),
            )
            result.start_s = start_s
            result.resolved = {**resolved, **result.resolved}
            result.peak_mem_bytes = _memory_in_use()
            return result
        except BaseException:
            self.close()  # an engine that broke mid-run is not handed to the next config
            raise

    def close(self) -> None:
        """End the kept engine's processes, so the next start (or the next worker) gets the memory."""
        kept, self._kept = self._kept, None
        if kept is not None:
            _shutdown(kept[1])


class VLLMError(RuntimeError):
    """A vLLM failure whose root cause was logged by one of vLLM's engine processes."""

    def __init__(self, message: str, root_cause: str) -> None:
        super().__init__(message)
        self.root_cause = root_cause


def compile_key(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings in :data:`COMPILE_KEY` (table defaults filled in):
    equal keys, one compile; a start whose key the cache already holds is warm."""
    import hashlib

    defaults = {s.name: s.default for s in SETTINGS}
    values: dict[str, Any] = {k: settings.get(k, defaults.get(k)) for k in COMPILE_KEY}
    seqs = values.get("max_num_seqs")
    if isinstance(seqs, int) and not isinstance(seqs, bool):
        values["max_num_seqs"] = min(seqs, _SEQS_CAP)
    if values.get("enforce_eager") is True:
        values = {"enforce_eager": True}  # nothing else is compiled
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def compile_entries(cache_root: Path | str) -> set[str]:
    """The compiled-graph folders in vLLM's cache: ``torch_compile_cache/<hash>``, and the AOT
    ones (``torch_compile_cache/torch_aot_compile/<hash>``; older vLLM: ``torch_aot_compile/<hash>``)."""
    root = Path(cache_root)
    jit = root / "torch_compile_cache"
    out: set[str] = set()
    aot = ((jit / "torch_aot_compile", None), (root / "torch_aot_compile", None))
    for base, skip in ((jit, "torch_aot_compile"), *aot):
        try:
            out |= {str(p.relative_to(root)) for p in base.iterdir() if p.is_dir() and p.name != skip}
        except OSError:
            continue  # not there yet: nothing compiled
    return out


def compile_start(before: set[str], after: set[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Whether the engine start compiled: "cold" (a new cache folder appeared), "warm" (the cache
    held this key) or "eager" (no torch.compile); why, in a phrase; and our key of the settings.
    Another worker compiling on the same host at the same time can make a warm start read cold."""
    key = compile_key(settings)
    if settings.get("enforce_eager") is True or settings.get("compilation_mode") in ("NONE", 0):
        return {"compile_start": "eager", "compile_why": "enforce_eager", "compile_key": key}
    if after - before:
        return {"compile_start": "cold", "compile_why": f"new compile key {key}", "compile_key": key}
    if not after:
        return {"compile_start": "eager", "compile_why": "no compile cache entry (compile off)", "compile_key": key}
    return {"compile_start": "warm", "compile_why": f"compile cache held key {key}", "compile_key": key}


def cache_root_now() -> Path:
    """vLLM's cache root as the worker's vLLM sees it (VLLM_CACHE_ROOT, default ~/.cache/vllm)."""
    return Path(os.environ.get("VLLM_CACHE_ROOT") or Path.home() / ".cache" / "vllm")


def compile_cache_dir() -> Path:
    """One vLLM cache (torch.compile artefacts) for every trial of every study on this host."""
    from hpo_infer.model_source import cache_root

    return cache_root() / "vllm"


class _Prompts:
    """The prompts of each pass. A synthetic workload draws fresh token ids for every pass (the
    same lengths and shared-prefix length); a prompt file's fixed list is sent again. Either way
    the engine's prefix cache is reset before each pass (the cold rule in ``_run``)."""

    def __init__(self, request: "TrialRequest", llm: Any, path: str, synthetic: bool) -> None:
        from hpo_infer import workload

        self.spec = request.workload
        self.vocab = int(llm.llm_engine.model_config.get_vocab_size())
        base = workload.load(self.spec, vocab_size=self.vocab)
        self.count = len(base.prompts)
        if base.is_tokens:
            self.fixed, ids = None, base.prompts
        elif not synthetic:
            self.fixed, ids = list(base.prompts), None
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path)
            ids = [tok(t)["input_ids"] for t in base.prompts]
            self.fixed = [{"prompt_token_ids": x} for x in ids]
        self._base_ids = ids

    def draw(self, i: int) -> list[Any]:
        if self.fixed is not None:
            return self.fixed
        from hpo_infer import workload

        ids = self._base_ids if i == 0 else workload.load(self.spec, vocab_size=self.vocab, draw=i).prompts
        return [{"prompt_token_ids": x} for x in ids]

    def expected_hit_rate(self, block: int) -> float:
        """What the prompts' own shared prefixes let a cache serve within a pass (text prompts of a
        real model are not tokenised here: 0, so any hit is flagged for a look)."""
        from hpo_infer.workload import Workload

        return Workload(self._base_ids, 0).expected_hit_rate(block) if self._base_ids else 0.0


def _cache_counters(llm: Any) -> dict[str, int] | None:
    """vLLM's prefix-cache counters (tokens queried, tokens served from the cache) so far."""
    try:
        metrics = llm.get_metrics()
    except Exception:  # noqa: BLE001 - stats off, or a vLLM without them: no counters
        return None
    q = sum(int(m.value) for m in metrics if m.name == "vllm:prefix_cache_queries")
    h = sum(int(m.value) for m in metrics if m.name == "vllm:prefix_cache_hits")
    return {"queries": q, "hits": h}


def _cache_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in ("queries", "hits")}


# Where vLLM's config holds each value it resolves at start-up: (section of VllmConfig, attribute).
CONFIG_FIELDS: dict[str, tuple[str, str]] = {
    "max_num_seqs": ("scheduler_config", "max_num_seqs"),
    "max_num_batched_tokens": ("scheduler_config", "max_num_batched_tokens"),
    "enable_chunked_prefill": ("scheduler_config", "enable_chunked_prefill"),
    "block_size": ("cache_config", "block_size"),
    "enable_prefix_caching": ("cache_config", "enable_prefix_caching"),
    "gpu_memory_utilization": ("cache_config", "gpu_memory_utilization"),
    "kv_cache_dtype": ("cache_config", "cache_dtype"),
    "num_gpu_blocks": ("cache_config", "num_gpu_blocks"),
    "dtype": ("model_config", "dtype"),
    "max_model_len": ("model_config", "max_model_len"),
    "enforce_eager": ("model_config", "enforce_eager"),
    "tensor_parallel_size": ("parallel_config", "tensor_parallel_size"),
}


def config_fields(get: Callable[[str, str], Any]) -> dict[str, Any]:
    """``CONFIG_FIELDS`` read through ``get(section, attribute)``: from the engine's config object
    in the offline engine, from the server's config as JSON in the serving one."""
    out = {k: get(section, attr) for k, (section, attr) in CONFIG_FIELDS.items()}
    out["dtype"] = str(out["dtype"] or "").removeprefix("torch.")
    return {k: v for k, v in out.items() if v not in (None, "")}


def _resolved(llm: Any) -> dict[str, Any]:
    """What vLLM actually chose at start-up, read back from its config (names vary by version)."""
    vc = llm.llm_engine.vllm_config
    mc, pc, comp = vc.model_config, vc.parallel_config, vc.compilation_config
    out: dict[str, Any] = {
        **config_fields(lambda section, attr: getattr(getattr(vc, section, None), attr, None)),
        "compilation_mode": _name(getattr(comp, "mode", getattr(comp, "level", None))),
        "cudagraph_mode": _name(getattr(comp, "cudagraph_mode", None)),
        "cudagraph_capture_sizes": list(getattr(comp, "cudagraph_capture_sizes", None) or []),
        "max_cudagraph_capture_size": getattr(comp, "max_cudagraph_capture_size", None),
        "device": str(getattr(getattr(vc, "device_config", None), "device_type", "")),
    }
    blocks, block = out.get("num_gpu_blocks"), out.get("block_size")
    if blocks and block:
        out["kv_cache_tokens"] = int(blocks) * int(block)
        try:  # bytes per token: K and V, every layer, this rank's KV heads
            import torch

            dt = mc.dtype if out.get("kv_cache_dtype") in (None, "auto") else _kv_dtype(out["kv_cache_dtype"])
            per_token = 2 * mc.get_num_layers(pc) * mc.get_num_kv_heads(pc) * mc.get_head_size()
            out["kv_cache_bytes"] = int(out["kv_cache_tokens"] * per_token * torch.empty((), dtype=dt).element_size())
        except Exception:  # noqa: BLE001 - an estimate only; absent rather than wrong
            pass
    return {k: v for k, v in out.items() if v not in (None, "")}


def _keyed(resolved: dict[str, Any]) -> dict[str, Any]:
    """What vLLM resolved, for the compile key: the values it chose where we left "auto"."""
    return {k: resolved[k] for k in (*COMPILE_KEY, "compilation_mode") if resolved.get(k) is not None}


def _name(value: Any) -> Any:
    """An enum by its name (``CUDAGraphMode.FULL_AND_PIECEWISE`` -> ``FULL_AND_PIECEWISE``)."""
    return getattr(value, "name", value)


def _kv_dtype(name: str) -> Any:
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE

    return STR_DTYPE_TO_TORCH_DTYPE[name]


def _memory_in_use() -> int | None:
    """GPU memory in use on the visible GPUs (NVML), else the RSS of this process tree (CPU)."""
    from hpo_infer.hardware import _visible_indices

    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            idx = _visible_indices(pynvml.nvmlDeviceGetCount())
            if idx:
                return sum(int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used) for i in idx)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVIDIA driver: a CPU host
        pass
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _shutdown(llm: Any) -> None:
    """End vLLM's engine processes, so the next config of a re-validation session gets the memory."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the worker's exit kills the tree anyway
        pass
    del llm
    gc.collect()


class _StderrTail:
    """Passes everything written to fds 1 and 2 (ours and vLLM's child processes': vLLM logs to
    stdout) on to our stderr, keeping the last lines: vLLM's engine core logs the real error
    there and raises only a generic one. (fd 1 is already the trial log in the worker; the
    protocol stream is a separate descriptor.)"""

    def __init__(self, keep: int = 2000) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self._saved: list[int] = []

    def __enter__(self) -> "_StderrTail":
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        threading.Thread(target=self._pump, args=(r, os.dup(self._saved[1])), daemon=True).start()
        return self

    def _pump(self, r: int, out: int) -> None:
        partial = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                os.write(out, chunk)
            except OSError:
                pass
            parts = (partial + chunk).split(b"\n")
            partial = parts.pop()
            self.lines.extend(x.decode("utf-8", "replace") for x in parts)
        os.close(r)
        os.close(out)

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):  # vLLM's children may still hold the pipe: the pump drains it
            os.dup2(saved, fd)
            os.close(saved)

    def root_cause(self) -> str | None:
        """The first error an engine process logged, e.g. ``ValueError: Available memory ...``."""
        time.sleep(0.5)  # let the pump catch up with the children's last writes
        for line in list(self.lines):
            if " ERROR " not in f" {line} " and not line.startswith(("ValueError", "RuntimeError", "torch.")):
                continue
            m = _ERROR_LINE.search(line.strip())
            if m and not any(w in line for w in _WRAPPERS):
                return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"[:1500]
        return None
