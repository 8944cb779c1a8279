"""What the trial budget counts, and the order queued trials run in (in memory, no workers).

The budget counts measured trials: a failure whose copy was queued again (our retry or
interruption, or Optuna's retry of a dead agent's stale trial) spends nothing, nor does a
failure that never ran a worker. A queued retry of the baseline runs before older queued
trials, and no stop rule ends a study while it waits.
"""

from __future__ import annotations

import optuna
from conftest import add_trial, fault_spec
from optuna.trial import TrialState

from hpo_infer import spec as spec_mod
from hpo_infer.agent.stop_rules import StopRules, retried, spent
from hpo_infer.study import optuna_api
from hpo_infer.study.trials import BASELINE, ROLE


def test_failures_retried_or_never_run_spend_no_budget() -> None:
    study = optuna.create_study(direction="maximize")
    add_trial(study, TrialState.COMPLETE, 1, hpo_infer_role=BASELINE, worker_status="complete")  # 0
    add_trial(study, TrialState.FAIL, 2, worker_status="failed")  # 1: a crash, retried once by trial 2
    add_trial(study, TrialState.FAIL, 2, worker_status="failed", retry_of=1, retries=1)  # 2: failed for good
    add_trial(study, TrialState.FAIL, 3)  # 3: a dead agent's, failed as stale, retried by Optuna (4)
    add_trial(study, TrialState.COMPLETE, 3, worker_status="complete", system_attrs={"retry_history": [3]})  # 4
    add_trial(study, TrialState.FAIL, 5, requeued=True, worker_status="stopped")  # 5: interrupted
    add_trial(study, TrialState.FAIL, 6)  # 6: refused by the storage before a worker ran
    add_trial(study, TrialState.PRUNED, 7, worker_status="stopped")  # 7
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    assert again == {1, 3}
    assert [t.number for t in trials if spent(t, again)] == [0, 2, 4, 7]


def test_a_queued_baseline_is_taken_before_older_queued_trials() -> None:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 10}, user_attrs={ROLE: "grid"})
    study.enqueue_trial({"x": 20}, user_attrs={ROLE: "grid"})
    study.enqueue_trial({"x": 1}, user_attrs={ROLE: BASELINE})
    first = study.ask()
    assert first.number == 0  # Optuna's order: the oldest
    optuna_api.waiting_first(study, lambda t: t.user_attrs.get(ROLE) == BASELINE)
    taken = study.ask()
    assert taken.number == 2 and taken.user_attrs[ROLE] == BASELINE
    assert study.ask().number == 1  # then the rest, oldest first
    assert study.ask().number == 3  # and a new trial once none waits


def test_no_stop_rule_ends_a_study_while_its_baseline_waits() -> None:
    spec = spec_mod.from_dict(fault_spec(budget={"trials": 2}), "spec")
    study = optuna.create_study(direction="maximize")
    add_trial(study, TrialState.COMPLETE, 5, worker_status="complete")
    add_trial(study, TrialState.COMPLETE, 6, worker_status="complete")
    rules = StopRules(spec)
    assert rules.reason(study, False, None)[0] == "trial budget"
    study.enqueue_trial({"x": 1}, user_attrs={ROLE: BASELINE})
    assert rules.reason(study, False, None)[0] is None  # measured first, budget or not
    assert rules.reason(study, True, None)[0] == "interrupted"  # a signal still stops it


def test_a_trial_interrupted_before_it_had_settings_says_so_and_queues_nothing() -> None:
    """A signal between ``ask`` and the objective's first step (the fault matrix's between-trials
    SIGTERM caught it 3 times in 48 cases): Optuna fails the trial it asked for. It had no
    settings, so nothing is queued again; it must not read "failed (engine defaults)", which
    says a run of the defaults broke, nor spend the budget."""
    from hpo_infer.agent.outcome import requeue
    from hpo_infer.cli.ui import trial_line

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    requeue(study, trial, None)
    study.tell(trial, state=TrialState.FAIL)
    (t,) = study.get_trials(deepcopy=False)
    line = trial_line(t)
    assert line.startswith("trial 0: not started") and "engine defaults" not in line, line
    assert not spent(t, retried([t]))
