"""``hpo-infer db upgrade|current``: create, migrate and inspect the study database.

Import-light: SQLAlchemy, Alembic and Optuna are imported when a command runs.
"""

from __future__ import annotations

import click

from hpo_infer.cli import options
from hpo_infer.errors import HpoInferError


@click.group("db")
def db() -> None:
    """Create or migrate the study database (Optuna's tables and ours) before agents start."""


def _url(flag: str | None) -> str:
    from hpo_infer.storage_url import choose

    return choose(flag)


def _fail(url: str, exc: Exception) -> None:
    from hpo_infer.errors import StorageError, first_line
    from hpo_infer.storage_url import mask

    raise StorageError(f"{mask(url)}: {mask(first_line(exc))}") from None


@db.command()
@options.storage()
def upgrade(storage: str | None) -> None:
    """Create or migrate every table, once. Safe to run from many hosts at once (a database lock
    makes the others wait, then find everything up to date)."""
    from hpo_infer.db import schema

    url = _url(storage)
    try:
        schema.state(url)  # an unreachable server fails here at once, not after the lock's retries
        before, after = schema.upgrade(url)
    except HpoInferError:
        raise
    except Exception as exc:  # noqa: BLE001 - a driver error becomes one line
        _fail(url, exc)
        return
    for line in schema.describe(url, after):
        click.echo(line)
    changed = before.optuna_current != after.optuna_current or before.ours_current != after.ours_current
    click.echo("upgraded" if changed else "already up to date")


@db.command()
@options.storage()
def current(storage: str | None) -> None:
    """Show the schema revision of Optuna's tables and of ours, against this install's heads."""
    from hpo_infer.db import schema

    url = _url(storage)
    try:
        st = schema.state(url)
    except Exception as exc:  # noqa: BLE001
        _fail(url, exc)
        return
    for line in schema.describe(url, st):
        click.echo(line)
