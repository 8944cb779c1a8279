"""Ending a worker's whole process tree, without a race against a process that is forking.

Listing the descendants and then killing them misses a child forked in between (a CI run left
the fault engine's daemonised grandchild behind that way). So the tree is frozen first: every
process found is sent SIGSTOP, which stops it forking, and the listing is repeated until it no
longer grows; only then is everything killed. The worker is a child subreaper, so while it is
alive (stopped, not dead) every orphan below it is still listed under it.

A worker that is already dead (the OOM killer, a stray ``kill -9``) has let its orphans go. So the
agent is a child subreaper too, and every process of a trial carries the trial's mark in its
environment: orphans re-parent to the agent, and the mark tells them from the agent's other
children.
"""

from __future__ import annotations

import ctypes
import os
import signal

import psutil

MARK = "HPO_INFER_TRIAL_MARK"  # environment variable every process of one trial inherits
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value, 0, 0, 0)
    except OSError:
        pass  # not Linux: the process-group kill still applies


def set_name(name: str) -> None:
    """The process's name as ``ps``, ``top`` and psutil show it (at most 15 bytes): a forked
    trial has its server's command line, so the name is what tells it apart."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except OSError:
        pass


def become_subreaper() -> None:
    """Orphans of our descendants re-parent to this process (not init), where they can be found."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def _signal_group(pid: int, root: psutil.Process | None, sig: int) -> None:
    """``sig`` to ``pid``'s process group and to ``pid`` itself (once it left the group)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    if root is not None:
        _signal([root], sig)


def _frozen_descendants(root: psutil.Process, rounds: int = 50) -> list[psutil.Process]:
    """Stop every descendant of ``root`` and return them, once a listing finds nothing new."""
    seen: dict[int, psutil.Process] = {}
    for _ in range(rounds):
        try:
            found = root.children(recursive=True)
        except psutil.Error:
            break
        new = [p for p in found if p.pid not in seen]
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        seen.update((p.pid, p) for p in new)
    return list(seen.values())


def kill_tree(pid: int, include_root: bool = True, wait_s: float = 10.0) -> None:
    """Kill every descendant of ``pid`` (and ``pid`` itself, with its process group, if
    ``include_root``), freezing the tree first so that nothing forked meanwhile survives."""
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        root = None
    if include_root:
        _signal_group(pid, root, signal.SIGSTOP)
    procs = _frozen_descendants(root) if root is not None else []
    _signal(procs, signal.SIGKILL)
    if include_root:
        _signal_group(pid, root, signal.SIGKILL)
        if root is not None:
            procs.append(root)
    psutil.wait_procs(procs, timeout=wait_s)


def kill_marked(mark: str, wait_s: float = 10.0) -> None:
    """Kill our descendants whose environment carries ``MARK=mark``: a dead worker's orphans,
    re-parented to this (subreaper) process."""
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    marked = []
    for p in kids:
        try:
            if p.environ().get(MARK) == mark:
                marked.append(p)
        except (psutil.Error, OSError):
            continue
    for p in marked:
        kill_tree(p.pid, wait_s=wait_s)
