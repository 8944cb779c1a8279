"""``hpo-infer campaign``: every study of a campaign file, one after another."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from hpo_infer.cli import options


@click.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False))
@options.variables
@options.storage()
@options.gpus("GPU indices this agent may use, e.g. 0,1 (default: all visible).")
@click.option("--dry-run", is_flag=True, help="List the studies and their grid sizes; measure nothing.")
def campaign(
    campaign_file: str, variables: dict[str, str], storage: str | None, gpus: list[int] | None, dry_run: bool
) -> None:
    """Run every study of a CAMPAIGN_FILE (models x engines x workloads), one after another.

    Start it on several hosts or GPU groups with one shared --storage and the agents share
    each study's trials; study budgets and stop rules still apply.
    """
    from hpo_infer.agent import campaign as camp
    from hpo_infer.agent.signals import install_signal_handlers
    from hpo_infer.agent.start import host_gpu
    from hpo_infer.cli.ui import console

    gpu = host_gpu(gpus)
    name, entries = camp.load(campaign_file, variables, 0 if gpu.name == "cpu" else gpu.count, storage)
    names = camp.study_names(entries, gpu)
    if dry_run:
        from hpo_infer.spec import space as sp

        for n, e in zip(names, entries):
            size = sp.grid_size(e.spec.space()) if e.spec.sampler.name == "grid" else "-"
            click.echo(f"{n}\tgrid points: {size}\tbudget: {e.spec.budget.trials}")
        return
    stop = threading.Event()
    install_signal_handlers(stop)
    t0 = time.monotonic()

    def on_study(kind: str, i: int, total: int, sname: str, info: Any) -> None:
        if kind == "start":
            console.print(f"[bold]campaign {name}[/bold] study {i + 1}/{total}: {sname}")
        else:
            best = f"{info['best']:,.1f} tok/s" if info["best"] is not None else "no feasible trial"
            console.print(
                f"  done: {info['trials']} trials, best {best} ({time.monotonic() - t0:,.0f} s into the campaign)"
            )

    results = camp.run(name, entries, gpu, gpus, stop, on_study)
    console.print(
        f"campaign {name}: {len(results)}/{len(entries)} studies worked through in {time.monotonic() - t0:,.0f} s"
    )
    if stop.is_set():
        click.echo("interrupted: run the same command again to resume.", err=True)
        sys.exit(130)
