"""Starting a study: the one path ``tune``, ``transfer``, ``worker`` and ``campaign`` share.

Before this module each command did it its own way, and the copies drifted: ``transfer``
skipped the vLLM pre-flight for ``vllm-serve``, campaigns skipped it altogether, only ``worker``
created the study under the study lock, and only ``tune`` retried an unreachable database. Here
every command gets all four: the engine's pre-flight, the GPU count, the storage opened with
retry, and ``create_or_load`` under the study lock (many hosts may create one study at once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from hpo_infer.db.lock import StudyLock
    from hpo_infer.hardware import GPUInfo
    from hpo_infer.spec import StudySpec


@dataclass
class Started:
    """A study ready for an agent: the study, its name, the GPU its key names, and the lock."""

    study: "optuna.Study"
    name: str
    gpu: "GPUInfo"
    lock: "StudyLock"

    @property
    def host_gpus(self) -> int:
        """GPUs a trial may use on this host (0 on a CPU host): what engine checks compare with."""
        return 0 if self.gpu.name == "cpu" else self.gpu.count


def host_gpu(gpus: list[int] | None) -> "GPUInfo":
    """This host's GPU; with ``--gpus``, counted as the GPUs this run may use."""
    from hpo_infer.hardware import detect_gpus

    gpu = detect_gpus()
    if gpus is not None and gpu.name != "cpu":
        gpu = replace(gpu, count=len(gpus))
    return gpu


def start_study(
    spec: "StudySpec",
    gpu: "GPUInfo",
    name: str | None = None,
    preflight: bool = True,
    storage: Any = None,
) -> Started:
    """Pre-flight the engine, open the storage (retrying while it is unreachable) and create or
    load the study under its lock. ``preflight=False`` where it already ran on this host
    (a fleet's agent processes); ``storage``: one already opened (a campaign's studies share it)."""
    from hpo_infer.db.lock import StudyLock
    from hpo_infer.db.schema import connect_ready
    from hpo_infer.engines import engine_class
    from hpo_infer.study.create import create_or_load
    from hpo_infer.study.naming import study_name

    if preflight:
        engine_class(spec.engine).preflight(spec)  # settings the installed engine rejects: refused first
    name = name or study_name(spec, gpu)
    if storage is None:
        storage = connect_ready(spec.storage)  # the schema under its lock: many agents may start at once
    lock = StudyLock(spec.storage, f"study:{name}")
    with lock:  # many agents may create the study and set its attributes at once
        study = create_or_load(spec, storage, name, gpu)
    return Started(study, name, gpu, lock)
