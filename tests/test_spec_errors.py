"""Broken specs and flags: one line naming file/key/problem, exit code 2, storage untouched."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import fault_spec, run_cli, write_spec


def hf_spec() -> dict[str, Any]:
    return {
        "engine": "hf",
        "model": {"synthetic": "tiny-llama"},
        "workload": {"kind": "synthetic", "prompts": 4, "input_tokens": 4, "output_tokens": 2},
        "search_space": {"batch_size": {"type": "int", "low": 1, "high": 8, "log": True}},
        "budget": {"trials": 2},
    }


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def f(d: dict) -> None:
        keys = path.split(".")
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value

    return f


def _del(path: str) -> Callable[[dict], None]:
    def f(d: dict) -> None:
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return f


# (id, mutation, substrings expected in the one-line message)
CASES = [
    ("unknown-top-key", _set("enigne", "hf"), ["enigne", "unknown key"]),
    ("unknown-engine", _set("engine", "tensorrt"), ["engine", "unknown engine"]),
    ("missing-engine", _del("engine"), ["engine", "required"]),
    ("missing-workload", _del("workload"), ["workload", "required"]),
    ("missing-budget", _del("budget"), ["budget", "required"]),
    ("empty-budget", _set("budget", {}), ["budget", "trials"]),
    ("budget-negative", _set("budget.trials", -3), ["budget.trials", "greater than 0"]),
    ("budget-wrong-type", _set("budget.trials", "many"), ["budget.trials", "integer"]),
    ("repeats-zero", _set("repeats", 0), ["repeats"]),
    ("max-repeats-below-repeats", _set("measurement", {"max_repeats": 2}), ["measurement.max_repeats", "fewer than"]),
    ("precision-zero", _set("measurement", {"precision": 0}), ["measurement.precision", "greater than 0"]),
    ("measurement-typo", _set("measurement", {"min_pass": 1}), ["measurement.min_pass", "unknown key"]),
    ("prefix-too-long", _set("workload.prefix_tokens", 999), ["workload", "longer than the shortest prompt"]),
    ("timeout-string", _set("trial_timeout_s", "ten"), ["trial_timeout_s"]),
    (
        "empty-range",
        _set("search_space.batch_size", {"type": "int", "low": 64, "high": 8}),
        ["search_space.batch_size", "low (64) > high (8)"],
    ),
    (
        "int-float-bound",
        _set("search_space.batch_size", {"type": "int", "low": 1.5, "high": 8}),
        ["batch_size", "integer"],
    ),
    (
        "log-nonpositive",
        _set("search_space.batch_size", {"type": "int", "low": 0, "high": 8, "log": True}),
        ["batch_size", "log"],
    ),
    (
        "unknown-param-type",
        _set("search_space.batch_size", {"type": "integer", "low": 1, "high": 8}),
        ["search_space.batch_size.type"],
    ),
    (
        "unknown-param-key",
        _set("search_space.batch_size", {"type": "int", "low": 1, "high": 8, "lo": 1}),
        ["batch_size.lo", "unknown key"],
    ),
    (
        "engine-lacks-param",
        _set("search_space.max_num_seqs", {"type": "int", "low": 1, "high": 8}),
        ["search_space.max_num_seqs", "has no setting"],
    ),
    (
        "bad-choice",
        _set("search_space.dtype", {"type": "categorical", "choices": ["float32", "int3"]}),
        ["search_space.dtype", "int3"],
    ),
    (
        "empty-choices",
        _set("search_space.dtype", {"type": "categorical", "choices": []}),
        ["search_space.dtype", "choices"],
    ),
    (
        "below-setting-min",
        _set("search_space.batch_size", {"type": "int", "low": 0, "high": 8}),
        ["batch_size", ">= 1"],
    ),
    ("bad-fixed", _set("fixed", {"dtype": "float8"}), ["fixed.dtype", "float8"]),
    ("fixed-unknown", _set("fixed", {"nonsense": 1}), ["fixed.nonsense", "has no setting"]),
    (
        "when-unknown-parent",
        _set(
            "search_space.torch_compile",
            {"type": "categorical", "choices": ["off", "default"], "when": {"cache": "static"}},
        ),
        ["torch_compile.when", "cache"],
    ),
    ("missing-model-file", _set("model", {"synthetic": "nowhere/config.json"}), ["model.synthetic", "no such file"]),
    ("unknown-preset", _set("model", {"synthetic": "gpt-17"}), ["model.synthetic", "unknown preset"]),
    ("two-model-sources", _set("model", {"synthetic": "tiny-llama", "id": "x/y"}), ["model", "exactly one"]),
    (
        "missing-workload-file",
        _set("workload", {"kind": "jsonl", "path": "nope.jsonl", "output_tokens": 4}),
        ["workload.path", "no such file"],
    ),
    (
        "synthetic-no-prompts",
        _set("workload", {"kind": "synthetic", "input_tokens": 4, "output_tokens": 4}),
        ["workload", "prompts"],
    ),
    ("bad-workload-kind", _set("workload.kind", "sharegpt"), ["workload.kind"]),
    ("bad-sampler", _set("sampler", {"name": "bayes"}), ["sampler.name"]),
    (
        "grid-float-no-step",
        lambda d: d.update(
            engine="fault", search_space={"peak": {"type": "float", "low": 1, "high": 2}}, sampler={"name": "grid"}
        ),
        ["search_space.peak", "step"],
    ),
    (
        "cmaes-categorical",
        lambda d: d.update(
            search_space={"dtype": {"type": "categorical", "choices": ["float32", "bfloat16"]}},
            sampler={"name": "cmaes"},
        ),
        ["sampler.name", "cmaes"],
    ),
    ("bad-storage-scheme", _set("storage", "mysql://u@h/db"), ["storage", "unsupported database"]),
    ("bad-storage-dir", _set("storage", "sqlite:////no/such/dir/x.db"), ["storage", "does not exist"]),
    ("memory-storage", _set("storage", "sqlite:///:memory:"), ["storage", "in-memory"]),
    ("not-a-mapping", lambda d: (d.clear(), d.update({"_list": True})), ["spec.yaml"]),
]


def _mutated(mut: Callable[[dict], None]) -> dict:
    d = copy.deepcopy(hf_spec())
    mut(d)
    return d


def _assert_one_line_error(res, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hpo-infer: error: ")
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_spec_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, case) -> None:
    _, mut, needles = case
    spec = _mutated(mut)
    if spec.get("_list"):
        path = write_spec(tmp_path, "- just\n- a list\n")
    else:
        path = write_spec(tmp_path, spec)
    db = tmp_path / "study.db"
    res = run_cli("tune", str(path), *([] if "storage" in spec else ["--storage", f"sqlite:///{db}"]), cwd=tmp_path)
    err = _assert_one_line_error(res, *needles)
    assert str(path) in err or "storage" in err or "--storage" in err
    assert not db.exists(), "a broken spec must not create the storage"
    assert not (tmp_path / "hpo-infer.db").exists()


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "engine: hf\nmodel: {synthetic: tiny-llama\nbudget: [\n")
    res = run_cli("tune", str(path), cwd=tmp_path)
    _assert_one_line_error(res, str(path), "invalid YAML", "line")


def test_missing_spec_file(tmp_path: Path) -> None:
    res = run_cli("tune", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    _assert_one_line_error(res, "absent.yaml", "no such file")


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--storage", "ftp://x"], ["--storage", "unsupported database"]),
        (["--storage", "just words"], ["--storage", "not a database URL"]),
        (["--storage", "postgresql://u:s3cret@127.0.0.1:1"], ["--storage", "no database name"]),
        (["--gpus", "a,b"], ["--gpus"]),
        (["--trials", "0"], ["--trials"]),
    ],
)
def test_bad_flags(tmp_path: Path, flags: list[str], needles: list[str]) -> None:
    path = write_spec(tmp_path, fault_spec())
    res = run_cli("tune", str(path), *flags, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "s3cret" not in res.stderr + res.stdout
    for n in needles:
        assert n in res.stderr
    assert not (tmp_path / "hpo-infer.db").exists()


def test_env_storage_error_names_the_variable(tmp_path: Path) -> None:
    path = write_spec(tmp_path, fault_spec())
    res = run_cli("tune", str(path), cwd=tmp_path, env={"HPO_INFER_STORAGE": "oracle://a:pw@h/x"})
    err = _assert_one_line_error(res, "HPO_INFER_STORAGE", "unsupported database")
    assert "pw@" not in err


def test_broken_spec_leaves_existing_storage_byte_identical(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    ok = write_spec(tmp_path, fault_spec(budget={"trials": 2}), "ok.yaml")
    res = run_cli("tune", str(ok), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for _, mut, _n in CASES[:12]:
        bad = write_spec(tmp_path, _mutated(mut), "bad.yaml")
        r = run_cli("tune", str(bad), "--storage", f"sqlite:///{db}", cwd=tmp_path)
        assert r.returncode == 2
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
