"""Campaigns: many studies (models x engines x workloads) in one file, worked through by the
same agents, on one host or across a fleet through the shared storage.

A campaign file holds ``defaults`` (spec keys every study shares), ``models`` (each a spec
``model:`` mapping, optionally with ``paper_name`` to compare with arXiv 2408.01050's data),
``engines`` (engine -> spec overrides such as its search space) and optional ``workloads``.
``${NAME}`` placeholders are filled from ``--var NAME=VALUE`` or the environment, so users
pass their own paths (the HumanEval file, a folder of model configs).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo_infer.errors import InputError
from hpo_infer.spec import StudySpec, from_dict, read_yaml

CAMPAIGN_KEYS = {"name", "storage", "defaults", "models", "engines", "workloads", "cap_gpus"}
GPU_PARAMS = ("num_gpus", "tensor_parallel_size")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Entry:
    """One study of a campaign."""

    spec: StudySpec
    model_key: str
    engine: str
    paper_name: str | None


def _substitute(obj: Any, variables: dict[str, str], src: str, where: str = "") -> Any:
    if isinstance(obj, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in variables:
                return variables[name]
            if name in os.environ:
                return os.environ[name]
            raise InputError(f"{src}: {where or 'value'}", f"${{{name}}} is not set (pass --var {name}=VALUE)")

        return _VAR.sub(repl, obj)
    if isinstance(obj, list):
        return [_substitute(v, variables, src, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _substitute(v, variables, src, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    return obj


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "search_space":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _cap_gpu_choices(spec: dict[str, Any], host_gpus: int, params: tuple[str, ...]) -> None:
    """GPU-count parameters keep only the choices the host has (at least 1)."""
    limit = max(1, host_gpus)
    for name in params:
        p = (spec.get("search_space") or {}).get(name)
        if isinstance(p, dict) and p.get("type") == "categorical":
            p["choices"] = [c for c in p["choices"] if not isinstance(c, int) or c <= limit] or [1]
        elif isinstance(p, dict) and p.get("type") == "int":
            p["high"] = min(int(p["high"]), limit)
            p["low"] = min(int(p["low"]), p["high"])


def load(
    path: str, variables: dict[str, str] | None = None, host_gpus: int = 0, storage: str | None = None
) -> tuple[str, list[Entry]]:
    """Read a campaign file and expand it into validated study specs (one line errors, exit 2)."""
    src = str(path)
    p = Path(path)
    raw = read_yaml(p)
    if not isinstance(raw, dict):
        raise InputError(src, "a campaign is a mapping with defaults, models and engines")
    unknown = sorted(set(raw) - CAMPAIGN_KEYS)
    if unknown:
        raise InputError(f"{src}: {unknown[0]}", "unknown key")
    for key in ("models", "engines"):
        if not raw.get(key):
            raise InputError(f"{src}: {key}", "required and must not be empty")
    raw = _substitute(raw, variables or {}, src)
    if not isinstance(raw["models"], list):
        raise InputError(f"{src}: models", "must be a list of model mappings")
    if not isinstance(raw["engines"], dict):
        raise InputError(f"{src}: engines", "must map engine names to spec overrides")
    name = str(raw.get("name") or p.stem)
    defaults = raw.get("defaults") or {}
    workloads = raw.get("workloads") or [defaults.get("workload")]
    cap = tuple(raw.get("cap_gpus") or GPU_PARAMS)
    entries: list[Entry] = []
    for mi, model in enumerate(raw["models"]):
        if not isinstance(model, dict):
            raise InputError(f"{src}: models[{mi}]", "must be a mapping (synthetic / id / path)")
        model = dict(model)
        paper_name = model.pop("paper_name", None)
        for engine, over in raw["engines"].items():
            for wi, wl in enumerate(workloads):
                d = _merge(defaults, over or {})
                d["engine"] = engine
                d["model"] = model
                if wl is not None:
                    d["workload"] = wl
                d.setdefault("storage", raw.get("storage"))
                if d.get("storage") is None:
                    d.pop("storage")
                _cap_gpu_choices(d, host_gpus, cap)
                where = f"{src}: models[{mi}] x engines.{engine}" + (
                    f" x workloads[{wi}]" if len(workloads) > 1 else ""
                )
                spec = from_dict(d, where, storage, base_dir=p.parent)
                key = str(model.get("name") or model.get("synthetic") or model.get("id") or model.get("path"))
                entries.append(
                    Entry(spec, Path(key).stem if "/" in key or key.endswith(".json") else key, engine, paper_name)
                )
    return name, entries


def study_names(entries: list[Entry], gpu: Any) -> list[str]:
    from hpo_infer.study.naming import study_name

    return [study_name(e.spec, gpu) for e in entries]


def run(
    name: str,
    entries: list[Entry],
    gpu: Any,
    gpus: list[int] | None,
    stop: Any,
    on_study: Any = None,
) -> list[dict[str, Any]]:
    """Work through every study in order; each study's own budget and stop rules apply.

    Several agents (this command started on several hosts or GPU groups, on one storage) share
    the work: each takes trials of the current study until its stop rule fires, then moves on.
    """
    from hpo_infer.agent.loop import Agent, Progress
    from hpo_infer.agent.start import start_study
    from hpo_infer.db.schema import connect_ready
    from hpo_infer.study.trials import ranked, tok_s

    results = []
    storages: dict[str, Any] = {}
    for i, e in enumerate(entries):
        if stop.is_set():
            break
        url = e.spec.storage
        if url not in storages:
            storages[url] = connect_ready(url)
        started = start_study(e.spec, gpu, storage=storages[url])
        sname, study = started.name, started.study
        if study.user_attrs.get("campaign") != name:
            study.set_user_attr("campaign", name)
            study.set_user_attr("paper_name", e.paper_name)
        progress = Progress()
        if on_study is not None:
            on_study("start", i, len(entries), sname, progress)
        agent = Agent(
            e.spec, study, gpus=gpus, host_gpus=started.host_gpus, progress=progress, stop=stop, lock=started.lock
        )
        try:
            agent.run()
        finally:
            agent.close()
        best = ranked(study)
        row = {"study": sname, "trials": len(study.trials), "best": tok_s(best[0]) if best else None}
        results.append(row)
        if on_study is not None:
            on_study("done", i, len(entries), sname, row)
    return results
