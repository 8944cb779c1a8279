"""The agent: Optuna's optimize loop, one trial at a time, each trial in its own worker process.

One agent per GPU group. The agent owns the study database; its workers never touch it.

Many agents (processes, hosts) may work on one study at once. What they share lives in the
storage: the stop rules (:mod:`~hpo_infer.agent.stop_rules`) are counted from it, and the
decision to take a trial (count the budget, pop a waiting grid point, take a pack) is made under
a database lock (:class:`~hpo_infer.db.lock.StudyLock`), so the budget is not overrun and no
grid point is taken twice. A dead agent's trial goes stale (no heartbeat) and is retried by
another (``RetryHeartbeatStaleTrialCallback``); agents that run out of work wait for running
trials of others to end, so a stale one is retried rather than left behind.

The pieces the loop hands off to: :mod:`~hpo_infer.agent.seeding` (baseline, grid, deadline),
:mod:`~hpo_infer.agent.packs` (settings, packs, re-proposed points) and
:mod:`~hpo_infer.agent.outcome` (value, constraints and attributes from what a worker measured).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from hpo_infer.agent import packs
from hpo_infer.agent.outcome import Interrupted, Outcomes, Surplus, WorkerFailed, requeue
from hpo_infer.agent.progress import Progress
from hpo_infer.agent.seeding import enqueue_baseline, enqueue_grid, shared_deadline
from hpo_infer.agent.stop_rules import FINISHED, WAIT, StopRules, best_value
from hpo_infer.db.retry import is_storage_failure, storage_cause
from hpo_infer.engines import load_engine
from hpo_infer.errors import StorageError
from hpo_infer.measurement.protocol import PHASE, REPEAT, STARTED, Event
from hpo_infer.reporting.notes import NoteCallback
from hpo_infer.study import optuna_api
from hpo_infer.study.trials import BASELINE, ROLE, Values
from hpo_infer.trial.runner import run_worker

if TYPE_CHECKING:
    from hpo_infer.db.lock import StudyLock
    from hpo_infer.db.record import Recorder
    from hpo_infer.spec import StudySpec

log = logging.getLogger("hpo_infer.agent")


def refused(exc: BaseException, measured: str) -> None:
    """The storage refused a write for good (a full disk, a read-only file): one line that keeps
    what the trial in hand measured (``measured``), instead of a traceback that loses it."""
    from hpo_infer.errors import first_line
    from hpo_infer.storage_url import mask

    raise StorageError(
        f"the storage refused a write: {mask(first_line(storage_cause(exc) or exc))}{measured}"
        "; fix the storage and run the same command to resume"
    ) from None


class _NoLock:
    """Stands in for the study lock on storages without one (in-memory studies in tests)."""

    held = False

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "_NoLock":
        return self

    def __exit__(self, *exc: Any) -> None: ...


class Agent:
    def __init__(
        self,
        spec: "StudySpec",
        study: optuna.Study,
        gpus: list[int] | None = None,
        host_gpus: int = 0,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        lock: "StudyLock | None" = None,
        recorder: "Recorder | None" = None,
    ) -> None:
        self.spec = spec
        self.study = study
        self.gpus = gpus
        self.host_gpus = host_gpus if gpus is None else len(gpus)
        self.engine = load_engine(spec.engine)
        self.progress = progress or Progress()
        self.stop = stop or threading.Event()
        self.lock = lock
        self.recorder = recorder
        self.rules = StopRules(spec)
        self.outcomes = Outcomes(spec, study, self.stop, recorder)
        self.deadline: float | None = None
        self.stopped_because: str | None = None
        self._current: optuna.Trial | None = None  # the trial in hand
        # Recorded on each trial: which agent ran it (host:pid), to follow a fleet's work.
        name = f"{socket.gethostname()}:{os.getpid()}"
        self.name = name if gpus is None else f"{name} gpus {','.join(map(str, gpus))}"

    # ---- the objective ---------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> Values:
        """Measure the trial ``optimize`` asked for (and the pack it leads). Called under the lock."""
        self._current = trial
        try:
            fixed = optuna_api.enqueued_params(trial, self.study)
            if self.stop.is_set():
                requeue(self.study, trial, fixed)
                raise Interrupted("stop requested before the trial started")
            if self.spec.sampler.name == "grid" and fixed is None:
                trial.set_user_attr(ROLE, "surplus")
                raise Surplus("grid exhausted: this trial is no grid point")
            # Taken (grid) or asked (nested) before the lock goes: the budget counts the pack now.
            members = packs.pack(self.study, self.spec, self.engine, trial, fixed, self.name)
        finally:
            if self.lock is not None:
                self.lock.release()  # the trials are ours: other agents may take the next ones
        runnable = self._runnable(members, fixed is None)
        if runnable:
            self._launch(runnable)
        for m in members[1:]:
            if m.copy_of is None:
                self._tell(m)
        value = None
        try:
            value = self.outcomes.finish(members[0])
            return value
        finally:
            packs.tell_copies(self.study, members, value, self._tell)

    def _runnable(self, members: list[packs.Member], sampled: bool) -> list[packs.Member]:
        """The members a worker must measure: not settings measured before (a sampler's
        re-proposal), nor another member's (told once it is measured), nor ones the engine refuses."""
        twin = packs.answer_twin(self.study, members[0]) if sampled else None  # queued: measured as asked
        if twin is not None:
            self.progress.update(
                trial=members[0].trial.number, phase=f"same settings as trial {twin.number}: not measured again"
            )
        self.progress.update(trial=members[0].trial.number, phase="checking")
        runnable = []
        for m in (m for m in members if m.early is None and m.copy_of is None):
            reason = self.engine.check(m.settings, self.host_gpus)
            if reason:
                m.early = self.outcomes.infeasible(m.trial, reason, launched=False)
            else:
                runnable.append(m)
        return runnable

    def _launch(self, members: list[packs.Member]) -> None:
        """One worker measures every member in turn (one engine start when they share it)."""
        first = members[0]
        request = self.spec.request([m.settings for m in members])
        # A pack is not pruned: stopping its worker would throw away the members after it.
        prunable = len(members) == 1 and first.role != BASELINE
        broke: list[Exception] = []

        def on_event(ev: Event) -> bool:
            i = int(ev.data.get("config", 0) or 0)
            where = f" ({i + 1}/{len(members)})" if len(members) > 1 else ""
            if ev.kind == PHASE:
                self.progress.update(phase=f"{ev.data.get('phase')}{where}")
            elif ev.kind == STARTED:
                self.progress.update(phase=f"started{where}")
            elif ev.kind == REPEAT and i == 0 and not self.spec.objective.multi:  # Optuna prunes these only
                first.rates.append(float(ev.data["tok_s"]))
                try:
                    first.trial.report(sorted(first.rates)[len(first.rates) // 2], int(ev.data["repeat"]))
                    if prunable and first.trial.should_prune():
                        return False
                except Exception as exc:  # noqa: BLE001 - storage gone or trial taken over: end the worker first
                    broke.append(exc)
                    return False
            return True

        with contextlib.ExitStack() as beats:
            # optimize() beats for the trial it asked for; the other members need theirs too, or
            # another agent would take them for a dead agent's trials.
            for m in members[1:]:
                beats.enter_context(optuna_api.heartbeat(self.study, m.trial))
            out = run_worker(request, self.spec.trial_timeout_s * len(members), on_event, self.gpus, self.stop)
        if broke:
            raise broke[0]  # the worker tree is dead by now
        started = any(c.start_s is not None for c in out.configs)
        for i, m in enumerate(members):
            m.out = out.only(i) if len(members) > 1 else out
            m.engine_started = started
            if len(members) > 1:
                m.trial.set_user_attr(
                    "engine_shared", {"trials": [x.trial.number for x in members], "wall_s": round(out.wall_s, 3)}
                )

    def _tell(self, m: packs.Member) -> None:
        """Finish a pack member in the storage, as ``optimize`` finishes the trial it asked for."""
        try:
            try:
                frozen = self.study.tell(m.trial, self.outcomes.finish(m))
            except optuna.TrialPruned:
                frozen = self.study.tell(m.trial, state=TrialState.PRUNED)
            except (WorkerFailed, Interrupted) as exc:
                log.warning("trial %d failed: %s", m.trial.number, str(exc)[:300])
                frozen = self.study.tell(m.trial, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            if optuna_api.stored(self.study, m.trial).state != TrialState.FAIL:
                raise
            # Failed as stale by another agent while we measured it (a long database outage):
            # its retry is queued; the rest of the pack goes on.
            log.warning(
                "trial %d was failed by another agent (stale heartbeat); its retry will run (%s)",
                m.trial.number,
                str(exc)[:200],
            )
            return
        for callback in (self._after_trial, NoteCallback()):
            callback(self.study, frozen)

    # ---- the loop ------------------------------------------------------------------------
    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.outcomes.unstored = None  # told: in the storage now
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        self.progress.update(done=len(finished), best=best_value(finished), phase="next", last=trial)

    def stop_reason(self) -> str | None:
        """Why this agent takes no more trials (None: take one; WAIT: others still run)."""
        reason, finished = self.rules.reason(self.study, self.stop.is_set(), self.deadline)
        if finished is not None:
            self.progress.update(done=len(finished), best=best_value(finished))
        return reason

    def _setup(self) -> None:
        url = optuna_api.url_of(self.study)
        if self.lock is None:
            if url is None:
                self.lock = _NoLock()  # type: ignore[assignment]
            else:
                from hpo_infer.db.lock import StudyLock

                self.lock = StudyLock(url, f"study:{self.study.study_name}")
        if self.recorder is None and url is not None:
            from hpo_infer.db import schema
            from hpo_infer.db.record import Recorder

            schema.ensure(url)
            self.recorder = Recorder(url, engine=getattr(optuna_api.backend(self.study), "engine", None))
        self.outcomes.recorder = self.recorder
        optuna_api.waiting_first(self.study, lambda t: t.user_attrs.get(ROLE) == BASELINE)

    def run(self) -> None:
        """Optimise until a stop rule fires, the budget is spent, or a signal arrives."""
        try:
            self._run()
        except StorageError:
            raise
        except Exception as exc:
            if is_storage_failure(exc):
                refused(exc, self.outcomes.unstored_line())
            raise

    def _run(self) -> None:
        self._setup()
        assert self.lock is not None
        with self.lock:  # seeding once per study, whichever agent comes first
            enqueue_baseline(self.study, self.spec)
            if self.spec.sampler.name == "grid":
                enqueue_grid(self.study, self.spec)
            running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            self.deadline = shared_deadline(self.study, self.spec.budget.wall_time_s, self.rules.live(running))
        poll = float(min(5, max(1, optuna_api.heartbeat_interval(self.study) or 1)))
        while True:
            self.lock.acquire()  # released inside the objective, once the trial is ours
            try:
                why = self.stop_reason()
                if why is None:
                    self._optimize_one()
                    continue
            finally:
                self.lock.release()
            if why == WAIT:
                self.progress.update(phase="waiting for trials of other agents")
                self.stop.wait(poll)
                continue
            self.stopped_because = why
            self.progress.update(phase=f"stopped: {why}")
            return

    def _optimize_one(self) -> None:
        """One trial through Optuna's optimize (it beats for the trial and tells the result)."""
        try:
            self.study.optimize(
                self.objective,
                n_trials=1,
                catch=(WorkerFailed, Interrupted, Surplus),
                callbacks=[self._after_trial, NoteCallback()],
                gc_after_trial=False,
            )
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            if not self._taken_over(exc):
                raise
            # Our heartbeat went stale (say, a database outage longer than the grace period):
            # another agent failed the trial and queued its retry.
            number = self._current.number if self._current is not None else None
            log.warning(
                "trial %s was failed by another agent (stale heartbeat); its retry will run (%s)",
                number,
                str(exc)[:200],
            )

    def _taken_over(self, exc: Exception) -> bool:
        """Whether the trial just run was failed in the storage by someone else before we told it."""
        told_finished = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or str(exc).startswith(
            "Cannot tell a "
        )
        if self._current is None or not told_finished:
            return False
        return optuna_api.stored(self.study, self._current).state == TrialState.FAIL

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()
        if self.recorder is not None:
            self.recorder.close()
