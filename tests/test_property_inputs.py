"""Property-based: hundreds of generated invalid specs and command lines, each refused with
one line on stderr and exit code 2, never a traceback, and the storage left as it was."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from conftest import fault_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_infer.cli import run

WORK = Path(tempfile.mkdtemp(prefix="hpo-prop-"))
DB = WORK / "existing.db"
EXAMPLES = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _invoke(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["hpo-infer", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def _existing_db_hash() -> str:
    if not DB.exists():
        spec = WORK / "ok.yaml"
        spec.write_text(yaml.safe_dump(fault_spec(budget={"trials": 1})))
        code, _, err = _invoke(["tune", str(spec), "--storage", f"sqlite:///{DB}"])
        assert code == 0, err
    return hashlib.sha256(DB.read_bytes()).hexdigest()


BASE = fault_spec(budget={"trials": 1})
# Values no lax coercion turns into the right type (pydantic accepts True or "3" as an int).
NOT_NUMBER = st.sampled_from(["many", [1, 2], {"a": 1}, "1e400x", "", "∞", "-"])
NOT_MAP = st.sampled_from([[1, 2], "text", 42, 3.5])
NOT_ENGINE = st.sampled_from([42, [1], "zzz-engine", "", {"name": "hf"}])
NUMERIC_KEYS = [
    "repeats",
    "trial_timeout_s",
    "budget.trials",
    "budget.wall_time_s",
    "workload.prompts",
    "workload.output_tokens",
]
MAP_KEYS = ["search_space", "fixed", "sampler", "model"]


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    def unknown_key(name: str) -> dict:
        d = copy.deepcopy(BASE)
        d[f"x_{name}"] = 1
        return d

    def nested_unknown(where: str, name: str) -> dict:
        d = copy.deepcopy(BASE)
        d.setdefault(where, {})
        if isinstance(d[where], dict):
            d[where][f"zz_{name}"] = 1
        return d

    def wrong_type(key: str, value: Any) -> dict:
        d = copy.deepcopy(BASE)
        if key.startswith("budget."):
            d["budget"][key.split(".")[1]] = value
        elif key.startswith("workload."):
            d["workload"][key.split(".")[1]] = value
        else:
            d[key] = value
        return d

    def drop(key: str) -> dict:
        d = copy.deepcopy(BASE)
        del d[key]
        return d

    def bad_range(lo: int, gap: int) -> dict:
        d = copy.deepcopy(BASE)
        d["search_space"]["x"] = {"type": "int", "low": lo + gap + 1, "high": lo}
        return d

    def bad_param(name: str) -> dict:
        d = copy.deepcopy(BASE)
        d["search_space"][f"p_{name}"] = {"type": "int", "low": 1, "high": 2}
        return d

    def bad_choice(v: str) -> dict:
        d = copy.deepcopy(BASE)
        d["search_space"]["mode"] = {"type": "categorical", "choices": ["ok", f"bad-{v}"]}
        return d

    def bad_storage(s: str) -> dict:
        d = copy.deepcopy(BASE)
        d["storage"] = s
        return d

    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
    return st.one_of(
        names.map(unknown_key),
        st.tuples(st.sampled_from(["workload", "budget", "sampler", "pruner", "objective", "model"]), names).map(
            lambda a: nested_unknown(*a)
        ),
        st.tuples(st.sampled_from(NUMERIC_KEYS), NOT_NUMBER).map(lambda a: wrong_type(*a)),
        st.tuples(st.sampled_from(MAP_KEYS), NOT_MAP).map(lambda a: wrong_type(*a)),
        NOT_ENGINE.map(lambda v: wrong_type("engine", v)),
        st.sampled_from(["engine", "model", "workload", "budget"]).map(drop),
        st.tuples(st.integers(1, 500), st.integers(0, 50)).map(lambda a: bad_range(*a)),
        names.map(bad_param),
        names.map(bad_choice),
        st.sampled_from(
            [
                "mysql://u@h/db",
                "sqlite:///:memory:",
                "sqlite:////nonexistent/dir/x.db",
                "redis://h",
                "nonsense",
                "postgresql://u:pw@h",
            ]
        ).map(bad_storage),
    )


@EXAMPLES
@given(spec=_mutations())
def test_generated_invalid_specs(spec: dict[str, Any]) -> None:
    before = _existing_db_hash()
    path = WORK / "gen.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    fresh = WORK / "fresh.db"
    fresh.unlink(missing_ok=True)
    args = ["tune", str(path)] + ([] if "storage" in spec else ["--storage", f"sqlite:///{fresh}"])
    code, out, err = _invoke(args)
    assert code == 2, (spec, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo-infer: error: "), err
    assert "Traceback" not in err + out
    assert "pw@" not in err
    assert not fresh.exists()
    assert _existing_db_hash() == before


@EXAMPLES
@given(text=st.text(max_size=200))
def test_generated_garbage_yaml_files(text: str) -> None:
    path = WORK / "garbage.yaml"
    path.write_text(text, encoding="utf-8")
    fresh = WORK / "fresh2.db"
    fresh.unlink(missing_ok=True)
    code, out, err = _invoke(["tune", str(path), "--storage", f"sqlite:///{fresh}"])
    assert code == 2, (text, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not fresh.exists()


OPTS = st.sampled_from(
    ["--trials", "--gpus", "--storage", "--format", "--out", "--port", "--host", "--bogus", "-x", "--var"]
)
VALS = st.one_of(st.text(alphabet="abc-,:/.0123456789 ", max_size=12), st.integers(-5, 0).map(str))


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    cmd=st.sampled_from(
        ["tune", "export", "report", "compare", "dashboard", "campaign", "db upgrade", "worker", "nosuchcmd"]
    ),
    pairs=st.lists(st.tuples(OPTS, VALS), min_size=1, max_size=3),
)
def test_generated_bad_command_lines(cmd: str, pairs: list[tuple[str, str]]) -> None:
    args = cmd.split()
    if cmd in ("tune", "campaign", "worker"):
        args.append(str(WORK / "absent-spec.yaml"))
    elif cmd in ("export", "report"):
        args.append("no-such-study")
    args += ["--storage", f"sqlite:///{WORK / 'cli.db'}"] if cmd != "nosuchcmd" else []
    for opt, val in pairs:
        args += [opt, val]
    if cmd == "dashboard":
        args += ["--bogus"]  # never start a server from a property test
    code, out, err = _invoke(args)
    assert code == 2, (args, out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("hpo-infer: error: "), (args, err)
    assert "Traceback" not in err + out
