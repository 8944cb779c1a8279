"""Trial and study notes that optuna-dashboard shows beside each trial.

Written by the agent after every trial (a callback), so a person browsing the dashboard sees
what ran, what it measured, and why it failed, without opening the database. Passwords are
masked like everywhere else.
"""

from __future__ import annotations

import json

import optuna

from hpo_infer.storage_url import mask
from hpo_infer.study import optuna_api
from hpo_infer.study.trials import tok_s, uncertainty


def trial_note(t: optuna.trial.FrozenTrial) -> str:
    a = t.user_attrs
    status = "failed" if t.state == optuna.trial.TrialState.FAIL else a.get("status", t.state.name.lower())
    lines = [f"## Trial {t.number}: {status}"]
    if a.get("hpo_infer_role"):
        lines.append(f"role: **{a['hpo_infer_role']}**")
    settings = a.get("settings", t.params)
    lines.append("settings: `" + (json.dumps(settings, sort_keys=True) if settings else "engine defaults") + "`")
    if tok_s(t) is not None and status == "ok":
        sp = a.get("spread") or {}
        lines.append(
            f"throughput: **{tok_s(t):,.1f} tok/s** ({uncertainty(t)};"
            f" min {sp.get('min', 0):,.1f}, max {sp.get('max', 0):,.1f})"
        )
    if a.get("prefix_cache"):
        rates = ", ".join(f"{c.get('hit_rate', 0):.1%}" for c in a["prefix_cache"])
        lines.append(f"prefix-cache hit rate of the timed repeats: {rates}")
    if a.get("cache_flag"):
        lines.append(f"**warning**: {a['cache_flag']}")
    for key, label in (
        ("start_s", "engine start"),
        ("warmup_s", "warm-up"),
        ("measure_s", "measured"),
        ("wall_s", "worker wall time"),
    ):
        if a.get(key) is not None:
            lines.append(f"{label}: {float(a[key]):.2f} s")
    if a.get("peak_mem_bytes"):
        lines.append(f"peak memory: {a['peak_mem_bytes'] / 2**30:.2f} GiB")
    if a.get("resolved") and a.get("hpo_infer_role") == "baseline":
        lines.append("engine defaults resolved to: `" + json.dumps(a["resolved"], sort_keys=True, default=str) + "`")
    if a.get("failure"):
        lines.append(f"failure: {a['failure']}")
    if a.get("log_tail"):
        tail = "\n".join(str(a["log_tail"]).splitlines()[-15:])
        lines.append("log tail:\n```\n" + tail + "\n```")
    return mask("\n\n".join(lines))


def study_note(study: optuna.Study) -> str:
    a = study.user_attrs
    keys = ("engine", "engine_version", "model", "gpu", "gpu_count", "workload", "hpo_infer_version", "optuna_version")
    lines = [f"# {study.study_name}"] + [f"- {k}: `{json.dumps(a.get(k), default=str)}`" for k in keys if k in a]
    if a.get("validation"):
        from hpo_infer.study.verdict import describe

        lines.append(f"\nre-validation: {describe(a['validation'])}")
    return mask("\n".join(lines))


def write_trial_note(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
    """optuna-dashboard's ``save_note`` wants a live Trial; a handle on the stored trial works."""
    try:
        from optuna_dashboard import save_note
    except ImportError:  # the dashboard extra is optional
        return
    save_note(optuna_api.live_trial(study, frozen), trial_note(frozen))


def write_study_note(study: optuna.Study) -> None:
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    save_note(study, study_note(study))


class NoteCallback:
    """Optuna callback: one note per finished trial, and the study note kept current."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        fresh = optuna_api.storage(study).get_trial(optuna_api.trial_id(trial))
        write_trial_note(study, fresh)
        write_study_note(study)
