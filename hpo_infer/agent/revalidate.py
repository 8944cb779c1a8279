"""Before a best config is declared: re-measure it against the baseline and the runner-up, on
exchangeable measurements.

Each finalist is measured in its own fresh engine start (its own worker), interleaved over
``validation_rounds`` rounds (A B C A B C ...), so no finalist gets the warm machine, the JIT
caches or the quiet minute the others miss. The baseline's starts give the study's noise floor:
how far two engine starts of one configuration land apart. The verdict is Welch's test on log
throughput (noise on a rate is multiplicative); a gain is called larger than the noise only if
the test says so *and* it exceeds the noise floor. A trial is never compared with itself: when
the baseline measured best, the runner-up is compared with it and the summary says so.

A multi-objective study re-measures its front instead (up to ``MAX_FRONT`` points, most tokens/s
first, beside the baseline), and marks each point whose gap to its neighbour (the baseline
counts as one, on the front or not) is inside the noise on every objective: tokens/s by the
same test, each metric by its engine starts' ranges overlapping. Such neighbours are one choice as
far as the measurements can tell. When the baseline is the whole front, the next configuration is
re-measured beside it, as in a single-objective study.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer.engines import engine_class
from hpo_infer.study.front import directions, front, front_of
from hpo_infer.study.trials import BASELINE, ROLE, baseline_trial, ranked, settings_of
from hpo_infer.study.trials import VALIDATION as KEY
from hpo_infer.study.verdict import describe, verdict
from hpo_infer.trial.runner import COMPLETE, run_worker

if TYPE_CHECKING:
    import threading

    from hpo_infer.spec import StudySpec


def effective_settings(t: optuna.trial.FrozenTrial, engine: str) -> dict[str, Any]:
    """What a trial ran with: the engine's defaults, what it resolved at start, what was set."""
    eng = engine_class(engine)
    names = {s.name for s in eng.settings}
    out = dict(eng.defaults())
    out.update({k: v for k, v in (t.user_attrs.get("resolved") or {}).items() if k in names})
    out.update(settings_of(t))
    out.update(t.user_attrs.get("settings") or {})
    return out


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same value for every setting either names. A setting one leaves to the engine and the
    engine never reported counts as different: re-measuring a twin costs an engine start, while
    taking a tuned point for the defaults drops it from the finalists."""
    missing = object()
    return all(a.get(k, missing) == b.get(k, missing) for k in set(a) | set(b))


def candidates(study: optuna.Study, engine: str) -> tuple[list[tuple[str, optuna.trial.FrozenTrial]], bool]:
    """Baseline, best and runner-up (distinct configurations), in that order; and whether the
    baseline itself measured best (then "best" is the best other configuration)."""
    out: list[tuple[str, optuna.trial.FrozenTrial]] = []
    base = baseline_trial(study)
    ranking = ranked(study)
    seen = [effective_settings(base, engine)] if base is not None else []
    if base is not None:
        out.append(("baseline", base))
    top = ranking[0] if ranking else None
    baseline_is_best = (
        base is not None
        and top is not None
        and (top.number == base.number or same_config(effective_settings(top, engine), seen[0]))
    )
    for t in ranking:
        s = effective_settings(t, engine)
        if t.user_attrs.get(ROLE) == BASELINE or any(same_config(s, x) for x in seen):
            continue  # the baseline again, or a configuration already a finalist
        out.append(("runner_up" if any(role == "best" for role, _ in out) else "best", t))
        seen.append(s)
        if len(out) >= (3 if base else 2):
            break
    return out, baseline_is_best


MAX_FRONT = 4  # front points re-measured: each costs validation_rounds engine starts


def front_candidates(study: optuna.Study, engine: str) -> tuple[list[tuple[str, optuna.trial.FrozenTrial]], list[str]]:
    """Baseline, then the front's other points (distinct configurations, most tokens/s first);
    and the roles whose neighbours are compared: the front's points and the baseline, on the front
    or not (a point inside the noise of the defaults is the finding a user must not miss). When
    the baseline is the whole front, the best other configuration (most tokens/s on the front of
    the rest) is re-measured as ``runner_up`` and compared with it, as a single-objective study
    does when the defaults measured best: is their lead real?"""
    base = baseline_trial(study)
    out = [("baseline", base)] if base is not None else []
    seen = [effective_settings(base, engine)] if base is not None else []
    base_on_front = False  # read only when no other point is on the front: the loop then saw it all
    points: list[optuna.trial.FrozenTrial] = []
    for t in front(study):
        s = effective_settings(t, engine)
        if base is not None and same_config(s, seen[0]):
            base_on_front = True
        elif not any(same_config(s, x) for x in seen):
            points.append(t)
            seen.append(s)
        if len(points) == MAX_FRONT:
            break
    roles = [f"front_{i}" for i in range(1, len(points) + 1)]
    if points or not base_on_front:
        return out + list(zip(roles, points)), [role for role, _ in out] + roles
    rest = [
        t
        for t in ranked(study)
        if t.user_attrs.get(ROLE) != BASELINE and not same_config(effective_settings(t, engine), seen[0])
    ]
    nxt = front_of(rest, directions(study))
    return (out + [("runner_up", nxt[0])], ["baseline", "runner_up"]) if nxt else (out, [])


def revalidate(
    study: optuna.Study, spec: "StudySpec", gpus: list[int] | None = None, stop: "threading.Event | None" = None
) -> dict[str, Any] | None:
    """Re-measure the finalists, each in its own engine start, interleaved; store and return the
    verdict. A signal (``stop``) ends the running start at once and stores nothing: the same
    command re-validates again."""
    multi = spec.objective.multi
    compared: list[str] = []
    if multi:
        cands, compared = front_candidates(study, spec.engine)
        baseline_is_best = "runner_up" in compared
    else:
        cands, baseline_is_best = candidates(study, spec.engine)
    if not any(role in ("best", "runner_up") or role.startswith("front_") for role, _ in cands):
        return None
    configs = {role: t.user_attrs.get("settings", settings_of(t)) for role, t in cands}
    starts: dict[str, list[Any]] = {role: [] for role, _ in cands}
    env: dict[str, Any] = {}
    for _ in range(spec.validation_rounds):
        for role, _t in cands:
            if stop is not None and stop.is_set():
                return None
            out = run_worker(
                spec.request([configs[role]], repeats=max(spec.repeats, 3)), spec.trial_timeout_s, gpus=gpus, stop=stop
            )
            starts[role].append(out.first)
            env = out.env or env
    if stop is not None and stop.is_set():
        return None
    measured = {role: _pooled(t.number, configs[role], starts[role]) for role, t in cands}
    result: dict[str, Any] = {"measured": measured, "env": env, "rounds": spec.validation_rounds}
    if baseline_is_best:
        result["baseline_is_best"] = True
    floor = noise_floor(measured.get("baseline"))
    if floor is not None:
        result["noise_floor_pct"] = floor
    if multi:
        result["front"] = front_marks(measured, compared, list(spec.objective.measured()), floor)
        result["summary"] = describe(result)
        study.set_user_attr(KEY, result)
        return result
    b, best = measured.get("baseline"), measured.get("best")
    if b and best and b["status"] == COMPLETE and best["status"] == COMPLETE:
        result["best_vs_baseline"] = _verdict(best, b, floor)
    ru = measured.get("runner_up")
    if ru and best and ru["status"] == COMPLETE and best["status"] == COMPLETE:
        result["best_vs_runner_up"] = _verdict(best, ru, floor)
    result["summary"] = describe(result)
    study.set_user_attr(KEY, result)
    return result


def _pooled(trial: int, settings: dict[str, Any], starts: list[Any]) -> dict[str, Any]:
    """One finalist over its engine starts: every repeat, and each start's own value."""
    ok = [r for r in starts if r.status == COMPLETE]
    failed = next((r for r in starts if r.status != COMPLETE), None)
    repeats = [float(x["tok_s"]) for r in ok for x in r.repeats]
    names = sorted({k for r in ok for k in (r.metrics or {})})
    return {
        "trial": trial,
        "settings": settings,
        "status": COMPLETE if ok and failed is None else (failed.status if failed else "failed"),
        "value": statistics.fmean(repeats) if repeats else None,
        "repeats": repeats,
        "start_values": [r.value for r in ok],
        # Each metric over every repeat of every start (a start's median where repeats carry none).
        "start_metrics": {k: _metric_values(ok, k) for k in names},
        "spread": ok[-1].spread if ok else {},
        "error": failed.error if failed is not None else None,
    }


def _metric_values(starts: list[Any], name: str) -> list[float]:
    per_repeat = [float(x["metrics"][name]) for r in starts for x in r.repeats if name in (x.get("metrics") or {})]
    return per_repeat or [float(r.metrics[name]) for r in starts if name in (r.metrics or {})]


def front_marks(
    measured: dict[str, Any], roles: list[str], names: list[str], floor: float | None
) -> list[dict[str, Any]]:
    """The re-measured points of ``roles``, most tokens/s first; each with its neighbour below and
    whether their gap is inside the noise on every objective."""
    pts = sorted(
        (measured[r] for r in roles if r in measured and measured[r]["status"] == COMPLETE),
        key=lambda m: -m["value"],
    )
    out = [{"trial": m["trial"], "value": m["value"], "metrics": _medians(m, names)} for m in pts]
    for a, b, mark in zip(pts, pts[1:], out):
        v = _verdict(a, b, floor)
        overlap = all(_overlap(a["start_metrics"].get(n), b["start_metrics"].get(n)) for n in names)
        mark["next"] = {"trial": b["trial"], "gain_pct": v["gain_pct"], "p_value": v["p_value"]}
        mark["next"]["within_noise"] = not v["significant"] and overlap
    return out


def _medians(m: dict[str, Any], names: list[str]) -> dict[str, float | None]:
    return {n: statistics.median(m["start_metrics"][n]) if m["start_metrics"].get(n) else None for n in names}


def _overlap(a: list[float] | None, b: list[float] | None) -> bool:
    """Two configurations' engine starts land on overlapping ranges of a metric."""
    if not a or not b:
        return True  # nothing to tell them apart by
    return max(min(a), min(b)) <= min(max(a), max(b))


def noise_floor(baseline: dict[str, Any] | None) -> float | None:
    """How far the baseline's engine starts land apart, in percent of their mean (None: one start)."""
    values = (baseline or {}).get("start_values") or []
    if len(values) < 2 or not statistics.fmean(values):
        return None
    return (max(values) - min(values)) / statistics.fmean(values) * 100


def _verdict(a: dict[str, Any], b: dict[str, Any], floor: float | None) -> dict[str, Any]:
    v = verdict(a["repeats"], b["repeats"])
    if v["significant"] and floor is not None and abs(v["gain_pct"]) <= floor:
        v["significant"] = False
        v["within_noise_floor"] = True
    return v
