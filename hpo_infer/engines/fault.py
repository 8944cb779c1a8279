"""A fault-injecting engine, for tests on purpose: it fakes an engine so that every failure
mode a real one has (crash at start, crash mid-run, hang, OOM, garbage on stdout, slow start)
can be triggered on demand, through the same worker and agent path as vLLM and HF.

``x`` is client-side, as a batch size is: configs that differ only in ``x`` share one
simulated start in a worker (the reuse that vLLM and HF engines do for real).

Its throughput is a known landscape of ``x`` and ``y`` (peak at x=24, y=2) produced by
sleeping, so samplers, pruners and agents can be tested in seconds without torch.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import TYPE_CHECKING

from hpo_infer.engines.base import Emit, Engine, Setting
from hpo_infer.measurement.protocol import PHASE, STARTED
from hpo_infer.measurement.result import EngineResult
from hpo_infer.measurement.timing import PassResult, Rules, measure

if TYPE_CHECKING:
    from hpo_infer.measurement.protocol import TrialRequest

MODES = ("ok", "crash_start", "crash_mid", "hang", "oom", "garbage", "slow_start", "reject", "spawn_child")


class FaultEngine(Engine):
    name = "fault"
    distribution = None
    uses_torch = False
    for_tests = True
    metrics = ("p99_ttft_ms", "p99_tpot_ms")  # with latency: on (the trade-off a serving engine has)
    client_side = ("x", "crash_x")
    _started: str | None = None  # reuse key of the simulated engine left started
    settings = (
        Setting("mode", "categorical", "ok", choices=MODES, help="which failure to inject"),
        Setting("x", "int", 1, low=1, high=1024, space={"type": "int", "low": 1, "high": 64}),
        Setting("y", "int", 1, low=1, high=16, space={"type": "int", "low": 1, "high": 4}),
        Setting("peak", "float", 1000.0, low=1.0, high=1e9, help="tokens/s at the optimum"),
        Setting("pass_s", "float", 0.05, low=0.001, high=60.0, help="seconds per timed pass"),
        Setting("start_s", "float", 0.0, low=0.0, high=3600.0, help="simulated engine start time"),
        Setting("noise", "float", 0.0, low=0.0, high=1.0, help="relative noise on each pass"),
        Setting("max_x", "int", 1024, low=1, high=1024, help="x above this is out of memory"),
        Setting("crash_x", "int", 0, low=0, high=1024, help="the worker dies mid-run at this x (0: never)"),
        Setting(
            "latency",
            "categorical",
            "off",
            choices=("off", "on"),
            help="on: report p99 TTFT (20 + 3x ms) and TPOT (4 + y ms), a serving engine's trade-off",
        ),
    )

    def classify(self, exc: BaseException) -> str:
        if isinstance(exc, ValueError):  # as real engines reject bad arguments
            return "infeasible"
        return super().classify(exc)

    @staticmethod
    def landscape(x: int, y: int, peak: float) -> float:
        """Known optimum at x=24, y=2: lets tests check what a sampler found."""
        fx = 1.0 / (1.0 + ((x - 24) / 16.0) ** 2)
        fy = 1.0 / (1.0 + (y - 2) ** 2)
        return peak * (0.05 + 0.95 * fx * fy)

    def run(self, request: "TrialRequest", emit: Emit) -> EngineResult:
        p = {**self.defaults(), **request.params}
        mode = p["mode"]
        emit(PHASE, {"phase": "loading"})
        key = f"{self.reuse_key(p)}|{request.seed}"
        reused = self._started == key
        if not reused:  # the same simulated engine left started costs no start
            time.sleep(max(p["start_s"], 1.0) if mode == "slow_start" else p["start_s"])
        if mode == "crash_start":
            os._exit(3)  # like a segfaulting engine: no Python exception, no result
        if mode == "reject":
            raise ValueError("engine rejected the configuration: mode=reject")
        if p["x"] > p["max_x"] or mode == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if mode == "spawn_child":
            import subprocess

            # A grandchild that daemonises, as engine helper processes do; the runner must
            # still kill it when the trial ends.
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        self._started = key
        start_s = 0.0 if reused else p["start_s"]
        emit(STARTED, {"start_s": start_s, "resolved": {**p, "engine_reused": reused}})
        rate = self.landscape(int(p["x"]), int(p["y"]), float(p["peak"]))
        calls = {"n": 0}
        import random

        rng = random.Random(request.seed + int(p["x"]) * 31 + int(p["y"]))

        def one_pass(index: int) -> PassResult:
            calls["n"] += 1
            if (mode == "crash_mid" and calls["n"] >= 3) or (p["x"] == p["crash_x"] and calls["n"] >= 2):
                os._exit(4)
            if mode == "hang" and calls["n"] >= 2:
                time.sleep(10**6)
            if mode == "garbage":
                from hpo_infer.measurement import protocol

                print("chatter on stdout, which the worker sends to the log")
                if protocol.CHANNEL is not None:  # and garbage on the protocol stream itself
                    protocol.CHANNEL.out.write("garbage {not json\n[1, 2]\n")
                    protocol.CHANNEL.out.flush()
            r = rate * (1.0 + rng.uniform(-p["noise"], p["noise"]))
            tokens = max(1, int(r * p["pass_s"]))
            time.sleep(tokens / r)
            return PassResult(tokens, [(tokens, tokens / r)])

        if mode == "spawn_child":
            p["mode"] = "ok"
        rules = Rules.from_request(request.repeats, request.measurement)
        rules.min_pass_s = 0.0  # a simulated pass lasts pass_s by construction: one cycle per repeat
        result = measure(one_pass, rules, emit)
        result.start_s = start_s
        if p["latency"] == "on":  # each repeat's, noisy as its rate is; the trial's is their median
            for rec in result.repeats:
                ttft = (20.0 + 3.0 * int(p["x"])) * (1.0 + rng.uniform(-p["noise"], p["noise"]))
                rec["metrics"] = {"p99_ttft_ms": ttft, "p99_tpot_ms": 4.0 + int(p["y"])}
            result.metrics = {k: statistics.median(rec["metrics"][k] for rec in result.repeats) for k in self.metrics}
        return result
