"""``hpo-infer worker``: this host's agents, one per GPU group, on a study many hosts share."""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from hpo_infer.cli import options
from hpo_infer.errors import AgentError, HpoInferError, InputError, StorageError

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec


@click.command("worker")
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--study", "study", help="Study name. Without SPEC_FILE: run the spec stored in this existing study.")
@options.storage()
@options.gpus("GPU indices for this host's agents, e.g. 0,1,2,3 (default: all visible).")
@click.option(
    "--gpus-per-trial",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="GPUs per trial: one agent per group of this many.",
)
@click.option("--agents", type=click.IntRange(min=1), help="Agents without GPUs (CPU hosts only).")
@click.option(
    "--trials", type=click.IntRange(min=1), help="Override the spec's trial budget (shared by all agents of the study)."
)
@click.option(
    "--heartbeat-interval",
    type=click.IntRange(min=1),
    help="Seconds between trial heartbeats [default: $HPO_INFER_HEARTBEAT_S or 10].",
)
@click.option(
    "--grace-period",
    type=click.IntRange(min=2),
    help="Seconds without heartbeat before a trial is failed and retried by another agent"
    " [default: $HPO_INFER_GRACE_S or 3 heartbeats].",
)
def worker(
    spec_file: str | None,
    study: str | None,
    storage: str | None,
    gpus: list[int] | None,
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
    from hpo_infer import spec as spec_mod
    from hpo_infer.agent.fleet import READY_ENV, gpu_groups, spec_from_study, visible_gpus
    from hpo_infer.db.storage import heartbeat_settings
    from hpo_infer.hardware import detect_gpus
    from hpo_infer.storage_url import choose, mask

    if heartbeat_interval is not None:
        os.environ["HPO_INFER_HEARTBEAT_S"] = str(heartbeat_interval)
    if grace_period is not None:
        os.environ["HPO_INFER_GRACE_S"] = str(grace_period)
    heartbeat_settings()  # a bad value fails here, naming the variable, before anything starts

    gpu = detect_gpus()
    detected = 0 if gpu.name == "cpu" else gpu.count
    groups = gpu_groups(gpus, gpus_per_trial, agents, detected, visible_gpus(detected) if detected else None)
    if spec_file is not None:
        spec: StudySpec | None = spec_mod.load(spec_file, storage)
        url = spec.storage or choose(storage)
    elif study is not None:
        spec, url = None, choose(storage)
    else:
        raise InputError("SPEC_FILE", "give a spec file, or --study NAME of a study created from one")

    try:
        ready = bool(os.environ.get(READY_ENV))  # the parent agent process checked schema and engine
        if not ready:
            from hpo_infer.db import schema

            schema.ensure(url)  # once per host, under a database lock; agents skip table creation
        if spec is None:
            spec = spec_from_study(url, study)
        if trials is not None:
            spec.budget.trials = trials
        if detected:
            from dataclasses import replace

            gpu = replace(gpu, count=gpus_per_trial)
        from hpo_infer.study.naming import study_name

        name = study or study_name(spec, gpu)
        if len(groups) > 1:
            if not ready:  # once per host: the agent processes it starts skip it
                from hpo_infer.engines import engine_class

                engine_class(spec.engine).preflight(spec)
            click.echo(f"study {name}")
            click.echo(f"storage {mask(url)}")
            from hpo_infer.agent.fleet import run_agents

            failed = run_agents(groups, gpus_per_trial, spec_file, name, url, trials)
            _summary_by_name(url, name)
            if failed:
                click.echo(f"hpo-infer: error: {'; '.join(failed)}", err=True)
            rc = 1 if failed else 0
        else:
            rc = _run_one(spec, name, gpu, groups[0], preflight=not ready)
    except HpoInferError:
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


def _run_one(spec: "StudySpec", name: str, gpu: Any, group: list[int] | None, preflight: bool) -> int:
    """One agent, in this process."""
    from hpo_infer.agent.fleet import AGENT_ENV
    from hpo_infer.agent.loop import Agent, Progress
    from hpo_infer.agent.signals import install_signal_handlers
    from hpo_infer.agent.start import start_study
    from hpo_infer.cli.ui import trial_line
    from hpo_infer.storage_url import mask

    tag = os.environ.get(AGENT_ENV) or f"{socket.gethostname()}:{os.getpid()}"
    where = f"gpus {','.join(map(str, group))}" if group else "no gpu"
    prefix = f"[agent {tag} {where}]"
    stop = threading.Event()
    install_signal_handlers(stop)
    started = start_study(spec, gpu, name=name, preflight=preflight)
    if not os.environ.get(AGENT_ENV):
        click.echo(f"study {name}")
        click.echo(f"storage {mask(spec.storage)}")
    progress = Progress()
    shown: set[int] = set()

    def show(p: Progress) -> None:
        t = p.last
        if t is not None and t.number not in shown:
            shown.add(t.number)
            click.echo(f"{prefix} {trial_line(t)}")

    progress.listeners.append(show)
    agent = Agent(
        spec,
        started.study,
        gpus=group,
        host_gpus=len(group) if group else 0,
        progress=progress,
        stop=stop,
        lock=started.lock,
    )
    click.echo(f"{prefix} started")
    try:
        agent.run()
    finally:
        agent.close()
    click.echo(f"{prefix} stopped ({agent.stopped_because or 'done'}) after {len(shown)} trial(s)")
    if not os.environ.get(AGENT_ENV):
        _summary(started.study)
    return 0


def _summary_by_name(url: str, name: str) -> None:
    import optuna

    from hpo_infer.db.storage import connect

    try:
        study = optuna.load_study(study_name=name, storage=connect(url, skip_table_creation=True))
    except KeyError:
        return  # no agent got as far as creating the study: their errors say why
    _summary(study)


def _summary(study: Any) -> None:
    from hpo_infer.cli.ui import print_summary

    try:
        print_summary(study, study.user_attrs.get("validation"))
    except Exception:  # noqa: BLE001 - a study with no feasible trial yet has no table to show
        pass
