"""Errors the CLI turns into one line and exit code 2 (bad input) or 1 (runtime)."""

from __future__ import annotations

import click


class InputError(click.ClickException):
    """Bad input: a spec, flag or file that cannot be used. One line, exit code 2, nothing written.

    The message names where the problem is (``file: key: problem``) so the user can fix it
    without reading a traceback.
    """

    exit_code = 2

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)

    def show(self, file=None) -> None:  # noqa: D102 - one line, no "Error:" decoration twice
        click.echo(f"hpo-infer: error: {self.format_message()}", err=True)


class StorageError(click.ClickException):
    """The study storage cannot be reached or used (after retries)."""

    exit_code = 1

    def show(self, file=None) -> None:  # noqa: D102
        click.echo(f"hpo-infer: storage error: {self.format_message()}", err=True)
