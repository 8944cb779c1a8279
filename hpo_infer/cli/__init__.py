"""The ``hpo-infer`` command line: the only layer that parses flags and prints.

Each command lives in a module of its own, imported only when it runs (pip's ``commands_dict``);
shared options are defined once in :mod:`hpo_infer.cli.options`. Library errors are plain
exceptions; :func:`run` turns each into one line on stderr and an exit code. Engines are never
imported here, so the CLI starts fast anywhere.
"""

from __future__ import annotations

import importlib
import sys

import click

from hpo_infer.errors import AgentError, EngineError, HpoInferError, InputError, StorageError

# name -> (module, attribute): the command objects, imported on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "campaign": ("hpo_infer.cli.campaign", "campaign"),
    "compare": ("hpo_infer.cli.compare", "compare"),
    "dashboard": ("hpo_infer.cli.dashboard", "dashboard"),
    "db": ("hpo_infer.cli.db", "db"),
    "doctor": ("hpo_infer.cli.doctor", "doctor"),
    "export": ("hpo_infer.cli.export", "export"),
    "import-grid": ("hpo_infer.cli.import_grid", "import_grid"),
    "report": ("hpo_infer.cli.report", "report"),
    "settings": ("hpo_infer.cli.settings", "settings"),
    "studies": ("hpo_infer.cli.studies", "studies"),
    "transfer": ("hpo_infer.cli.transfer", "transfer"),
    "tune": ("hpo_infer.cli.tune", "tune"),
    "worker": ("hpo_infer.cli.worker", "worker"),
}

# Library error -> (the word before the message, exit code). Bad input is 2, nothing written.
EXIT: dict[type[HpoInferError], tuple[str, int]] = {
    InputError: ("error", 2),
    StorageError: ("storage error", 1),
    AgentError: ("error", 1),
    EngineError: ("error", 1),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpo-infer")
def main() -> None:
    """Find the engine settings that give the most tokens/s for your model on your GPU, by measuring."""


def error_line(exc: HpoInferError) -> tuple[str, int]:
    """The one line and exit code of a library error."""
    word, code = next((v for k, v in EXIT.items() if isinstance(exc, k)), ("error", 1))
    return f"hpo-infer: {word}: {exc}", code


def run() -> None:
    """Console entry: every error a user can cause is one line on stderr, with exit code 2."""
    try:
        main.main(standalone_mode=False)
    except HpoInferError as exc:
        line, code = error_line(exc)
        click.echo(line, err=True)
        sys.exit(code)
    except click.UsageError as exc:  # click's own: unknown option, bad value, missing argument
        cmd = exc.ctx.command_path if exc.ctx is not None else "hpo-infer"
        click.echo(f"hpo-infer: error: {cmd}: {exc.format_message()} (see {cmd} --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("hpo-infer: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
