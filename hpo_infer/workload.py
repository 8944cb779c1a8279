"""Prompt sets: synthetic token lengths, a JSONL file of prompts, HumanEval single-line infilling.

The output length is fixed per workload (engines force it with ``ignore_eos`` /
``min_new_tokens``) so that every trial generates the same number of tokens and runs compare.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Workload:
    prompts: list[Any]  # str (text) or list[int] (token ids)
    output_tokens: int

    def expected_hit_rate(self, block: int) -> float:
        """The share of prompt tokens a prefix cache may serve within one cold pass: the shared
        prefix's full blocks, for every prompt but the first (which computes them)."""
        if len(self.prompts) < 2 or not self.is_tokens:
            return 0.0
        first = self.prompts[0]
        common = 0
        for other in self.prompts[1:]:
            n = 0
            for a, b in zip(first, other):
                if a != b:
                    break
                n += 1
            common = n if common == 0 else min(common, n)
        cached = (common // block) * block * (len(self.prompts) - 1)
        total = sum(len(p) for p in self.prompts)
        return cached / total if total else 0.0

    @property
    def is_tokens(self) -> bool:
        return bool(self.prompts) and isinstance(self.prompts[0], list)


def as_text(prompts: list[list[int]], tokenizer: Any, rounds: int = 8) -> list[str]:
    """Token-id prompts as texts that the tokenizer encodes back to as many tokens, for a server
    that takes text. Decoding and encoding again can merge or split tokens at their seams; each
    round cuts or tops the re-encoded ids up (from the prompt's own ids) and decodes them again,
    as vLLM's random dataset does. Why not that dataset: it lays each prompt out as consecutive
    token ids from a random start, so on a small vocabulary (the synthetic models' 512 tokens)
    the prompts of one run share whole prefixes, and a prefix cache served 35-37% of a run's
    prompt tokens on the H200 (BENCHMARKS.md). Independent tokens share none. A byte-level piece
    that decodes to no whole character can leave a text a token or two long, as vLLM's own
    dataset is; every trial gets the same texts, so trials stay comparable."""
    out = []
    for ids in prompts:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for _ in range(rounds):
            got = tokenizer.encode(text, add_special_tokens=False)
            if len(got) == len(ids):
                break
            got = got[: len(ids)] + ids[len(got) :]
            text = tokenizer.decode(got, skip_special_tokens=True)
        out.append(text)
    return out


def label(w: dict[str, Any]) -> str:
    """Stable short name for study keys, e.g. ``syn-i128-o128-n2048``."""
    kind = w.get("kind", "synthetic")
    out = w["output_tokens"]
    if kind == "synthetic":
        i = w["input_tokens"]
        i = f"{i[0]}-{i[1]}" if isinstance(i, list) else i
        prefix = f"-p{w['prefix_tokens']}" if w.get("prefix_tokens") else ""
        return f"syn-i{i}{prefix}-o{out}-n{w['prompts']}"
    n = f"-n{w['limit']}" if w.get("limit") else ""
    if kind == "humaneval":
        return f"humaneval-o{out}{n}"
    return f"jsonl-{Path(w['path']).stem}-o{out}{n}"


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _read_jsonl(path: str, field: str, limit: int | None) -> list[str]:
    out: list[str] = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if field not in obj:
                raise ValueError(f"{path}: line {n}: no field {field!r}")
            out.append(str(obj[field]))
            if limit and len(out) >= limit:
                break
    return out


def load(w: dict[str, Any], vocab_size: int = 512, draw: int = 0) -> Workload:
    """Build the prompt set a spec's ``workload`` section describes.

    ``draw`` picks one of a synthetic workload's prompt sets: the same lengths and shared prefix
    length, other tokens, so an engine with a prefix cache can give every pass fresh prompts
    (draw 0 is the set the seed alone gives). Fixed prompt files ignore it.
    """
    kind = w.get("kind", "synthetic")
    if kind == "synthetic":
        rng = random.Random(w.get("seed", 0) if not draw else f"{w.get('seed', 0)}/{draw}")
        lo, hi = (w["input_tokens"], w["input_tokens"]) if isinstance(w["input_tokens"], int) else w["input_tokens"]
        first = 4 if vocab_size > 8 else 0  # keep clear of special tokens
        lengths = random.Random(w.get("seed", 0)).choices(range(lo, hi + 1), k=w["prompts"]) if lo != hi else None
        shared = [rng.randrange(first, vocab_size) for _ in range(int(w.get("prefix_tokens") or 0))]
        prompts = []
        for i in range(w["prompts"]):
            n = lengths[i] if lengths else lo
            prompts.append(shared[:n] + [rng.randrange(first, vocab_size) for _ in range(max(0, n - len(shared)))])
        return Workload(prompts, w["output_tokens"])
    field = "prompt" if kind == "humaneval" else w.get("field", "prompt")
    prompts = _read_jsonl(w["path"], field, w.get("limit"))
    if kind == "humaneval":
        # As the paper did: sorted by length, so each batch holds prompts of similar length.
        prompts.sort(key=len)
    return Workload(prompts, w["output_tokens"])
