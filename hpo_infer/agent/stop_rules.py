"""When an agent takes no more trials. Shared by every agent of a study: all is counted from the
storage, so two agents (hosts) agree on the budget, patience, a finished grid and a space whose
every point has been measured."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_infer.agent.seeding import point_key
from hpo_infer.spec import space as sp
from hpo_infer.study import optuna_api
from hpo_infer.study.front import front_of
from hpo_infer.study.trials import BASELINE, ROLE, meets_constraints, tok_s

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WAIT = "wait"  # stop reason meaning: nothing to take now, but trials of other agents still run
REQUEUED = "requeued"  # trial attr: interrupted (or never reached in its pack) and queued again


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials a later trial re-runs: ours (an interruption, a crash's one retry)
    name theirs in ``retry_of``; Optuna's stale-trial retries (the trial of an agent that was
    SIGKILLed) list every one before them in ``retry_history``."""
    out: set[int] = set()
    for t in trials:
        if t.user_attrs.get("retry_of") is not None:
            out.add(int(t.user_attrs["retry_of"]))
        out.update(int(n) for n in t.system_attrs.get("retry_history", ()))
    return out


def spent(t: FrozenTrial, again: set[int]) -> bool:
    """Whether a trial counts against the trial budget: finished, and not a failed trial whose
    copy was queued again (``again``: see :func:`retried`; that copy counts when it runs). The
    budget counts measurements: a trial whose agent died, or that never got a worker, spent none."""
    if t.state not in FINISHED:
        return False
    if t.state != TrialState.FAIL:
        return True
    # A failure counts once it is final and a worker ran: not a trial the storage refused before
    # its worker started (a full disk), nor one whose agent died before telling it.
    return "worker_status" in t.user_attrs and not t.user_attrs.get(REQUEUED) and t.number not in again


def baseline_waiting(trials: list[FrozenTrial]) -> bool:
    """A queued baseline (its first run was interrupted or its agent died): measured before the end."""
    return any(t.state == TrialState.WAITING and t.user_attrs.get(ROLE) == BASELINE for t in trials)


def leftovers(study: optuna.Study) -> dict[str, list[int]]:
    """Trials a study that stopped still holds queued or running, by state name (none: {})."""
    out: dict[str, list[int]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        out.setdefault(t.state.name, []).append(t.number)
    return out


def feasible(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and meets_constraints(t)


def best_value(finished: list[FrozenTrial]) -> float | None:
    return max((tok_s(t) for t in finished if feasible(t)), default=None)  # type: ignore[type-var]


class StopRules:
    """The spec's stop rules over one study; the one stateful part is a finite space's points."""

    def __init__(self, spec: "StudySpec") -> None:
        self.spec = spec
        self._points: set[str] | None = None  # a finite space's points (empty: not finite)

    def live(self, running: list[FrozenTrial]) -> bool:
        """Whether a running trial may still end (or go stale and be retried): worth waiting for."""
        from hpo_infer.db.storage import heartbeat_settings

        limit = self.spec.trial_timeout_s + heartbeat_settings()[1] + 60
        now = time.time()
        return any(t.datetime_start is None or now - t.datetime_start.timestamp() < limit for t in running)

    def reason(
        self, study: optuna.Study, interrupted: bool, deadline: float | None
    ) -> tuple[str | None, list[FrozenTrial] | None]:
        """Why no trial is to be taken (None: take one; WAIT: others still run), and the trials
        that count against the budget (for the progress display; None when not looked at)."""
        if interrupted:
            return "interrupted", None
        if deadline is not None and time.time() >= deadline:
            return "wall time", None
        optuna_api.fail_stale_trials(study)  # a dead agent's trial: failed, queued again
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)
        finished = [t for t in trials if spent(t, again)]
        # Running trials far past their timeout belong to nobody (a run without heartbeats that
        # died): they neither count against the budget nor are waited for.
        running = [t for t in trials if t.state == TrialState.RUNNING and self.live([t])]
        reason = None
        budget = self.spec.budget.trials
        if budget is not None and len(finished) + len(running) >= budget:
            reason = "trial budget"
        elif self._patience_spent(finished):
            reason = "patience"
        elif self.spec.sampler.name == "grid" and not any(t.state == TrialState.WAITING for t in trials):
            reason = "grid done"
        elif self._space_measured(trials):
            reason = "every point measured"
        if reason is not None and baseline_waiting(trials):
            reason = None  # the study's reference is measured before any stop rule ends it
        if reason is not None and running:
            return WAIT, finished
        return reason, finished

    def _space_measured(self, trials: list[FrozenTrial]) -> bool:
        """A finite space whose every point has a completed trial: further proposals could only
        repeat a measurement (and would not be measured again), so the search is over."""
        if self.spec.sampler.name == "grid":
            return False
        if self._points is None:
            space = self.spec.space()
            try:
                finite = all(p.type != "float" or p.step for p in space.values())
                self._points = {point_key(pt) for pt in sp.grid(space)} if finite else set()
            except ValueError:  # more points than a grid may have
                self._points = set()
        if not self._points:
            return False
        done = {
            point_key(t.params) for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(ROLE) != BASELINE
        }
        return self._points <= done

    def _patience_spent(self, finished: list[FrozenTrial]) -> bool:
        pat = self.spec.budget.patience
        ok = [t for t in finished if feasible(t)]
        if not pat or not ok:
            return False
        if self.spec.objective.multi:  # improvement: a trial that joined the Pareto front
            last = max(t.number for t in front_of(ok, self.spec.objective.directions()))
        else:
            last = max(ok, key=lambda t: tok_s(t) or 0.0).number
        return sum(1 for t in finished if t.number > last) >= pat
