"""What costs the cold vLLM measurement throughput on the H200? One engine start per variant,
the product's workload (dummy Llama-3.1-8B, 2048 x 128/128), fresh prompts and a prefix-cache
reset before every pass, 1 warm-up + 4 timed passes:
  off: disable_log_stats=True (no counters)       on: disable_log_stats=False (the product's)
  on-gc: as on, with Python's GC frozen and off during each timed pass
Run: python3 bench/device/h200_stats_cost.py MODEL_CONFIG_DIR VARIANT
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time

from vllm import LLM, SamplingParams

from hpo_infer import model_source, workload

model = model_source.resolve({"synthetic": sys.argv[1], "name": "llama-3.1-8b"})
variant = sys.argv[2]
llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, seed=0, disable_log_stats=(variant == "off"))
vocab = int(llm.llm_engine.model_config.get_vocab_size())
sp = SamplingParams(max_tokens=128, min_tokens=128, ignore_eos=True, temperature=0.0)
spec = {"kind": "synthetic", "prompts": 2048, "input_tokens": 128, "output_tokens": 128, "seed": 0}
rates = []
for i in range(5):
    prompts = [{"prompt_token_ids": p} for p in workload.load(spec, vocab, draw=i).prompts]
    llm.reset_prefix_cache()
    if variant == "on-gc":
        gc.collect()
        gc.freeze()
        gc.disable()
    t = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t
    if variant == "on-gc":
        gc.enable()
        gc.unfreeze()
    rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / dt)
timed = rates[1:]
mean = statistics.fmean(timed)
cv = round(statistics.stdev(timed) / mean * 100, 2)
out = {"variant": variant, "warmup": round(rates[0]), "passes": [round(r) for r in timed]}
out.update(mean=round(mean), cv_pct=cv)
print("RESULT", json.dumps(out), flush=True)
