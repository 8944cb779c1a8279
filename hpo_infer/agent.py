"""The agent: Optuna's optimize loop, one trial at a time, each trial in its own worker process.

One agent per GPU group. The agent owns the study database; its workers never touch it.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import TrialState

from hpo_infer import space as sp
from hpo_infer.engines import load_engine
from hpo_infer.protocol import PHASE, REPEAT, STARTED, Event, TrialRequest
from hpo_infer.runner import COMPLETE, INFEASIBLE_S, STOPPED, TIMEOUT, Outcome, run_worker
from hpo_infer.study import BASELINE, CONSTRAINT, ROLE

if TYPE_CHECKING:
    from hpo_infer.spec import StudySpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MAX_RETRIES = 1


class WorkerFailed(Exception):
    """The worker crashed, hung or broke: the trial fails (and is retried once)."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM during a trial: the trial is recorded as failed, the agent stops."""


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


def enqueue_grid(study: optuna.Study, spec: "StudySpec") -> int:
    """Every grid point once, up front; ``skip_if_exists`` keeps re-runs and agents from doubling."""
    key = "grid_enqueued"
    if study.user_attrs.get(key):
        return 0
    points = sp.grid(spec.space())
    for pt in points:
        study.enqueue_trial(pt, user_attrs={ROLE: "grid"}, skip_if_exists=True)
    study.set_user_attr(key, len(points))
    return len(points)


class Agent:
    def __init__(
        self,
        spec: "StudySpec",
        study: optuna.Study,
        gpus: list[int] | None = None,
        host_gpus: int = 0,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.spec = spec
        self.study = study
        self.gpus = gpus
        self.host_gpus = host_gpus if gpus is None else len(gpus)
        self.engine = load_engine(spec.engine)
        self.progress = progress or Progress()
        self.stop = stop or threading.Event()

    # ---- the objective ---------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float:
        if self.stop.is_set():
            raise Interrupted("stop requested before the trial started")
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
        self.progress.update(trial=trial.number, phase="checking")

        reason = self.engine.check(settings, self.host_gpus)
        if reason:
            return self._infeasible(trial, reason, launched=False)

        request = TrialRequest(
            engine=self.spec.engine,
            params=settings,
            model=self.spec.model.model_dump(exclude_none=True),
            workload=self.spec.workload.model_dump(exclude_none=True),
            repeats=self.spec.repeats,
            seed=self.spec.workload.seed,
        )
        prunable = role != BASELINE
        rates: list[float] = []

        def on_event(ev: Event) -> bool:
            if ev.kind == PHASE:
                self.progress.update(phase=str(ev.data.get("phase")))
            elif ev.kind == STARTED:
                self.progress.update(phase="started")
            elif ev.kind == REPEAT:
                rates.append(float(ev.data["tok_s"]))
                step = int(ev.data["repeat"])
                trial.report(sorted(rates)[len(rates) // 2], step)
                if prunable and trial.should_prune():
                    return False
            return True

        out = run_worker(request, self.spec.trial_timeout_s, on_event, self.gpus, self.stop)
        self._record(trial, out)
        r = out.first
        if out.status == STOPPED:
            if self.stop.is_set():
                raise Interrupted("interrupted during the trial; worker tree killed")
            trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"pruned after {len(rates)} repeat(s)")
        if r.status == COMPLETE:
            trial.set_user_attr("status", "ok")
            trial.set_constraint(CONSTRAINT, 0.0)
            return float(r.value)
        if r.status == INFEASIBLE_S:
            return self._infeasible(trial, r.reason or "infeasible", launched=True)
        self._retry(trial, params)
        raise WorkerFailed(out.error or "worker failed")

    def _infeasible(self, trial: optuna.Trial, reason: str, launched: bool) -> float:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("failure", reason)
        trial.set_user_attr("launched", launched)
        trial.set_constraint(CONSTRAINT, 1.0)
        return 0.0

    def _retry(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        """A failed (not infeasible) trial is the machine's fault, not the config's: try again once."""
        retries = int(trial.user_attrs.get("retries", 0))
        if retries < MAX_RETRIES and not self.stop.is_set():
            attrs = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, "baseline_params")}
            attrs.update({"retries": retries + 1, "retry_of": trial.number})
            self.study.enqueue_trial(params, user_attrs=attrs)

    def _record(self, trial: optuna.Trial, out: Outcome) -> None:
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
        done = len(self.study.get_trials(deepcopy=False, states=FINISHED))
        return max(0, self.spec.budget.trials - done)

    def _stop_rules(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        feasible = [t for t in finished if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())]
        best = max((t.value for t in feasible), default=None)
        self.progress.update(done=len(finished), best=best, phase="next", last=trial)
        if self.stop.is_set():
            study.stop()
        if self.spec.budget.trials is not None and len(finished) >= self.spec.budget.trials:
            study.stop()
        if self.spec.sampler.name == "grid" and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()
        pat = self.spec.budget.patience
        if pat and feasible:
            best_t = max(feasible, key=lambda t: t.value)
            if sum(1 for t in finished if t.number > best_t.number) >= pat:
                study.stop()

    def run(self) -> None:
        """Optimise until a stop rule fires, the budget is spent, or a signal arrives."""
        enqueue_baseline(self.study, self.spec)
        if self.spec.sampler.name == "grid":
            enqueue_grid(self.study, self.spec)
        n = self.remaining()
        if n == 0:
            return
        if self.spec.sampler.name == "grid":
            waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            n = waiting if n is None else min(n, waiting)
            if n == 0:
                return
        self._stop_rules(self.study, None)  # type: ignore[arg-type]
        self.study.optimize(
            self.objective,
            n_trials=n,
            timeout=self.spec.budget.wall_time_s,
            catch=(WorkerFailed, Interrupted),
            callbacks=[self._stop_rules],
            gc_after_trial=False,
        )


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C / SIGTERM: stop taking trials and end the running one (its worker tree killed)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up waiting
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


