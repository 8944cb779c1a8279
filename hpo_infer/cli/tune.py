"""``hpo-infer tune``: run (or resume) one study on this host, then print baseline vs best."""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from hpo_infer.cli import options


@click.command()
@options.spec_file
@options.storage()
@click.option("--trials", type=click.IntRange(min=1), help="Override the spec's trial budget.")
@options.gpus()
@options.no_validate
def tune(spec_file: str, storage: str | None, trials: int | None, gpus: list[int] | None, no_validate: bool) -> None:
    """Run (or resume) the study a SPEC_FILE describes, then print baseline vs best."""
    from hpo_infer import spec as spec_mod
    from hpo_infer.agent.loop import Agent, Progress
    from hpo_infer.agent.signals import install_signal_handlers
    from hpo_infer.agent.start import host_gpu, start_study
    from hpo_infer.storage_url import mask

    spec = spec_mod.load(spec_file, storage)
    if trials is not None:
        spec.budget.trials = trials
    started = start_study(spec, host_gpu(gpus))
    stop = threading.Event()
    install_signal_handlers(stop)
    click.echo(f"study {started.name}")
    click.echo(f"storage {mask(spec.storage)}")
    agent = Agent(
        spec, started.study, gpus=gpus, host_gpus=started.host_gpus, progress=Progress(), stop=stop, lock=started.lock
    )
    run_validate_summarise(agent, started.study, spec, gpus, no_validate, stop)
    if stop.is_set():
        click.echo("interrupted: the running trial was ended; run the same command again to resume.", err=True)
        sys.exit(130)


def run_validate_summarise(
    agent: Any, study: Any, spec: Any, gpus: list[int] | None, no_validate: bool, stop: threading.Event
) -> None:
    """Run the agent with a progress bar, re-validate the finalists, print baseline vs best."""
    from hpo_infer.agent.stop_rules import leftovers
    from hpo_infer.cli.ui import print_summary, progress_display

    with progress_display(agent.progress, spec.budget.trials):
        try:
            agent.run()
        finally:
            agent.close()
    left = leftovers(study)
    if left and not stop.is_set():  # a stop rule ended the search with work still in the study: say which
        held = "; ".join(
            f"{state.lower()}: trial{'s' if len(n) > 1 else ''} {', '.join(map(str, n))}" for state, n in left.items()
        )
        click.echo(f"stopped ({agent.stopped_because}) with trials left in the study ({held})", err=True)
    validation = study.user_attrs.get("validation")
    if spec.validate_finalists and not no_validate and not stop.is_set():
        from hpo_infer.agent.revalidate import revalidate

        which = "the baseline and the Pareto front" if spec.objective.multi else "baseline, best and runner-up"
        click.echo(f"re-validating {which}, each in {spec.validation_rounds} fresh engine starts (interleaved) ...")
        validation = revalidate(study, spec, gpus, stop) or validation
    print_summary(study, validation)
