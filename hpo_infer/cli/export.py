"""``hpo-infer export``: the best settings of a study, in a form the engine takes as-is."""

from __future__ import annotations

from pathlib import Path

import click

from hpo_infer.cli import options


@click.command()
@click.argument("study")
@options.storage()
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json", "vllm-cli", "hf-kwargs"]), default="yaml", show_default=True
)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
@click.option(
    "--pareto",
    is_flag=True,
    help="Serving and multi-objective studies: every configuration on the Pareto front, not only the best.",
)
@click.option(
    "--pick",
    metavar="BUDGET",
    help="The Pareto front's most tokens/s within a budget, e.g. 'p99_ttft_ms<=200' (several: comma-separated).",
)
def export(study: str, storage: str | None, fmt: str, out_path: str | None, pareto: bool, pick: str | None) -> None:
    """Write the best feasible settings of STUDY (a name or its spec file) for the engine to take as-is."""
    from hpo_infer.db.record import record_export
    from hpo_infer.errors import InputError
    from hpo_infer.reporting.export import best_record, front_record, pick_record, render, render_front

    if pick is not None and pareto:
        raise InputError("--pick", "picks one point of the front; --pareto writes them all: give one of the two")
    st = options.resolve_study(study, storage)
    rec = front_record(st) if pareto else pick_record(st, pick) if pick is not None else best_record(st)
    text = render_front(rec, fmt) if pareto else render(rec, fmt)
    if out_path:
        Path(out_path).write_text(text)
        click.echo(f"wrote {out_path}", err=True)
    else:
        click.echo(text, nl=False)
    warning = record_export(st, rec, fmt, out_path)  # one row in hpo_infer_export
    if warning:
        click.echo(f"hpo-infer: warning: {warning}", err=True)
