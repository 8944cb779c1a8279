"""``hpo-infer db upgrade|current``: create, migrate and inspect the study database.

Import-light: click only; SQLAlchemy, Alembic and Optuna are imported when a command runs.
"""

from __future__ import annotations

import click

STORAGE_HELP = "Study storage URL (sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB). Default: $HPO_INFER_STORAGE, else sqlite:///hpo-infer.db."


@click.group("db")
def db() -> None:
    """Create or migrate the study database (Optuna's tables and ours) before agents start."""


def _url(flag: str | None) -> str:
    from hpo_infer.cli import _storage_url

    return _storage_url(flag)


def _fail(url: str, exc: Exception) -> None:
    from hpo_infer.errors import StorageError
    from hpo_infer.storage import mask

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise StorageError(f"{mask(url)}: {mask(first)}") from None


@db.command()
@click.option("--storage", help=STORAGE_HELP)
def upgrade(storage: str | None) -> None:
    """Create or migrate every table, once. Safe to run from many hosts at once (a database lock
    makes the others wait, then find everything up to date)."""
    from hpo_infer.db import schema

    url = _url(storage)
    try:
        schema.state(url)  # an unreachable server fails here at once, not after the lock's retries
        before, after = schema.upgrade(url)
    except click.ClickException:
        raise
    except Exception as exc:  # noqa: BLE001 - a driver error becomes one line
        _fail(url, exc)
        return
    for line in schema.describe(url, after):
        click.echo(line)
    changed = before.optuna_current != after.optuna_current or before.ours_current != after.ours_current
    click.echo("upgraded" if changed else "already up to date")


@db.command()
@click.option("--storage", help=STORAGE_HELP)
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
