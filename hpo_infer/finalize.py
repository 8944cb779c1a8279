"""Before a best config is declared: re-measure it against the baseline and the runner-up.

All three are measured in one worker session, one after another, with the spec's repeats.
Noise between machines and engine starts was 3-15% for vLLM on H100/H200, so the verdict is a
Welch t-test (scipy) on the repeats: a gain inside the noise is called a tie, not a win.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer.runner import COMPLETE, run_worker
from hpo_infer.study import BASELINE, ROLE, baseline_trial, ranked, settings_of

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec

ALPHA = 0.05
KEY = "validation"


def verdict(best: list[float], base: list[float]) -> dict[str, Any]:
    """Compare two sets of repeats: gain of medians and whether it is larger than the noise.

    Welch's t-test on log throughput: noise on a rate is multiplicative (a pass slowed by a
    busy neighbour loses a fraction, not a fixed number of tokens/s), so one slow repeat of a
    20x faster config must not hide the gap.
    """
    import math
    import statistics

    from scipy import stats

    mb, m0 = statistics.median(best), statistics.median(base)
    gain = (mb - m0) / m0 * 100 if m0 else float("inf")
    p = None
    if min(best + base, default=0) <= 0:
        lb, l0 = best, base  # a zero rate (nothing generated): compare as measured
    else:
        lb, l0 = [math.log(x) for x in best], [math.log(x) for x in base]
    if len(best) >= 2 and len(base) >= 2 and (statistics.pstdev(lb) > 0 or statistics.pstdev(l0) > 0):
        p = float(stats.ttest_ind(lb, l0, equal_var=False).pvalue)
    elif len(best) >= 2 and len(base) >= 2:
        p = 0.0 if mb != m0 else 1.0
    significant = p is not None and p < ALPHA
    return {"gain_pct": gain, "p_value": p, "significant": significant}


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


def describe(v: dict[str, Any] | None) -> str:
    """One sentence for the summary and the export."""
    if not v:
        return "not re-validated"
    bb = v.get("best_vs_baseline")
    if bb is None:
        return "re-validation incomplete: " + "; ".join(
            f"{k}: {m.get('error') or m.get('status')}" for k, m in v.get("measured", {}).items() if m.get("status") != COMPLETE
        )
    text = f"best vs baseline {bb['gain_pct']:+.1f}% (p={_p(bb['p_value'])})"
    if not bb["significant"]:
        text += ": inside the noise, a tie with the engine defaults"
    elif bb["gain_pct"] > 0:
        text += ": larger than the noise"
    else:
        text += ": worse than the engine defaults, larger than the noise (keep the defaults)"
    br = v.get("best_vs_runner_up")
    if br is not None:
        text += f"; vs runner-up {br['gain_pct']:+.1f}% (p={_p(br['p_value'])})"
        if not br["significant"]:
            text += ", a tie"
        elif br["gain_pct"] < 0:
            text += ", the runner-up measured better on re-validation"
    return text


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"
