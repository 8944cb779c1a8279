"""import-grid and transfer: a recorded grid becomes a study; transfer re-tunes it on another GPU.

Transfer measures the engine defaults first, then the source's best (carried over: the paper's
baseline), then its next best, then searches; the gain over the carried-over config is the
paper's metric, with its fallback to the next carried config when the best fails on the new GPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, write_spec
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from test_replay import replay_spec, write_table

from hpo_infer.agent.transfer import carry_plan
from hpo_infer.study.gains import gains
from hpo_infer.study.trials import RANK

SRC = "replay:m:Ax2:syn-i8-o5-n8"
DST = "replay:m:Bx2:syn-i8-o5-n8"


def _spec(tmp_path: Path, choices: tuple[int, ...] = (1, 2, 4)) -> Path:
    write_table(tmp_path)
    space = {
        "batch_size": {"type": "categorical", "choices": list(choices)},
        "num_gpus": {"type": "categorical", "choices": [1, 2]},
    }
    return write_spec(tmp_path, replay_spec("grid.csv", search_space=space))


def _load(db: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_import_grid(tmp_path: Path) -> None:
    spec = _spec(tmp_path, (1, 2, 4, 8))
    db = tmp_path / "g.db"
    res = run_cli(
        "import-grid", str(spec), "--storage", f"sqlite:///{db}", "--baseline", "batch_size=1,num_gpus=1", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert "imported 6 trials: 3 ok, 2 infeasible, 1 failed" in res.stdout
    assert (
        "2 points of the space have no row and were left out (missing: error), e.g. batch_size=8, num_gpus=1"
        in res.stdout
    )
    study = _load(db, SRC)
    got = {(t.params["batch_size"], t.params["num_gpus"]): t for t in study.trials}
    assert set(got) == {(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)}
    assert got[(1, 1)].user_attrs["hpo_infer_role"] == "baseline" and got[(1, 1)].value == 10.0
    assert (
        got[(2, 2)].value == 32.0
        and got[(2, 2)].constraints == {"feasible": 0.0}
        and got[(2, 2)].user_attrs["repeats"] == [30.0, 34.0]
    )
    for oom in ((4, 1), (4, 2)):
        assert got[oom].state == TrialState.COMPLETE and got[oom].constraints == {"feasible": 1.0}
        assert got[oom].user_attrs["status"] == "infeasible"
    assert got[(1, 2)].state == TrialState.FAIL and "killed" in got[(1, 2)].user_attrs["failure"]
    assert study.best_trial.params == {"batch_size": 2, "num_gpus": 2}
    out = run_cli("export", SRC, "--storage", f"sqlite:///{db}", "--format", "json", cwd=tmp_path)
    rec = json.loads(out.stdout)
    assert rec["throughput_tok_s"] == 32.0 and rec["baseline_tok_s"] == 10.0 and "transfer" not in rec

    again = run_cli("import-grid", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert again.returncode == 2 and "already holds an imported grid" in again.stderr
    assert len(_load(db, SRC).trials) == 6

    fresh = tmp_path / "fresh.db"
    bad = run_cli(
        "import-grid",
        str(spec),
        "--storage",
        f"sqlite:///{fresh}",
        "--baseline",
        "batch_size=3,num_gpus=1",
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "hpo-infer: error: --baseline: batch_size=3, num_gpus=1 is not a point of the search space (batch_size, num_gpus)"  # noqa: E501
    )
    assert not fresh.exists()


def test_transfer_carries_the_best_over_and_reports_the_papers_gain(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    db = tmp_path / "t.db"
    assert run_cli("import-grid", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    res = run_cli(
        "transfer",
        "--from",
        SRC,
        "--to-gpu",
        "B",
        "--trials",
        "5",
        "--carry",
        "2",
        "--storage",
        f"sqlite:///{db}",
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = _load(db, DST)
    t = [x for x in study.trials if x.state != TrialState.WAITING]  # the grid's last point stays queued
    assert len(t) == 5
    assert t[0].user_attrs["hpo_infer_role"] == "baseline" and t[0].value == 5.0  # defaults on B
    # right after the baseline: A's best (2 GPUs, batch 2), which is out of memory on B ...
    assert t[1].user_attrs["hpo_infer_role"] == "carried_over" and t[1].params == {"batch_size": 2, "num_gpus": 2}
    assert (
        t[1].user_attrs[RANK] == 0 and t[1].user_attrs["source_tok_s"] == 32.0 and t[1].constraints == {"feasible": 1.0}
    )
    # ... so A's second best (1 GPU, batch 2) stands in as the paper's baseline
    assert (
        t[2].user_attrs["hpo_infer_role"] == "warm_start"
        and t[2].params == {"batch_size": 2, "num_gpus": 1}
        and t[2].value == 9.0
    )
    # then the grid sampler's remaining points, in grid order: (1, 2) = 4.0, (4, 1) = 25.0
    assert [x.params for x in t[3:]] == [{"batch_size": 1, "num_gpus": 2}, {"batch_size": 4, "num_gpus": 1}]
    assert (
        "+177.78% (the paper's metric)" in res.stdout and "the source's #2 (its better ones failed here)" in res.stdout
    )
    rec = json.loads(run_cli("export", DST, "--storage", f"sqlite:///{db}", "--format", "json", cwd=tmp_path).stdout)
    tr = rec["transfer"]
    assert tr["from"] == SRC and tr["from_gpu"] == "A" and tr["to_gpu"] == "B"
    assert tr["carried_trial"] == 2 and tr["carried_rank"] == 1 and tr["carried_tok_s"] == 9.0
    assert tr["best_tok_s"] == 25.0 and tr["gain_vs_carried_pct"] == pytest.approx(100 * (25 - 9) / 9)
    assert tr["gain_vs_defaults_pct"] == pytest.approx(400.0)
    assert study.user_attrs["transfer"]["gain"]["gain_vs_carried_pct"] == pytest.approx(100 * 16 / 9)


def test_transfer_walks_down_the_source_ranking_until_a_carried_config_runs(tmp_path: Path) -> None:
    """Only A's best is queued (--carry 1); it is OOM on B, so A's second best is queued next."""
    spec = _spec(tmp_path)
    db = tmp_path / "t.db"
    assert run_cli("import-grid", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    res = run_cli(
        "transfer",
        "--from",
        SRC,
        "--to-gpu",
        "B",
        "--trials",
        "3",
        "--carry",
        "1",
        "--spec",
        str(
            write_spec(
                tmp_path,
                {
                    **replay_spec(
                        "grid.csv",
                        search_space={
                            "batch_size": {"type": "categorical", "choices": [1, 2, 4]},
                            "num_gpus": {"type": "categorical", "choices": [1, 2]},
                        },
                    ),
                    "sampler": {"name": "random", "seed": 0},
                },
                "b.yaml",
            )
        ),
        "--storage",
        f"sqlite:///{db}",
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    t = _load(db, DST).trials
    assert [x.user_attrs.get("hpo_infer_role") for x in t] == ["baseline", "carried_over", "warm_start"]
    assert (
        t[1].constraints == {"feasible": 1.0}
        and t[2].params == {"batch_size": 2, "num_gpus": 1}
        and t[2].user_attrs[RANK] == 1
    )
    assert "+0.00% (the paper's metric)" in res.stdout  # 9.0 vs 9.0: the fallback is the best so far


@pytest.mark.parametrize(
    "args, problem",
    [
        (
            ["--to-gpu", "auto"],
            "--to-gpu: a replay study replays recorded measurements: name the GPU to replay, e.g. --to-gpu V100",
        ),
        (["--to-gpu", "A"], "--to-gpu: the new study would be the source itself"),
        (["--to-gpu", "C"], "--to-gpu C: fixed.gpu: no row of grid.csv has gpu=C (it has: A, B)"),
        (["--to-gpu", "B", "--from", "nope"], "STUDY: no study named 'nope'"),
    ],
)
def test_transfer_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], problem: str) -> None:
    spec = _spec(tmp_path)
    db = tmp_path / "t.db"
    assert run_cli("import-grid", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    res = run_cli("transfer", "--from", SRC, *args, "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "\n" not in res.stderr.strip() and problem in res.stderr, res.stderr
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == [SRC]


def test_transfer_of_a_measured_study_runs_on_the_new_gpus_host(tmp_path: Path) -> None:
    """A study of a real engine moves to the GPU the command runs on: naming another is refused."""
    from conftest import fault_spec

    db = tmp_path / "f.db"
    spec = write_spec(tmp_path, fault_spec(budget={"trials": 1}))
    assert run_cli("tune", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")]
    res = run_cli("transfer", "--from", name, "--to-gpu", "H100", "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert (
        res.returncode == 2
        and "--to-gpu: this host has cpu, not H100: run transfer on the new GPU's host" in res.stderr
    ), res.stderr
    res = run_cli(
        "transfer", "--from", name, "--storage", f"sqlite:///{db}", cwd=tmp_path
    )  # auto: this host, the source's own
    assert res.returncode == 2 and "the new study would be the source itself" in res.stderr, res.stderr


def _trial(number: int, value: float | None, params: dict, feasible: bool = True, **attrs) -> optuna.trial.FrozenTrial:
    t = create_trial(
        value=value if value is not None else 0.0,
        params=params,
        distributions={k: CategoricalDistribution([1, 2, 4, 8]) for k in params},
        user_attrs=attrs,
        constraints={"feasible": 0.0 if feasible else 1.0},
    )
    t.number = number
    return t


def test_gains_and_carry_plan_are_the_papers_definitions() -> None:
    from hpo_infer.spec import Param

    space = {"b": Param(type="categorical", choices=[1, 2, 4, 8])}
    source = [
        _trial(0, 5.0, {"b": 1}),
        _trial(1, 50.0, {"b": 8}),
        _trial(2, 40.0, {"b": 4}),
        _trial(3, 50.0, {"b": 8}),
        _trial(4, 0.0, {"b": 2}, feasible=False),
    ]
    plan = carry_plan(source, space, 3)
    assert [p for p, _ in plan] == [{"b": 8}, {"b": 4}, {"b": 1}], "best first, duplicates and infeasible left out"
    assert [a[RANK] for _, a in plan] == [0, 1, 2]
    target = [
        _trial(0, 10.0, {"b": 1}, hpo_infer_role="baseline"),
        _trial(1, 30.0, {"b": 8}, **{RANK: 0}),
        _trial(2, 20.0, {"b": 4}, **{RANK: 1}),
        _trial(3, 36.0, {"b": 2}),
    ]
    g = gains(target)
    assert (g.carried_trial, g.carried_rank, g.best_trial) == (1, 0, 3)
    assert g.gain_vs_carried_pct == pytest.approx(20.0) and g.gain_vs_defaults_pct == pytest.approx(260.0)
    assert gains(target[:2]).gain_vs_carried_pct == 0.0, "after two trials the carried-over config is the best"
    target[1] = _trial(1, 0.0, {"b": 8}, feasible=False, **{RANK: 0})
    g = gains(target)
    assert (g.carried_trial, g.carried_rank) == (2, 1) and g.gain_vs_carried_pct == pytest.approx(80.0)
    assert gains(target[:2]).gain_vs_carried_pct is None, "no carried config ran yet"


def test_transfer_on_the_papers_landscape(tmp_path: Path, shared_data: Path) -> None:
    """Phi-2 on HF: the A100's best carried to the V100; the gain is the table's own numbers."""
    root = Path(__file__).resolve().parents[1]
    db = tmp_path / "p.db"
    spec = root / "studies/replay-paper-hf-phi2-a100.yaml"
    assert run_cli("import-grid", str(spec), "--storage", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    res = run_cli(
        "transfer",
        "--from",
        "replay:Phi-2:A100x8:humaneval-o5",
        "--to-gpu",
        "V100",
        "--trials",
        "3",
        "--carry",
        "2",
        "--storage",
        f"sqlite:///{db}",
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    land: dict[str, dict[tuple[int, int], float]] = {"A100": {}, "V100": {}}
    with (shared_data / "paper-landscapes.csv").open() as f:
        for r in csv.DictReader(f):
            if (r["engine"], r["model"], r["max_new_tokens"]) == ("hf", "Phi-2", "5") and r["throughput_tok_s"]:
                land[r["gpu"]][(int(r["batch_size"]), int(r["num_gpus"]))] = float(r["throughput_tok_s"])
    a100 = sorted(land["A100"], key=land["A100"].get, reverse=True)
    study = _load(db, "replay:Phi-2:V100x8:humaneval-o5")
    t = study.trials
    assert (t[1].params["batch_size"], t[1].params["num_gpus"]) == a100[0]
    assert (t[2].params["batch_size"], t[2].params["num_gpus"]) == a100[1]
    carried, values = land["V100"][a100[0]], [land["V100"][a100[0]], land["V100"][a100[1]], land["V100"][(1, 1)]]
    g = study.user_attrs["transfer"]["gain"]
    assert g["carried_tok_s"] == carried and g["gain_vs_carried_pct"] == pytest.approx(
        (max(values) - carried) / carried * 100
    )
