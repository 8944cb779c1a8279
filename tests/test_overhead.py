"""Where a study's device time went (study/overhead): the figures from trial attributes in
memory (a shared-engine pack counted once, duplicates and never-launched trials left out), and
one real short run of the fault engine that records imports_s/exit_s and shows the line."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from conftest import add_trial, fault_spec, run_cli, write_spec
from optuna.trial import TrialState

from hpo_infer.reporting.report import summary_markdown
from hpo_infer.study.overhead import device_word, study_overhead

H200 = {"gpu_name": "NVIDIA H200", "gpu_count": 1}


def _worker(wall: float, measure: float | None, start: float | None, warm: float | None, imp: float, ex: float):
    a = {"wall_s": wall, "start_s": start, "warmup_s": warm, "imports_s": imp, "exit_s": ex, "env": H200}
    if measure is not None:
        a["measure_s"] = measure
    return {k: v for k, v in a.items() if v is not None}


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    # 0: one worker of its own, a cold compile
    add_trial(study, TrialState.COMPLETE, 1, **_worker(20, 10, 5, 2, 2.5, 0.5), resolved={"compile_start": "cold"})
    # 1, 2: one shared engine start (30 s of worker wall, shared out 15 s each); 2 reused the engine
    pack = {"engine_shared": {"trials": [1, 2], "wall_s": 30.0}}
    warm, reused = {"compile_start": "warm"}, {"engine_reused": True}
    add_trial(study, TrialState.COMPLETE, 2, **_worker(15, 8, 6, 1, 1.5, 0.3), resolved=warm, **pack)
    add_trial(study, TrialState.COMPLETE, 3, **_worker(15, 9, 0.0, 1, 1.5, 0.3), resolved=reused, **pack)
    # 3: a re-proposed point told trial 0's result: no worker (even if it carried a wall time)
    add_trial(study, TrialState.COMPLETE, 1, duplicate_of=0, launched=True, wall_s=99.0, measure_s=99.0)
    # 4: refused before launch (engine check): no worker
    add_trial(study, TrialState.COMPLETE, 5, status="infeasible", launched=False)
    # 5: a worker that crashed: its wall counts, it measured nothing
    add_trial(study, TrialState.FAIL, 6, **_worker(5, None, None, None, 2.0, 0.0))
    return study


def test_figures_count_a_pack_once_and_leave_out_duplicates_and_unlaunched() -> None:
    ov = study_overhead(_study())
    assert ov.workers == 3  # trial 0, the pack of 1 and 2, the crashed 5
    assert ov.wall_s == pytest.approx(20 + 30 + 5)
    assert ov.measure_s == pytest.approx(10 + 8 + 9)
    assert ov.measured == 3
    assert ov.share == pytest.approx(27 / 55)
    assert ov.per_measured_s == pytest.approx(55 / 3)
    assert ov.overhead_s == pytest.approx(7.0)  # medians of 10, 7, 6
    assert ov.parts == {"start_s": 5.0, "warmup_s": 1.0, "imports_s": 1.5, "exit_s": 0.3}
    assert ov.compile == {"cold": 1, "warm": 1}  # the reused engine was no start
    assert ov.device == "GPU"
    assert ov.line() == (
        "GPU time: 55 s in 3 workers, 49% measuring, 18.3 s per measured trial; "
        "overhead per trial median 7.0 s (start 5.0, warm-up 1.0, imports 1.5, exit 0.3); "
        "compile starts: 1 cold, 1 warm"
    )


def test_device_word_from_the_fingerprint_else_the_study() -> None:
    study = optuna.create_study(direction="maximize")
    assert device_word(study) == "device"
    assert study_overhead(study).line() == "device time: no worker has run yet"
    study.set_user_attr("gpu", "cpu")
    assert device_word(study) == "CPU"
    add_trial(study, TrialState.COMPLETE, 1, wall_s=3.0, measure_s=1.0, env={"gpu_name": "cpu", "gpu_count": 1})
    assert device_word(study) == "CPU"
    assert study_overhead(study).line().startswith("CPU time: 3 s in 1 worker, 33% measuring, 3.0 s per measured")
    assert device_word(_study()) == "GPU"


def test_summary_markdown_has_the_device_time_section() -> None:
    md = summary_markdown(_study(), {})
    assert "## Device time" in md
    assert "GPU time: 55 s in 3 workers, 49% measuring" in md


def test_a_real_fault_study_records_imports_and_exit_and_reports_them(tmp_path: Path) -> None:
    spec = fault_spec(budget={"trials": 2}, sampler={"name": "random", "seed": 0}, fixed={"pass_s": 0.01})
    path = write_spec(tmp_path, spec)
    url = f"sqlite:///{tmp_path / 's.db'}"
    res = run_cli("tune", str(path), "--storage", url, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = re.compile(r"(GPU|CPU) time: \d+ s in 2 workers, \d+% measuring, [\d.]+ s per measured trial")
    assert line.search(res.stdout), res.stdout[-2000:]
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        a = t.user_attrs
        assert a["imports_s"] > 0 and a["exit_s"] >= 0
        assert a["wall_s"] >= a["imports_s"] + a["measure_s"]
    ov = study_overhead(study)
    assert ov.workers == 2 and ov.measured == 2 and 0 < ov.share < 1
    assert ov.parts["imports_s"] is not None and ov.parts["exit_s"] is not None
    md = summary_markdown(study, {})
    assert "## Device time" in md and line.search(md)
