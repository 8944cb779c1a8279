"""``hpo-infer dashboard``: optuna-dashboard on the study storage, on loopback by default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import click

from hpo_infer.cli import options
from hpo_infer.errors import InputError

HELP = (
    "Start optuna-dashboard on the study storage. optuna-dashboard has NO authentication: it "
    "binds to 127.0.0.1 unless --host says otherwise; expose it only on a network you trust "
    "(or through an SSH tunnel)."
)


@click.command("dashboard", help=HELP)
@options.storage()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback exposes an unauthenticated UI.",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard(storage: str | None, host: str, port: int) -> None:
    from hpo_infer.storage_url import choose, mask, normalise

    url = choose(storage)
    exe = shutil.which(
        "optuna-dashboard", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    if exe is None:
        raise InputError("dashboard", "optuna-dashboard is not installed (pip install 'hpo-infer[dashboard]')")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding to {host}: optuna-dashboard has no authentication", err=True)
    click.echo(f"optuna-dashboard on http://{host}:{port}/dashboard for {mask(url)}", err=True)
    # A list of arguments, never a shell string; the password travels in argv only to this child.
    proc = subprocess.Popen([exe, normalise(url), "--host", host, "--port", str(port)])
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        sys.exit(proc.wait())
