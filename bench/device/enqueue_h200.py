"""Seed the H200 study of issue 16 before its first trial: the defaults in a second engine start
(the noise floor), then the H100 study's carried settings (its trials 3 and 14), then TPE.

Run on the GPU host:  python3 bench/device/enqueue_h200.py studies/vllm-llama8b.yaml sqlite:////root/h200.db
"""

from __future__ import annotations

import sys

from hpo_infer import spec as spec_mod
from hpo_infer.agent.seeding import enqueue_baseline
from hpo_infer.agent.start import host_gpu, start_study
from hpo_infer.study.trials import BASELINE, ROLE

# BENCHMARKS.md, "vLLM on one H100": trials 3 (the H100's runner-up) and 14 (its best).
H100 = {
    3: {"max_num_seqs": 1852, "max_num_batched_tokens": 11859, "gpu_memory_utilization": 0.919,
        "block_size": 64, "enable_prefix_caching": False},
    14: {"max_num_seqs": 1031, "max_num_batched_tokens": 21275, "gpu_memory_utilization": 0.944,
         "block_size": 64, "enable_prefix_caching": False},
}  # fmt: skip


def main(spec_file: str, storage: str) -> None:
    spec = spec_mod.load(spec_file, storage)
    study = start_study(spec, host_gpu(None)).study
    if study.trials:
        print(f"{study.study_name}: {len(study.trials)} trials already, nothing enqueued")
        return
    enqueue_baseline(study, spec)
    base = study.trials[0].user_attrs
    study.enqueue_trial(
        {}, user_attrs={ROLE: BASELINE, "baseline_params": base["baseline_params"], "defaults_start": 2}
    )
    for n, params in H100.items():
        study.enqueue_trial(params, user_attrs={ROLE: "carried_over", "carried_from": f"H100 study trial {n}"})
    print(f"{study.study_name}: enqueued defaults x2 and H100 trials {sorted(H100)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
