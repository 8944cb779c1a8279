"""Dump every trial of every study in the given databases, and check the fleet invariants.

Usage: python dump.py OUTDIR PHASE_JSON_DIR DB [DB ...]   (PostgreSQL on 127.0.0.1:$PGPORT as nobody)
"""
import csv, json, os, sys, collections

import optuna
from optuna.trial import TrialState

out, phasedir, dbs = sys.argv[1], sys.argv[2], sys.argv[3:]
port = os.environ.get("PGPORT", "55432")
rows, summary = [], {}
for db in dbs:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{port}/{db}"
    storage = optuna.storages.RDBStorage(url)
    phase = {}
    p = os.path.join(phasedir, f"{db}-phase.json")
    if os.path.exists(p):
        phase = json.load(open(p))
    for name in optuna.study.get_all_study_names(storage):
        st = optuna.load_study(study_name=name, storage=storage)
        trials = st.get_trials(deepcopy=False)
        states = collections.Counter(t.state.name for t in trials)
        per_agent = collections.defaultdict(lambda: collections.Counter())
        agent_wall = collections.defaultdict(float)
        bad_pin = []
        for t in trials:
            a = t.user_attrs.get("agent", "?")
            per_agent[a][t.state.name] += 1
            agent_wall[a] += float(t.user_attrs.get("wall_s") or 0)
            gpus = a.split(" gpus ")[-1] if " gpus " in a else None
            dev = (t.user_attrs.get("resolved") or {}).get("device")
            rows.append({
                "db": db, "study": name, "number": t.number, "state": t.state.name,
                "value": t.value, "params": json.dumps(t.params, sort_keys=True),
                "agent": a, "gpus": gpus, "role": t.user_attrs.get("hpo_infer_role"),
                "status": t.user_attrs.get("status"), "wall_s": t.user_attrs.get("wall_s"),
                "start_s": t.user_attrs.get("start_s"), "warmup_s": t.user_attrs.get("warmup_s"),
                "measure_s": t.user_attrs.get("measure_s"), "repeats": json.dumps(t.user_attrs.get("repeats")),
                "peak_mem_gib": round(t.user_attrs["peak_mem_bytes"] / 2**30, 2) if t.user_attrs.get("peak_mem_bytes") else None,
                "device": dev, "cuda_visible": (t.user_attrs.get("env") or {}).get("CUDA_VISIBLE_DEVICES") if isinstance(t.user_attrs.get("env"), dict) else None,
                "retry_of": t.user_attrs.get("retry_of"), "failure": (t.user_attrs.get("failure") or "")[:200],
                "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            })
        # A point measured twice: same params in two finished trials (with overlap in time = by two agents at once).
        seen = collections.defaultdict(list)
        for t in trials:
            if t.state != TrialState.WAITING and t.params:
                seen[json.dumps(t.params, sort_keys=True)].append(t)
        dups = []
        for k, ts in seen.items():
            if len(ts) > 1:
                ts = sorted(ts, key=lambda t: t.number)
                overlap = any(
                    a.datetime_start and b.datetime_start and a.datetime_complete and b.datetime_complete
                    and a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
                    for i, a in enumerate(ts) for b in ts[i + 1:]
                )
                dups.append({"params": k, "trials": [t.number for t in ts], "agents": [t.user_attrs.get("agent") for t in ts],
                             "overlap_in_time": overlap, "retry_of": [t.user_attrs.get("retry_of") for t in ts]})
        done = [t for t in trials if t.datetime_start and t.datetime_complete]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() if done else None
        fin = sum(states[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
        best = st.best_trial if states["COMPLETE"] else None
        summary[db] = {
            "study": name, "trials": len(trials), "states": dict(states), "finished": fin,
            "span_first_start_to_last_end_s": span,
            "trials_per_hour_span": round(fin / span * 3600, 1) if span else None,
            "phase": phase,
            "trials_per_hour_command": round(fin / phase["wall_s"] * 3600, 1) if phase.get("wall_s") else None,
            "per_agent": {a: dict(c) for a, c in per_agent.items()},
            "agent_trial_wall_s": {a: round(w, 1) for a, w in agent_wall.items()},
            "numbers": sorted(t.number for t in trials), "running_left": states.get("RUNNING", 0),
            "duplicates": dups,
            "best": {"number": best.number, "value": best.value, "params": best.params} if best else None,
            "env_first_trial": next((t.user_attrs.get("env") for t in trials if t.user_attrs.get("env")), None),
            "study_user_attrs": {k: v for k, v in st.user_attrs.items() if k in ("gpu", "gpu_count", "engine_version", "model", "hardware")},
        }
if rows:
    with open(os.path.join(out, "trials.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1, default=str)
print(json.dumps(summary, indent=1, default=str))
