"""The replay engine: trials looked up in a recorded table, through the real CLI, agent and worker.

A small CSV written per test holds every case (ok rows, an OOM row with and without a value, a
killed row, a missing combination, repeats); one test replays the paper's real landscape.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import run_cli, write_spec

from hpo_infer.engines.replay import ReplayEngine, ReplayFailed, ReplayInfeasible
from hpo_infer.measurement.protocol import TrialRequest

HEADER = [
    "gpu",
    "engine",
    "model",
    "num_gpus",
    "batch_size",
    "max_new_tokens",
    "throughput_tok_s",
    "status",
    "source_row",
]
ROWS = [
    # gpu A: bs 1, 2 ok; bs 4 out of memory; bs 8 never recorded; 2 GPUs: bs 1 killed, bs 2 two repeats
    ("A", "hf", "m", 1, 1, 5, 10.0, "ok"),
    ("A", "hf", "m", 1, 1, 10, 11.0, "ok"),
    ("A", "hf", "m", 1, 2, 5, 20.0, "ok"),
    ("A", "hf", "m", 1, 4, 5, "", "oom"),
    ("A", "hf", "m", 2, 1, 5, "", "killed"),
    ("A", "hf", "m", 2, 2, 5, 30.0, "ok"),
    ("A", "hf", "m", 2, 2, 5, 34.0, "ok"),
    ("A", "hf", "m", 2, 4, 5, 12.5, "oom"),  # stopped at its first OOM batch, value of the rest
    # gpu B: a different landscape
    ("B", "hf", "m", 1, 1, 5, 5.0, "ok"),
    ("B", "hf", "m", 1, 2, 5, 9.0, "ok"),
    ("B", "hf", "m", 1, 4, 5, 25.0, "ok"),
    ("B", "hf", "m", 2, 1, 5, 4.0, "ok"),
    ("B", "hf", "m", 2, 2, 5, "", "oom"),
    ("B", "hf", "m", 2, 4, 5, "", "oom"),
]


def write_table(tmp_path: Path, rows: list[tuple] = ROWS) -> Path:
    p = tmp_path / "grid.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, r in enumerate(rows):
            w.writerow([*r, i])
    return p


def replay_spec(table: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "engine": "replay",
        "model": {"id": "m"},
        "workload": {"kind": "synthetic", "prompts": 8, "input_tokens": 8, "output_tokens": 5},
        "fixed": {"table": table, "gpu": "A", "engine": "hf", "model": "m", "max_new_tokens": 5},
        "search_space": {"batch_size": {"type": "categorical", "choices": [1, 2, 4, 8]}},
        "sampler": {"name": "grid"},
        "budget": {"trials": 20},
        "repeats": 2,
        "trial_timeout_s": 60,
        "validate_finalists": False,
    }
    spec.update(over)
    return spec


def _study(db: Path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")


def test_replay_through_the_cli_ok_oom_and_missing_rows(tmp_path: Path) -> None:
    """Grid over batch size 1, 2, 4, 8 on 1 GPU: two values, one OOM (infeasible), one missing (error naming it)."""
    write_table(tmp_path)
    spec = write_spec(tmp_path, replay_spec("grid.csv"))  # relative to the spec's folder
    db = tmp_path / "s.db"
    res = run_cli("tune", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    study = _study(db)
    assert study.study_name == "replay:m:Ax1:syn-i8-o5-n8"  # the key names the recorded GPU, not the host's
    by_bs: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in study.trials:
        by_bs.setdefault(t.params["batch_size"], []).append(t)
    (t1,), (t2,) = by_bs[1], by_bs[2]
    assert (
        t1.user_attrs["hpo_infer_role"] == "baseline" and t1.value == 10.0 and t1.user_attrs["repeats"] == [10.0, 10.0]
    )
    assert t2.value == 20.0 and t2.constraints == {"feasible": 0.0}
    (t4,) = by_bs[4]
    assert t4.state == optuna.trial.TrialState.COMPLETE and t4.constraints == {"feasible": 1.0}
    assert t4.user_attrs["status"] == "infeasible" and "out of memory" in t4.user_attrs["failure"]
    missing = by_bs[8]
    assert len(missing) == 2, "a failed trial is retried once"
    for t in missing:
        assert t.state == optuna.trial.TrialState.FAIL
        assert "no row for batch_size=8" in t.user_attrs["failure"]
        assert "recorded batch_size: 1, 2, 4" in t.user_attrs["failure"]
    out = run_cli("export", study.study_name, "--storage", f"sqlite:///{db}", "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert '"batch_size": 2' in out.stdout and '"throughput_tok_s": 20.0' in out.stdout


@pytest.mark.parametrize(
    "change, key, problem",
    [
        ({"fixed": {"table": "nope.csv"}}, "fixed.table", "no such file: nope.csv"),
        ({"fixed": {"gpu": "H100"}}, "fixed.gpu", "no row of grid.csv has gpu=H100 (it has: A, B)"),
        ({"fixed": {"colour": "red"}}, "fixed.colour", "is not a column of grid.csv"),
        (
            {"search_space": {"tp": {"type": "categorical", "choices": [1]}}},
            "search_space.tp",
            "is not a column of grid.csv",
        ),
        (
            {"search_space": {"noise": {"type": "float", "low": 0, "high": 0.1}}},
            "search_space.noise",
            "is an option of the replay engine",
        ),
        (
            {"fixed": {"max_new_tokens": None}},
            "fixed",
            "column 'max_new_tokens' of grid.csv takes several values (5, 10)",
        ),
        ({"fixed": {"missing": "maybe"}}, "fixed.missing", "must be one of ['error', 'infeasible']"),
    ],
)
def test_bad_replay_specs_are_one_line_errors_and_write_nothing(
    tmp_path: Path, change: dict, key: str, problem: str
) -> None:
    write_table(tmp_path)
    spec = replay_spec("grid.csv")
    for k, v in change.items():
        if k == "fixed":
            spec["fixed"] = {a: b for a, b in {**spec["fixed"], **v}.items() if b is not None}
        else:
            spec[k] = v
    path = write_spec(tmp_path, spec)
    db = tmp_path / "s.db"
    res = run_cli("tune", str(path), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"{path}: {key}: " in line and problem in line, line
    assert not db.exists()


def _run(table: Path, params: dict[str, Any], repeats: int = 3) -> dict[str, Any]:
    """The engine's worker-side run, in process (the CLI tests cover the process around it)."""
    events: list[tuple[str, dict]] = []
    req = TrialRequest(
        engine="replay",
        params={"table": str(table), "gpu": "A", "engine": "hf", "model": "m", "max_new_tokens": 5, **params},
        model={"id": "m"},
        workload={},
        repeats=repeats,
    )
    out = ReplayEngine().run(req, lambda k, d: events.append((k, d)))
    assert [d["tok_s"] for k, d in events if k == "repeat"] == [r["tok_s"] for r in out["repeats"]]
    return out


def test_lookup_rules(tmp_path: Path) -> None:
    table = write_table(tmp_path)
    eng = ReplayEngine()
    assert _run(table, {"batch_size": 2, "num_gpus": 1})["value"] == 20.0
    assert _run(table, {"batch_size": 2, "num_gpus": 2})["value"] == 32.0, "repeats: the median"
    with pytest.raises(ReplayInfeasible, match="out of memory") as oom:
        _run(table, {"batch_size": 4, "num_gpus": 2})
    assert eng.classify(oom.value) == "infeasible"
    assert _run(table, {"batch_size": 4, "num_gpus": 2, "oom_partial": "value"})["value"] == 12.5
    with pytest.raises(ReplayFailed, match="killed") as killed:
        _run(table, {"batch_size": 1, "num_gpus": 2})
    assert eng.classify(killed.value) == "failed"
    with pytest.raises(LookupError, match="no row for batch_size=8 with") as missing:
        _run(table, {"batch_size": 8, "num_gpus": 1})
    assert eng.classify(missing.value) == "failed"
    with pytest.raises(ReplayInfeasible, match="treated as infeasible"):
        _run(table, {"batch_size": 8, "num_gpus": 1, "missing": "infeasible"})


def test_noise_relative_and_recorded(tmp_path: Path) -> None:
    table = write_table(tmp_path)
    out = _run(table, {"batch_size": 2, "num_gpus": 1, "noise": 0.05}, repeats=40)
    vals = [r["tok_s"] for r in out["repeats"]]
    assert len(set(vals)) == 40 and 17.0 < min(vals) and max(vals) < 23.0
    assert 0.02 < out["spread"]["stdev"] / 20.0 < 0.09
    rec = _run(table, {"batch_size": 2, "num_gpus": 2, "noise_source": "recorded"}, repeats=40)
    assert set(r["tok_s"] for r in rec["repeats"]) == {30.0, 34.0}, "drawn from the recorded repeats"


def test_replay_of_the_papers_landscape(tmp_path: Path, shared_data: Path) -> None:
    """studies/replay-paper-hf-phi2-a100.yaml through the worker: the values are the table's 5-token rows."""
    root = Path(__file__).resolve().parents[1]
    db = tmp_path / "p.db"
    res = run_cli(
        "tune",
        str(root / "studies/replay-paper-hf-phi2-a100.yaml"),
        "--storage",
        f"sqlite:///{db}",
        "--trials",
        "2",
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = _study(db)
    assert study.study_name == "replay:Phi-2:A100x8:humaneval-o5"
    want = {}
    with (shared_data / "paper-landscapes.csv").open() as f:
        for r in csv.DictReader(f):
            if (r["gpu"], r["engine"], r["model"], r["max_new_tokens"]) == ("A100", "hf", "Phi-2", "5"):
                want[(int(r["batch_size"]), int(r["num_gpus"]))] = (r["status"], r["throughput_tok_s"])
    assert len(study.trials) == 2
    for t in study.trials:
        status, value = want[(t.params["batch_size"], t.params["num_gpus"])]
        if value:
            assert t.value == float(value), t.params
        else:
            assert t.constraints == {"feasible": 1.0} and status in ("oom", "error")
    assert study.trials[0].value == pytest.approx(19.4578, abs=1e-4)  # defaults: batch 1 on 1 GPU


def test_latency_columns_become_the_trials_metrics(tmp_path: Path) -> None:
    """A ``*_ms`` column is a metric, not a setting: it may differ between a configuration's repeats
    (the spec is accepted), and the trial's metrics are its medians, as the throughput is."""
    p = tmp_path / "serve.csv"
    p.write_text(
        "gpu,engine,model,batch_size,throughput_tok_s,p99_ttft_ms,status\n"
        "A,vllm-serve,m,1,10.0,100.0,ok\n"
        "A,vllm-serve,m,1,12.0,140.0,ok\n"
        "A,vllm-serve,m,2,20.0,300.0,ok\n"
    )
    fixed = {"table": "serve.csv", "gpu": "A", "engine": "vllm-serve", "model": "m"}
    space = {"batch_size": {"type": "categorical", "choices": [1, 2]}}
    spec = write_spec(tmp_path, replay_spec("serve.csv", fixed=fixed, search_space=space))
    db = tmp_path / "s.db"
    res = run_cli("tune", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = {
        t.params["batch_size"]: (t.value, t.user_attrs.get("metrics"))
        for t in _study(db).trials
        if "batch_size" in t.params
    }
    assert got == {1: (11.0, {"p99_ttft_ms": 120.0}), 2: (20.0, {"p99_ttft_ms": 300.0})}


def test_a_multi_objective_replay_study_trades_the_recorded_latency(tmp_path: Path) -> None:
    """``objective.metrics`` may name a table's latency column: the study has two directions and
    each trial's second value is the recorded median; a column the table lacks is one line."""
    p = tmp_path / "serve.csv"
    p.write_text(
        "gpu,engine,model,batch_size,throughput_tok_s,p99_ttft_ms,status\n"
        "A,vllm-serve,m,1,10.0,100.0,ok\n"
        "A,vllm-serve,m,2,20.0,300.0,ok\n"
        "A,vllm-serve,m,4,15.0,400.0,ok\n"
    )
    fixed = {"table": "serve.csv", "gpu": "A", "engine": "vllm-serve", "model": "m"}
    space = {"batch_size": {"type": "categorical", "choices": [1, 2, 4]}}
    raw = replay_spec("serve.csv", fixed=fixed, search_space=space)
    raw["objective"] = {"metrics": {"throughput": "maximize", "p99_ttft_ms": "minimize"}}
    db = tmp_path / "s.db"
    res = run_cli("tune", str(write_spec(tmp_path, raw)), "--storage", f"sqlite:///{db}", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    study = _study(db)
    assert len(study.directions) == 2
    got = {t.params["batch_size"]: t.values for t in study.trials if "batch_size" in t.params}
    assert got == {1: [10.0, 100.0], 2: [20.0, 300.0], 4: [15.0, 400.0]}
    assert {t.params.get("batch_size") for t in study.best_trials} >= {1, 2}  # 4 is dominated by 2

    raw["objective"] = {"metrics": {"throughput": "maximize", "p99_tpot_ms": "minimize"}}
    res = run_cli("tune", str(write_spec(tmp_path, raw, "b.yaml")), "--storage", f"sqlite:///{tmp_path}/b.db")
    assert res.returncode == 2 and "objective.metrics.p99_tpot_ms: is not a column of serve.csv" in res.stderr
    assert "p99_ttft_ms" in res.stderr and not (tmp_path / "b.db").exists()
