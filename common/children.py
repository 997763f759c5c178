"""Child processes we start and must stop: Flower's SuperLink/SuperNode spawn helpers of their own.

`flower-superlink` and `flower-supernode` each launch a `flower-superexec`, which launches the
ServerApp/ClientApp processes. Stopping only the top pid leaves those running for a while, so
we stop a process *and its descendants*, by pid (never by name).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def bin_dir() -> str:
    """The directory of this interpreter's console scripts (flower-superlink, flwr, ...)."""
    return str(Path(sys.executable).parent)


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower's tools: our venv's bin first on PATH (they spawn each other by
    name), no telemetry and no update check unless the user asked for them."""
    env = dict(os.environ)
    env["PATH"] = bin_dir() + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when `parent` (the pid that started it) dies, even
    by SIGKILL, so worker processes never outlive their command (no-op where prctl is
    missing). If the parent died already, while this process was still starting, stop now."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (Linux /proc; empty elsewhere), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..." - comm may contain spaces/parentheses: split after the last ')'
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(pid: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM `pid` and its descendants, wait up to `timeout`, then SIGKILL what is left."""
    family = [pid, *descendants(pid)]
    _signal(family, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap our direct child so it does not linger as a zombie
        family += [p for p in descendants(pid) if p not in family]
        if not any(alive(p) for p in family):
            break
        time.sleep(0.1)
    _signal([p for p in family if alive(p)], signal.SIGKILL)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def kill_tree(pid: int, proc: subprocess.Popen | None = None) -> None:
    """SIGKILL `pid` and its descendants at once: a crash, as tests need to simulate."""
    family = [pid, *descendants(pid)]
    _signal(family, signal.SIGKILL)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
