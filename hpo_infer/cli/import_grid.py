"""``hpo-infer import-grid``: a recorded table as the finished trials of a replay study."""

from __future__ import annotations

import click

from hpo_infer.cli import options


@click.command("import-grid")
@options.spec_file
@options.storage()
@click.option("--baseline", help="Mark this recorded point as the study's baseline, e.g. batch_size=1,num_gpus=1.")
def import_grid(spec_file: str, storage: str | None, baseline: str | None) -> None:
    """Load the recorded table a replay SPEC_FILE names as finished trials of its study."""
    from hpo_infer import spec as spec_mod
    from hpo_infer.agent.import_grid import grid_trials, import_grid, parse_point
    from hpo_infer.db.storage import connect

    spec = spec_mod.load(spec_file, storage)
    point = parse_point(baseline) if baseline else None
    trials, info = grid_trials(spec, point)  # every check before the storage is opened (and created)
    info = import_grid(spec, connect(spec.storage), trials, info)
    click.echo(f"study {info.study}")
    click.echo(f"imported {info.trials} trials: {info.feasible} ok, {info.infeasible} infeasible, {info.failed} failed")
    if info.skipped:
        click.echo(
            f"{len(info.skipped)} points of the space have no row and were left out"
            f" (missing: error), e.g. {info.skipped[0]}"
        )
    if info.baseline is not None:
        click.echo(f"baseline: trial {info.baseline}")
