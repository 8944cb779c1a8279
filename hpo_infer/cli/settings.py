"""``hpo-infer settings ENGINE``: what an engine can tune."""

from __future__ import annotations

import click

from hpo_infer.errors import InputError


@click.command()
@click.argument("engine")
def settings(engine: str) -> None:
    """Show the settings ENGINE can tune, their defaults and default search range."""
    from hpo_infer.cli.ui import settings_table
    from hpo_infer.engines import engine_class, engine_names

    if engine not in engine_names():
        raise InputError("ENGINE", f"unknown engine {engine!r} (one of {', '.join(engine_names())})")
    settings_table(engine_class(engine))
