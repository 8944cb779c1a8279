"""``hpo-infer report``: plots and a Markdown summary of a study, or of a whole campaign."""

from __future__ import annotations

from pathlib import Path

import click

from hpo_infer.cli import options
from hpo_infer.errors import InputError


@click.command()
@click.argument("study", required=False)
@options.storage()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder for summary.md and the PNG plots (default: reports/<study>).",
)
@click.option(
    "--campaign",
    "campaign_file",
    type=click.Path(dir_okay=False),
    help="Report a whole campaign (the paper's views) instead of one study.",
)
@options.variables
@click.option(
    "--paper-data",
    type=click.Path(dir_okay=False),
    help="paper-landscapes.csv, to compare with the paper's A100/V100 figures.",
)
@click.option(
    "--gpu",
    "gpu_label",
    help="With --campaign: the GPU label of the studies to report, as in their names (e.g. H100-80GB-HBM3x1);"
    " default: this host's.",
)
def report(
    study: str | None,
    storage: str | None,
    out_dir: str | None,
    campaign_file: str | None,
    variables: dict[str, str],
    paper_data: str | None,
    gpu_label: str | None,
) -> None:
    """Plots (landscape, history, importance) and a Markdown summary of STUDY (a name or its spec file)."""
    if campaign_file:
        files = _campaign(campaign_file, variables, storage, out_dir, paper_data, gpu_label)
    else:
        if not study:
            raise InputError("STUDY", "give a study name or spec file (or --campaign FILE)")
        from hpo_infer.reporting.report import write_report

        st = options.resolve_study(study, storage)
        folder = Path(out_dir) if out_dir else Path("reports") / st.study_name.replace(":", "_").replace("/", "_")
        files = write_report(st, folder)
    for kind, path in files.items():
        click.echo(f"{kind}: {path}")


def _campaign(
    campaign_file: str,
    variables: dict[str, str],
    storage: str | None,
    out_dir: str | None,
    paper_data: str | None,
    gpu_label: str | None,
) -> dict[str, Path]:
    import optuna

    from hpo_infer.agent import campaign as camp
    from hpo_infer.db.storage import connect
    from hpo_infer.hardware import GPUInfo, detect_gpus
    from hpo_infer.reporting.campaign_report import write

    if paper_data and not Path(paper_data).is_file():
        raise InputError("--paper-data", f"no such file: {paper_data}")
    gpu = detect_gpus() if gpu_label is None else GPUInfo.from_label(gpu_label)
    if gpu is None:
        raise InputError("--gpu", f"expected a study-name GPU label such as H100-80GB-HBM3x1, got {gpu_label!r}")
    name, entries = camp.load(campaign_file, variables, 0 if gpu.name == "cpu" else gpu.count, storage)
    loaded = []
    for e, n in zip(entries, camp.study_names(entries, gpu)):
        try:
            loaded.append(optuna.load_study(study_name=n, storage=connect(e.spec.storage)))
        except KeyError:
            raise InputError("--campaign", f"study {n!r} of campaign {name!r} has not run yet") from None
    folder = Path(out_dir) if out_dir else Path("reports") / f"campaign-{name}"
    return write(entries, loaded, folder, Path(paper_data) if paper_data else None)
