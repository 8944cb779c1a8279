"""Check settings against the installed vLLM's own engine arguments, in a child process.

``python -m hpo_infer.engines.vllm_check`` reads a JSON list of probes on stdin, each
``{"name": "kv_cache_dtype", "value": "fp8", "args": ["--kv-cache-dtype", "fp8"]}``, and writes
``{"version": "0.32.0", "rejects": [{"index": i, "reason": "..."}]}`` as the last line of stdout.

Two sources of truth, both vLLM's own: the ``vllm serve`` argument parser built from
``EngineArgs`` (unknown flags, choices, types) and the pydantic constraints of the config
classes those arguments land in (e.g. ``gpu_memory_utilization`` in (0, 1]). The CLI never
imports vllm itself; this module is the only one besides the worker that does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import typing
from typing import Any

# EngineArgs names whose config field is named differently.
_FIELD_ALIASES = {"kv_cache_dtype": "cache_dtype"}


def _parser() -> Any:
    from vllm.engine.arg_utils import EngineArgs

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # vLLM < 0.11
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef,attr-defined]
    return EngineArgs.add_cli_args(FlexibleArgumentParser(prog="vllm"))


def _config_fields() -> dict[str, Any]:
    """Every field of every config class VllmConfig is made of, by name (first one wins)."""
    from vllm.config import VllmConfig

    fields: dict[str, Any] = {}
    for fi in getattr(VllmConfig, "__pydantic_fields__", {}).values():
        for cls in typing.get_args(fi.annotation) or (fi.annotation,):
            for name, f in getattr(cls, "__pydantic_fields__", {}).items():
                fields.setdefault(name, f)
    return fields


def _parse_error(parser: Any, args: list[str]) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(args)
    except SystemExit:
        last = next((ln for ln in reversed(err.getvalue().splitlines()) if ln.strip()), "rejected by vLLM's argument parser")
        return last.split(": error: ", 1)[-1]
    return None


def _field_error(fields: dict[str, Any], name: str, value: Any) -> str | None:
    from pydantic import TypeAdapter, ValidationError

    f = fields.get(_FIELD_ALIASES.get(name, name))
    if f is None:
        return None
    ann = typing.Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    try:
        TypeAdapter(ann).validate_python(value)
    except ValidationError as exc:
        return f"{name}: {exc.errors()[0]['msg']}"
    except Exception:  # noqa: BLE001 - a type pydantic cannot build alone: the parser's word stands
        return None
    return None


def check(probes: list[dict[str, Any]]) -> dict[str, Any]:
    import vllm

    parser = _parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    fields = _config_fields()
    rejects = []
    for i, pr in enumerate(probes):
        args = list(pr["args"])
        flags = [a for a in args if a.startswith("--")]
        missing = [f for f in flags if f not in known]
        if missing:
            reason = f"this vLLM has no engine argument {missing[0]}"
        else:
            reason = _parse_error(parser, args) or _field_error(fields, pr["name"], pr["value"])
        if reason:
            rejects.append({"index": i, "reason": reason})
    return {"version": vllm.__version__, "rejects": rejects}


def main() -> int:
    # vLLM logs to stdout: keep the real stdout for the one answer line.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    answer = check(json.loads(sys.stdin.read()))
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
