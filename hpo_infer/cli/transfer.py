"""``hpo-infer transfer``: re-tune on a new GPU, starting from what the old one found."""

from __future__ import annotations

import threading
from dataclasses import asdict

import click

from hpo_infer.cli import options
from hpo_infer.errors import InputError


@click.command("transfer")
@click.option("--from", "source_name", required=True, help="The source study (name, or the spec file it came from).")
@click.option(
    "--to-gpu",
    default="auto",
    show_default=True,
    help="The new GPU: auto (this host's), or a name; for replay studies, the recorded GPU to replay (e.g. V100).",
)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(dir_okay=False),
    help="Spec of the new study (default: the source's); same engine, model and workload.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    help="Trial budget of the new study, carried configs included (default: the spec's).",
)
@click.option(
    "--carry",
    type=click.IntRange(min=1, max=20),
    default=3,
    show_default=True,
    help="How many of the source's best configs to measure first.",
)
@options.storage()
@options.gpus()
@options.no_validate
def transfer(
    source_name: str,
    to_gpu: str,
    spec_file: str | None,
    trials: int | None,
    carry: int,
    storage: str | None,
    gpus: list[int] | None,
    no_validate: bool,
) -> None:
    """Re-tune a study's setting on a new GPU: defaults, then the old best (carried over), then search.

    Reports the gain of the new best over the carried-over config (the paper's metric) and over
    the engine defaults, and stores both in the study for `export`.
    """
    from hpo_infer.agent.loop import Progress
    from hpo_infer.agent.signals import install_signal_handlers
    from hpo_infer.agent.start import start_study
    from hpo_infer.agent.transfer import carry_plan, enqueue_transfer, target_spec, transfer_agent
    from hpo_infer.cli.tune import run_validate_summarise
    from hpo_infer.storage_url import choose, mask
    from hpo_infer.study.gains import describe, gains
    from hpo_infer.study.naming import study_name
    from hpo_infer.study.trials import TRANSFER

    source = options.resolve_study(source_name, storage)
    if source_name.endswith((".yaml", ".yml")):
        from hpo_infer import spec as spec_mod

        url = spec_mod.load(source_name, storage).storage
    else:
        url = choose(storage)
    spec, gpu = target_spec(source, to_gpu, spec_file, url)
    if trials is not None:
        spec.budget.trials = trials
    name = study_name(spec, gpu)
    if name == source.study_name:
        raise InputError("--to-gpu", f"the new study would be the source itself ({name}): name another GPU")
    if not carry_plan(source.get_trials(deepcopy=False), spec.space(), 1):
        raise InputError(
            "--from", f"study {source.study_name!r} has no feasible trial in the new study's search space to carry over"
        )
    started = start_study(spec, gpu, name=name)
    study = started.study
    enqueue_transfer(study, spec, source, carry)
    click.echo(f"study {name}  (transfer from {source.study_name})")
    click.echo(f"storage {mask(spec.storage)}")
    stop = threading.Event()
    install_signal_handlers(stop)
    agent = transfer_agent(
        spec, study, source, gpus=gpus, host_gpus=started.host_gpus, progress=Progress(), stop=stop, lock=started.lock
    )
    run_validate_summarise(agent, study, spec, gpus, no_validate, stop)
    g = gains(study.get_trials(deepcopy=False))
    study.set_user_attr(TRANSFER, {**study.user_attrs[TRANSFER], "gain": asdict(g)})
    click.echo(describe(g, source.study_name))
    if stop.is_set():
        raise SystemExit(130)
