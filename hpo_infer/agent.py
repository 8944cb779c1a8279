"""The agent: Optuna's optimize loop, one trial at a time, each trial in its own worker process.

One agent per GPU group. The agent owns the study database; its workers never touch it.

Many agents (processes, hosts) may work on one study at once. What they share lives in the
storage: the stop rules (trial budget, wall time, patience) are counted from it, and the
decision to take a trial (count the budget, pop a waiting grid point) is made under a database
lock (:class:`~hpo_infer.db.lock.StudyLock`), so the budget is not overrun and no grid point is
taken twice. A dead agent's trial goes stale (no heartbeat) and is retried by another
(``RetryHeartbeatStaleTrialCallback``); agents that run out of work wait for running trials of
others to end, so a stale one is retried rather than left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from hpo_infer import space as sp
from hpo_infer.engines import load_engine
from hpo_infer.notes import NoteCallback
from hpo_infer.protocol import PHASE, REPEAT, STARTED, Event
from hpo_infer.runner import COMPLETE, INFEASIBLE_S, STOPPED, TIMEOUT, Outcome, run_worker
from hpo_infer.study import BASELINE, CONSTRAINT, DUPLICATE_OF, ROLE, meets_constraints

if TYPE_CHECKING:
    from hpo_infer.db.lock import StudyLock
    from hpo_infer.db.record import Recorder
    from hpo_infer.spec import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MAX_RETRIES = 1
WAIT = "wait"  # stop reason meaning: nothing to take now, but trials of other agents still run
REQUEUED = "requeued"  # trial attr: interrupted (or never reached in its pack) and queued again
DEADLINE = "hpo_infer_deadline"  # study attr: unix time when the shared wall-time budget ends


class WorkerFailed(Exception):
    """The worker crashed, hung or broke: the trial fails (and is retried once)."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM during a trial: the trial is recorded as failed and queued again, the agent stops."""


class Surplus(Exception):
    """A grid study handed out a trial that is no grid point (only if the lock was bypassed)."""


@dataclass
class Progress:
    """What the CLI shows while the agent works; the agent only updates these fields."""

    done: int = 0
    best: float | None = None
    trial: int | None = None
    phase: str = "starting"
    last: Any = None  # the FrozenTrial that just finished
    listeners: list[Callable[["Progress"], None]] = field(default_factory=list)

    def update(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        for fn in self.listeners:
            fn(self)


def enqueue_baseline(study: optuna.Study, spec: "StudySpec") -> None:
    """The engine's own defaults are the first trial of every study: the baseline."""
    if any(t.user_attrs.get(ROLE) == BASELINE for t in study.get_trials(deepcopy=False)):
        return
    eng = load_engine(spec.engine)
    params = {}
    for name, value in eng.defaults().items():
        p = spec.space().get(name)
        if p is not None and not p.when and sp.contains({name: p}, {name: value}):
            params[name] = value
    study.enqueue_trial(params, user_attrs={ROLE: BASELINE, "baseline_params": sorted(params)})


def _point_key(params: dict[str, Any]) -> str:
    return json.dumps(sorted(params.items()), default=str)


def enqueue_grid(study: optuna.Study, spec: "StudySpec") -> int:
    """Every grid point once, up front. Points some trial already has (a re-run after a crash
    mid-enqueue, the baseline) are skipped, as ``skip_if_exists`` would, but with one read of
    the study instead of one per point (quadratic: 24 s for 400 points). Agents call this under
    the study lock, so two of them never enqueue at once."""
    key = "grid_enqueued"
    if study.user_attrs.get(key):
        return 0
    points = sp.grid(spec.space())
    have = {_point_key(t.system_attrs.get("fixed_params", t.params)) for t in study.get_trials(deepcopy=False)}
    for pt in points:
        if _point_key(pt) not in have:
            study.enqueue_trial(pt, user_attrs={ROLE: "grid"})
            have.add(_point_key(pt))
    study.set_user_attr(key, len(points))
    return len(points)


def shared_deadline(study: optuna.Study, wall_time_s: float | None, live_running: bool) -> float | None:
    """The unix time at which every agent of this launch stops taking trials (call under the lock).

    Agents that join while others run share their deadline; a launch after the last one ended
    (or after its deadline) starts a new one.
    """
    if wall_time_s is None:
        return None
    now = time.time()
    d = study.user_attrs.get(DEADLINE)
    if d is None or d <= now or not live_running:
        d = now + wall_time_s
        study.set_user_attr(DEADLINE, d)
    return float(d)


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
        self.deadline: float | None = None
        self.stopped_because: str | None = None
        self._current: tuple[int, int] | None = None  # (trial id, number) of the trial in hand
        self._points: set[str] | None = None  # a finite space's points (empty: not finite), for the stop rule
        # Recorded on each trial: which agent ran it (host:pid), to follow a fleet's work.
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    # ---- the objective ---------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float:
        self._current = (trial._trial_id, trial.number)
        try:
            fixed = self.study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
            if self.stop.is_set():
                self._requeue(trial, fixed)
                raise Interrupted("stop requested before the trial started")
            if self.spec.sampler.name == "grid" and fixed is None:
                trial.set_user_attr(ROLE, "surplus")
                raise Surplus("grid exhausted: this trial is no grid point")
            extras = self._take_pack(trial, fixed)
        finally:
            if self.lock is not None:
                self.lock.release()  # the trials are ours: other agents may take the next ones
        members = [self._member(trial)] + [self._member(t, pack_of=trial.number) for t in extras]
        if fixed is None:  # the sampler's own proposal (queued trials are measured as asked)
            twin = self._measured_twin(members[0])
            if twin is not None:
                return self._copy(trial, twin)
        self.progress.update(trial=trial.number, phase="checking")
        runnable = []
        for m in members:
            reason = self.engine.check(m.settings, self.host_gpus)
            if reason:
                m.early = self._infeasible(m.trial, reason, launched=False)
            else:
                runnable.append(m)
        if runnable:
            self._launch(runnable)
        for m in members[1:]:
            self._tell(m)
        return self._finish(members[0])

    def _member(self, trial: optuna.Trial, pack_of: int | None = None) -> "_Member":
        """The trial's parameters and the settings its worker gets, recorded on the trial."""
        role = trial.user_attrs.get(ROLE)
        space = self.spec.space()
        if role == BASELINE:
            names = trial.user_attrs.get("baseline_params", [])
            params = sp.suggest(trial, {n: space[n].model_copy(update={"when": None}) for n in names})
            settings = dict(self.spec.fixed)  # the engine decides everything else: its defaults
        else:
            params = sp.suggest(trial, space)
            settings = {**self.spec.fixed, **params}
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("fixed", dict(self.spec.fixed))
        trial.set_user_attr("agent", self.name if self.gpus is None else f"{self.name} gpus {','.join(map(str, self.gpus))}")
        return _Member(trial, params, settings, role, pack_of)

    def _measured_twin(self, m: "_Member") -> optuna.trial.FrozenTrial | None:
        """An earlier completed trial with these very settings. TPE and GP re-propose measured
        points of small discrete spaces (Optuna's FAQ answers it the same way): the earlier
        result stands, as a trial of its own, without a second engine start."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != m.trial.number and DUPLICATE_OF not in t.user_attrs and t.user_attrs.get("settings") == m.settings:
                return t
        return None

    def _copy(self, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> float:
        """Tell ``trial`` what ``twin`` measured: value, constraints (feasible, SLO) and verdict."""
        for k in ("status", "failure", "launched", "metrics", "spread"):
            if k in twin.user_attrs:
                trial.set_user_attr(k, twin.user_attrs[k])
        trial.set_user_attr(DUPLICATE_OF, twin.number)
        for name, v in twin.constraints.items():
            trial.set_constraint(name, v)
        self.progress.update(trial=trial.number, phase=f"same settings as trial {twin.number}: not measured again")
        return float(twin.value)  # type: ignore[arg-type]

    def _take_pack(self, trial: optuna.Trial, fixed: dict[str, Any] | None) -> list[optuna.Trial]:
        """Grid points still waiting that differ from this trial's only in client-side settings
        (batch_size...): taken now, under the study lock, to share one engine start with it."""
        limit = self.spec.trials_per_engine - 1
        if limit < 1 or self.spec.sampler.name != "grid" or fixed is None:
            return []
        # The baseline may lead a pack: its settings are the engine defaults, which reuse_key
        # fills in, so a grid point at the default engine settings shares its start.
        key = self.engine.reuse_key({**self.spec.fixed, **fixed})
        if key is None:
            return []
        trials = self.study.get_trials(deepcopy=False)
        if self.spec.budget.trials is not None:  # the budget counts every trial taken
            taken = sum(1 for t in trials if _spent(t) or t.state == TrialState.RUNNING)
            limit = min(limit, self.spec.budget.trials - taken)
        storage = self.study._storage
        out: list[optuna.Trial] = []
        for t in trials:
            if len(out) >= limit:
                break
            point = t.system_attrs.get("fixed_params")
            if t.state != TrialState.WAITING or point is None or t.user_attrs.get(ROLE) == BASELINE:
                continue
            if self.engine.reuse_key({**self.spec.fixed, **point}) == key and storage.set_trial_state_values(
                t._trial_id, state=TrialState.RUNNING
            ):
                out.append(optuna.trial.Trial(self.study, t._trial_id))
        return out

    def _launch(self, members: list["_Member"]) -> None:
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
            elif ev.kind == REPEAT and i == 0:
                first.rates.append(float(ev.data["tok_s"]))
                step = int(ev.data["repeat"])
                try:
                    first.trial.report(sorted(first.rates)[len(first.rates) // 2], step)
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
                beats.enter_context(get_heartbeat_thread(m.trial._trial_id, self.study._storage))
            out = run_worker(request, self.spec.trial_timeout_s * len(members), on_event, self.gpus, self.stop)
        if broke:
            raise broke[0]  # the worker tree is dead by now
        started = any(c.start_s is not None for c in out.configs)
        for i, m in enumerate(members):
            m.out = out.only(i) if len(members) > 1 else out
            m.engine_started = started
            if len(members) > 1:
                m.trial.set_user_attr("engine_shared", {"trials": [x.trial.number for x in members], "wall_s": round(out.wall_s, 3)})

    def _finish(self, m: "_Member") -> float:
        """The trial's value from what its worker measured (or raise: pruned, failed, interrupted)."""
        if m.early is not None:
            return m.early
        trial, out = m.trial, m.out
        assert out is not None
        self._record(trial, out)
        r = out.first
        if out.status == STOPPED:
            if self.stop.is_set():
                self._requeue(trial, m.params)
                raise Interrupted("interrupted during the trial; worker tree killed")
            trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"pruned after {len(m.rates)} repeat(s)")
        if r.status == COMPLETE:
            trial.set_user_attr("status", "ok")
            trial.set_constraint(CONSTRAINT, 0.0)
            missed = self._slo(trial, r.metrics)
            if missed:
                trial.set_user_attr("status", "infeasible")
                trial.set_user_attr("failure", "SLO missed: " + "; ".join(missed))
                trial.set_user_attr("launched", True)
            return float(r.value)
        if r.status == INFEASIBLE_S:
            return self._infeasible(trial, r.reason or "infeasible", launched=True)
        if not r.reached and m.pack_of is not None and m.engine_started:
            # Its worker died on an earlier member of the pack after the shared engine had
            # started: not this config's fault. (Had the start itself failed, it would fail the
            # same way for this one: then it fails and is retried as the others are.)
            trial.set_user_attr("failure", "not measured: the worker ended on an earlier trial of its pack")
            self._requeue(trial, m.params)
            raise WorkerFailed(f"not measured: the worker of pack {m.pack_of} ended before this trial")
        self._retry(trial, m.params)
        raise WorkerFailed(out.error or "worker failed")

    def _tell(self, m: "_Member") -> None:
        """Finish a pack member in the storage, as ``optimize`` finishes the trial it asked for."""
        log = logging.getLogger("hpo_infer.agent")
        try:
            try:
                frozen = self.study.tell(m.trial, self._finish(m))
            except optuna.TrialPruned:
                frozen = self.study.tell(m.trial, state=TrialState.PRUNED)
            except (WorkerFailed, Interrupted) as exc:
                log.warning("trial %d failed: %s", m.trial.number, str(exc)[:300])
                frozen = self.study.tell(m.trial, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            backend = getattr(self.study._storage, "_backend", self.study._storage)
            if backend.get_trial(m.trial._trial_id).state != TrialState.FAIL:
                raise
            # Failed as stale by another agent while we measured it (a long database outage):
            # its retry is queued; the rest of the pack goes on.
            log.warning("trial %d was failed by another agent (stale heartbeat); its retry will run (%s)",
                        m.trial.number, str(exc)[:200])
            return
        for callback in (self._after_trial, NoteCallback()):
            callback(self.study, frozen)

    def _infeasible(self, trial: optuna.Trial, reason: str, launched: bool) -> float:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("failure", reason)
        trial.set_user_attr("launched", launched)
        trial.set_constraint(CONSTRAINT, 1.0)
        self._slo(trial, {})
        return 0.0

    def _slo(self, trial: optuna.Trial, metrics: dict[str, float]) -> list[str]:
        """One constraint per SLO target: the relative overshoot (measured / target - 1), > 0 when
        missed. Every trial gets every constraint (the GP sampler needs the same ones throughout);
        a trial with nothing measured gets 0, its "feasible" constraint already says it failed."""
        missed = []
        for name, target in sorted(self.spec.objective.slo.items()):
            got = metrics.get(name)
            over = 0.0 if got is None else float(got) / target - 1.0
            trial.set_constraint(f"slo_{name}", over)
            if over > 0:
                missed.append(f"{name} {float(got):.1f} > {target:g}")
        return missed

    def _retry(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        """A failed (not infeasible) trial is the machine's fault, not the config's: try again once."""
        retries = int(trial.user_attrs.get("retries", 0))
        if retries < MAX_RETRIES and not self.stop.is_set():
            attrs = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, "baseline_params")}
            attrs.update({"retries": retries + 1, "retry_of": trial.number})
            self.study.enqueue_trial(params, user_attrs=attrs)

    def _requeue(self, trial: optuna.Trial, params: dict[str, Any] | None) -> None:
        """An interrupted trial is nobody's fault: queue it again (same retry count) for whoever runs next."""
        if params is None:
            return  # a sampled trial that never got its parameters: the sampler will propose anew
        attrs = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, "baseline_params", "retries")}
        attrs.update({"retry_of": trial.number, "interrupted_in": trial.number})
        trial.set_user_attr(REQUEUED, True)  # its copy runs instead: this one spends no budget
        self.study.enqueue_trial(params, user_attrs=attrs)

    def _record(self, trial: optuna.Trial, out: Outcome) -> None:
        self._record_attrs(trial, out)
        if self.recorder is None:
            return
        try:
            self.recorder.trial(self.study.study_name, trial.number, trial._trial_id, out)
        except Exception as exc:  # noqa: BLE001 - the trial's result is in Optuna; say what was not kept
            from hpo_infer.storage import mask

            why = mask(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300]
            trial.set_user_attr("measurements_error", why)
            logging.getLogger("hpo_infer.agent").warning("trial %d: measurements not written: %s", trial.number, why)

    def _record_attrs(self, trial: optuna.Trial, out: Outcome) -> None:
        r = out.first
        attrs: dict[str, Any] = {
            "worker_status": out.status,
            "wall_s": round(out.wall_s, 3),
            "start_s": r.start_s,
            "warmup_s": r.warmup_s,
            "measure_s": round(sum(float(x.get("seconds") or 0) for x in r.repeats), 4) if r.repeats else None,
            "repeats": [round(float(x["tok_s"]), 3) for x in r.repeats] or [round(float(x["tok_s"]), 3) for x in r.windows],
            "spread": r.spread or None,
            "peak_mem_bytes": r.peak_mem_bytes,
            "env": out.env or None,
        }
        if r.resolved:
            attrs["resolved"] = r.resolved
        if r.metrics:
            attrs["metrics"] = r.metrics
        if out.status not in (COMPLETE,) or r.status != COMPLETE:
            attrs["error"] = (r.error or out.error or "")[:2000] or None
            attrs["log_tail"] = out.log_tail[-4000:] or None
        if out.status == TIMEOUT:
            attrs["failure"] = f"timeout after {self.spec.trial_timeout_s:g} s"
        elif r.status not in (COMPLETE, INFEASIBLE_S) and out.status != STOPPED:
            attrs["failure"] = (out.error or "worker failed")[:300]
        for k, v in attrs.items():
            if v is not None:
                trial.set_user_attr(k, v)

    # ---- the loop ------------------------------------------------------------------------
    def remaining(self) -> int | None:
        if self.spec.budget.trials is None:
            return None
        done = sum(1 for t in self.study.get_trials(deepcopy=False, states=FINISHED) if _spent(t))
        return max(0, self.spec.budget.trials - done)

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        self.progress.update(done=len(finished), best=_best(finished), phase="next", last=trial)

    def _live(self, running: list[optuna.trial.FrozenTrial]) -> bool:
        """Whether a running trial may still end (or go stale and be retried): worth waiting for."""
        from hpo_infer.storage import heartbeat_settings

        limit = self.spec.trial_timeout_s + heartbeat_settings()[1] + 60
        now = time.time()
        return any(t.datetime_start is None or now - t.datetime_start.timestamp() < limit for t in running)

    def stop_reason(self) -> str | None:
        """Why this agent takes no more trials (None: take one; WAIT: others still run). Shared
        by all agents: everything is counted from the storage."""
        if self.stop.is_set():
            return "interrupted"
        if self.deadline is not None and time.time() >= self.deadline:
            return "wall time"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # a dead agent's trial: failed, queued again
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if _spent(t)]
        # Running trials far past their timeout belong to nobody (a run without heartbeats that
        # died): they neither count against the budget nor are waited for.
        running = [t for t in trials if t.state == TrialState.RUNNING and self._live([t])]
        self.progress.update(done=len(finished), best=_best(finished))
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
        if reason is not None and running:
            return WAIT
        return reason

    def _space_measured(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        """A finite space whose every point has a completed trial: further proposals could only
        repeat a measurement (and would not be measured again), so the search is over."""
        if self.spec.sampler.name == "grid":
            return False
        if self._points is None:
            space = self.spec.space()
            try:
                finite = all(p.type != "float" or p.step for p in space.values())
                self._points = {_point_key(pt) for pt in sp.grid(space)} if finite else set()
            except ValueError:  # more points than a grid may have
                self._points = set()
        if not self._points:
            return False
        done = {_point_key(t.params) for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(ROLE) != BASELINE}
        return self._points <= done

    def _patience_spent(self, finished: list[optuna.trial.FrozenTrial]) -> bool:
        pat = self.spec.budget.patience
        feasible = [t for t in finished if _feasible(t)]
        if not pat or not feasible:
            return False
        best_t = max(feasible, key=lambda t: t.value)
        return sum(1 for t in finished if t.number > best_t.number) >= pat

    def _setup(self) -> None:
        from hpo_infer.storage import url_of

        url = url_of(self.study)
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
            backend = getattr(self.study._storage, "_backend", None)
            self.recorder = Recorder(url, engine=getattr(backend, "engine", None))

    def run(self) -> None:
        """Optimise until a stop rule fires, the budget is spent, or a signal arrives."""
        self._setup()
        assert self.lock is not None
        with self.lock:  # seeding once per study, whichever agent comes first
            enqueue_baseline(self.study, self.spec)
            if self.spec.sampler.name == "grid":
                enqueue_grid(self.study, self.spec)
            running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            self.deadline = shared_deadline(self.study, self.spec.budget.wall_time_s, self._live(running))
        poll = float(min(5, max(1, getattr(getattr(self.study._storage, "_backend", None), "heartbeat_interval", None) or 1)))
        while True:
            self.lock.acquire()
            try:
                why = self.stop_reason()
                if why is None:
                    # The lock is released inside the objective, once the trial is ours.
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
                        # Our heartbeat went stale (say, a database outage longer than the grace
                        # period): another agent failed the trial and queued its retry.
                        logging.getLogger("hpo_infer.agent").warning(
                            "trial %s was failed by another agent (stale heartbeat); its retry will run (%s)",
                            self._current[1], str(exc)[:200],
                        )
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

    def _taken_over(self, exc: Exception) -> bool:
        """Whether the trial just run was failed in the storage by someone else before we told it."""
        told_finished = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or str(exc).startswith("Cannot tell a ")
        if self._current is None or not told_finished:
            return False
        storage = self.study._storage
        backend = getattr(storage, "_backend", storage)  # past the cache: what the database says
        return backend.get_trial(self._current[0]).state == TrialState.FAIL

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()
        if self.recorder is not None:
            self.recorder.close()


@dataclass
class _Member:
    """One trial of a worker session: alone, or in a pack that shares one engine start."""

    trial: optuna.Trial
    params: dict[str, Any]
    settings: dict[str, Any]
    role: Any
    pack_of: int | None = None  # the number of the trial whose worker this one shares
    early: float | None = None  # the value when decided without launching (engine check)
    engine_started: bool = False  # the worker started the engine (for some member)
    out: Outcome | None = None
    rates: list[float] = field(default_factory=list)


def _spent(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against the trial budget: finished, and not an interrupted trial
    whose copy was queued again (that copy counts when it runs)."""
    return t.state in FINISHED and not (t.state == TrialState.FAIL and t.user_attrs.get(REQUEUED))


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and meets_constraints(t)


def _best(finished: list[optuna.trial.FrozenTrial]) -> float | None:
    return max((t.value for t in finished if _feasible(t)), default=None)


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C / SIGTERM: stop taking trials and end the running one (its worker tree killed)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up waiting
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


