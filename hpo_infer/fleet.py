"""``hpo-infer worker``: the agents of one host, one per GPU group, on a shared study.

Start it on every host (by hand, docker compose, a Kubernetes Indexed Job, a SLURM array: see
``docker/``); all of them search the same study in the same database. On a host with several
GPU groups it starts one agent process per group (each re-running this command for its
group), so an agent that dies takes only its own trial with it; that trial is retried by
another agent once its heartbeat goes stale.

Import-light: click only at import; the work is imported when the command runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from hpo_infer.errors import InputError, StorageError

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec

class AgentError(click.ClickException):
    """An agent broke for a reason that is neither bad input nor the storage: one line, exit 1."""

    def show(self, file: Any = None) -> None:  # noqa: D102
        click.echo(f"hpo-infer: error: {self.format_message()}", err=True)


STORAGE_HELP = "Study storage URL (sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB). Default: $HPO_INFER_STORAGE, else the spec's, else sqlite:///hpo-infer.db."
AGENT_ENV = "HPO_INFER_AGENT"  # set by the parent for each agent process it starts: its tag
READY_ENV = "HPO_INFER_SCHEMA_READY"  # set by the parent: the schema was checked, skip it


def gpu_groups(gpus: list[int] | None, per_trial: int, agents: int | None, detected: int, visible: list[int] | None) -> list[list[int] | None]:
    """One entry per agent: the GPUs its trials are pinned to (None: not pinned)."""
    if agents is not None and gpus is not None:
        raise InputError("--agents", "use either --gpus (one agent per GPU group) or --agents (agents without GPUs)")
    if agents is not None:
        if detected:
            raise InputError("--agents", f"this host has {detected} GPU(s): use --gpus/--gpus-per-trial, one agent per GPU group")
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
        raise InputError("--gpus-per-trial", f"{len(gpus)} GPU(s) ({','.join(map(str, gpus))}) do not split into groups of {per_trial}")
    return [gpus[i : i + per_trial] for i in range(0, len(gpus), per_trial)]


def _visible(count: int) -> list[int] | None:
    """Physical indices of the visible GPUs, or None when CUDA_VISIBLE_DEVICES uses UUIDs."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None:
        return list(range(count))
    toks = [t.strip() for t in vis.split(",") if t.strip()]
    return [int(t) for t in toks] if all(t.isdigit() for t in toks) else None


def _open(url: str, heartbeat: bool = False, skip_table_creation: bool = True) -> Any:
    """The study storage; the schema exists by now (checked or created once per host)."""
    from hpo_infer.storage import mask, open_storage

    try:
        return open_storage(url, heartbeat=heartbeat, skip_table_creation=skip_table_creation)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one line
        raise StorageError(f"cannot open {mask(url)}: {mask(str(exc).splitlines()[0])}") from None


def _spec_from_study(url: str, name: str) -> "StudySpec":
    """The fleet form: ``--study NAME`` alone runs the spec stored in the study when it was created."""
    import optuna

    from hpo_infer import spec as spec_mod

    storage = _open(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise InputError("--study", f"no study named {name!r} in this storage (pass SPEC_FILE to create it)") from None
    raw = study.user_attrs.get("spec")
    if not isinstance(raw, dict):
        raise InputError("--study", f"study {name!r} holds no spec (it was not created by hpo-infer): pass SPEC_FILE")
    return spec_mod.from_dict(raw, f"study {name}", storage_override=url)


@click.command("worker")
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--study", "study", help="Study name. Without SPEC_FILE: run the spec stored in this existing study.")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--gpus", help="GPU indices for this host's agents, e.g. 0,1,2,3 (default: all visible).")
@click.option("--gpus-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs per trial: one agent per group of this many.")
@click.option("--agents", type=click.IntRange(min=1), help="Agents without GPUs (CPU hosts only).")
@click.option("--trials", type=click.IntRange(min=1), help="Override the spec's trial budget (shared by all agents of the study).")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), help="Seconds between trial heartbeats [default: $HPO_INFER_HEARTBEAT_S or 10].")
@click.option("--grace-period", type=click.IntRange(min=2), help="Seconds without heartbeat before a trial is failed and retried by another agent [default: $HPO_INFER_GRACE_S or 3 heartbeats].")
def worker(
    spec_file: str | None,
    study: str | None,
    storage: str | None,
    gpus: str | None,
    gpus_per_trial: int,
    agents: int | None,
    trials: int | None,
    heartbeat_interval: int | None,
    grace_period: int | None,
) -> None:
    """Run this host's agents on the study SPEC_FILE describes (or --study NAME), with many hosts at once.

    Ctrl-C / SIGTERM: every agent stops taking trials and ends its running one (the trial's
    process tree killed, the trial queued again); the exit code is 0 unless something broke.
    """
    from hpo_infer.cli import _parse_gpus, _storage_url
    from hpo_infer.storage import heartbeat_settings, mask

    if heartbeat_interval is not None:
        os.environ["HPO_INFER_HEARTBEAT_S"] = str(heartbeat_interval)
    if grace_period is not None:
        os.environ["HPO_INFER_GRACE_S"] = str(grace_period)
    heartbeat_settings()  # a bad value fails here, naming the variable, before anything starts

    from hpo_infer import spec as spec_mod
    from hpo_infer.hardware import detect_gpus

    gpu = detect_gpus()
    detected = 0 if gpu.name == "cpu" else gpu.count
    groups = gpu_groups(_parse_gpus(gpus), gpus_per_trial, agents, detected, _visible(detected) if detected else None)
    if spec_file is not None:
        spec: StudySpec | None = spec_mod.load(spec_file, storage)
        url = spec.storage or _storage_url(storage)
    elif study is not None:
        spec, url = None, _storage_url(storage)
    else:
        raise InputError("SPEC_FILE", "give a spec file, or --study NAME of a study created from one")

    try:
        if not os.environ.get(READY_ENV):
            from hpo_infer.db import schema

            schema.ensure(url)  # once per host, under a database lock; agents skip table creation
        if spec is None:
            spec = _spec_from_study(url, study)
        if trials is not None:
            spec.budget.trials = trials
        if spec.engine in ("vllm", "vllm-serve") and not os.environ.get(READY_ENV):
            from hpo_infer.engines.vllm_check import preflight

            preflight(spec)  # settings the installed vLLM rejects: refused before any trial, once per host
        if detected:
            from dataclasses import replace

            gpu = replace(gpu, count=gpus_per_trial)
        from hpo_infer.study import study_name

        name = study or study_name(spec, gpu)
        if len(groups) > 1:
            click.echo(f"study {name}")
            click.echo(f"storage {mask(url)}")
            rc = _run_agents(groups, gpus_per_trial, spec_file, name, url, trials)
        else:
            rc = _run_one(spec, url, name, gpu, groups[0])
    except click.ClickException:
        raise
    except Exception as exc:  # noqa: BLE001 - one masked line, not a traceback with a URL in it
        if os.environ.get("HPO_INFER_DEBUG"):
            raise
        from hpo_infer.db.retry import is_transient

        line = mask(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        if is_transient(exc) or type(exc).__module__.startswith(("sqlalchemy", "optuna.storages", "psycopg")):
            raise StorageError(line) from None
        raise AgentError(f"{line} (HPO_INFER_DEBUG=1 shows the traceback)") from None
    sys.exit(rc)


def _run_one(spec: "StudySpec", url: str, name: str, gpu: Any, group: list[int] | None) -> int:
    """One agent, in this process."""
    from hpo_infer.agent import Agent, Progress, install_signal_handlers
    from hpo_infer.db.lock import StudyLock
    from hpo_infer.storage import mask
    from hpo_infer.study import create_or_load
    from hpo_infer.ui import trial_line

    tag = os.environ.get(AGENT_ENV) or f"{socket.gethostname()}:{os.getpid()}"
    where = f"gpus {','.join(map(str, group))}" if group else "no gpu"
    prefix = f"[agent {tag} {where}]"
    stop = threading.Event()
    install_signal_handlers(stop)
    storage = _open(url, heartbeat=True, skip_table_creation=True)
    lock = StudyLock(url, f"study:{name}")
    with lock:  # many agents may create the study and set its attributes at once
        study = create_or_load(spec, storage, name, gpu)
    if not os.environ.get(AGENT_ENV):
        click.echo(f"study {name}")
        click.echo(f"storage {mask(url)}")
    progress = Progress()
    shown: set[int] = set()

    def show(p: Progress) -> None:
        t = p.last
        if t is not None and t.number not in shown:
            shown.add(t.number)
            click.echo(f"{prefix} {trial_line(t)}")

    progress.listeners.append(show)
    agent = Agent(spec, study, gpus=group, host_gpus=len(group) if group else 0, progress=progress, stop=stop, lock=lock)
    click.echo(f"{prefix} started")
    try:
        agent.run()
    finally:
        agent.close()
    click.echo(f"{prefix} stopped ({agent.stopped_because or 'done'}) after {len(shown)} trial(s)")
    if not os.environ.get(AGENT_ENV):
        _summary(study)
    return 0


def _run_agents(groups: list[list[int] | None], per_trial: int, spec_file: str | None, name: str, url: str, trials: int | None) -> int:
    """One agent process per group; signals are passed on; 0 unless an agent failed."""
    from hpo_infer.worker import PR_SET_PDEATHSIG, _prctl

    procs: list[subprocess.Popen] = []
    for i, group in enumerate(groups):
        argv = [sys.executable, "-m", "hpo_infer", "worker", "--study", name, "--gpus-per-trial", str(per_trial)]
        argv += [spec_file] if spec_file else []
        argv += ["--gpus", ",".join(map(str, group))] if group else ["--agents", "1"]
        argv += ["--trials", str(trials)] if trials else []
        # The URL travels in the environment, not in argv, where `ps` would show a password.
        env = {**os.environ, "HPO_INFER_STORAGE": url, AGENT_ENV: str(i), READY_ENV: "1"}
        procs.append(subprocess.Popen(argv, env=env, preexec_fn=lambda: _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)))

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
    _summary_by_name(url, name)
    if failed:
        click.echo(f"hpo-infer: error: {'; '.join(failed)}", err=True)
        return 1
    return 0


def _summary_by_name(url: str, name: str) -> None:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=_open(url))
    except KeyError:
        return  # no agent got as far as creating the study: their errors say why
    _summary(study)


def _summary(study: Any) -> None:
    from hpo_infer.ui import print_summary

    try:
        print_summary(study, study.user_attrs.get("validation"))
    except Exception:  # noqa: BLE001 - a study with no feasible trial yet has no table to show
        pass
