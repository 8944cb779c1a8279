"""``hpo-infer doctor``: GPUs, engines and storage checked before a long study, one line each."""

from __future__ import annotations

import sys

import click

from hpo_infer.cli import options
from hpo_infer.reporting.doctor import FAIL, engine_check, engine_names, gpu_checks, storage_check


@click.command("doctor")
@options.storage()
@click.option(
    "--engine", "engines", multiple=True, type=click.Choice(engine_names()), help="Engines to check (default: all)."
)
def doctor(storage: str | None, engines: tuple[str, ...]) -> None:
    """Check GPUs, engines and storage before a long study; one line each, exit 1 on a problem."""
    from hpo_infer.storage_url import choose

    url = choose(storage)
    checks = list(gpu_checks())
    checks += [engine_check(e) for e in (engines or engine_names())]
    checks.append(storage_check(url))
    for c in checks:
        click.echo(c.line())
    if any(c.level == FAIL for c in checks):
        sys.exit(1)
