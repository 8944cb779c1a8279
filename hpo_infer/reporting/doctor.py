"""``hpo-infer doctor``: check the environment a user is about to tune on, one line each.

GPU visible and free memory (nvidia-ml-py), each engine importable and its version (a real
import in a subprocess, so a broken install shows here and not at trial 0), and the storage
reachable and migrated. Exit code 1 when something would stop a study.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    level: str
    what: str

    def line(self) -> str:
        return f"{self.level:>4}  {self.what}"


def gpu_checks(min_free_frac: float = 0.1) -> Iterator[Check]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        yield Check(WARN, f"no NVIDIA GPU visible ({type(exc).__name__}): trials run on the CPU")
        return
    try:
        n = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
        yield Check(
            OK if n else WARN, f"{n} NVIDIA GPU(s), driver {driver.decode() if isinstance(driver, bytes) else driver}"
        )
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            frac = mem.free / mem.total if mem.total else 0.0
            level = OK if frac >= min_free_frac else FAIL
            note = "" if level == OK else ": another process holds it; trials would OOM"
            yield Check(level, f"GPU {i} {name}: {mem.free / 2**30:.1f} of {mem.total / 2**30:.1f} GiB free{note}")
    finally:
        pynvml.nvmlShutdown()


def engine_names() -> list[str]:
    """The engines doctor can check: one per installable engine package (vllm-serve is vllm's)."""
    from hpo_infer.engines import engine_class
    from hpo_infer.engines import engine_names as all_engines

    seen: dict[str, str] = {}
    for name in all_engines():
        module = engine_class(name).import_name
        if module is not None and module not in seen.values():
            seen[name] = module
    return sorted(seen)


def engine_check(engine: str, timeout: float = 180) -> Check:
    """A real import in a child process, with the version the engine itself reports."""
    from hpo_infer.engines import engine_class

    eng = engine_class(engine)
    module, version = eng.import_name, eng.version()
    if version is None:
        return Check(WARN, f"engine {engine}: {module} is not installed (pip install 'hpo-infer[{engine}]')")
    try:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check(FAIL, f"engine {engine}: importing {module} {version} took over {timeout:g} s")
    if r.returncode != 0:
        last = next((ln for ln in reversed(r.stderr.splitlines()) if ln.strip()), "unknown error")
        return Check(FAIL, f"engine {engine}: {module} {version} is installed but does not import: {last[:200]}")
    return Check(OK, f"engine {engine}: {module} {version} imports")


def storage_check(url: str) -> Check:
    from hpo_infer.db import schema
    from hpo_infer.errors import first_line
    from hpo_infer.storage_url import mask

    try:
        st = schema.state(url)
    except Exception as exc:  # noqa: BLE001 - any driver error is the answer
        return Check(
            FAIL,
            f"storage {mask(url)}: unreachable: {mask(first_line(exc))[:200]}",
        )
    if st.studies is None and st.optuna_current is None:
        return Check(
            WARN, f"storage {mask(url)}: reachable, empty: run `hpo-infer db upgrade` before starting many agents"
        )
    if not st.ready:
        return Check(
            FAIL,
            f"storage {mask(url)}: schema not current (optuna {st.optuna_current} of {st.optuna_head}, "
            f"hpo-infer {st.ours_current} of {st.ours_head}): run `hpo-infer db upgrade`",
        )
    return Check(
        OK, f"storage {mask(url)}: reachable and migrated, {st.studies} stud{'y' if st.studies == 1 else 'ies'}"
    )
