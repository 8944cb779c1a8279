"""A throwaway one-node SLURM cluster for the tests: munged, slurmctld and slurmd on loopback.

Debian's ``slurm-wlm`` and ``munge`` (installed here if missing, as root), started as root with
no cgroups: ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres`` with ``CR_CPU``, no
accounting, ``OverSubscribe=FORCE`` (three one-CPU tasks on two cores), and
``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny`` so both daemons listen on 127.0.0.1
only. Everything lives in one temporary folder (its own munge key and socket, state, spool,
logs); the daemons are stopped by the PIDs they wrote, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pg import free_port

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmd", "slurmctld", "munged")  # stopped in this order


def ensure_installed() -> str | None:
    """Install the Debian packages if missing; why SLURM cannot run here, or None."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed (apt-get install slurm-wlm munge, as root)"
    res = subprocess.run(
        "apt-get update -q && apt-get install -y -q --no-install-recommends " + " ".join(PACKAGES),
        shell=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {res.stderr[-500:]}"
    return None


class SlurmCluster:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hpo-infer-slurm-"))
        self.conf = self.base / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        b = self.base
        host = socket.gethostname().split(".")[0]
        mem_mb = max(2000, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
        (b / "state").mkdir()
        (b / "spool").mkdir()
        self.conf.write_text(
            f"""ClusterName=hpo
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={b}/munge.sock
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmctldLogFile={b}/slurmctld.log
SlurmdLogFile={b}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
KillWait=15
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={mem_mb} State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""
        )

    def start(self) -> "SlurmCluster":
        b = self.base
        self._write_conf()
        key = b / "munge.key"
        subprocess.run(["mungekey", "-c", "-f", "-k", str(key)], check=True, capture_output=True)
        key.chmod(0o400)
        subprocess.run(
            ["munged", "--force", "-S", str(b / "munge.sock"), f"--key-file={key}", f"--log-file={b}/munged.log"]
            + [f"--pid-file={b}/munged.pid", f"--seed-file={b}/munged.seed"],
            check=True,
            capture_output=True,
        )
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(self.conf)], check=True, capture_output=True, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-o", "%t").stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node never came up: {self.log_tail()}")

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=60, check=check)

    def sbatch(self, *argv: str, env: dict[str, str]) -> str:
        """Submit; the job id."""
        res = subprocess.run(
            ["sbatch", "--parsable", *argv], capture_output=True, text=True, env={**self.env, **env}, timeout=60
        )
        if res.returncode != 0:
            raise RuntimeError(f"sbatch failed: {res.stderr.strip()}")
        return res.stdout.strip().split(";")[0]

    def tasks(self, job: str) -> dict[int, dict[str, str]]:
        """Every array task of ``job``: its JobState, ExitCode and the rest of ``scontrol show job``."""
        out = self.run("scontrol", "-o", "show", "job", job).stdout
        tasks = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "ArrayTaskId" in fields and fields["ArrayTaskId"].isdigit():
                tasks[int(fields["ArrayTaskId"])] = fields
        return tasks

    def wait(self, job: str, timeout: float) -> dict[int, dict[str, str]]:
        """Until no task of ``job`` is pending or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.tasks(job)
            if tasks and all(t["JobState"] not in ("PENDING", "RUNNING", "COMPLETING") for t in tasks.values()):
                return tasks
            time.sleep(1)
        raise AssertionError(f"job {job} still running after {timeout:g} s: {self.tasks(job)}")

    def log_tail(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.base / name
            if p.exists():
                out.append(f"{name}: " + " | ".join(p.read_text().splitlines()[-5:]))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop every daemon by the PID it wrote (SIGTERM, then SIGKILL), then remove the folder."""
        for daemon in DAEMONS:
            pidfile = self.base / f"{daemon}.pid"
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                for _ in range(50):
                    try:
                        os.waitpid(pid, os.WNOHANG)  # ours to reap where this process is a subreaper
                    except ChildProcessError:
                        pass
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
