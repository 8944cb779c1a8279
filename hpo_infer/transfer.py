"""``hpo-infer transfer``: re-tune on a new GPU, starting from what the old one found.

The paper's central finding (arXiv 2408.01050, RQ4): the best setting on one GPU is not the
best on the next, and re-tuning after a GPU change gained +9.16% (upgrade) / +13.7% (downgrade)
for HF pipelines over keeping the old GPU's best. ``transfer`` creates the study for the new key
(same engine, model and workload; the new GPU), measures first the engine defaults (the
baseline every study has), then the source study's best (*carried over*: the paper's baseline),
then its next best few, and spends the rest of the budget searching. The gain of the new best
over the carried-over config is the paper's metric; over the defaults, the usual one.

Paper semantics for the carried-over reference: if the source's best does not run on the new
GPU (OOM, or no value), the next-best carried config that does stands in for it; while none of
them has run, the source's next config is queued after each trial, down its whole ranking.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import click

from hpo_infer.errors import InputError

if TYPE_CHECKING:
    import optuna

    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import Param, StudySpec

CARRIED = "carried_over"  # the source's best, enqueued right after the baseline
WARM = "warm_start"  # the source's next best configs
RANK = "carried_rank"  # 0 for the source's best, 1, 2, ... for the next
KEY = "transfer"  # study user attr: where it came from, and the gains (see Gain)
DEFAULT_CARRY = 3


@dataclass
class Gain:
    """The paper's metric on one transfer study, computed from its trials."""

    trials: int
    best_trial: int | None = None
    best_tok_s: float | None = None
    best_settings: dict[str, Any] | None = None
    carried_trial: int | None = None  # the carried-over config that ran (the paper's baseline)
    carried_rank: int | None = None  # 0: the source's best itself; > 0: a fallback
    carried_tok_s: float | None = None
    baseline_tok_s: float | None = None  # the engine defaults on the new GPU
    gain_vs_carried_pct: float | None = None
    gain_vs_defaults_pct: float | None = None


def _feasible(t: "optuna.trial.FrozenTrial") -> bool:
    from optuna.trial import TrialState

    from hpo_infer.study import meets_constraints

    return t.state == TrialState.COMPLETE and t.value is not None and t.value > 0 and meets_constraints(t)


def gains(trials: Sequence["optuna.trial.FrozenTrial"]) -> Gain:
    """Gain of the best feasible trial over the carried-over config and over the defaults.

    Pure over a list of trials, so the GPU-change benchmark can ask it after 5, 10, 20, ... trials.
    """
    from hpo_infer.study import BASELINE, ROLE

    ok = [t for t in trials if _feasible(t)]
    g = Gain(trials=len(trials))
    if not ok:
        return g
    best = max(ok, key=lambda t: t.value)
    g.best_trial, g.best_tok_s = best.number, best.value
    g.best_settings = best.user_attrs.get("settings", dict(best.params))
    carried = sorted((t for t in ok if RANK in t.user_attrs), key=lambda t: (t.user_attrs[RANK], t.number))
    if carried:
        c = carried[0]
        g.carried_trial, g.carried_rank, g.carried_tok_s = c.number, int(c.user_attrs[RANK]), c.value
        g.gain_vs_carried_pct = (best.value - c.value) / c.value * 100
    base = next((t for t in ok if t.user_attrs.get(ROLE) == BASELINE), None)
    if base is not None:
        g.baseline_tok_s = base.value
        g.gain_vs_defaults_pct = (best.value - base.value) / base.value * 100
    return g


def summary(study: "optuna.Study") -> dict[str, Any] | None:
    """What ``export`` and the report carry for a transfer study (None for other studies)."""
    info = study.user_attrs.get(KEY)
    if not info:
        return None
    return {**{k: v for k, v in info.items() if k != "gain"}, **asdict(gains(study.get_trials(deepcopy=False)))}


def carry_plan(source: Sequence["optuna.trial.FrozenTrial"], space: dict[str, "Param"], n: int = DEFAULT_CARRY) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, user attrs) of the source's ``n`` best distinct configs that are points of ``space``.

    Best first: rank 0 is the carried-over config, the rest are warm starts.
    """
    from hpo_infer import space as sp

    ranked = sorted((t for t in source if _feasible(t)), key=lambda t: t.value, reverse=True)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    for t in ranked:
        params = {k: v for k, v in t.params.items() if k in space}
        active = {k for k, p in space.items() if sp.active(p, params)}
        if set(params) != active or not sp.contains(space, params) or params in seen:
            continue  # e.g. the source baseline left engine-resolved settings out of its params
        seen.append(params)
        rank = len(out)
        out.append((params, {RANK: rank, "source_trial": t.number, "source_tok_s": t.value}))
        if len(out) >= n:
            break
    return out


def enqueue_carried(target: "optuna.Study", source_name: str, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    from hpo_infer.study import ROLE

    role = CARRIED if attrs[RANK] == 0 else WARM
    target.enqueue_trial(params, user_attrs={ROLE: role, "carried_from": source_name, **attrs})


def fallback(trials: Sequence["optuna.trial.FrozenTrial"], plan: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The source's next config to measure when every carried config so far finished without
    running on the new GPU: the paper walks down the old GPU's ranking until one runs."""
    carried = [t for t in trials if RANK in t.user_attrs]
    if not carried or any(not t.state.is_finished() for t in carried) or any(_feasible(t) for t in carried):
        return None
    nxt = max(int(t.user_attrs[RANK]) for t in carried) + 1
    return plan[nxt] if nxt < len(plan) else None


def enqueue_transfer(target: "optuna.Study", spec: "StudySpec", source: "optuna.Study", n: int = DEFAULT_CARRY) -> list[int]:
    """Baseline, then the carried-over config, then the next best; once per target study."""
    from hpo_infer.agent import enqueue_baseline

    if target.user_attrs.get(KEY):
        return []
    enqueue_baseline(target, spec)
    plan = carry_plan(source.get_trials(deepcopy=False), spec.space(), n)
    for params, attrs in plan:
        enqueue_carried(target, source.study_name, params, attrs)
    target.set_user_attr(
        KEY,
        {
            "from": source.study_name,
            "from_gpu": source.user_attrs.get("gpu"),
            "to_gpu": target.user_attrs.get("gpu"),
            "carried": [{"params": p, "source_trial": a["source_trial"], "source_tok_s": a["source_tok_s"]} for p, a in plan],
        },
    )
    return [a["source_trial"] for _, a in plan]


def transfer_agent(spec: "StudySpec", study: "optuna.Study", source: "optuna.Study", **kw: Any):
    """An :class:`~hpo_infer.agent.Agent` that, after each trial, queues the paper's fallback
    (:func:`fallback`) while no carried config has run on the new GPU."""
    from hpo_infer.agent import Agent

    plan = carry_plan(source.get_trials(deepcopy=False), spec.space(), n=10**6)

    class TransferAgent(Agent):
        def _after_trial(self, st: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
            super()._after_trial(st, trial)
            nxt = fallback(st.get_trials(deepcopy=False), plan)
            if nxt is not None:
                enqueue_carried(st, source.study_name, *nxt)

    return TransferAgent(spec, study, **kw)


def target_spec(source: "optuna.Study", to_gpu: str, spec_file: str | None, storage_url: str) -> tuple["StudySpec", "GPUInfo"]:
    """The spec of the new study (the source's, or SPEC_FILE's) and the GPU its key names."""
    from hpo_infer import spec as spec_mod
    from hpo_infer.hardware import GPUInfo, detect_gpus
    from hpo_infer.models import model_label
    from hpo_infer.workload import label as workload_label

    raw = source.user_attrs.get("spec")
    if spec_file is None and not raw:
        raise InputError("--from", f"study {source.study_name!r} records no spec (not made by hpo-infer tune or import-grid); pass --spec")
    spec = spec_mod.load(spec_file, storage_url) if spec_file else spec_mod.from_dict(raw, f"study {source.study_name}", storage_url)
    where = f"{spec_file or 'source spec'}"
    if spec.engine != source.user_attrs.get("engine"):
        raise InputError(f"{where}: engine", f"{spec.engine!r} differs from the source study's {source.user_attrs.get('engine')!r}: transfer changes the GPU only")
    src_model = source.user_attrs.get("model")
    if src_model is not None and model_label(spec.model.model_dump(exclude_none=True)) != src_model:
        raise InputError(f"{where}: model", f"differs from the source study's {src_model!r}: transfer changes the GPU only")
    src_work = source.user_attrs.get("workload")
    if src_work is not None and workload_label(spec.workload.model_dump(exclude_none=True)) != workload_label(src_work):
        raise InputError(f"{where}: workload", f"differs from the source study's {workload_label(src_work)!r}: transfer changes the GPU only")
    recorded = getattr(_engine(spec.engine), "recorded_gpu", None)
    if recorded is not None:  # replay: the new GPU is a filter of the recorded table
        if to_gpu == "auto":
            raise InputError("--to-gpu", f"a {spec.engine} study replays recorded measurements: name the GPU to replay, e.g. --to-gpu V100")
        dumped = spec.model_dump(mode="json", exclude={"storage"})
        dumped["fixed"] = {**dumped["fixed"], "gpu": to_gpu}
        spec = spec_mod.from_dict(dumped, f"--to-gpu {to_gpu}", storage_url)
        return spec, recorded(spec)
    gpu = detect_gpus()
    if to_gpu != "auto" and to_gpu.lower() not in (gpu.name.lower(), gpu.label.lower()) and to_gpu.lower() not in gpu.name.lower():
        raise InputError("--to-gpu", f"this host has {gpu.name}, not {to_gpu}: run transfer on the new GPU's host (trials are measured where they run)")
    return spec, GPUInfo(gpu.name, gpu.count, gpu.driver, gpu.memory_bytes)


def _engine(name: str):
    from hpo_infer.engines import engine_class

    return engine_class(name)


@click.command("transfer")
@click.option("--from", "source_name", required=True, help="The source study (name, or the spec file it came from).")
@click.option("--to-gpu", default="auto", show_default=True, help="The new GPU: auto (this host's), or a name; for replay studies, the recorded GPU to replay (e.g. V100).")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False), help="Spec of the new study (default: the source's); same engine, model and workload.")
@click.option("--trials", type=click.IntRange(min=1), help="Trial budget of the new study, carried configs included (default: the spec's).")
@click.option("--carry", type=click.IntRange(min=1, max=20), default=DEFAULT_CARRY, show_default=True, help="How many of the source's best configs to measure first.")
@click.option("--storage", help="Study storage URL holding the source; the new study goes there too.")
@click.option("--gpus", help="GPU indices this run may use, e.g. 0,1 (default: all visible).")
@click.option("--no-validate", is_flag=True, help="Skip re-measuring best vs baseline vs runner-up at the end.")
def transfer_cmd(source_name: str, to_gpu: str, spec_file: str | None, trials: int | None, carry: int, storage: str | None, gpus: str | None, no_validate: bool) -> None:
    """Re-tune a study's setting on a new GPU: defaults, then the old best (carried over), then search.

    Reports the gain of the new best over the carried-over config (the paper's metric) and over
    the engine defaults, and stores both in the study for `export`.
    """
    from hpo_infer import cli
    from hpo_infer.agent import Progress, install_signal_handlers
    from hpo_infer.storage import mask
    from hpo_infer.study import create_or_load, study_name

    source = cli._resolve_study(source_name, storage)
    url = cli._storage_url(storage) if not source_name.endswith((".yaml", ".yml")) else None
    if url is None:
        from hpo_infer import spec as spec_mod

        url = spec_mod.load(source_name, storage).storage
    spec, gpu = target_spec(source, to_gpu, spec_file, url)
    if spec.engine == "vllm":  # as tune: names and values the installed vLLM rejects, refused first
        from hpo_infer.engines.vllm_check import preflight

        preflight(spec)
    if trials is not None:
        spec.budget.trials = trials
    name = study_name(spec, gpu)
    if name == source.study_name:
        raise InputError("--to-gpu", f"the new study would be the source itself ({name}): name another GPU")
    if not carry_plan(source.get_trials(deepcopy=False), spec.space(), 1):
        raise InputError("--from", f"study {source.study_name!r} has no feasible trial in the new study's search space to carry over")
    gpu_list = cli._parse_gpus(gpus)
    study = create_or_load(spec, cli._open(spec.storage, heartbeat=True), name, gpu)
    enqueue_transfer(study, spec, source, carry)
    click.echo(f"study {name}  (transfer from {source.study_name})")
    click.echo(f"storage {mask(spec.storage)}")
    stop = threading.Event()
    install_signal_handlers(stop)
    progress = Progress()
    host = 0 if gpu.name in ("cpu",) else gpu.count
    agent = transfer_agent(spec, study, source, gpus=gpu_list, host_gpus=host, progress=progress, stop=stop)
    cli.run_validate_summarise(agent, study, spec, gpu_list, no_validate, stop)
    g = gains(study.get_trials(deepcopy=False))
    study.set_user_attr(KEY, {**study.user_attrs[KEY], "gain": asdict(g)})
    click.echo(describe(g, source.study_name))
    if stop.is_set():
        raise SystemExit(130)


def describe(g: Gain, source: str) -> str:
    """The paper's metric in one or two lines."""
    lines = []
    if g.gain_vs_carried_pct is None:
        lines.append(f"no carried-over config from {source} ran on this GPU: the paper's metric is undefined")
    else:
        which = "the source's best" if g.carried_rank == 0 else f"the source's #{g.carried_rank + 1} (its better ones failed here)"
        lines.append(
            f"re-tuned best {g.best_tok_s:,.1f} tok/s (trial {g.best_trial}) vs carried-over {which} "
            f"{g.carried_tok_s:,.1f} tok/s (trial {g.carried_trial}): {g.gain_vs_carried_pct:+.2f}% (the paper's metric)"
        )
    if g.gain_vs_defaults_pct is not None:
        lines.append(f"vs the engine defaults {g.baseline_tok_s:,.1f} tok/s: {g.gain_vs_defaults_pct:+.2f}%")
    return "\n".join(lines)
