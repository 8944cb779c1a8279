"""Options and arguments more than one command takes, each defined once (pip's ``cmdoptions``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from hpo_infer.errors import InputError

STORAGE_HELP = (
    "Study storage URL (sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB). "
    "Default: $HPO_INFER_STORAGE, else the spec's, else sqlite:///hpo-infer.db."
)


class GPUList(click.ParamType):
    """``--gpus 0,1,3``: GPU indices, each >= 0 (Flask's ParamType pattern)."""

    name = "gpus"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            gpus = [int(x) for x in str(value).split(",") if x.strip() != ""]
        except ValueError:
            raise InputError("--gpus", f"expected a comma-separated list of GPU indices, got {value!r}") from None
        if not gpus or any(g < 0 for g in gpus):
            raise InputError("--gpus", f"expected GPU indices >= 0, got {value!r}")
        return gpus


def _pairs(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in value:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise InputError("--var", f"expected NAME=VALUE, got {pair!r}")
        out[k] = v
    return out


def storage(help: str = STORAGE_HELP) -> Callable[[Any], Any]:
    return click.option("--storage", help=help)


def gpus(help: str = "GPU indices this run may use, e.g. 0,1 (default: all visible).") -> Callable[[Any], Any]:
    return click.option("--gpus", type=GPUList(), help=help)


variables = click.option(
    "--var",
    "variables",
    multiple=True,
    callback=_pairs,
    help="NAME=VALUE for ${NAME} in the campaign file (e.g. HUMANEVAL=/data/HumanEval-SingleLineInfilling.jsonl.gz).",
)
spec_file = click.argument("spec_file", type=click.Path(dir_okay=False))
no_validate = click.option(
    "--no-validate", is_flag=True, help="Skip re-measuring best vs baseline vs runner-up at the end."
)


def resolve_study(study: str, storage_flag: str | None) -> Any:
    """STUDY may be a study name or the spec file it came from."""
    import optuna

    from hpo_infer.db.storage import connect
    from hpo_infer.storage_url import choose

    url, name = choose(storage_flag), study
    if study.endswith((".yaml", ".yml")) and Path(study).is_file():
        from hpo_infer import spec as spec_mod
        from hpo_infer.hardware import detect_gpus
        from hpo_infer.study.naming import study_name

        spec = spec_mod.load(study, storage_flag)
        url = spec.storage
        name = study_name(spec, detect_gpus())
    st = connect(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if name not in names:
        hint = (
            f" (studies here: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"
            if names
            else " (this storage has no study)"
        )
        raise InputError("STUDY", f"no study named {name!r}{hint}")
    return optuna.load_study(study_name=name, storage=st)
