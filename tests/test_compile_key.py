"""vLLM's compile cache, read without vLLM: which of our settings make a new compile key, which
folders of the cache count as compiled graphs, and how a start is called cold, warm or eager."""

from __future__ import annotations

from pathlib import Path

from hpo_infer.engines.vllm import COMPILE_KEY, compile_entries, compile_key, compile_start


def test_the_key_covers_graph_shaping_settings_only() -> None:
    base = compile_key({})
    assert base == compile_key({}) and len(base) == 10
    assert base == compile_key({"max_num_seqs": "engine-resolved", "enforce_eager": False})  # the table's defaults
    # Not in vLLM's compile hash: memory share, prefix caching, chunked prefill, client batch.
    assert base == compile_key(
        {"gpu_memory_utilization": 0.9, "enable_prefix_caching": True, "enable_chunked_prefill": False, "batch_size": 8}
    )
    for name, value in (("block_size", 32), ("max_num_batched_tokens", 4096), ("max_model_len", 2048)):
        assert name in COMPILE_KEY and compile_key({name: value}) != base, name
    # Capture sizes grow with max_num_seqs up to 2 * 256 = 512, then no more.
    assert compile_key({"max_num_seqs": 64}) != compile_key({"max_num_seqs": 128})
    assert compile_key({"max_num_seqs": 256}) == compile_key({"max_num_seqs": 1024})
    # enforce_eager compiles nothing: the other settings do not matter.
    eager = compile_key({"enforce_eager": True})
    assert eager == compile_key({"enforce_eager": True, "block_size": 64, "max_num_seqs": 8}) != base
    assert "gpu_memory_utilization" not in COMPILE_KEY and "enable_prefix_caching" not in COMPILE_KEY


def test_compile_entries_lists_jit_and_aot_folders(tmp_path: Path) -> None:
    assert compile_entries(tmp_path / "missing") == set()
    assert compile_entries(tmp_path) == set()
    (tmp_path / "torch_compile_cache" / "a1b2c3d4e5" / "rank_0_0" / "backbone").mkdir(parents=True)
    (tmp_path / "torch_compile_cache" / "torch_aot_compile" / "f6e5d4").mkdir(parents=True)
    (tmp_path / "torch_aot_compile" / "0123ab").mkdir(parents=True)
    (tmp_path / "torch_compile_cache" / "stray.lock").write_text("")
    (tmp_path / "modelinfos").mkdir()  # other vLLM caches are not compiled graphs
    assert compile_entries(tmp_path) == {
        "torch_compile_cache/a1b2c3d4e5",
        "torch_compile_cache/torch_aot_compile/f6e5d4",
        "torch_aot_compile/0123ab",
    }


def test_compile_start_cold_warm_eager(tmp_path: Path) -> None:
    settings = {"max_num_seqs": 64, "block_size": 16}
    key = compile_key(settings)
    before = compile_entries(tmp_path)
    (tmp_path / "torch_compile_cache" / "a1b2c3d4e5").mkdir(parents=True)
    after = compile_entries(tmp_path)
    assert compile_start(before, after, settings) == {
        "compile_start": "cold",
        "compile_why": f"new compile key {key}",
        "compile_key": key,
    }
    # The next start with the same settings finds its folder: nothing new.
    again = compile_start(after, compile_entries(tmp_path), settings)
    assert again["compile_start"] == "warm" and again["compile_why"] == f"compile cache held key {key}"
    eager = compile_start(set(), set(), {"enforce_eager": True})
    assert eager["compile_start"] == "eager" and eager["compile_why"] == "enforce_eager"
    assert compile_start(after, after, {**settings, "compilation_mode": "NONE"})["compile_start"] == "eager"
    assert compile_start(set(), set(), settings)["compile_start"] == "eager"  # nothing compiled at all
