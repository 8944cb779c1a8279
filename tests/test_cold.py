"""Measurements a user can trust, on real engines on this CPU: every timed pass cold (vLLM's own
prefix-cache counters say 0 hits), the flag raised when passes are not cold, the product's
baseline in line with an independent cold measurement, HF's warm-up covering every shape, and a
configuration never re-validated against itself.

Workloads are prefill-heavy with prompts of 256 tokens: vllm-cpu's KV block is 128 tokens, so a
repeated prompt hits the prefix cache and a fresh one cannot.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, run_cli, write_spec

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CPU_SPEC = ROOT / "studies" / "vllm-cpu-tiny.yaml"
WORKLOAD = {"kind": "synthetic", "prompts": 16, "input_tokens": 256, "output_tokens": 2, "seed": 0}
MIN_PASS_S = 0.5  # a timed repeat: many generate calls of 16 prompts (one call is ~20 ms here)
STARTS_S = 420  # vllm-cpu hung twice here (reset_prefix_cache, interpreter exit): every run has a limit

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not HAS_VLLM, reason="needs vllm-cpu")]


def _baseline_study(tmp_path: Path, name: str, cold: bool) -> optuna.trial.FrozenTrial:
    raw = yaml.safe_load(CPU_SPEC.read_text())
    raw.update(
        workload=WORKLOAD,
        search_space={"max_num_seqs": {"type": "int", "low": 4, "high": 16, "log": True}},
        budget={"trials": 1},  # the baseline only: the engine's defaults
        repeats=3,
        measurement={"min_pass_s": MIN_PASS_S, "precision": 0.05, "max_repeats": 6, "cold": cold},
        trial_timeout_s=STARTS_S,
        validate_finalists=False,
        storage=f"sqlite:///{tmp_path}/{name}.db",
    )
    raw["fixed"] = {**raw.get("fixed", {}), "enforce_eager": True}  # no torch.compile: a short start
    spec = write_spec(tmp_path, raw, name=f"{name}.yaml")
    r = run_cli("tune", str(spec), env={"HPO_INFER_CACHE": str(tmp_path / "cache")}, timeout=STARTS_S + 120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (t,) = [t for t in _only_study(raw["storage"]).trials if t.state == optuna.trial.TrialState.COMPLETE]
    return t


def _only_study(url: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


_INDEPENDENT = """
import json, random, sys, time
from vllm import LLM, SamplingParams
model, n, length, out, min_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, enforce_eager=True,
          gpu_memory_utilization=0.1, enable_prefix_caching=False, seed=0)
vocab = llm.llm_engine.model_config.get_vocab_size()
sp = SamplingParams(max_tokens=out, min_tokens=out, ignore_eos=True, temperature=0.0)
rng = random.Random(1000)
def call():  # every call its own prompts, and no prefix cache at all
    prompts = [{"prompt_token_ids": [rng.randrange(4, vocab) for _ in range(length)]} for _ in range(n)]
    t = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - t
call()  # warm-up
rates, calls = [], 0
for r in range(5):  # each repeat as many calls as the first needed to last min_s
    tokens = seconds = k = 0
    while (calls and k < calls) or (not calls and seconds < min_s):
        tok, s = call()
        tokens, seconds, k = tokens + tok, seconds + s, k + 1
    calls = calls or k
    rates.append(tokens / seconds)
print("RATES " + json.dumps(rates), flush=True)
"""


def _independent_cold_rate(model_dir: Path) -> float:
    r = subprocess.run(
        [sys.executable, "-c", _INDEPENDENT, str(model_dir), str(WORKLOAD["prompts"]), str(WORKLOAD["input_tokens"]),
         str(WORKLOAD["output_tokens"]), str(MIN_PASS_S)],
        capture_output=True, text=True, timeout=STARTS_S, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("RATES ")]  # vLLM logs to stdout too
    return statistics.median(json.loads(line[len("RATES ") :]))


def test_every_timed_pass_is_cold_and_agrees_with_an_independent_cold_measurement(tmp_path: Path) -> None:
    t = _baseline_study(tmp_path, "cold", cold=True)
    hits = t.user_attrs["prefix_cache"]
    assert len(hits) == t.user_attrs["spread"]["n"] >= 3
    assert all(c["queries"] > 0 and c["hits"] == 0 for c in hits), hits  # vLLM's own counters
    assert "cache_flag" not in t.user_attrs
    ratio = t.value / _independent_cold_rate(_model_dir(tmp_path))
    # Before the cold rule the product's baseline was 3.96x an independent measurement here. The
    # independent one times 0.5 s repeats, as the product does: with one 20 ms call per repeat it
    # swung 1,424-1,836 tok/s between runs, and CI once saw a ratio of 0.65.
    assert 0.67 < ratio < 1.5, f"product {t.value:.1f} tok/s vs independent: ratio {ratio:.2f}"


def test_warm_passes_raise_the_flag(tmp_path: Path) -> None:
    t = _baseline_study(tmp_path, "warm", cold=False)
    hits = t.user_attrs["prefix_cache"]
    assert any(c["hit_rate"] > 0.4 for c in hits), hits  # the same prompts again: served from the cache
    assert "prefix cache served" in t.user_attrs["cache_flag"]


def _model_dir(tmp_path: Path) -> Path:
    """The synthetic model folder the engine materialised (one per config under the cache)."""
    dirs = sorted((tmp_path / "cache").glob("models/*/config.json"))
    assert dirs, list((tmp_path / "cache").rglob("config.json"))[:5]
    return dirs[0].parent
