"""The README's main job, as a new user runs it: the quickstart spec on the real HF engine."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, run_cli


@pytest.mark.slow
def test_quickstart_runs_12_trials_and_beats_the_baseline(tmp_path: Path) -> None:
    res = run_cli("tune", str(ROOT / "studies" / "quickstart.yaml"), cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = " ".join(res.stdout.split())
    assert "best configuration" in out
    assert "larger than the noise" in out
    db = tmp_path / "hpo-infer.db"  # the spec's relative sqlite path is relative to the working dir
    assert db.exists()
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    assert summary.study_name == "hf:synthetic-tiny-llama:cpux1:syn-i16-o8-n32"
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 12
    base = study.trials[0]
    assert base.user_attrs["hpo_infer_role"] == "baseline" and base.user_attrs["settings"] == {}
    assert base.user_attrs["resolved"]["batch_size"] == 1  # what "default" meant, recorded
    assert study.best_value > base.value
    for t in done:
        assert t.user_attrs["start_s"] > 0 and t.user_attrs["measure_s"] > 0
        # Adaptive repeats: at least `repeats`, at most `measurement.max_repeats`, each one cold.
        assert 3 <= len(t.user_attrs["repeats"]) == t.user_attrs["spread"]["n"] <= 5
        assert t.user_attrs["spread"]["ci95_low"] <= t.value <= t.user_attrs["spread"]["ci95_high"]
        assert t.user_attrs["env"]["torch"].startswith("2.")
    v = study.user_attrs["validation"]
    assert v["best_vs_baseline"]["significant"] and v["best_vs_baseline"]["gain_pct"] > 0

    kw = run_cli("export", summary.study_name, "--format", "hf-kwargs", cwd=tmp_path)
    assert kw.returncode == 0, kw.stderr
    kwargs = json.loads(kw.stdout)
    best = study.best_trial.user_attrs["settings"]
    assert kwargs["from_pretrained"]["dtype"] == "float32"
    assert kwargs["generate"]["cache_implementation"] == best["cache_implementation"]
    bs = kwargs["pipeline"]["batch_size"] if best["path"] == "pipeline" else kwargs["batch_size"]
    assert bs == best["batch_size"]
    _generate_with(kwargs)

    rep = run_cli("report", summary.study_name, "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    for name in ("landscape.png", "history.png", "importance.png"):
        f = tmp_path / "rep" / name
        assert f.exists() and f.stat().st_size > 1000 and f.read_bytes()[:4] == b"\x89PNG", name
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "gain of best over baseline" in md and "| baseline | 0 |" in md and "| best |" in md
    assert all(f"![{k}]({k}.png)" in md for k in ("landscape", "history", "importance"))

    again = run_cli("tune", str(ROOT / "studies" / "quickstart.yaml"), "--no-validate", cwd=tmp_path, timeout=300)
    assert again.returncode == 0
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    assert len(study.trials) == len(done), "re-running a finished study measures nothing new"


def _generate_with(kwargs: dict) -> None:
    """The exported hf-kwargs, as a user passes them to transformers, on the study's model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

    from hpo_infer import model_source

    folder = model_source.materialize({"synthetic": "tiny-llama"})  # config and tokenizer; weights random
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), **kwargs["from_pretrained"])
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = ["def add(a, b):", "print("]
    if "pipeline" in kwargs:
        out = pipeline(model=model, tokenizer=tok, **kwargs["pipeline"])(
            prompts, max_new_tokens=3, return_full_text=False, **kwargs["generate"]
        )
        assert len(out) == 2 and all("generated_text" in o[0] for o in out)
    else:
        enc = tok(prompts, return_tensors="pt", padding=True)
        ids = model.generate(**enc, max_new_tokens=3, min_new_tokens=3, **kwargs["generate"])
        assert ids.shape == (2, enc["input_ids"].shape[1] + 3)
