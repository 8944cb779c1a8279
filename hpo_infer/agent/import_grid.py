"""``hpo-infer import-grid``: a recorded table as finished trials of a study.

A grid measured earlier (or the paper's landscapes) becomes a study like any other: browsable
in the dashboard, reported, exported, and usable as the source of ``transfer``. The spec is a
replay spec (``engine: replay``): it names the table, the rows (``fixed`` filters) and the space,
and so the study key. Each point of the space becomes one trial, resolved by exactly the rules
the replay engine applies when it runs (:meth:`ReplayEngine.lookup`): an imported grid says what
tuning over it would have measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo_infer.errors import InputError

if TYPE_CHECKING:
    import optuna

    from hpo_infer.spec import StudySpec

KEY = "imported_from"


@dataclass
class Imported:
    study: str
    trials: int = 0
    feasible: int = 0
    infeasible: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)  # points with no row (missing: error)
    baseline: int | None = None


def parse_point(text: str, where: str = "--baseline") -> dict[str, Any]:
    """``batch_size=1,num_gpus=1`` -> {"batch_size": 1, "num_gpus": 1} (cells typed as in tables)."""
    from hpo_infer.recorded import cell

    out: dict[str, Any] = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise InputError(where, f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
        out[name.strip()] = cell(value)
    return out


def grid_trials(
    spec: "StudySpec", baseline: dict[str, Any] | None = None
) -> tuple[list["optuna.trial.FrozenTrial"], Imported]:
    """One finished trial per point of the spec's space, built without touching storage."""
    import optuna

    from hpo_infer import recorded
    from hpo_infer.engines.replay import ReplayEngine, missing_message
    from hpo_infer.spec import space as sp
    from hpo_infer.study.trials import BASELINE, CONSTRAINT, ROLE

    src = spec.source
    if spec.engine != "replay":
        raise InputError(f"{src}: engine", f"import-grid reads replay specs (engine: replay), got {spec.engine!r}")
    space = spec.space()
    if any(p.type == "float" and p.step is None for p in space.values()):
        raise InputError(f"{src}: search_space", "import-grid needs a finite space (float parameters need a 'step')")
    points = sp.grid(space)
    if baseline is not None:
        if set(baseline) != set(space) or not any(_same(baseline, pt) for pt in points):
            raise InputError(
                "--baseline", f"{recorded.fmt(baseline)} is not a point of the search space ({', '.join(space)})"
            )
    dists = {name: sp.distribution(p) for name, p in space.items()}
    info = Imported(study="")
    trials = []
    for pt in points:
        settings = {**spec.fixed, **pt}
        table, criteria, res = ReplayEngine.lookup(settings)
        attrs: dict[str, Any] = {ROLE: "grid", "settings": settings, "fixed": dict(spec.fixed), "imported": True}
        missing_ok = settings.get("missing", "error") == "infeasible"
        if res.status == recorded.MISSING and not missing_ok:
            info.skipped.append(recorded.fmt(pt))
            continue
        if baseline is not None and _same(baseline, pt):
            attrs[ROLE] = BASELINE
            attrs["baseline_params"] = sorted(pt)
        state, value, constraint = optuna.trial.TrialState.COMPLETE, 0.0, 1.0
        if res.status == recorded.FEASIBLE:
            value, constraint = float(res.value), 0.0  # type: ignore[arg-type]
            attrs.update(
                status="ok",
                repeats=res.values,
                resolved={"table": table.path, "rows": [r.line for r in res.rows], "recorded_tok_s": res.values},
            )
            info.feasible += 1
        elif res.status == recorded.FAILED:
            state, value = optuna.trial.TrialState.FAIL, None
            attrs.update(status="failed", failure=f"{table.name}: {recorded.fmt(criteria)}: {res.reason}")
            info.failed += 1
        else:
            reason = (
                res.reason
                if res.status != recorded.MISSING
                else missing_message(table, criteria) + "; treated as infeasible"
            )
            attrs.update(
                status="infeasible", failure=f"{table.name}: {recorded.fmt(criteria)}: {reason}", launched=False
            )
            info.infeasible += 1
        trials.append(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=pt,
                distributions={k: dists[k] for k in pt},
                user_attrs=attrs,
                constraints={CONSTRAINT: constraint} if state == optuna.trial.TrialState.COMPLETE else None,
            )
        )
    info.trials = len(trials)
    if not trials:
        raise InputError(src, "no point of the search space has a recorded row: nothing to import")
    if baseline is not None and not any(t.user_attrs.get(ROLE) == BASELINE for t in trials):
        raise InputError("--baseline", f"{recorded.fmt(baseline)} has no recorded row")
    return trials, info


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    from hpo_infer.recorded import norm

    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)


def import_grid(spec: "StudySpec", storage: Any, trials: list["optuna.trial.FrozenTrial"], info: Imported) -> Imported:
    """Add :func:`grid_trials`' trials to the spec's study (created if new); refuses a second import."""
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.study.create import create_or_load
    from hpo_infer.study.naming import study_name

    host = GPUInfo("cpu", 1)  # unused: a replay study's key names the recorded GPU
    name = study_name(spec, host)
    import optuna

    existing = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name in existing and KEY in optuna.load_study(study_name=name, storage=storage).user_attrs:
        raise InputError(
            "STUDY", f"{name!r} already holds an imported grid; import into another --storage or delete the study"
        )
    study = create_or_load(spec, storage, name, host)
    study.add_trials(trials)
    info.study = name
    base = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("hpo_infer_role") == "baseline"]
    info.baseline = base[0].number if base else None
    study.set_user_attr(
        KEY,
        {
            "table": spec.fixed.get("table"),
            "filters": {k: v for k, v in spec.fixed.items() if k != "table"},
            "trials": info.trials,
            "skipped": len(info.skipped),
        },
    )
    return info
