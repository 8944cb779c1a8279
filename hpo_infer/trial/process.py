"""The isolated trial process: forked by the fork server, or ``python -m hpo_infer.trial.process``.

Reads one TrialRequest (JSON) on stdin, runs the engine, and writes JSON-line events on the
stdout it was given. Everything else the engine prints goes to stderr (the trial log), so the
protocol stream stays clean. The worker never touches the study database.

Process hygiene: the worker makes itself a child subreaper, so grandchildren (vLLM's engine
core, compile workers) stay in its tree even when they daemonise, and asks the kernel for
SIGTERM when its parent dies. On SIGTERM it kills its whole tree and exits. It is named
``hpo-trial`` (what ``ps`` shows), forked or spawned.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from hpo_infer.measurement import protocol
from hpo_infer.measurement.protocol import ENV, FAILED, INFEASIBLE, RESULT, TrialRequest
from hpo_infer.trial.tree import (  # now, not in the SIGTERM handler (a re-entrant import broke it)
    PR_SET_PDEATHSIG,
    become_subreaper,
    kill_tree,
    prctl,
    set_name,
)

NAME = "hpo-trial"


def kill_own_tree() -> None:
    kill_tree(os.getpid(), include_root=False, wait_s=5.0)


def _on_term(signum: int, frame: Any) -> None:
    # SIGTERM can come twice (the parent-death signal, then another): a second one must not
    # re-enter this handler half-way, or the tree is left alive.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        kill_own_tree()
    finally:
        os._exit(128 + signum)


def main() -> int:
    set_name(NAME)
    become_subreaper()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_term)
    chan = protocol.open_channel()
    request = TrialRequest.from_json(sys.stdin.read())

    from hpo_infer.engines import load_engine
    from hpo_infer.hardware import fingerprint

    engine = load_engine(request.engine)
    chan.emit(ENV, fingerprint(engine))
    configs = request.configs or [request.params]
    failed = False
    for index, params in enumerate(configs):

        def emit(kind: str, data: dict[str, Any], _i: int = index) -> None:
            chan.emit(kind, {**data, "config": _i})

        sub = TrialRequest(**{**request.__dict__, "params": params, "configs": []})
        try:
            result = engine.run(sub, emit)
        except BaseException as exc:  # noqa: BLE001 - every engine error is classified and reported
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            kind = engine.classify(exc)
            tb = traceback.format_exc()
            sys.stderr.write(tb)
            err = f"{type(exc).__name__}: {exc}".strip()[:2000]
            if kind == "infeasible":
                emit(INFEASIBLE, {"reason": err.splitlines()[0][:300], "error": err})
            else:
                emit(FAILED, {"error": err})
                failed = True
            continue
        result.config = index  # its index in this worker's request, as every event of it carries
        emit(RESULT, result.to_dict())
    try:
        engine.close()  # an engine kept for a next config with the same reuse key
    except Exception:  # noqa: BLE001 - the tree kill below ends it anyway
        traceback.print_exc()
    kill_own_tree()
    return 1 if failed else 0


def entry() -> int:
    """``main``, and no orphan survives the worker whatever ends it (a broken pipe once the agent is gone)."""
    try:
        return main()
    except BaseException:
        kill_own_tree()
        raise


if __name__ == "__main__":
    sys.exit(entry())
