"""Export the best feasible trial in a form the engine takes as-is, with its evidence.

Formats: ``yaml`` and ``json`` (settings + measured throughput, baseline, gain, verdict and
environment fingerprint), ``vllm-cli`` (a ``vllm serve`` command line), ``hf-kwargs``
(``from_pretrained`` / ``pipeline`` / ``generate`` keyword arguments as JSON).
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import yaml

from hpo_infer.engines import engine_class, engine_names
from hpo_infer.errors import InputError
from hpo_infer.storage_url import mask
from hpo_infer.study.trials import (
    VALIDATION,
    baseline_trial,
    cache_warnings,
    gain_pct,
    meets_constraints,
    ranked,
    settings_of,
    tok_s,
    uncertainty,
)
from hpo_infer.study.verdict import describe

FORMATS = ("yaml", "json", "vllm-cli", "hf-kwargs")


def front_record(study: optuna.Study) -> dict[str, Any]:
    """The throughput-vs-latency front of a serving study (``export --pareto``)."""
    from hpo_infer.reporting import pareto

    names = pareto.axes(study)
    best = pareto.front(study, names)
    if not best:
        raise InputError(
            "--pareto",
            f"study {study.study_name!r} has no trial with latency metrics ({', '.join(names)}): "
            "serving studies (engine vllm-serve) measure them",
        )
    return {
        "study": study.study_name,
        "engine": study.user_attrs.get("engine"),
        "model": study.user_attrs.get("model"),
        "model_spec": study.user_attrs.get("model_spec"),
        "latency_axes": names,
        "pareto": [pareto.record(t, names) for t in best],
    }


def render_front(rec: dict[str, Any], fmt: str) -> str:
    """yaml/json as is; vllm-cli: one commented ``vllm serve`` line per front point."""
    if fmt in ("yaml", "json"):
        return render(rec, fmt)
    if fmt != "vllm-cli" or engine_class(rec["engine"]).native_export != "vllm-cli":
        raise InputError(
            "--format",
            f"--pareto writes yaml, json or vllm-cli (vLLM studies); got {fmt!r} for engine {rec['engine']!r}",
        )
    eng = engine_class(rec["engine"])
    model, extra, note = served_model(rec)
    lines = [note.rstrip("\n")] if note else []
    lines.append(f"# hpo-infer Pareto front of study {rec['study']}: tokens/s vs {', '.join(rec['latency_axes'])}")
    for p in rec["pareto"]:
        lat = ", ".join(f"{k} {v:.1f}" for k, v in p["latency_ms"].items())
        lines.append(
            f"# trial {p['trial']}: {p['throughput_tok_s']:.1f} tok/s, {lat}"
            f"{'' if p['meets_targets'] else ' (misses the targets)'}"
        )
        lines.append(eng.export_native(p["settings"], model, extra))
    return "\n".join(lines) + "\n"


def pick_record(study: optuna.Study, text: str) -> dict[str, Any]:
    """``export --pick "p99_ttft_ms<=200"``: the front's most tokens/s within the budget, as
    :func:`best_record` writes the best (the front of a multi-objective study, else the
    throughput-vs-latency front a serving study measured, else the feasible trials)."""
    from hpo_infer.reporting import pareto
    from hpo_infer.study import front as study_front

    try:
        bounds = study_front.parse_pick(text)
    except ValueError as exc:
        raise InputError("--pick", str(exc)) from None
    points = [t for t in pareto.front(study) if meets_constraints(t)] or ranked(study)
    if not points:
        raise InputError(f"study {study.study_name!r}", "has no feasible completed trial to export")
    known = study_front.names_measured(points)
    for b in bounds:
        if study_front.measured(points[0], b.name) is None and b.name not in known:
            has = ", ".join(["throughput", *sorted(known)])
            raise InputError("--pick", f"the study's points do not measure {b.name!r} (they measure: {has})")
    chosen = study_front.pick(points, bounds)
    if chosen is None:
        closest = {b.name: min(study_front.measured(t, b.name) or 0.0 for t in points) for b in bounds if b.op == "<="}
        near = ", ".join(f"lowest {n} {v:,.1f}" for n, v in closest.items())
        raise InputError("--pick", f"no point of the front meets {text.strip()}" + (f" ({near})" if near else ""))
    rec = best_record(study, chosen)
    rec["pick"] = {"budget": ", ".join(map(str, bounds)), "front_points": len(points)}
    return rec


def best_record(study: optuna.Study, chosen: optuna.trial.FrozenTrial | None = None) -> dict[str, Any]:
    """Everything an export carries (of ``chosen``, else the best); raises InputError when the
    study has no feasible trial."""
    best_list = ranked(study)
    if not best_list:
        raise InputError(f"study {study.study_name!r}", "has no feasible completed trial to export")
    best = chosen or best_list[0]
    base = baseline_trial(study)
    validation = study.user_attrs.get(VALIDATION)
    rec: dict[str, Any] = {
        "study": study.study_name,
        "engine": study.user_attrs.get("engine"),
        "engine_version": study.user_attrs.get("engine_version"),
        "model": study.user_attrs.get("model"),
        "model_spec": study.user_attrs.get("model_spec"),
        "workload": study.user_attrs.get("workload"),
        "settings": best.user_attrs.get("settings", settings_of(best)),
        "throughput_tok_s": tok_s(best),
        "throughput_spread": best.user_attrs.get("spread"),
        "throughput_uncertainty": uncertainty(best),
        "cache_warnings": cache_warnings([t for t in (best, base) if t is not None]) or None,
        "trial": best.number,
        "baseline_tok_s": tok_s(base) if base else None,
        "baseline_resolved": base.user_attrs.get("resolved") if base else None,
        "gain_pct": gain_pct(tok_s(best), tok_s(base)) if base and tok_s(base) else None,
        "verdict": describe(validation),
        "environment": best.user_attrs.get("env"),
    }
    metrics = best.user_attrs.get("metrics")
    if metrics:  # a serving study: the latencies behind the number, and the targets they met
        from hpo_infer.engines.vllm_serve import missed_rate  # import-light: no vllm

        search = (best.user_attrs.get("resolved") or {}).get("goodput_search")
        spec = study.user_attrs.get("spec") or {}
        objective = spec.get("objective") or {}
        rec["serving"] = {
            "objective": objective.get("metric", "throughput"),
            "slo": objective.get("slo") or {},
            "goodput_request_rate": metrics.get("goodput_request_rate"),
            "goodput_missed_request_rate": missed_rate(search) if search else None,
            "goodput_is_saturation": bool(search)
            and search.get("request_rate") == search.get("saturation_request_rate"),
            "latency_ms": {
                k: v for k, v in metrics.items() if k.endswith("_ms") and k.startswith(("p50", "p90", "p99"))
            },
        }
    from hpo_infer.study.gains import summary as transfer_summary

    transfer = transfer_summary(study)  # a transfer study: the paper's gain over the carried-over config
    if transfer is not None:
        rec["transfer"] = transfer
    if validation and "front" in validation:  # a multi-objective study: the front re-measured
        rec["revalidated_front"] = validation["front"]
    if validation and "best_vs_baseline" in validation:
        rec["revalidated"] = {
            k: {"value": m.get("value"), "repeats": m.get("repeats")} for k, m in validation["measured"].items()
        }
    return json.loads(mask(json.dumps(rec, default=str)))


def render(rec: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rec, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(rec, sort_keys=False)
    eng = engine_class(rec["engine"])
    native = {engine_class(n).native_export: engine_class(n).title for n in engine_names()}
    if fmt in native:
        if eng.native_export != fmt:
            raise InputError(
                "--format", f"{fmt} exports {native[fmt]} studies; this study's engine is {rec['engine']!r}"
            )
        if fmt != "vllm-cli":
            return eng.export_native(rec["settings"], _model_ref(rec)) + "\n"
        model, extra, note = served_model(rec)
        return note + _comment(rec) + eng.export_native(rec["settings"], model, extra) + "\n"
    raise InputError("--format", f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def _model_ref(rec: dict[str, Any]) -> str:
    m = rec.get("model_spec") or {}
    return str(m.get("id") or m.get("path") or rec.get("model"))


def served_model(rec: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    """What ``vllm serve`` is given for the study's model, the flags it needs, and a first line
    when it cannot run here as printed. A synthetic model is the folder the study's workers made
    (``HPO_INFER_CACHE``), served with random weights; its name alone is looked up on the hub."""
    m = rec.get("model_spec") or {}
    if "synthetic" not in m:
        return _model_ref(rec), (), ""
    from hpo_infer import model_source

    try:
        folder = model_source.materialized_path(m)
    except (OSError, ValueError, KeyError) as exc:
        return _model_ref(rec), (), f"# needs the real model id in place of {_model_ref(rec)!r}: {exc}\n"
    note = ""
    if not (folder / "config.json").exists():
        note = (
            f"# needs the real model id, or the synthetic model's folder {folder}, which hpo-infer tune "
            "makes on the machine that runs the study (HPO_INFER_CACHE)\n"
        )
    return str(folder), ("--load-format", "dummy"), note


def _comment(rec: dict[str, Any]) -> str:
    lines = [
        f"# hpo-infer best of study {rec['study']}",
        f"# measured {rec['throughput_tok_s']:.1f} tok/s ({rec.get('throughput_uncertainty', '-')}; "
        f"baseline {rec['baseline_tok_s'] or float('nan'):.1f} tok/s)",
        f"# {rec['verdict']}",
    ]
    lines += [f"# warning: {w}" for w in rec.get("cache_warnings") or []]
    serving = rec.get("serving") or {}
    if serving.get("goodput_request_rate"):
        targets = ", ".join(f"{k} <= {v:g}" for k, v in sorted(serving["slo"].items()))
        missed = serving.get("goodput_missed_request_rate")
        bracket = (
            f" (missed them at {missed:.3g} req/s)"
            if missed
            else " (the saturation rate)"
            if serving.get("goodput_is_saturation")
            else ""
        )
        lines.append(f"# goodput: {serving['goodput_request_rate']:.3g} req/s met {targets}{bracket}")
    if rec.get("model_spec", {}).get("synthetic") is not None:
        lines.append("# synthetic model: add --load-format dummy, or replace the model with the real one")
    return "\n".join(lines) + "\n"
