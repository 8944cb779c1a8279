"""The one module that reaches into Optuna's private API. Everything else asks here.

hpo-infer needs a few things Optuna 5 keeps private: a trial's storage id (to hand a trial to
another call, to beat for it, to write a dashboard note on a stored trial), the study's storage
(past its cache, to see what another agent wrote), the parameters an enqueued trial was given
(the ``fixed_params`` system attribute), Optuna's heartbeat thread (for pack members that
``optimize`` did not ask for), the order in which ``ask`` pops queued trials, and the folder
of Optuna's own Alembic migrations. The
``optuna==5.0.0`` pin protects them; an Optuna upgrade is checked here, in one file.
(:class:`hpo_infer.db.retry.ResilientRDBStorage` also wraps RDBStorage methods by name, two of
them private: that list is the other place to read on an upgrade.)
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, ContextManager

import optuna
from optuna.trial import FrozenTrial, TrialState

FIXED_PARAMS = "fixed_params"  # system attr: the parameters an enqueued trial was given


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number within the study)."""
    return trial._trial_id


def storage(study: optuna.Study) -> Any:
    """The study's storage object (Optuna's cached storage over the RDB one)."""
    return study._storage


def backend(study: optuna.Study) -> Any:
    """The storage past Optuna's cache: what the database says now (another agent's writes included)."""
    st = study._storage
    return getattr(st, "_backend", st)


def url_of(study: optuna.Study) -> str | None:
    """The (normalised) URL of a study's RDB storage, or None for other storages."""
    return getattr(backend(study), "url", None)


def heartbeat_interval(study: optuna.Study) -> float | None:
    return getattr(backend(study), "heartbeat_interval", None)


def enqueued_params(trial: optuna.Trial | FrozenTrial, study: optuna.Study | None = None) -> dict[str, Any] | None:
    """The parameters a trial was enqueued with (a grid point, the baseline, a retry); None: sampled.

    A live trial's are read from the storage (``study`` needed); a frozen one carries them.
    """
    if isinstance(trial, FrozenTrial):
        return trial.system_attrs.get(FIXED_PARAMS)
    assert study is not None
    return study._storage.get_trial_system_attrs(trial._trial_id).get(FIXED_PARAMS)


def take_waiting(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial | None:
    """Move a WAITING trial to RUNNING for this agent (under the study lock); None if another took it."""
    if study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
        return optuna.trial.Trial(study, frozen._trial_id)
    return None


def waiting_first(study: optuna.Study, first: Callable[[FrozenTrial], bool]) -> None:
    """Make ``study.ask`` (and so ``optimize``) pop the WAITING trials for which ``first`` holds
    before the rest; Optuna pops the oldest. A queued retry of the baseline is newer than the
    grid points enqueued with it, yet must run before them: a study never ends without its
    reference. Each pop is Optuna's own atomic WAITING -> RUNNING move, so agents never share one."""

    def pop() -> int | None:
        waiting = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        for t in sorted(waiting, key=lambda t: (not first(t), t.number)):
            try:
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    return t._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    study._pop_waiting_trial_id = pop  # type: ignore[method-assign]


def ask_fresh(study: optuna.Study) -> optuna.Trial:
    """A new trial from the sampler, leaving queued trials queued: a nested pack's inner points
    are the sampler's, and a retry another agent queued meanwhile waits for its own turn."""
    had = "_pop_waiting_trial_id" in vars(study)
    saved = study._pop_waiting_trial_id
    study._pop_waiting_trial_id = lambda: None  # type: ignore[method-assign]
    try:
        return study.ask()
    finally:
        if had:
            study._pop_waiting_trial_id = saved  # type: ignore[method-assign]
        else:
            del study._pop_waiting_trial_id


class StudyView:
    """A study as a sampler is shown it: every trial but the hidden ones (``hide``). Samplers read
    trials through ``Study._get_trials`` (GP, TPE, NSGA-II, the intersection search space) or
    ``get_trials``; everything else is the study's own."""

    def __init__(self, study: optuna.Study, hide: Callable[[FrozenTrial], bool]) -> None:
        self._viewed = study
        self._hide = hide

    def __getattr__(self, name: str) -> Any:
        return getattr(self._viewed, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._viewed._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if not self._hide(t)]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return [t for t in self._viewed.get_trials(deepcopy=deepcopy, states=states) if not self._hide(t)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def forget_fits(sampler: optuna.samplers.BaseSampler) -> None:
    """Drop GPSampler's cached kernel fits. Optuna 5.0 clears its constraint fits on a change of
    search space only when the objective's fit already matched (it compares the wrong cache), so
    a fit of the other space's dimension is reused (an IndexError): a nested pack's pinned asks
    change the space and back. The next fit starts cold, which costs little."""
    sampler = getattr(sampler, "inner", sampler)  # samplers.InSpaceOnly wraps the study's sampler
    for attr in ("_gprs_cache_list", "_constraints_gprs_cache_list"):
        if hasattr(sampler, attr):
            setattr(sampler, attr, None)


def live_trial(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """A handle on a stored trial, for calls that want a live one (optuna-dashboard's save_note)."""
    return optuna.Trial(study, frozen._trial_id)


def stored(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as the database has it now (past the cache)."""
    return backend(study).get_trial(trial._trial_id)


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> ContextManager[Any]:
    """Beat for a trial ``optimize`` did not ask for (a pack member), or other agents take it for dead."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)


UNBEATEN_MARGIN_S = 10  # past the grace period: clock skew between the agent that asked and this one


def _unbeaten(study: optuna.Study, st: Any) -> list[int]:
    """Storage ids of RUNNING trials started over grace + margin ago with no heartbeat row."""
    import datetime

    from optuna.storages._rdb import models

    grace = st.grace_period if st.grace_period is not None else 2 * st.heartbeat_interval
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace + UNBEATEN_MARGIN_S)
    old = [
        t._trial_id
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and t.datetime_start < cutoff
    ]
    if not old:
        return []
    session = st.scoped_session()
    try:
        beaten = {
            row[0]
            for row in session.query(models.TrialHeartbeatModel.trial_id).filter(
                models.TrialHeartbeatModel.trial_id.in_(old)
            )
        }
    finally:
        session.close()
    return [tid for tid in old if tid not in beaten]


def fail_stale_trials(study: optuna.Study) -> None:
    """A dead agent's trials: failed, and queued again by the storage's stale-trial callback.

    Optuna skips a RUNNING trial that has no heartbeat at all. But ``ask`` stores the trial
    RUNNING (and samples its parameters) before the heartbeat thread starts, so an agent killed
    in between (scancel between two trials; a CI run of the fault matrix) left a trial that no
    agent ever failed or retried. One with no heartbeat well past the grace period (a live agent
    beats within milliseconds of asking) is failed here the same way.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    st = backend(study)
    if getattr(st, "heartbeat_interval", None) is None or not hasattr(st, "scoped_session"):
        return
    callback = st.get_heartbeat_stale_trial_callback()
    for tid in _unbeaten(study, st):
        try:
            if not st.set_trial_state_values(tid, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another agent failed it first
        if callback is not None:
            callback(study, st.get_trial(tid))


def alembic_dir() -> str:
    """The folder of Optuna's own Alembic migrations (``hpo-infer db`` upgrades its tables too)."""
    import optuna.storages._rdb.storage as rdb

    return os.path.join(os.path.dirname(rdb.__file__), "alembic")
