"""``hpo-infer compare``: best settings and throughput across studies."""

from __future__ import annotations

import click

from hpo_infer.cli import options


@click.command()
@click.argument("studies", nargs=-1)
@options.storage()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare(studies: tuple[str, ...], storage: str | None, as_json: bool) -> None:
    """One table of best settings and throughput across STUDIES (default: every study in the storage)."""
    import json

    import optuna

    from hpo_infer.cli.ui import compare_table
    from hpo_infer.db.storage import connect
    from hpo_infer.reporting.report import compare_rows
    from hpo_infer.storage_url import choose

    if studies:
        loaded = [options.resolve_study(s, storage) for s in studies]
    else:
        st = connect(choose(storage))
        loaded = [
            optuna.load_study(study_name=s.study_name, storage=st)
            for s in optuna.get_all_study_summaries(st, include_best_trial=False)
        ]
    rows = compare_rows(loaded)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        compare_table(rows)
