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

from typing import TYPE_CHECKING, Any, Sequence

from hpo_infer.errors import InputError
from hpo_infer.study.gains import feasible as _feasible
from hpo_infer.study.trials import CARRIED, RANK, WARM, tok_s
from hpo_infer.study.trials import TRANSFER as KEY

if TYPE_CHECKING:
    import optuna

    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import Param, StudySpec

DEFAULT_CARRY = 3


def carry_plan(
    source: Sequence["optuna.trial.FrozenTrial"], space: dict[str, "Param"], n: int = DEFAULT_CARRY
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, user attrs) of the source's ``n`` best distinct configs that are points of ``space``.

    Best first: rank 0 is the carried-over config, the rest are warm starts.
    """
    from hpo_infer.spec import space as sp

    ranked = sorted((t for t in source if _feasible(t)), key=lambda t: tok_s(t) or 0.0, reverse=True)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    for t in ranked:
        params = {k: v for k, v in t.params.items() if k in space}
        active = {k for k, p in space.items() if sp.active(p, params)}
        if set(params) != active or not sp.contains(space, params) or params in seen:
            continue  # e.g. the source baseline left engine-resolved settings out of its params
        seen.append(params)
        rank = len(out)
        out.append((params, {RANK: rank, "source_trial": t.number, "source_tok_s": tok_s(t)}))
        if len(out) >= n:
            break
    return out


def enqueue_carried(target: "optuna.Study", source_name: str, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    from hpo_infer.study.trials import ROLE

    role = CARRIED if attrs[RANK] == 0 else WARM
    target.enqueue_trial(params, user_attrs={ROLE: role, "carried_from": source_name, **attrs})


def fallback(
    trials: Sequence["optuna.trial.FrozenTrial"], plan: list[tuple[dict[str, Any], dict[str, Any]]]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The source's next config to measure when every carried config so far finished without
    running on the new GPU: the paper walks down the old GPU's ranking until one runs."""
    carried = [t for t in trials if RANK in t.user_attrs]
    if not carried or any(not t.state.is_finished() for t in carried) or any(_feasible(t) for t in carried):
        return None
    nxt = max(int(t.user_attrs[RANK]) for t in carried) + 1
    return plan[nxt] if nxt < len(plan) else None


def enqueue_transfer(
    target: "optuna.Study", spec: "StudySpec", source: "optuna.Study", n: int = DEFAULT_CARRY
) -> list[int]:
    """Baseline, then the carried-over config, then the next best; once per target study."""
    from hpo_infer.agent.loop import enqueue_baseline

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
            "carried": [
                {"params": p, "source_trial": a["source_trial"], "source_tok_s": a["source_tok_s"]} for p, a in plan
            ],
        },
    )
    return [a["source_trial"] for _, a in plan]


def transfer_agent(spec: "StudySpec", study: "optuna.Study", source: "optuna.Study", **kw: Any):
    """An :class:`~hpo_infer.agent.loop.Agent` that, after each trial, queues the paper's fallback
    (:func:`fallback`) while no carried config has run on the new GPU."""
    from hpo_infer.agent.loop import Agent

    plan = carry_plan(source.get_trials(deepcopy=False), spec.space(), n=10**6)

    class TransferAgent(Agent):
        def _after_trial(self, st: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
            super()._after_trial(st, trial)
            nxt = fallback(st.get_trials(deepcopy=False), plan)
            if nxt is not None:
                enqueue_carried(st, source.study_name, *nxt)

    return TransferAgent(spec, study, **kw)


def target_spec(
    source: "optuna.Study", to_gpu: str, spec_file: str | None, storage_url: str
) -> tuple["StudySpec", "GPUInfo"]:
    """The spec of the new study (the source's, or SPEC_FILE's) and the GPU its key names."""
    from hpo_infer import spec as spec_mod
    from hpo_infer.engines import engine_class
    from hpo_infer.hardware import GPUInfo, detect_gpus
    from hpo_infer.model_source import model_label
    from hpo_infer.workload import label as workload_label

    raw = source.user_attrs.get("spec")
    if spec_file is None and not raw:
        raise InputError(
            "--from",
            f"study {source.study_name!r} records no spec (not made by hpo-infer tune or import-grid); pass --spec",
        )
    spec = (
        spec_mod.load(spec_file, storage_url)
        if spec_file
        else spec_mod.from_dict(raw, f"study {source.study_name}", storage_url)
    )
    where = f"{spec_file or 'source spec'}"
    if spec.engine != source.user_attrs.get("engine"):
        raise InputError(
            f"{where}: engine",
            f"{spec.engine!r} differs from the source study's {source.user_attrs.get('engine')!r}"
            f": transfer changes the GPU only",
        )
    src_model = source.user_attrs.get("model")
    if src_model is not None and model_label(spec.model.model_dump(exclude_none=True)) != src_model:
        raise InputError(
            f"{where}: model", f"differs from the source study's {src_model!r}: transfer changes the GPU only"
        )
    src_work = source.user_attrs.get("workload")
    if src_work is not None and workload_label(spec.workload.model_dump(exclude_none=True)) != workload_label(src_work):
        raise InputError(
            f"{where}: workload",
            f"differs from the source study's {workload_label(src_work)!r}: transfer changes the GPU only",
        )
    engine = engine_class(spec.engine)
    if engine.recorded_gpu(spec) is not None:  # replay: the new GPU is a filter of the recorded table
        if to_gpu == "auto":
            raise InputError(
                "--to-gpu",
                f"a {spec.engine} study replays recorded measurements: name the GPU to replay, e.g. --to-gpu V100",
            )
        dumped = spec.model_dump(mode="json", exclude={"storage"})
        dumped["fixed"] = {**dumped["fixed"], "gpu": to_gpu}
        spec = spec_mod.from_dict(dumped, f"--to-gpu {to_gpu}", storage_url)
        return spec, engine.recorded_gpu(spec)  # type: ignore[return-value]
    gpu = detect_gpus()
    if (
        to_gpu != "auto"
        and to_gpu.lower() not in (gpu.name.lower(), gpu.label.lower())
        and to_gpu.lower() not in gpu.name.lower()
    ):
        raise InputError(
            "--to-gpu",
            f"this host has {gpu.name}, not {to_gpu}: run transfer on the new GPU's host"
            f" (trials are measured where they run)",
        )
    return spec, GPUInfo(gpu.name, gpu.count, gpu.driver, gpu.memory_bytes)
