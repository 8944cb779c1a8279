"""``hpo-infer studies``: what a storage holds."""

from __future__ import annotations

import click

from hpo_infer.cli import options


@click.command("studies")
@options.storage()
def studies(storage: str | None) -> None:
    """List the studies in a storage, with trial counts and best throughput."""
    import optuna

    from hpo_infer.cli.ui import studies_table
    from hpo_infer.db.storage import connect
    from hpo_infer.storage_url import choose

    st = connect(choose(storage))
    studies_table(optuna.get_all_study_summaries(st, include_best_trial=True))
