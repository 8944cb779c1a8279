"""docker/slurm-array.sh under a real SLURM (a one-node cluster on loopback, tests/slurm.py), as
written: only its resource lines are overridden on the sbatch command line, as a user of a CPU
partition would. The study is a fault-engine study on a throwaway PostgreSQL.

- plain run: every task exits 0 and the study reaches its budget with trials of several tasks;
- one task ``scancel``ed mid-trial: no trial is lost, the others finish the budget, nothing is
  left RUNNING;
- a task reaching its time limit: SLURM's ``--signal=B:TERM@...`` makes the agent queue its
  running trial again and exit 0 before the limit.
"""

from __future__ import annotations

import collections
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
from conftest import ROOT, fault_spec, tagged, write_spec
from optuna.trial import TrialState

from hpo_infer.agent.stop_rules import REQUEUED
from hpo_infer.study import optuna_api

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SCRIPT = ROOT / "docker" / "slurm-array.sh"
CPU_PARTITION = ["--gres=none", "--cpus-per-task=1", "--mem=400M"]  # the script asks for a GPU, 8 CPUs, 64G


@pytest.fixture(scope="module")
def cluster():
    from slurm import SlurmCluster, ensure_installed

    why = ensure_installed()
    if why:
        pytest.skip(why)
    c = SlurmCluster()
    try:
        yield c.start()
    finally:
        c.stop()


def _submit(cluster, tmp_path: Path, pg_url: str, spec: dict, *resources: str) -> tuple[str, str, str]:
    """Submit the script as an array; (job id, study URL, the tag its processes carry)."""
    path = write_spec(tmp_path, spec)
    tag = uuid.uuid4().hex
    env = {
        "HPO_INFER_STORAGE": pg_url,  # in the environment (--export=ALL), never on a command line
        "STUDY_SPEC": str(path),
        "HPO_INFER_VENV": str(Path(sys.executable).parent.parent),
        "HPO_TEST_TAG": tag,
        "HPO_INFER_HEARTBEAT_S": "2",
    }
    job = cluster.sbatch(
        "--export=ALL", f"--output={tmp_path}/task-%a.out", f"--chdir={tmp_path}", *CPU_PARTITION, *resources,
        str(SCRIPT), env=env,
    )  # fmt: skip
    return job, pg_url, tag


def _study(url: str) -> optuna.Study:
    from hpo_infer.storage_url import normalise

    url = normalise(url)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("task-*.out")))


def _no_leftovers(tag: str) -> None:
    gone, alive = psutil.wait_procs(tagged(tag), timeout=20)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"


def _spec(trials: int, pass_s: float, repeats: int) -> dict[str, Any]:
    return fault_spec(
        fixed={"pass_s": pass_s, "start_s": 0.5},
        sampler={"name": "random", "seed": 0},
        budget={"trials": trials},
        repeats=repeats,
        trial_timeout_s=120,
    )


def test_an_array_of_three_tasks_finishes_the_study_together(cluster, tmp_path: Path, pg_url: str) -> None:
    job, url, tag = _submit(cluster, tmp_path, pg_url, _spec(9, 0.5, 2), "--array=0-2", "--time=10")
    tasks = cluster.wait(job, 300)
    assert sorted(tasks) == [0, 1, 2]
    assert {t["JobState"] for t in tasks.values()} == {"COMPLETED"}, (tasks, _logs(tmp_path))
    assert {t["ExitCode"] for t in tasks.values()} == {"0:0"}
    trials = _study(url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 9 and len(trials) == 9, collections.Counter(t.state for t in trials)
    assert len({t.user_attrs["agent"] for t in done}) > 1  # more than one task measured
    _no_leftovers(tag)


def test_a_task_scancelled_mid_trial_loses_no_trial(cluster, tmp_path: Path, pg_url: str) -> None:
    job, url, tag = _submit(cluster, tmp_path, pg_url, _spec(8, 1.0, 3), "--array=0-1", "--time=10")
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = _study(url)
        except (ValueError, KeyError):
            continue  # the study is not created yet
        running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING and t.number > 1]
        if running and len(running[0].intermediate_values) >= 1:
            victim = running[0]
    assert victim is not None, "never caught a task mid-trial: " + _logs(tmp_path)
    pid = int(victim.user_attrs["agent"].split(":")[1].split()[0])
    task = psutil.Process(pid).environ()["SLURM_ARRAY_TASK_ID"]
    cluster.run("scancel", f"{job}_{task}", check=True)
    tasks = cluster.wait(job, 300)
    assert tasks[int(task)]["JobState"] == "CANCELLED", tasks
    other = tasks[1 - int(task)]
    assert other["JobState"] == "COMPLETED" and other["ExitCode"] == "0:0", (other, _logs(tmp_path))

    trials = _study(url).get_trials(deepcopy=False)
    states = collections.Counter(t.state for t in trials)
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], states
    assert states[TrialState.COMPLETE] == 8, states  # the budget: the others finished it
    hit = next(t for t in trials if t.number == victim.number)
    assert hit.state == TrialState.FAIL and hit.user_attrs.get(REQUEUED), hit.user_attrs
    (again,) = [t for t in trials if t.user_attrs.get("interrupted_in") == victim.number]
    assert again.state == TrialState.COMPLETE and again.params == victim.params  # measured after all
    _no_leftovers(tag)


def test_a_task_at_its_time_limit_queues_its_trial_again(cluster, tmp_path: Path, pg_url: str) -> None:
    """--time=2 with the warning 90 s ahead: SIGTERM about 30 s in (SLURM checks once a minute,
    so up to 60 s later), inside a trial of ~45 s; the agent requeues it and exits 0."""
    spec = _spec(20, 6.0, 8)
    job, url, tag = _submit(cluster, tmp_path, pg_url, spec, "--array=0", "--time=2", "--signal=B:TERM@90")
    tasks = cluster.wait(job, 240)
    assert tasks[0]["JobState"] == "COMPLETED" and tasks[0]["ExitCode"] == "0:0", (tasks, _logs(tmp_path))
    trials = _study(url).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    cut = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(REQUEUED)]
    assert len(cut) == 1, [(t.number, t.state, t.user_attrs.get("status")) for t in trials]
    (queued,) = [t for t in trials if t.user_attrs.get("interrupted_in") == cut[0].number]
    assert queued.state == TrialState.WAITING and optuna_api.enqueued_params(queued) == cut[0].params
    _no_leftovers(tag)
