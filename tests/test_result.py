"""The typed engine result: one wire form (to_dict / from_dict), read back by the agent as-is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo_infer.measurement.protocol import RESULT, Event
from hpo_infer.measurement.result import EngineResult
from hpo_infer.measurement.timing import measure
from hpo_infer.trial.runner import COMPLETE, ConfigResult, _apply


def _full() -> EngineResult:
    return EngineResult(
        value=16600.0,
        config=2,
        spread={"median": 16600.0, "min": 16500.0, "max": 16700.0, "stdev": 100.0, "rel_spread": 0.012, "n": 3},
        repeats=[
            {"config": 2, "repeat": i, "tokens": 1000, "seconds": 0.06, "tok_s": v}
            for i, v in enumerate((16500.0, 16700.0, 16600.0))
        ],
        warmup_s=0.4,
        warmup_tok_s=[11822.0, 16001.0],
        start_s=31.5,
        resolved={
            "max_num_seqs": 256,
            "goodput_search": {"request_rate": 4.0, "probes": [{"rate": None, "ok": False}]},
        },
        peak_mem_bytes=80 * 2**30,
        metrics={"p99_ttft_ms": 120.0, "completed": 500},
    )


def test_round_trip_keeps_every_field_through_json() -> None:
    res = _full()
    d = res.to_dict()
    assert d == json.loads(json.dumps(d)), "to_dict is plain JSON already"
    back = EngineResult.from_dict(d)
    assert back == res
    assert back.resolved["goodput_search"]["probes"][0]["rate"] is None, "None inside nested dicts survives"
    line = Event(RESULT, d).to_line()
    parsed = Event.from_line(line)
    assert parsed is not None and EngineResult.from_dict(parsed.data) == res, "as the RESULT event carries it"


def test_round_trip_of_unset_fields() -> None:
    res = EngineResult(value=12.5)
    d = res.to_dict()
    assert d["start_s"] is None and d["peak_mem_bytes"] is None and d["warmup_s"] is None
    assert EngineResult.from_dict(d) == res


def test_to_dict_is_json_safe_and_a_copy() -> None:
    res = EngineResult(value=1.0, resolved={"cache": Path("/tmp/c"), "sizes": (1, 2)})
    d = res.to_dict()
    assert d["resolved"] == {"cache": "/tmp/c", "sizes": [1, 2]}
    d["resolved"]["cache"] = "changed"
    assert res.resolved["cache"] == Path("/tmp/c")


def test_from_dict_ignores_unknown_keys_and_nulls() -> None:
    d = {
        "value": 3,
        "config": "1",
        "event": "result",
        "added_by_a_newer_worker": {"x": 1},
        "metrics": None,
        "repeats": None,
        "start_s": 2,
    }
    res = EngineResult.from_dict(d)
    assert res == EngineResult(value=3.0, config=1, start_s=2.0)
    assert isinstance(res.value, float) and res.metrics == {} and res.repeats == []
    with pytest.raises(KeyError):
        EngineResult.from_dict({"spread": {}})  # a result without a value is not one


def test_dict_style_read_by_field_name() -> None:
    res = _full()
    assert res["value"] == 16600.0 and res["warmup_tok_s"] == [11822.0, 16001.0]
    with pytest.raises(KeyError):
        res["to_dict"]


def test_measure_returns_engine_result_with_the_mean_of_the_repeats() -> None:
    # Deterministic passes: token counts vary, seconds come from a fake clock, so rates are exact.
    from hpo_infer.measurement.timing import PassResult, Rules

    tokens = iter([100, 510, 300, 900, 600])  # one warm-up pass, then four timed ones
    events: list[tuple[str, dict]] = []

    def run(index: int) -> PassResult:
        n = next(tokens)
        return PassResult(n, [(n, 1.0)])

    rules = Rules(min_repeats=4, max_repeats=4, min_pass_s=1.0)
    res = measure(run, rules, lambda k, d: events.append((k, d)), config=1)
    assert isinstance(res, EngineResult)
    assert [r["tok_s"] for r in res.repeats] == [510.0, 300.0, 900.0, 600.0]
    assert res.value == 577.5, "the mean of the four repeats (its 95% CI is kept beside it)"
    assert res.spread["median"] == 555.0
    assert res.warmup_tok_s == [100.0] and res.warmup_s == 1.0
    assert res.config == 1 and res.spread["n"] == 4 and res.spread["min"] == 300.0
    assert res.start_s is None and res.peak_mem_bytes is None, "the engine fills those in"
    assert [k for k, _ in events].count("repeat") == 4


def test_agent_reads_the_result_event_into_config_result() -> None:
    results = [ConfigResult()]
    _apply(Event("started", {"config": 0, "start_s": 9.0, "resolved": {"port": 1}}), results, {})
    res = EngineResult(
        value=40.0,
        warmup_s=1.0,
        resolved={"goodput_search": {"request_rate": 2.0}},
        metrics={"p99_ttft_ms": 5.0},
        peak_mem_bytes=123,
    )
    _apply(Event(RESULT, {**res.to_dict(), "config": 0, "from_the_future": 1}), results, {})
    r = results[0]
    assert r.status == COMPLETE and r.reached
    assert (r.value, r.warmup_s, r.peak_mem_bytes, r.metrics) == (40.0, 1.0, 123, {"p99_ttft_ms": 5.0})
    assert r.start_s == 9.0, "the result has no start_s: the started event's stays"
    assert r.resolved == {"port": 1, "goodput_search": {"request_rate": 2.0}}
