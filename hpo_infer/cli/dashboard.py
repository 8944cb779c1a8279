"""``hpo-infer dashboard``: optuna-dashboard on the study storage, on loopback by default."""

from __future__ import annotations

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
    import signal

    from hpo_infer.db.storage import connect
    from hpo_infer.storage_url import choose, mask

    url = choose(storage)
    try:
        import optuna_dashboard
    except ImportError:
        raise InputError(
            "dashboard", "optuna-dashboard is not installed (pip install 'hpo-infer[dashboard]')"
        ) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding to {host}: optuna-dashboard has no authentication", err=True)
    st = connect(url)
    click.echo(f"optuna-dashboard on http://{host}:{port}/dashboard for {mask(url)}", err=True)

    def _stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # In this process, through optuna-dashboard's Python API: no child whose command line would
    # show the database password to every user of the host (``ps``), and none left running when
    # SIGTERM (docker stop, systemd, kill) or Ctrl-C ends this command.
    signal.signal(signal.SIGTERM, _stop)
    try:
        optuna_dashboard.run_server(st, host=host, port=port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port taken, an address not on this host
        raise InputError("--port", f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
