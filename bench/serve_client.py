"""vllm-serve's load generator in the trial process vs a `vllm bench serve` process per load run.

One configuration of a serving spec (default: ``studies/vllm-serve-cpu-tiny.yaml`` with its fixed
settings) is measured as trials, each its own fresh server, alternating the two clients in ABBA
order (cli, inprocess, inprocess, cli, ...): ``HPO_INFER_LOAD_CLIENT=cli`` starts a `vllm bench
serve` process for the warm-up and every timed run; the default calls the same parser and
``main()`` inside the trial process, imported once by the fork server. Per trial: its wall time,
the server start, the seconds outside the server start and the timed runs (warm-up and the
client's own starts), the value and p99 TTFT; then the paired in-process/CLI ratio of the values
with its 95% interval: the client moved, the measurement must not.

    .venv/bin/python bench/serve_client.py [--spec studies/vllm-serve-cpu-tiny.yaml] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trial_overhead import paired_ratio  # noqa: E402

from hpo_infer.engines.vllm_serve import CLIENT_ENV  # noqa: E402
from hpo_infer.spec.study_spec import load  # noqa: E402
from hpo_infer.trial.runner import run_worker  # noqa: E402

ORDER = ("cli", "inprocess", "inprocess", "cli")


def measure(spec_path: Path, settings: dict[str, Any], n: int) -> list[dict[str, Any]]:
    spec = load(spec_path)
    rows = []
    for i in range(2 * n):
        variant = ORDER[i % 4]
        if variant == "cli":
            os.environ[CLIENT_ENV] = "cli"
        else:
            os.environ.pop(CLIENT_ENV, None)
        out = run_worker(spec.request([{**spec.fixed, **settings}]), spec.trial_timeout_s)
        r = out.first
        if r.value is None:
            raise SystemExit(f"{variant}: {out.status}: {out.error}")
        timed = sum(float(x.get("seconds") or 0.0) for x in r.repeats)
        row = {
            "variant": variant,
            "value": r.value,
            "p99_ttft_ms": (r.metrics or {}).get("p99_ttft_ms"),
            "wall_s": out.wall_s,
            "start_s": r.start_s,
            "timed_s": timed,
            "client_s": out.wall_s - (r.start_s or 0.0) - timed,
        }
        rows.append(row)
        print(
            f"{i + 1:2d} {variant:9s} {r.value:9.1f} tok/s  p99 TTFT {row['p99_ttft_ms']:8.1f} ms  "
            f"wall {out.wall_s:6.1f} s  start {r.start_s:5.1f} s  else {row['client_s']:5.1f} s",
            flush=True,
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| client | trials | wall s (median) | server start s | outside start and timed runs s | tok/s (median) "
        "| p99 TTFT ms (median) |",
        "|" + "---|" * 7,
    ]
    for v in ("cli", "inprocess"):
        rs = [r for r in rows if r["variant"] == v]

        def med(k: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[k] for r in rs)

        lines.append(
            f"| {v} | {len(rs)} | {med('wall_s'):.1f} | {med('start_s'):.1f} | {med('client_s'):.1f} | "
            f"{med('value'):,.0f} | {med('p99_ttft_ms'):.1f} |"
        )
    ratio, low, high = paired_ratio(rows, num="inprocess", den="cli")
    lines.append(f"\ntok/s, inprocess/cli over {len(rows) // 2} pairs: {ratio:.3f} (95% CI {low:.3f}-{high:.3f})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "vllm-serve-cpu-tiny.yaml")
    ap.add_argument("--pairs", type=int, default=3, help="cli/inprocess pairs (ABBA order)")
    ap.add_argument("--settings", type=json.loads, default={}, help="search-space settings to measure (JSON)")
    ap.add_argument("--out", type=Path, default=None, help="write every trial's row here (JSON)")
    args = ap.parse_args()
    rows = measure(args.spec.resolve(), args.settings, args.pairs)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
