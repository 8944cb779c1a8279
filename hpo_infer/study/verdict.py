"""Whether one configuration beats another: Welch's test on log throughput, and the sentence the
summary, the export and the dashboard print for a study's re-validation."""

from __future__ import annotations

from typing import Any

from hpo_infer.study.trials import gain_pct

ALPHA = 0.05
COMPLETE = "complete"  # a re-measured finalist's status (the trial runner's word)


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
    gain = gain_pct(mb, m0)
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


def describe_front(v: dict[str, Any]) -> str:
    """A multi-objective study's re-validation: the front re-measured, ties marked."""
    pts = v["front"]
    if not pts:
        return "re-validation incomplete: no front point measured again"
    ties = [f"trials {p['trial']} and {p['next']['trial']}" for p in pts if p.get("next", {}).get("within_noise")]
    if v.get("baseline_is_best"):
        nxt = v["measured"]["runner_up"]["trial"]
        if len(pts) < 2:
            return _incomplete(v)
        text = f"the engine defaults are the whole front; the next configuration (trial {nxt}) re-measured beside them"
        text += f" in {v.get('rounds', 2)} engine starts each"
    else:
        n = sum(role.startswith("front_") for role in v["measured"])
        text = f"front re-measured beside the defaults: {n} point(s) in {v.get('rounds', 2)} engine starts each"
    text += f"; inside the noise of each other: {', '.join(ties)}" if ties else "; every gap larger than the noise"
    if v.get("noise_floor_pct") is not None:
        text += f" (noise floor: the defaults' engine starts {v['noise_floor_pct']:.1f}% apart)"
    return text


def _incomplete(v: dict[str, Any]) -> str:
    """Which finalists' engine starts failed, and why."""
    failed = {k: m for k, m in v.get("measured", {}).items() if m.get("status") != COMPLETE}
    why = [f"{k}: {m.get('error') or m.get('status')}" for k, m in failed.items()]
    return "re-validation incomplete: " + "; ".join(why)


def describe(v: dict[str, Any] | None) -> str:
    """One sentence for the summary and the export."""
    if not v:
        return "not re-validated"
    if "front" in v:
        return describe_front(v)
    bb = v.get("best_vs_baseline")
    if bb is None:
        return _incomplete(v)
    lead = ""
    if v.get("baseline_is_best"):
        lead = f"the engine defaults measured best; the next configuration (trial {v['measured']['best']['trial']}) "
    text = f"{lead}best vs baseline {bb['gain_pct']:+.1f}% (p={_p(bb['p_value'])})"
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
    if v.get("noise_floor_pct") is not None:
        text += f" (noise floor: the defaults' {v.get('rounds', 2)} engine starts {v['noise_floor_pct']:.1f}% apart)"
    return text


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"
