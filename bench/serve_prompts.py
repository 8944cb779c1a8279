"""vllm-serve's prompts vs vLLM's random dataset, on one server in one run: how much of a cold
load run the prefix cache serves.

One `vllm serve` (the tiny synthetic model of ``studies/vllm-serve-cpu-tiny.yaml``: a 512-token
tokenizer, as every synthetic model has) takes load runs in ABBA order: *random* = `vllm bench
serve --dataset-name random` (what vllm-serve sent before commit c3a8101), *ours* = the engine's
own `_bench` (the workload's independent token draws as text, its custom dataset). Every run goes
after `POST /reset_prefix_cache` with its own seed / draw, as a trial's runs do; the server's
prefix-cache counters around each run give its hit rate. Prompts of 256 tokens: the CPU's KV
block is 128 tokens, so a prompt can hit only through a whole shared first block (on a GPU,
16-token blocks, the H200 showed 35-37%).

    .venv/bin/python bench/serve_prompts.py [--pairs 3] [--prompts 64] [--input 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from hpo_infer import model_source  # noqa: E402
from hpo_infer.engines import vllm_serve as vs  # noqa: E402

ORDER = ("random", "ours", "ours", "random")


def _random_run(base: str, path: str, w: dict[str, Any], out: Path, r: int) -> dict[str, Any]:
    """One load run of vLLM's random dataset, with the flags vllm-serve passed before."""
    name = f"random{r}.json"
    argv = ["--backend", "vllm", "--base-url", base, "--model", "model", "--tokenizer", path,
            "--dataset-name", "random", "--num-prompts", str(w["prompts"]),
            "--random-input-len", str(w["input_tokens"]), "--random-output-len", str(w["output_tokens"]),
            "--ignore-eos", "--seed", str(r + 1), "--save-result", "--result-dir", str(out),
            "--result-filename", name, "--disable-tqdm"]  # fmt: skip
    assert vs._run_bench(argv, "inprocess") == 0
    return json.loads((out / name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="ABBA halves: each pair is one run of each")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--input", type=int, default=256)
    ap.add_argument("--output", type=int, default=16)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()

    spec = yaml.safe_load((ROOT / "studies" / "vllm-serve-cpu-tiny.yaml").read_text())
    path = model_source.resolve(spec["model"])
    w = {"kind": "synthetic", "prompts": args.prompts, "input_tokens": args.input, "output_tokens": args.output,
         "seed": 0}  # fmt: skip
    port = vs._free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [*vs._VLLM_CLI, "serve", path, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "model",
           "--load-format", "dummy", "--gpu-memory-utilization", "0.1", "--enforce-eager",
           "--max-model-len", str(args.input + args.output + 64)]  # fmt: skip
    server = subprocess.Popen(cmd, env={**os.environ, "VLLM_SERVER_DEV_MODE": "1"}, start_new_session=True)
    rows: list[dict[str, Any]] = []
    try:
        vs._wait_ready(server, base)
        request = SimpleNamespace(workload=w, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            vs._bench(base, "model", path, request, {}, out, -1, "inprocess")  # warm-up, not counted
            for i in range(args.pairs * 2):
                variant = ORDER[i % 4]
                vs._reset_prefix_cache(base)
                before = vs._cache_counters(base)
                if variant == "random":
                    res = _random_run(base, path, w, out, i)
                else:
                    res = vs._bench(base, "model", path, request, {}, out, i, "inprocess")
                cache = vs._cache_delta(before, vs._cache_counters(base)) or {}
                rows.append({
                    "run": i, "variant": variant, "hit_rate": cache.get("hit_rate"), "queries": cache.get("queries"),
                    "hits": cache.get("hits"), "input_tokens": res["total_input_tokens"],
                    "tok_s": res["output_throughput"], "p99_ttft_ms": res["p99_ttft_ms"],
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    finally:
        vs._stop(server)
    print(f"\n{'variant':8} {'runs':>4} {'hit rate (each run)':>34} {'input tokens':>13} {'tok/s (median)':>15}")
    for v in ("random", "ours"):
        mine = [r for r in rows if r["variant"] == v]
        hits = ", ".join(f"{r['hit_rate']:.1%}" for r in mine)
        print(f"{v:8} {len(mine):>4} {hits:>34} {mine[0]['input_tokens']:>13} "
              f"{statistics.median(r['tok_s'] for r in mine):>15,.0f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
