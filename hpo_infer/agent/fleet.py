"""The agents of one host, one per GPU group, on a shared study (``hpo-infer worker``).

Start it on every host (by hand, docker compose, a Kubernetes Indexed Job, a SLURM array: see
``docker/``); all of them search the same study in the same database. On a host with several
GPU groups one agent process runs per group (each re-running the command for its group), so an
agent that dies takes only its own trial with it; that trial is retried by another agent once
its heartbeat goes stale.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from hpo_infer.errors import InputError

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec

AGENT_ENV = "HPO_INFER_AGENT"  # set by the parent for each agent process it starts: its tag
READY_ENV = "HPO_INFER_SCHEMA_READY"  # set by the parent: the schema and the engine were checked, skip them


def gpu_groups(
    gpus: list[int] | None, per_trial: int, agents: int | None, detected: int, visible: list[int] | None
) -> list[list[int] | None]:
    """One entry per agent: the GPUs its trials are pinned to (None: not pinned)."""
    if agents is not None and gpus is not None:
        raise InputError("--agents", "use either --gpus (one agent per GPU group) or --agents (agents without GPUs)")
    if agents is not None:
        if detected:
            raise InputError(
                "--agents", f"this host has {detected} GPU(s): use --gpus/--gpus-per-trial, one agent per GPU group"
            )
        return [None] * agents
    if gpus is None:
        if not detected:
            return [None]
        if visible is None:  # CUDA_VISIBLE_DEVICES names GPUs by UUID: one agent sees them all
            return [None]
        gpus = visible
    if len(set(gpus)) != len(gpus):
        raise InputError("--gpus", f"lists a GPU twice: {','.join(map(str, gpus))}")
    if len(gpus) % per_trial:
        raise InputError(
            "--gpus-per-trial",
            f"{len(gpus)} GPU(s) ({','.join(map(str, gpus))}) do not split into groups of {per_trial}",
        )
    return [gpus[i : i + per_trial] for i in range(0, len(gpus), per_trial)]


def visible_gpus(count: int) -> list[int] | None:
    """Physical indices of the visible GPUs, or None when CUDA_VISIBLE_DEVICES uses UUIDs."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None:
        return list(range(count))
    toks = [t.strip() for t in vis.split(",") if t.strip()]
    return [int(t) for t in toks] if all(t.isdigit() for t in toks) else None


def spec_from_study(url: str, name: str) -> "StudySpec":
    """The fleet form: ``--study NAME`` alone runs the spec stored in the study when it was created."""
    import optuna

    from hpo_infer import spec as spec_mod
    from hpo_infer.db.storage import connect

    storage = connect(url, skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise InputError("--study", f"no study named {name!r} in this storage (pass SPEC_FILE to create it)") from None
    raw = study.user_attrs.get("spec")
    if not isinstance(raw, dict):
        raise InputError("--study", f"study {name!r} holds no spec (it was not created by hpo-infer): pass SPEC_FILE")
    return spec_mod.from_dict(raw, f"study {name}", storage_override=url)


def run_agents(
    groups: list[list[int] | None], per_trial: int, spec_file: str | None, name: str, url: str, trials: int | None
) -> list[str]:
    """One agent process per group, signals passed on to them; what went wrong, one entry an agent."""
    from hpo_infer.trial.tree import PR_SET_PDEATHSIG, prctl

    procs: list[subprocess.Popen] = []
    for i, group in enumerate(groups):
        argv = [sys.executable, "-m", "hpo_infer", "worker", "--study", name, "--gpus-per-trial", str(per_trial)]
        argv += [spec_file] if spec_file else []
        argv += ["--gpus", ",".join(map(str, group))] if group else ["--agents", "1"]
        argv += ["--trials", str(trials)] if trials else []
        # The URL travels in the environment, not in argv, where `ps` would show a password.
        env = {**os.environ, "HPO_INFER_STORAGE": url, AGENT_ENV: str(i), READY_ENV: "1"}
        procs.append(subprocess.Popen(argv, env=env, preexec_fn=lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)))

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        sig = signal.SIGKILL if signum == signal.SIGINT and received.count(signal.SIGINT) >= 1 else signal.SIGTERM
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = []
    for i, p in enumerate(procs):
        rc = p.wait()
        if rc != 0:
            failed.append(f"agent {i} {'killed by ' + signal.Signals(-rc).name if rc < 0 else f'exited with {rc}'}")
    return failed
