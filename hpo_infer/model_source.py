"""Model sources: a Hugging Face id, a local path, or a synthetic architecture.

A synthetic model is a real architecture config (a built-in preset or a ``config.json`` the
user passes, e.g. Llama-3.1-8B's) with random weights and a tokenizer trained locally on a few
lines, so benchmarks and tests run the real code paths with nothing downloaded. Only the config
and tokenizer are written to disk (a small cached folder); weights are random in memory (HF)
or vLLM's ``load_format="dummy"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for 2 CPU cores, same code path as Llama-3.
    "tiny-llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 512,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "for i in range(10):\n    print(i * i)\n",
    "import numpy as np\nx = np.arange(12).reshape(3, 4)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "Large language models generate one token at a time.",
    "if x > 0 and y < 0:\n    raise ValueError('bad input')\n",
    "while True:\n    line = f.readline()\n    if not line:\n        break\n",
]
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def cache_root() -> Path:
    return Path(os.environ.get("HPO_INFER_CACHE", Path.home() / ".cache" / "hpo-infer"))


def synthetic_config(model: dict[str, Any]) -> dict[str, Any]:
    """The architecture config of a synthetic model spec, overrides applied (no import)."""
    src = model["synthetic"]
    if isinstance(src, dict):
        cfg = dict(src)
    elif src in PRESETS:
        cfg = dict(PRESETS[src])
    else:
        cfg = json.loads(Path(src).read_text())
    cfg.pop("auto_map", None)  # remote code is never run (phi-2's config carries one)
    cfg.update(model.get("overrides") or {})
    return cfg


def model_label(model: dict[str, Any]) -> str:
    """Stable short name for study keys."""
    if "synthetic" in model:
        src = model["synthetic"]
        base = model.get("name") or (src if isinstance(src, str) and src in PRESETS else None)
        if base is None:
            base = Path(src).stem if isinstance(src, str) else str(src.get("model_type", "custom"))
        over = model.get("overrides") or {}
        if "num_hidden_layers" in over:
            base += f"-L{over['num_hidden_layers']}"
        return f"synthetic-{base}"
    ref = model.get("id") or model.get("path")
    return re.sub(r"[^A-Za-z0-9._/-]+", "-", str(ref)).strip("/")


def params_per_token(cfg: dict[str, Any]) -> float:
    """Approximate active parameters used per generated token (dense; MoE counts active experts)."""
    h = cfg.get("hidden_size") or cfg.get("n_embd")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    inter = cfg.get("intermediate_size") or 4 * h
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    vocab = cfg.get("vocab_size", 0)
    attn = h * head_dim * heads * 2 + h * head_dim * kv * 2
    experts = cfg.get("num_experts_per_tok") or 1
    ungated = cfg.get("model_type") in ("phi", "starcoder2", "gpt2", "gpt_bigcode", "bloom")
    mlp = (2 if ungated else 3) * h * inter * experts  # gated MLPs (Llama, Gemma) have three matrices
    return float(layers * (attn + mlp) + h * vocab)


def materialized_path(model: dict[str, Any]) -> Path:
    """The folder :func:`materialize` writes a synthetic model to (nothing is written here): an
    export names it, so that ``vllm serve`` runs the very model the study measured."""
    cfg = synthetic_config(model)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{model_label(model).replace('/', '_')}-{key}"


def materialize(model: dict[str, Any]) -> str:
    """A local folder for a synthetic model: config.json plus a locally trained tokenizer.

    Cached by content hash; written to a temporary folder and renamed, so concurrent workers
    never see a half-written model.
    """
    cfg = synthetic_config(model)
    out = materialized_path(model)
    if (out / "config.json").exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    vocab = int(cfg.get("vocab_size", 512))
    tok = _train_tokenizer(min(vocab, 512))
    tok.save_pretrained(tmp)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    cfg.setdefault("bos_token_id", ids["<s>"])
    cfg.setdefault("eos_token_id", ids["</s>"])
    cfg["pad_token_id"] = ids["<pad>"]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        os.rename(tmp, out)
    except OSError:  # another worker won the race: theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )


def resolve(model: dict[str, Any]) -> str:
    """What to hand the engine: a local folder (synthetic or path) or the Hugging Face id."""
    if "synthetic" in model:
        return materialize(model)
    return str(model.get("path") or model["id"])
