"""``hpo-infer report`` and ``compare``: plots a person would rather look at than read, and a
Markdown summary (baseline vs best, gain, share of the compute bound, failures by kind)."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo_infer.storage_url import mask
from hpo_infer.study.overhead import study_overhead
from hpo_infer.study.trials import baseline_trial, cache_warnings, gain_pct, ranked, tok_s, uncertainty
from hpo_infer.study.verdict import describe


def _status(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.FAIL:
        return "failed"
    if t.state == TrialState.PRUNED:
        return "pruned"
    return str(t.user_attrs.get("status", t.state.name.lower()))


def failure_kind(t: optuna.trial.FrozenTrial) -> str:
    """Group failures by cause: the first words of the recorded reason, numbers stripped."""
    import re

    text = str(t.user_attrs.get("failure") or t.user_attrs.get("error") or "unknown")
    text = re.sub(r"\d+(\.\d+)?", "N", text.splitlines()[0])
    return text[:80]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tokens_axes(ax: Any, xlabel: str, title: str) -> None:
    """Tokens/s on y, grid, legend and title: the single-panel plots' common frame."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tokens/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)


def _ci(t: optuna.trial.FrozenTrial) -> tuple[float, float] | None:
    """The 95% CI of a trial's mean tokens/s from its repeats' spread; None when not kept."""
    sp = t.user_attrs.get("spread") or {}
    lo, hi = sp.get("ci95_low"), sp.get("ci95_high")
    if lo is None or hi is None or tok_s(t) is None:
        return None
    return float(lo), float(hi)


def _errorbars(ax: Any, pts: list[tuple[float, optuna.trial.FrozenTrial]]) -> None:
    """Each measured trial's 95% CI as an error bar about its value (one container per panel)."""
    bars = [(x, tok_s(t), _ci(t)) for x, t in pts]
    bars = [(x, y, ci) for x, y, ci in bars if ci is not None]
    if not bars:
        return
    xs, ys, cis = zip(*bars)
    below = [max(y - lo, 0.0) for y, (lo, _) in zip(ys, cis)]
    above = [max(hi - y, 0.0) for y, (_, hi) in zip(ys, cis)]
    ax.errorbar(xs, ys, yerr=[below, above], fmt="none", ecolor="tab:blue", elinewidth=1, capsize=3, alpha=0.6)


def _mark(ax: Any, pts: list[tuple[float, optuna.trial.FrozenTrial]], base: Any, best: Any) -> None:
    """Ring the baseline and star the best trial, wherever they are in this panel."""
    for t, style in ((base, _BASE_STYLE), (best, _BEST_STYLE)):
        at = [(x, tok_s(p)) for x, p in pts if t is not None and p.number == t.number]
        if at:
            ax.scatter(*zip(*at), **style)


_BASE_STYLE = {"s": 110, "facecolors": "none", "edgecolors": "black", "linewidths": 1.5, "label": "baseline"}
_BEST_STYLE = {"s": 160, "marker": "*", "color": "tab:orange", "edgecolors": "black", "zorder": 3, "label": "best"}


def _best_and_baseline(study: optuna.Study) -> tuple[Any, Any]:
    top = [t for t in ranked(study) if _status(t) == "ok"]
    base = baseline_trial(study)
    return (top[0] if top else None), (base if base is not None and _status(base) == "ok" else None)


def landscape_figure(study: optuna.Study) -> Any | None:
    """The landscape figure (see :func:`plot_landscape`), unsaved; None without a measured setting."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    names = sorted({k for t in trials for k in t.params})
    if not names:
        return None
    best, base = _best_and_baseline(study)
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        these = [t for t in trials if name in t.params]
        cats = not all(isinstance(t.params[name], (int, float)) and not isinstance(t.params[name], bool) for t in these)
        order = sorted({str(t.params[name]) for t in these}) if cats else None
        xs = [order.index(str(t.params[name])) if cats else t.params[name] for t in these]
        ok = [(x, t) for x, t in zip(xs, these) if _status(t) == "ok"]
        bad = [(x, 0.0) for x, t in zip(xs, these) if _status(t) != "ok"]
        _errorbars(ax, ok)
        if ok:
            ax.scatter([x for x, _ in ok], [tok_s(t) for _, t in ok], s=28, alpha=0.8, label="measured (95% CI)")
        if bad:
            ax.scatter(*zip(*bad), marker="x", color="tab:red", label="infeasible")
        _mark(ax, ok, base, best)
        if cats:
            ax.set_xticks(range(len(order)), order, rotation=30)
        elif all(x > 0 for x in xs) and max(xs) / max(min(xs), 1e-9) >= 16:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(name)
        ax.set_ylabel("tokens/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(study.study_name, fontsize=9)
    return fig


def plot_landscape(study: optuna.Study, path: Path) -> Path | None:
    """Throughput against each setting: the paper's landscape view, one panel per setting, each
    trial's 95% CI as an error bar, the baseline and the best trial marked in every panel."""
    fig = landscape_figure(study)
    return None if fig is None else _save(_plt(), fig, path)


def history_figure(study: optuna.Study) -> Any | None:
    """The optimisation-history figure (see :func:`plot_history`), unsaved; None without trials."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not trials:
        return None
    best_t, base_t = _best_and_baseline(study)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    xs = [t.number for t in trials]
    ys = [tok_s(t) if _status(t) == "ok" else 0.0 for t in trials]
    best, cur = [], 0.0
    for y in ys:
        cur = max(cur, y)
        best.append(cur)
    ok = [(t.number, t) for t in trials if _status(t) == "ok"]
    _errorbars(ax, ok)
    ax.scatter(xs, ys, s=22, label="trial (95% CI)")
    ax.step(xs, best, where="post", color="tab:green", label="best so far")
    base = baseline_trial(study)
    if base is not None:
        ax.axhline(tok_s(base), color="black", ls="--", lw=1, label="baseline (engine defaults)")
    _mark(ax, ok, base_t, best_t)
    _tokens_axes(ax, "trial", "optimisation history")
    return fig


def plot_history(study: optuna.Study, path: Path) -> Path | None:
    """Each trial's tokens/s with its 95% CI, the best so far, the baseline and the best marked."""
    fig = history_figure(study)
    return None if fig is None else _save(_plt(), fig, path)


def plot_pareto(study: optuna.Study, path: Path) -> Path | None:
    """Serving studies: tokens/s against the first latency axis, the Pareto front ringed."""
    from hpo_infer.reporting import pareto
    from hpo_infer.study.trials import meets_constraints

    names = pareto.axes(study)
    pts = pareto.points(study, names)
    best = pareto.front(study, names)
    if not best:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lat = lambda t: t.user_attrs["metrics"][names[0]]  # noqa: E731
    ok = [t for t in pts if meets_constraints(t)]
    miss = [t for t in pts if not meets_constraints(t)]
    ax.scatter([lat(t) for t in ok], [tok_s(t) for t in ok], s=24, label="trial (meets targets)")
    if miss:
        ax.scatter(
            [lat(t) for t in miss],
            [tok_s(t) for t in miss],
            s=24,
            marker="x",
            color="tab:red",
            label="trial (misses targets)",
        )
    # Rings, not a line: with two latencies the front need not be monotone in the one plotted.
    ax.scatter(
        [lat(t) for t in best],
        [tok_s(t) for t in best],
        s=110,
        facecolors="none",
        edgecolors="tab:green",
        label=f"Pareto front ({', '.join(names)})",
    )
    for t in best:
        ax.annotate(str(t.number), (lat(t), tok_s(t)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    slo = pareto.targets(study)
    if names[0] in slo:
        ax.axvline(slo[names[0]], color="black", ls="--", lw=1, label=f"target {names[0]} {slo[names[0]]:g}")
    _tokens_axes(ax, f"{names[0]} (ms)", "throughput vs latency")
    return _save(plt, fig, path)


def plot_importance(study: optuna.Study, path: Path) -> Path | None:
    feas = [t for t in ranked(study)]
    if len(feas) < 3:
        return None
    try:
        # PED-ANOVA is Optuna's own (fANOVA would need scikit-learn) and suits few trials.
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ImportError):
        return None
    if not imp:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA)")
    ax.set_title("parameter importance", fontsize=10)
    return _save(plt, fig, path)


def compute_bound(study: optuna.Study) -> float | None:
    """Roofline bound for the study's model and GPU, when both are known."""
    try:
        from hpo_infer import roofline
        from hpo_infer.model_source import synthetic_config
    except ImportError:
        return None
    ms = study.user_attrs.get("model_spec") or {}
    wl = study.user_attrs.get("workload") or {}
    if "synthetic" not in ms or study.user_attrs.get("gpu") in (None, "cpu"):
        return None
    try:
        cfg = synthetic_config(ms)
        inp = wl.get("input_tokens", 128)
        inp = sum(inp) / 2 if isinstance(inp, list) else inp
        return float(
            roofline.compute_bound_tok_s(
                cfg,
                study.user_attrs["gpu"],
                int(study.user_attrs.get("gpu_count", 1)),
                inp,
                wl.get("output_tokens", 128),
            )
        )
    except Exception:  # noqa: BLE001 - an unknown GPU or config: no bound, not a failed report
        return None


def summary_markdown(study: optuna.Study, plots: dict[str, Path | None]) -> str:
    trials = study.get_trials(deepcopy=False)
    by_status = collections.Counter(_status(t) for t in trials)
    base = baseline_trial(study)
    best_list = ranked(study)
    a = study.user_attrs
    out = [f"# {study.study_name}", ""]
    out.append(
        f"engine **{a.get('engine')}** {a.get('engine_version') or ''} · model **{a.get('model')}**"
        f" · GPU **{a.get('gpu')} x{a.get('gpu_count')}**"
    )
    out.append(f"workload `{json.dumps(a.get('workload'), default=str)}`")
    out.append("")
    out.append(f"{len(trials)} trials: " + ", ".join(f"{n} {k}" for k, n in sorted(by_status.items())))
    out += ["", "| | trial | settings | tokens/s | uncertainty | vs baseline |", "|---|---|---|---|---|---|"]
    rows = ([("baseline", base)] if base else []) + [
        ("best" if i == 0 else f"#{i + 1}", t) for i, t in enumerate(best_list[:3])
    ]
    for role, t in rows:
        gain = f"{gain_pct(tok_s(t), tok_s(base)):+.1f}%" if base and tok_s(base) else "-"
        out.append(
            f"| {role} | {t.number} | `{json.dumps(t.user_attrs.get('settings', t.params), sort_keys=True)}` "
            f"| {tok_s(t):,.1f} | {uncertainty(t)} | {gain} |"
        )
    out += [f"**warning**: {w}" for w in cache_warnings(trials)]
    if best_list and base and tok_s(base):
        out += ["", f"**gain of best over baseline: {gain_pct(tok_s(best_list[0]), tok_s(base)):+.1f}%**"]
    out.append(f"re-validation: {describe(a.get('validation'))}")
    bound = compute_bound(study)
    if bound and best_list:
        out.append(
            f"compute bound (roofline): {bound:,.0f} tok/s; best is **{tok_s(best_list[0]) / bound * 100:.1f}%** of it"
        )
    elif best_list:
        out.append("compute bound: n/a (needs a known GPU and model config)")
    if a.get("transfer"):
        out += ["", "## Transfer", f"`{json.dumps(a['transfer'], default=str)}`"]
    out += _device_time_section(study)
    out += _pareto_section(study)
    fails = collections.Counter(failure_kind(t) for t in trials if _status(t) in ("failed", "infeasible"))
    if fails:
        out += ["", "## Failures by kind", "", "| kind | trials |", "|---|---|"]
        out += [f"| {k} | {n} |" for k, n in fails.most_common()]
    out += ["", "## Plots", ""]
    out += [f"![{k}]({p.name})" for k, p in plots.items() if p is not None]
    return mask("\n".join(out) + "\n")


def _device_time_section(study: optuna.Study) -> list[str]:
    """How much of the device time measured and what the rest went to (study/overhead)."""
    ov = study_overhead(study)
    if not ov.workers:
        return []
    return ["", "## Device time", "", ov.line()]


def _pareto_section(study: optuna.Study) -> list[str]:
    from hpo_infer.reporting import pareto
    from hpo_infer.study.trials import meets_constraints

    names = pareto.axes(study)
    best = pareto.front(study, names)
    if not best:
        return []
    out = [
        "",
        "## Throughput vs latency (Pareto front)",
        "",
        "Measured configurations that no other one beats on tokens/s and on every latency; "
        "`hpo-infer export --pareto` writes them.",
        "",
        "| trial | settings | tokens/s | " + " | ".join(names) + " | meets targets |",
        "|---" * (len(names) + 4) + "|",
    ]
    for t in best:
        m = t.user_attrs["metrics"]
        out.append(
            f"| {t.number} | `{json.dumps(t.user_attrs.get('settings', t.params), sort_keys=True)}` "
            f"| {tok_s(t):,.1f} | "
            + " | ".join(f"{m[n]:,.1f}" for n in names)
            + f" | {'yes' if meets_constraints(t) else 'no'} |"
        )
    return out


def write_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "landscape": plot_landscape(study, out_dir / "landscape.png"),
        "history": plot_history(study, out_dir / "history.png"),
        "importance": plot_importance(study, out_dir / "importance.png"),
        "pareto": plot_pareto(study, out_dir / "pareto.png"),
    }
    md = out_dir / "summary.md"
    md.write_text(summary_markdown(study, plots))
    return {"summary": md, **{k: v for k, v in plots.items() if v is not None}}


def compare_rows(studies: list[optuna.Study]) -> list[dict[str, Any]]:
    rows = []
    for s in studies:
        best = ranked(s)
        base = baseline_trial(s)
        a = s.user_attrs
        rows.append(
            {
                "study": s.study_name,
                "engine": a.get("engine"),
                "model": a.get("model"),
                "gpu": f"{a.get('gpu')} x{a.get('gpu_count')}",
                "trials": len(s.get_trials(deepcopy=False)),
                "baseline_tok_s": tok_s(base) if base else None,
                "best_tok_s": tok_s(best[0]) if best else None,
                "gain_pct": gain_pct(tok_s(best[0]), tok_s(base)) if best and base and tok_s(base) else None,
                "best_settings": best[0].user_attrs.get("settings", best[0].params) if best else None,
            }
        )
    return rows
