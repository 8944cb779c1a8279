"""One line per trial of every study in a storage, with what BENCHMARKS.md records: settings,
value, repeats, 95% CI, CV, the prefix-cache hit rate of every timed repeat, start, warm-up,
measured and wall seconds. Also writes the same as JSON beside it (for carrying back).

Run:  python3 bench/device/dump_trials.py sqlite:////root/h200.db [OUT.json]
"""

from __future__ import annotations

import json
import sys

import optuna


def rows(url: str) -> list[dict]:
    out = []
    for s in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=s.study_name, storage=url)
        for t in study.trials:
            a = t.user_attrs
            sp = a.get("spread") or {}
            out.append({
                "study": s.study_name, "trial": t.number, "state": t.state.name, "status": a.get("status"),
                "role": a.get("hpo_infer_role"), "from": a.get("carried_from"), "params": t.params,
                "values": t.values, "metrics": a.get("metrics"), "repeats": a.get("repeats"), "n": sp.get("n"),
                "ci_rel": sp.get("ci_rel"),
                "cv": sp.get("cv"), "hit_rates": [c.get("hit_rate") for c in a.get("prefix_cache") or []],
                "cache_flag": a.get("cache_flag"), "start_s": a.get("start_s"), "warmup_s": a.get("warmup_s"),
                "measure_s": a.get("measure_s"), "wall_s": a.get("wall_s"), "failure": a.get("failure"),
                "resolved": {k: (a.get("resolved") or {}).get(k) for k in ("max_num_seqs", "max_num_batched_tokens",
                             "num_gpu_blocks", "kv_cache_tokens", "gpu_memory_utilization", "engine_reused",
                             "compile_start", "load_client")},
                "validation": study.user_attrs.get("validation", {}).get("summary") if t.number == 0 else None,
            })  # fmt: skip
    return out


def main() -> None:
    got = rows(sys.argv[1])
    for r in got:
        cv = f"{r['cv'] * 100:.2f}%" if r["cv"] is not None else "-"
        ci = f"±{r['ci_rel'] * 100:.2f}%" if r["ci_rel"] is not None else "-"
        reps = ", ".join(f"{x:,.0f}" for x in r["repeats"] or [])
        hits = ", ".join(f"{h:.1%}" for h in r["hit_rates"])
        val = " / ".join(f"{v:,.1f}" for v in r["values"]) if r["values"] else "-"  # one or more objectives
        print(f"{r['trial']} | {r['role'] or ''} {r['from'] or ''} | {r['params']} | {r['status'] or r['state']} | "
              f"{val} | {reps} | n={r['n']} {ci} CV {cv} | hits {hits} | start {r['start_s']} warm {r['warmup_s']} "
              f"meas {r['measure_s']} wall {r['wall_s']} | {r['failure'] or ''} {r['cache_flag'] or ''}")  # fmt: skip
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(got, f, indent=1, default=str)


if __name__ == "__main__":
    main()
