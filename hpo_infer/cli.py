"""The ``hpo-infer`` command line. Engines are never imported here: it starts fast anywhere."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from hpo_infer.errors import InputError, StorageError

STORAGE_HELP = "Study storage URL (sqlite:///FILE or postgresql://USER@HOST/DB). Default: $HPO_INFER_STORAGE, else the spec's, else sqlite:///hpo-infer.db."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpo-infer")
def main() -> None:
    """Find the engine settings that give the most tokens/s for your model on your GPU, by measuring."""


def _storage_url(flag: str | None) -> str:
    from hpo_infer.storage import DEFAULT_STORAGE, check_url

    url = flag or os.environ.get("HPO_INFER_STORAGE") or DEFAULT_STORAGE
    problem = check_url(url)
    if problem:
        raise InputError("--storage" if flag else "HPO_INFER_STORAGE" if os.environ.get("HPO_INFER_STORAGE") else "storage", problem)
    return url


def _open(url: str, heartbeat: bool = False):
    """Open the study storage. A long job (``heartbeat``) waits for an unreachable database
    with backoff for ``HPO_INFER_DB_RETRY_S`` (a database restarting under a fleet); a quick
    command fails at once. Either way the error is one line with the password masked."""
    from hpo_infer.db.retry import call_with_retry, retry_window_s
    from hpo_infer.storage import mask, open_storage

    window = retry_window_s() if heartbeat else 0.0
    try:
        return call_with_retry(lambda: open_storage(url, heartbeat=heartbeat), "opening the storage", window)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one line
        waited = f" (retried for {window:g} s)" if window else ""
        raise StorageError(f"cannot open {mask(url)}{waited}: {mask(str(exc).splitlines()[0])}") from None


def _parse_gpus(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        gpus = [int(x) for x in value.split(",") if x.strip() != ""]
    except ValueError:
        raise InputError("--gpus", f"expected a comma-separated list of GPU indices, got {value!r}") from None
    if not gpus or any(g < 0 for g in gpus):
        raise InputError("--gpus", f"expected GPU indices >= 0, got {value!r}")
    return gpus


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--storage", help=STORAGE_HELP)
@click.option("--trials", type=click.IntRange(min=1), help="Override the spec's trial budget.")
@click.option("--gpus", help="GPU indices this run may use, e.g. 0,1 (default: all visible).")
@click.option("--no-validate", is_flag=True, help="Skip re-measuring best vs baseline vs runner-up at the end.")
def tune(spec_file: str, storage: str | None, trials: int | None, gpus: str | None, no_validate: bool) -> None:
    """Run (or resume) the study a SPEC_FILE describes, then print baseline vs best."""
    from hpo_infer import spec as spec_mod

    spec = spec_mod.load(spec_file, storage)
    if spec.engine in ("vllm", "vllm-serve"):  # names and values the installed vLLM rejects: refused before any trial
        from hpo_infer.engines.vllm_check import preflight

        preflight(spec)
    if trials is not None:
        spec.budget.trials = trials
    gpu_list = _parse_gpus(gpus)

    from hpo_infer.agent import Agent, Progress, install_signal_handlers
    from hpo_infer.hardware import detect_gpus
    from hpo_infer.study import create_or_load, study_name

    gpu = detect_gpus()
    if gpu_list is not None and gpu.name != "cpu":
        from dataclasses import replace

        gpu = replace(gpu, count=len(gpu_list))
    name = study_name(spec, gpu)
    storage_obj = _open(spec.storage, heartbeat=True)
    study = create_or_load(spec, storage_obj, name, gpu)
    stop = threading.Event()
    install_signal_handlers(stop)
    progress = Progress()
    click.echo(f"study {name}")
    from hpo_infer.storage import mask

    click.echo(f"storage {mask(spec.storage)}")
    agent = Agent(spec, study, gpus=gpu_list, host_gpus=0 if gpu.name == "cpu" else gpu.count, progress=progress, stop=stop)
    run_validate_summarise(agent, study, spec, gpu_list, no_validate, stop)
    if stop.is_set():
        click.echo("interrupted: the running trial was ended; run the same command again to resume.", err=True)
        sys.exit(130)


def run_validate_summarise(agent: Any, study: Any, spec: Any, gpu_list: list[int] | None, no_validate: bool, stop: threading.Event) -> None:
    """Run the agent with a progress bar, re-validate the finalists, print baseline vs best."""
    from hpo_infer.ui import print_summary, progress_display

    with progress_display(agent.progress, spec.budget.trials):
        agent.run()
    validation = study.user_attrs.get("validation")
    if spec.validate_finalists and not no_validate and not stop.is_set():
        from hpo_infer.finalize import revalidate

        click.echo("re-validating baseline, best and runner-up in one worker session ...")
        validation = revalidate(study, spec, gpu_list) or validation
    print_summary(study, validation)


def _resolve_study(study: str, storage_flag: str | None):
    """STUDY may be a study name or the spec file it came from."""
    url = _storage_url(storage_flag)
    name = study
    if study.endswith((".yaml", ".yml")) and Path(study).is_file():
        from hpo_infer import spec as spec_mod
        from hpo_infer.hardware import detect_gpus
        from hpo_infer.study import study_name

        spec = spec_mod.load(study, storage_flag)
        url = spec.storage
        name = study_name(spec, detect_gpus())
    import optuna

    storage = _open(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        hint = f" (studies here: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})" if names else " (this storage has no study)"
        raise InputError("STUDY", f"no study named {name!r}{hint}")
    return optuna.load_study(study_name=name, storage=storage)


@main.command()
@click.argument("study")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--format", "fmt", type=click.Choice(["yaml", "json", "vllm-cli", "hf-kwargs"]), default="yaml", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
@click.option("--pareto", is_flag=True, help="Serving studies: every configuration on the tokens/s vs latency Pareto front, not only the best.")
def export(study: str, storage: str | None, fmt: str, out_path: str | None, pareto: bool) -> None:
    """Write the best feasible settings of STUDY (a name or its spec file) for the engine to take as-is."""
    from hpo_infer.export import best_record, front_record, render, render_front

    st = _resolve_study(study, storage)
    rec = front_record(st) if pareto else best_record(st)
    text = render_front(rec, fmt) if pareto else render(rec, fmt)
    if out_path:
        Path(out_path).write_text(text)
        click.echo(f"wrote {out_path}", err=True)
    else:
        click.echo(text, nl=False)
    from hpo_infer.db.record import record_export

    warning = record_export(st, rec, fmt, out_path)  # one row in hpo_infer_export
    if warning:
        click.echo(f"hpo-infer: warning: {warning}", err=True)


@main.command("studies")
@click.option("--storage", help=STORAGE_HELP)
def list_studies(storage: str | None) -> None:
    """List the studies in a storage, with trial counts and best throughput."""
    import optuna

    from hpo_infer.ui import studies_table

    st = _open(_storage_url(storage))
    studies_table(optuna.get_all_study_summaries(st, include_best_trial=True))


@main.command()
@click.argument("engine")
def settings(engine: str) -> None:
    """Show the settings ENGINE can tune, their defaults and default search range."""
    from hpo_infer.engines import engine_class, engine_names
    from hpo_infer.ui import settings_table

    if engine not in engine_names():
        raise InputError("ENGINE", f"unknown engine {engine!r} (one of {', '.join(engine_names())})")
    settings_table(engine_class(engine))


def _gpu_of_label(label: str) -> Any:
    """``H100-80GB-HBM3x1`` -> the GPU whose study-name label it is (reports made on another host)."""
    import re

    from hpo_infer.hardware import GPUInfo

    m = re.fullmatch(r"(.+)x(\d+)", label.strip())
    if not m:
        raise InputError("--gpu", f"expected a study-name GPU label such as H100-80GB-HBM3x1, got {label!r}")
    return GPUInfo(m.group(1), int(m.group(2)))


@main.command()
@click.argument("study", required=False)
@click.option("--storage", help=STORAGE_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for summary.md and the PNG plots (default: reports/<study>).")
@click.option("--campaign", "campaign_file", type=click.Path(dir_okay=False), help="Report a whole campaign (the paper's views) instead of one study.")
@click.option("--var", "variables", multiple=True, help="NAME=VALUE for ${NAME} in the campaign file.")
@click.option("--paper-data", type=click.Path(dir_okay=False), help="paper-landscapes.csv, to compare with the paper's A100/V100 figures.")
@click.option("--gpu", "gpu_label", help="With --campaign: the GPU label of the studies to report, as in their names (e.g. H100-80GB-HBM3x1); default: this host's.")
def report(study: str | None, storage: str | None, out_dir: str | None, campaign_file: str | None, variables: tuple[str, ...],
           paper_data: str | None, gpu_label: str | None) -> None:
    """Plots (landscape, history, importance) and a Markdown summary of STUDY (a name or its spec file)."""
    if campaign_file:
        import optuna

        from hpo_infer import campaign as camp
        from hpo_infer.campaign_report import write
        from hpo_infer.hardware import detect_gpus

        if paper_data and not Path(paper_data).is_file():
            raise InputError("--paper-data", f"no such file: {paper_data}")
        gpu = detect_gpus() if gpu_label is None else _gpu_of_label(gpu_label)
        name, entries = camp.load(campaign_file, _vars(variables), 0 if gpu.name == "cpu" else gpu.count, storage)
        names = camp.study_names(entries, gpu)
        loaded = []
        for e, n in zip(entries, names):
            try:
                loaded.append(optuna.load_study(study_name=n, storage=_open(e.spec.storage)))
            except KeyError:
                raise InputError("--campaign", f"study {n!r} of campaign {name!r} has not run yet") from None
        folder = Path(out_dir) if out_dir else Path("reports") / f"campaign-{name}"
        files = write(entries, loaded, folder, Path(paper_data) if paper_data else None)
    else:
        if not study:
            raise InputError("STUDY", "give a study name or spec file (or --campaign FILE)")
        from hpo_infer.report import write_report

        st = _resolve_study(study, storage)
        folder = Path(out_dir) if out_dir else Path("reports") / st.study_name.replace(":", "_").replace("/", "_")
        files = write_report(st, folder)
    for kind, path in files.items():
        click.echo(f"{kind}: {path}")


@main.command()
@click.argument("studies", nargs=-1)
@click.option("--storage", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare(studies: tuple[str, ...], storage: str | None, as_json: bool) -> None:
    """One table of best settings and throughput across STUDIES (default: every study in the storage)."""
    import json

    import optuna

    from hpo_infer.report import compare_rows
    from hpo_infer.ui import compare_table

    if studies:
        loaded = [_resolve_study(s, storage) for s in studies]
    else:
        st = _open(_storage_url(storage))
        loaded = [optuna.load_study(study_name=s.study_name, storage=st) for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    rows = compare_rows(loaded)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        compare_table(rows)


def _vars(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise InputError("--var", f"expected NAME=VALUE, got {pair!r}")
        out[k] = v
    return out


@main.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False))
@click.option("--var", "variables", multiple=True, help="NAME=VALUE for ${NAME} in the campaign file (e.g. HUMANEVAL=/data/HumanEval-SingleLineInfilling.jsonl.gz).")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--gpus", help="GPU indices this agent may use, e.g. 0,1 (default: all visible).")
@click.option("--dry-run", is_flag=True, help="List the studies and their grid sizes; measure nothing.")
def campaign(campaign_file: str, variables: tuple[str, ...], storage: str | None, gpus: str | None, dry_run: bool) -> None:
    """Run every study of a CAMPAIGN_FILE (models x engines x workloads), one after another.

    Start it on several hosts or GPU groups with one shared --storage and the agents share
    each study's trials; study budgets and stop rules still apply.
    """
    from hpo_infer import campaign as camp
    from hpo_infer.agent import install_signal_handlers
    from hpo_infer.hardware import detect_gpus
    from hpo_infer.ui import console

    gpu_list = _parse_gpus(gpus)
    gpu = detect_gpus()
    if gpu_list is not None and gpu.name != "cpu":
        from dataclasses import replace

        gpu = replace(gpu, count=len(gpu_list))
    name, entries = camp.load(campaign_file, _vars(variables), 0 if gpu.name == "cpu" else gpu.count, storage)
    names = camp.study_names(entries, gpu)
    if dry_run:
        from hpo_infer import space as sp

        for n, e in zip(names, entries):
            size = sp.grid_size(e.spec.space()) if e.spec.sampler.name == "grid" else "-"
            click.echo(f"{n}\tgrid points: {size}\tbudget: {e.spec.budget.trials}")
        return
    import time

    stop = threading.Event()
    install_signal_handlers(stop)
    t0 = time.monotonic()

    def on_study(kind: str, i: int, total: int, sname: str, info: Any) -> None:
        if kind == "start":
            console.print(f"[bold]campaign {name}[/bold] study {i + 1}/{total}: {sname}")
        else:
            best = f"{info['best']:,.1f} tok/s" if info["best"] is not None else "no feasible trial"
            console.print(f"  done: {info['trials']} trials, best {best} ({time.monotonic() - t0:,.0f} s into the campaign)")

    results = camp.run(name, entries, gpu, gpu_list, stop, on_study)
    console.print(f"campaign {name}: {len(results)}/{len(entries)} studies worked through in {time.monotonic() - t0:,.0f} s")
    if stop.is_set():
        click.echo("interrupted: run the same command again to resume.", err=True)
        sys.exit(130)


def run() -> None:
    """Console entry: every error a user can cause is one line on stderr, with exit code 2."""
    try:
        main.main(standalone_mode=False)
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


# Commands that live in their own modules register here (each module is import-light).
from hpo_infer.dashboard import dashboard_cmd  # noqa: E402

main.add_command(dashboard_cmd)
from hpo_infer.cli_db import db as db_group  # noqa: E402

main.add_command(db_group)
from hpo_infer.fleet import worker as worker_cmd  # noqa: E402

main.add_command(worker_cmd)
from hpo_infer.doctor import doctor_cmd  # noqa: E402

main.add_command(doctor_cmd)
from hpo_infer.importgrid import import_grid_cmd; main.add_command(import_grid_cmd)  # noqa: E402,E702
from hpo_infer.transfer import transfer_cmd; main.add_command(transfer_cmd)  # noqa: E402,E702
