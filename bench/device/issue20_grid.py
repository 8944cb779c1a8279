"""Issue 20 on the H200: auto_tune.sh's grid beside the multi-objective study, and both fronts.

    python3 bench/device/issue20_grid.py enqueue SPEC STORAGE   # queue the grid points not measured
    python3 bench/device/issue20_grid.py hv SPEC STORAGE        # fronts and hypervolumes, as JSON

``enqueue`` queues, in the study itself, each of auto_tune.sh's 8 default points (max_num_seqs
{128, 256} x max_num_batched_tokens {512, 1024, 2048, 4096}) that no trial has measured; `tune
--trials N` then measures them under the same rules. ``hv`` compares the front the search found
in its own trials (the ones before the first queued grid point) with the grid's front (its 8
points, measured by the search or queued), by hypervolume against one reference point: 0 tok/s
and 1.1 x the largest p99 TTFT measured.
"""

from __future__ import annotations

import json
import sys

import optuna
from optuna.trial import TrialState

from hpo_infer import spec as spec_mod
from hpo_infer.agent.start import host_gpu, start_study
from hpo_infer.agent.stop_rules import retried, spent
from hpo_infer.study.front import front_of

GRID = [(s, b) for s in (128, 256) for b in (512, 1024, 2048, 4096)]
GRID_ROLE = "auto_tune_grid"


def _point(t: optuna.trial.FrozenTrial) -> tuple[int, int]:
    return (t.params.get("max_num_seqs"), t.params.get("max_num_batched_tokens"))


def _hv(trials: list[optuna.trial.FrozenTrial], ref: tuple[float, float]) -> float:
    """Hypervolume of (tok/s up, TTFT down): Optuna's routine, on minimised coordinates."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    if not trials:
        return 0.0
    pts = np.array([[-t.values[0], t.values[1]] for t in trials])
    return float(compute_hypervolume(pts, np.array([-ref[0], ref[1]])))


def main(cmd: str, spec_file: str, storage: str) -> None:
    spec = spec_mod.load(spec_file, storage)
    study = start_study(spec, host_gpu(None)).study
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if cmd == "enqueue":
        have = {_point(t) for t in done}
        todo = [p for p in GRID if p not in have]
        for s, b in todo:
            study.enqueue_trial({"max_num_seqs": s, "max_num_batched_tokens": b}, user_attrs={"role": GRID_ROLE})
        # The budget that measures exactly these: what the study has spent, plus the queue.
        all_t = study.get_trials(deepcopy=False)
        again = retried(all_t)
        used = sum(spent(t, again) for t in all_t)
        print(json.dumps({"queued": todo, "trials": used + len(todo)}))
        return
    feasible = [t for t in done if all(v <= 0 for v in t.constraints.values()) and "duplicate_of" not in t.user_attrs]
    first_grid = min((t.number for t in study.trials if t.user_attrs.get("role") == GRID_ROLE), default=None)
    search = [t for t in feasible if first_grid is None or t.number < first_grid]
    grid = [t for t in feasible if _point(t) in GRID]
    ref = (0.0, 1.1 * max(t.values[1] for t in feasible))
    out = {
        "reference": ref,
        "search_trials": len(search),
        "search_front": [[t.number, *_point(t), *t.values] for t in front_of(search, ["maximize", "minimize"])],
        "search_hv": _hv(search, ref),
        "grid_points_measured": len(grid),
        "grid_front": [[t.number, *_point(t), *t.values] for t in front_of(grid, ["maximize", "minimize"])],
        "grid_hv": _hv(grid, ref),
    }
    out["search_hv_vs_grid"] = out["search_hv"] / out["grid_hv"] if out["grid_hv"] else None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
