"""The measurement rules (hpo_infer.measurement.timing), on passes faked on purpose: every pass
its own index (fresh prompts), one uncounted warm-up, repeats of at least min_pass_s, repeats
until the 95% CI is within the precision, and the prefix-cache flag."""

from __future__ import annotations

from hpo_infer.measurement.timing import PassResult, Rules, cache_flag, measure


def _passes(rates: list[float], seconds: float = 1.0, cache: dict[str, int] | None = None):
    """A pass function whose k-th call generates rates[k] tok/s for ``seconds``; records the indices."""
    seen: list[int] = []
    it = iter(rates)

    def run(index: int) -> PassResult:
        seen.append(index)
        r = next(it)
        return PassResult(int(r * seconds), [(int(r * seconds), seconds)], cache)

    return run, seen


def _measure(run, rules: Rules, **kw):
    events: list[tuple[str, dict]] = []
    res = measure(run, rules, lambda k, d: events.append((k, d)), **kw)
    return res, events


def test_warmup_once_uncounted_and_every_timed_pass_gets_its_own_index() -> None:
    run, seen = _passes([500.0, 1000.0, 1000.0, 1000.0])
    res, events = _measure(run, Rules(min_repeats=3, max_repeats=3, precision=0.5, min_pass_s=1.0))
    assert seen == [0, 1, 2, 3]  # pass 0 warms up; 1..3 are timed, each on fresh prompts
    assert res.warmup_tok_s == [500.0]
    assert [r["tok_s"] for r in res.repeats] == [1000.0, 1000.0, 1000.0]
    assert res.value == 1000.0 and [k for k, _ in events].count("repeat") == 3


def test_an_engine_warmup_replaces_pass_zero() -> None:
    run, seen = _passes([1000.0] * 3)
    res, _ = _measure(
        run, Rules(min_repeats=3, max_repeats=3, min_pass_s=1.0), warmup=lambda: PassResult(7, [(7, 0.5)])
    )
    assert seen == [1, 2, 3] and res.warmup_s == 0.5


def test_short_passes_are_cycled_to_min_pass_s_the_same_number_of_times_in_every_repeat() -> None:
    run, seen = _passes([100.0] * 40, seconds=0.3)
    res, _ = _measure(run, Rules(min_repeats=3, max_repeats=3, precision=0.5, min_pass_s=1.0))
    assert [r["cycles"] for r in res.repeats] == [4, 4, 4]  # 4 x 0.3 s >= 1 s
    assert all(abs(r["seconds"] - 1.2) < 1e-9 for r in res.repeats)
    assert seen == list(range(13))  # warm-up + 12 timed passes, all distinct


def test_repeats_stop_once_the_confidence_interval_is_within_the_precision() -> None:
    run, seen = _passes([1000.0] + [1000.0, 1002.0, 998.0, 1001.0] + [1000.0] * 10)
    res, _ = _measure(run, Rules(min_repeats=3, max_repeats=10, precision=0.01, min_pass_s=0.1))
    assert res.spread["n"] == 3 and res.spread["ci_rel"] <= 0.01
    assert res.spread["ci95_low"] < res.value < res.spread["ci95_high"]


def test_noisy_repeats_go_on_to_the_maximum() -> None:
    rates = [1000.0] + [800.0, 1200.0] * 10
    run, _ = _passes(rates)
    res, _ = _measure(run, Rules(min_repeats=3, max_repeats=8, precision=0.02, min_pass_s=0.1))
    assert res.spread["n"] == 8 and res.spread["ci_rel"] > 0.02
    assert abs(res.spread["cv"] - res.spread["stdev"] / res.value) < 1e-12


def test_cache_flag_fires_above_what_shared_prefixes_explain() -> None:
    cold = {"queries": 1000, "hits": 0}
    run, _ = _passes([1000.0] * 4, cache=cold)
    res, _ = _measure(run, Rules(min_repeats=3, max_repeats=3), expected_hit_rate=0.0)
    assert res.cache_flag is None and all(r["cache"]["hit_rate"] == 0.0 for r in res.repeats)
    warm = [{"repeat": 0, "cache": {"hit_rate": 0.0}}, {"repeat": 1, "cache": {"hit_rate": 0.875}}]
    flag = cache_flag(warm, expected_hit_rate=0.0)
    assert flag is not None and "87.5%" in flag and "repeat 1" in flag
    assert cache_flag(warm, expected_hit_rate=0.87) is None  # a shared prefix that explains it


def test_verdict_reads_noise_as_multiplicative() -> None:
    """Seen in CI under load: every repeat of the best beat every baseline repeat by 4x or
    more, yet a t-test on raw rates called it a tie (p=0.13) because of one fast repeat."""
    from hpo_infer.study.verdict import verdict

    v = verdict([1685.6, 530.6, 775.9], [103.3, 125.6, 117.4])
    assert v["significant"] and v["gain_pct"] > 500
    tie = verdict([14389.7, 15173.8, 14565.4], [17243.8, 14725.6, 15052.2])  # the H100 re-validation
    assert not tie["significant"]
