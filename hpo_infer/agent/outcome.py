"""What a worker measured, turned into the trial's value, constraints and attributes.

A complete measurement gives the median rate; a missed SLO target or an engine that ran out of
memory gives a finite value with a violated Optuna constraint (the sampler learns the region is
bad); a crash or hang fails the trial and queues one retry; an interruption (Ctrl-C, SIGTERM)
queues the trial again without spending a retry or the budget.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import optuna

from hpo_infer.agent.stop_rules import REQUEUED
from hpo_infer.study import optuna_api
from hpo_infer.study.trials import CONSTRAINT, NOT_STARTED, ROLE, Values
from hpo_infer.trial.runner import COMPLETE, INFEASIBLE_S, STOPPED, TIMEOUT, Outcome

if TYPE_CHECKING:
    from hpo_infer.agent.packs import Member
    from hpo_infer.db.record import Recorder
    from hpo_infer.spec import StudySpec

MAX_RETRIES = 1
log = logging.getLogger("hpo_infer.agent")


class WorkerFailed(Exception):
    """The worker crashed, hung or broke: the trial fails (and is retried once)."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM during a trial: the trial is recorded as failed and queued again, the agent stops."""


class Surplus(Exception):
    """A grid study handed out a trial that is no grid point (only if the lock was bypassed)."""


def mark_feasible(trial: optuna.Trial, spec: "StudySpec", metrics: dict[str, float]) -> list[str]:
    """A measured trial: feasible, and one constraint per SLO target; the targets it missed."""
    trial.set_constraint(CONSTRAINT, 0.0)
    return slo_constraints(trial, spec, metrics)


def mark_infeasible(trial: optuna.Trial, spec: "StudySpec") -> Values:
    """The config cannot work (OOM, rejected): a violated constraint, and value 0."""
    trial.set_constraint(CONSTRAINT, 1.0)
    slo_constraints(trial, spec, {})
    return objective_values(trial, spec, 0.0, None)


def objective_values(trial: optuna.Trial, spec: "StudySpec", value: float, metrics: dict[str, float] | None) -> Values:
    """What the trial is told: its tokens/s, then (objective.metrics) each further objective's
    measured metric. One not measured (an infeasible trial) takes the worst the study has of it:
    the violated constraint already marks the trial, and a made-up extreme would throw the GP
    sampler's model of that objective (it fits every trial, feasible or not)."""
    extra = spec.objective.measured()
    if not extra:
        return value
    out = [value]
    seen: list[list[float]] | None = None
    for i, (name, direction) in enumerate(extra.items(), start=1):
        got = (metrics or {}).get(name)
        if got is None:
            if seen is None:
                done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                seen = [t.values for t in done if t.values and len(t.values) == len(extra) + 1]
            column = [v[i] for v in seen]
            got = (max(column) if direction == "minimize" else min(column)) if column else 0.0
        out.append(float(got))
    return out


def slo_constraints(trial: optuna.Trial, spec: "StudySpec", metrics: dict[str, float]) -> list[str]:
    """One constraint per SLO target: the relative overshoot (measured / target - 1), > 0 when
    missed. Every trial gets every constraint (the GP sampler needs the same ones throughout);
    a trial with nothing measured gets 0, its "feasible" constraint already says it failed."""
    missed = []
    for name, target in sorted(spec.objective.slo.items()):
        got = metrics.get(name)
        over = 0.0 if got is None else float(got) / target - 1.0
        trial.set_constraint(f"slo_{name}", over)
        if over > 0:
            missed.append(f"{name} {float(got):.1f} > {target:g}")  # type: ignore[arg-type]
    return missed


def retry(study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], stopping: bool) -> None:
    """A failed (not infeasible) trial is the machine's fault, not the config's: try again once."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries < MAX_RETRIES and not stopping:
        attrs = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, "baseline_params")}
        attrs.update({"retries": retries + 1, "retry_of": trial.number})
        study.enqueue_trial(params, user_attrs=attrs)


def requeue(study: optuna.Study, trial: optuna.Trial, params: dict[str, Any] | None) -> None:
    """An interrupted trial is nobody's fault: queue it again (same retry count) for whoever runs next."""
    if params is None:  # a sampled trial that never got its parameters: the sampler will propose anew
        trial.set_user_attr("status", NOT_STARTED)
        trial.set_user_attr("failure", "interrupted before it had settings; the sampler proposes anew")
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, "baseline_params", "retries")}
    attrs.update({"retry_of": trial.number, "interrupted_in": trial.number})
    trial.set_user_attr(REQUEUED, True)  # its copy runs instead: this one spends no budget
    study.enqueue_trial(params, user_attrs=attrs)


class Outcomes:
    """Finishes trials of one agent: value, constraints, attributes and our measurement rows."""

    def __init__(
        self, spec: "StudySpec", study: optuna.Study, stop: threading.Event, recorder: "Recorder | None" = None
    ) -> None:
        self.spec, self.study, self.stop, self.recorder = spec, study, stop, recorder
        self.unstored: "Member | None" = None  # measured, not yet told to the storage

    def unstored_line(self) -> str:
        """What the trial in hand measured, for the error line when the storage refuses it."""
        m = self.unstored
        if m is None or m.out is None or m.out.first.value is None:
            return ""
        r = m.out.first
        reps = ", ".join(f"{float(x['tok_s']):.1f}" for x in r.repeats)
        return f"; trial {m.trial.number} measured {r.value:.1f} tok/s (repeats {reps}) with {m.settings}, not stored"

    def infeasible(self, trial: optuna.Trial, reason: str, launched: bool) -> Values:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("failure", reason)
        trial.set_user_attr("launched", launched)
        return mark_infeasible(trial, self.spec)

    def finish(self, m: "Member") -> Values:
        """The trial's value from what its worker measured (or raise: pruned, failed, interrupted)."""
        if m.early is not None:
            return m.early
        trial, out = m.trial, m.out
        assert out is not None
        self.unstored = m  # until the trial is told: an error line then says what it measured
        self.record(trial, out)
        r = out.first
        if out.status == STOPPED:
            if self.stop.is_set():
                requeue(self.study, trial, m.params)
                raise Interrupted("interrupted during the trial; worker tree killed")
            trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"pruned after {len(m.rates)} repeat(s)")
        if r.status == COMPLETE:
            trial.set_user_attr("status", "ok")
            missed = mark_feasible(trial, self.spec, r.metrics)
            if missed:
                trial.set_user_attr("status", "infeasible")
                trial.set_user_attr("failure", "SLO missed: " + "; ".join(missed))
                trial.set_user_attr("launched", True)
            return objective_values(trial, self.spec, float(r.value), r.metrics)  # type: ignore[arg-type]
        if r.status == INFEASIBLE_S:
            return self.infeasible(trial, r.reason or "infeasible", launched=True)
        if not r.reached and m.pack_of is not None and m.engine_started:
            # Its worker died on an earlier member of the pack after the shared engine had
            # started: not this config's fault. (Had the start itself failed, it would fail the
            # same way for this one: then it fails and is retried as the others are.)
            trial.set_user_attr("failure", "not measured: the worker ended on an earlier trial of its pack")
            requeue(self.study, trial, m.params)
            raise WorkerFailed(f"not measured: the worker of pack {m.pack_of} ended before this trial")
        retry(self.study, trial, m.params, self.stop.is_set())
        raise WorkerFailed(out.error or "worker failed")

    def record(self, trial: optuna.Trial, out: Outcome) -> None:
        """The worker's measurements on the trial, and as rows of our own tables."""
        for k, v in self.attributes(out).items():
            if v is not None:
                trial.set_user_attr(k, v)
        if self.recorder is None:
            return
        try:
            self.recorder.trial(self.study.study_name, trial.number, optuna_api.trial_id(trial), out)
        except Exception as exc:  # noqa: BLE001 - the trial's result is in Optuna; say what was not kept
            from hpo_infer.storage_url import mask

            why = mask(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300]
            trial.set_user_attr("measurements_error", why)
            log.warning("trial %d: measurements not written: %s", trial.number, why)

    def attributes(self, out: Outcome) -> dict[str, Any]:
        """The trial attributes of one worker outcome (None: not set)."""
        r = out.first
        attrs: dict[str, Any] = {
            "worker_status": out.status,
            "wall_s": round(out.wall_s, 3),
            "start_s": r.start_s,
            "warmup_s": r.warmup_s,
            "measure_s": round(sum(float(x.get("seconds") or 0) for x in r.repeats), 4) if r.repeats else None,
            # The rest of the worker's wall time: its imports (launch to first event) and its exit
            # (last answer to end), so a study can say where its device time went (study/overhead).
            "imports_s": out.imports_s,
            "exit_s": out.exit_s,
            "repeats": [round(float(x["tok_s"]), 3) for x in r.repeats]
            or [round(float(x["tok_s"]), 3) for x in r.windows],
            "spread": r.spread or None,
            "peak_mem_bytes": r.peak_mem_bytes,
            "env": out.env or None,
            "resolved": r.resolved or None,
            "metrics": r.metrics or None,
            # The engine's prefix-cache counters of every timed repeat, and the warning when one
            # was served beyond what the workload's own shared prefixes explain.
            "prefix_cache": [x["cache"] for x in r.repeats if x.get("cache")] or None,
            "cache_flag": r.cache_flag,
        }
        if out.status not in (COMPLETE,) or r.status != COMPLETE:
            attrs["error"] = (r.error or out.error or "")[:2000] or None
            attrs["log_tail"] = out.log_tail[-4000:] or None
        if out.status == TIMEOUT:
            attrs["failure"] = f"timeout after {self.spec.trial_timeout_s:g} s"
        elif r.status not in (COMPLETE, INFEASIBLE_S) and out.status != STOPPED:
            attrs["failure"] = (out.error or "worker failed")[:300]
        return attrs
