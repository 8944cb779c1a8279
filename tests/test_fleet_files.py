"""docker/: the worker image, compose, the Kubernetes Indexed Job and the SLURM array script.

No Docker engine or cluster here: the files are parsed, their required fields checked, and
every hpo-infer command they run is parsed by the real CLI (unknown subcommand, flag or bad
value fails), then asked for --help.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from hpo_infer.cli import main

DOCKER = Path(__file__).resolve().parents[1] / "docker"
ROOT = DOCKER.parent


def _expand(arg: str) -> str:
    """Shell/compose variables: ${X:-default} takes the default, any other variable a placeholder."""
    arg = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)
    return re.sub(r"\$\{[A-Z_]+(:\?[^}]*)?\}|\$[A-Z_]+", "PLACEHOLDER", arg)


def check_command(argv: list[str]) -> str:
    """Parse ``hpo-infer ARGV`` with the real CLI without running it; returns the command path."""
    argv = [_expand(a) for a in argv]
    cmd: click.Command = main
    path: list[str] = []
    args = list(argv)
    ctx = click.Context(main, info_name="hpo-infer")
    while isinstance(cmd, click.Group):
        assert args, f"no subcommand in {argv}"
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"hpo-infer has no command {' '.join(path + [args[0]])!r}"
        path.append(args.pop(0))
        cmd = sub
    args = [a for a in args if a not in ("--help", "-h")]
    cmd.make_context(" ".join(["hpo-infer", *path]), list(args))  # raises on unknown flags, bad values
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0, res.output
    return " ".join(path)


def test_check_command_catches_typos() -> None:
    assert check_command(["worker", "s.yaml", "--gpus-per-trial", "1"]) == "worker"
    with pytest.raises(AssertionError, match="no command"):
        check_command(["wroker", "s.yaml"])
    with pytest.raises(click.UsageError):
        check_command(["worker", "s.yaml", "--gpu-per-trial", "1"])
    with pytest.raises(click.BadParameter):
        check_command(["worker", "s.yaml", "--gpus-per-trial", "zero"])


def test_dockerfile_builds_on_the_vllm_image_and_installs_hpo_infer() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    arg = next(ln for ln in lines if ln.startswith("ARG VLLM_IMAGE="))
    assert arg.split("=", 1)[1].startswith("vllm/vllm-openai:v")
    assert lines[lines.index(arg) + 1] == "FROM ${VLLM_IMAGE}"
    assert re.search(r'pip install [^\n]*"\.\[postgres', text)
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such path in the repo"
    assert 'ENTRYPOINT ["hpo-infer"]' in lines
    cmd = next(ln for ln in lines if ln.startswith("CMD "))
    assert check_command(yaml.safe_load(cmd[4:])) == "worker"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_postgres_dashboard_workers_and_upgrades_first() -> None:
    doc = _compose()
    s = doc["services"]
    assert set(s) >= {"postgres", "db-upgrade", "dashboard", "worker"}
    pg = s["postgres"]
    assert pg["image"].startswith("postgres:") and "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD"), "no password in the file"
    assert check_command(s["db-upgrade"]["command"]) == "db upgrade"
    assert s["db-upgrade"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("dashboard", "worker"):
        assert s[name]["depends_on"]["db-upgrade"]["condition"] == "service_completed_successfully"
    assert check_command(s["dashboard"]["command"]) == "dashboard"
    assert all(p.startswith("127.0.0.1:") for p in s["dashboard"]["ports"]), "the dashboard has no authentication"
    w = s["worker"]
    assert check_command(w["command"]) == "worker"
    dev = w["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert w["stop_signal"] == "SIGTERM"
    for name in ("db-upgrade", "dashboard", "worker"):
        url = s[name]["environment"]["HPO_INFER_STORAGE"]
        assert url.startswith("postgresql://") and "${POSTGRES_PASSWORD" in url and "@postgres:5432/" in url
        assert s[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / s[name]["build"]["context"] / s[name]["build"]["dockerfile"]).is_file()
    mount = next(v for v in w["volumes"] if v.endswith(":/studies:ro"))
    assert (DOCKER / mount.split(":")[0]).is_dir()


def test_kubernetes_indexed_job_one_pod_per_gpu() -> None:
    docs = [d for d in yaml.safe_load_all((DOCKER / "k8s-indexed-job.yaml").read_text()) if d]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    (init,) = pod["initContainers"]
    assert check_command(init["args"]) == "db upgrade"
    (c,) = pod["containers"]
    assert check_command(c["args"]) == "worker"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--gpus-per-trial" in c["args"] and c["args"][c["args"].index("--gpus-per-trial") + 1] == "1"
    for container in (init, c):
        env = {e["name"]: e for e in container["env"]}
        ref = env["HPO_INFER_STORAGE"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"], "the storage URL (with its password) comes from a Secret"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert c["args"][1].startswith(mounts["study"]) and "configMap" in vols["study"]
    assert mounts["dshm"] == "/dev/shm" and vols["dshm"]["emptyDir"]["medium"] == "Memory"


def test_slurm_array_script() -> None:
    text = (DOCKER / "slurm-array.sh").read_text()
    assert text.startswith("#!/bin/bash\n")
    sbatch = dict((m.group(1), m.group(2)) for m in re.finditer(r"^#SBATCH --([a-z-]+)(?:=(\S+))?", text, re.M))
    assert re.fullmatch(r"\d+-\d+(%\d+)?", sbatch["array"])
    assert sbatch["gres"] == "gpu:1"
    assert sbatch["signal"].startswith("B:TERM@"), "SIGTERM before the time limit ends trials cleanly"
    assert {"job-name", "time", "output"} <= set(sbatch)
    first_cmd = next(i for i, ln in enumerate(text.splitlines()) if ln and not ln.startswith("#"))
    assert all(not ln.startswith("#SBATCH") for ln in text.splitlines()[first_cmd:]), (
        "#SBATCH after a command is ignored"
    )
    cmds = [shlex.split(ln.strip())[1:] for ln in text.splitlines() if re.match(r"\s*(exec\s+)?hpo-infer\s", ln)]
    cmds = [c[1:] if c and c[0] == "hpo-infer" else c for c in cmds]
    assert [check_command(c) for c in cmds] == ["db upgrade", "worker"]
    assert "exec hpo-infer worker" in text
    assert "postgresql://" not in re.sub(r"(?m)^#.*$|:\?[^}]*\}", "", text), "no URL (or password) hard-coded"
    import subprocess

    assert subprocess.run(["bash", "-n", str(DOCKER / "slurm-array.sh")]).returncode == 0


# ---- schema validation, offline: a mistyped key fails --------------------------------------------
def _validate(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / tool
    args = {
        # compose-spec's own JSON schema, vendored by check-jsonschema (what `docker compose config` checks)
        "check-jsonschema": ["--builtin-schema", "vendor.compose-spec"],
        # the Kubernetes API's OpenAPI schemas bundled per release; --strict rejects unknown keys
        "kubernetes-validate": ["--strict", "-k", "1.33.0"],
    }[tool]
    return subprocess.run([str(exe), *args, str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "tool, name, key",
    [("check-jsonschema", "compose.yaml", "image"), ("kubernetes-validate", "k8s-indexed-job.yaml", "restartPolicy")],
)
def test_fleet_files_validate_against_their_schemas_and_a_typo_fails(
    tool: str, name: str, key: str, tmp_path: Path
) -> None:
    good = _validate(tool, DOCKER / name)
    assert good.returncode == 0, good.stdout + good.stderr
    text = (DOCKER / name).read_text()
    assert re.search(rf"^\s*{key}:", text, re.M), f"{name} has no {key!r} to mistype"
    bad = tmp_path / name
    bad.write_text(re.sub(rf"^(\s*){key}:", rf"\g<1>{key}x:", text, count=1, flags=re.M))
    res = _validate(tool, bad)
    assert res.returncode != 0 and f"{key}x" in res.stdout + res.stderr
