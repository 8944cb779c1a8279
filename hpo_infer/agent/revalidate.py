"""Before a best config is declared: re-measure it against the baseline and the runner-up.

All three are measured in one worker session, one after another, with the spec's repeats.
Noise between machines and engine starts was 3-15% for vLLM on H100/H200, so the verdict is a
Welch t-test (scipy) on the repeats: a gain inside the noise is called a tie, not a win.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer.study.trials import BASELINE, ROLE, baseline_trial, ranked, settings_of
from hpo_infer.study.trials import VALIDATION as KEY
from hpo_infer.study.verdict import describe, verdict
from hpo_infer.trial.runner import COMPLETE, run_worker

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec


def candidates(study: optuna.Study) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """Baseline, best and runner-up (distinct settings), in that order."""
    out: list[tuple[str, optuna.trial.FrozenTrial]] = []
    base = baseline_trial(study)
    if base is not None:
        out.append(("baseline", base))
    seen = [settings_of(base) if base else None]
    for t in ranked(study):
        s = settings_of(t)
        if s in seen or t.user_attrs.get(ROLE) == BASELINE:
            continue
        out.append(("best" if len([x for x in out if x[0] != "baseline"]) == 0 else "runner_up", t))
        seen.append(s)
        if len(out) >= (3 if base else 2):
            break
    return out


def revalidate(study: optuna.Study, spec: "StudySpec", gpus: list[int] | None = None) -> dict[str, Any] | None:
    """Re-measure baseline, best and runner-up in one worker; store and return the verdict."""
    cands = candidates(study)
    if not any(role == "best" for role, _ in cands):
        return None
    configs = [t.user_attrs.get("settings", settings_of(t)) for _, t in cands]
    request = spec.request(configs, repeats=max(spec.repeats, 3))
    out = run_worker(request, spec.trial_timeout_s * len(configs), gpus=gpus)
    measured: dict[str, Any] = {}
    for (role, t), r in zip(cands, out.configs):
        measured[role] = {
            "trial": t.number,
            "settings": configs[cands.index((role, t))],
            "status": r.status,
            "value": r.value,
            "repeats": [float(x["tok_s"]) for x in r.repeats],
            "spread": r.spread,
            "error": r.error,
        }
    result: dict[str, Any] = {"measured": measured, "env": out.env}
    b, best = measured.get("baseline"), measured.get("best")
    if b and best and b["status"] == COMPLETE and best["status"] == COMPLETE:
        result["best_vs_baseline"] = verdict(best["repeats"], b["repeats"])
    ru = measured.get("runner_up")
    if ru and best and ru["status"] == COMPLETE and best["status"] == COMPLETE:
        result["best_vs_runner_up"] = verdict(best["repeats"], ru["repeats"])
    result["summary"] = describe(result)
    study.set_user_attr(KEY, result)
    return result
