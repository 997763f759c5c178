"""`flwr run .` as Flower users run it: Flower's own CLI, a managed local SuperLink, Ray simulation.

The app's pyproject.toml is shipped as is; paths reach the apps through `--run-config`, relative
to the project checkout (common/runpaths.py) while `flwr` runs from another directory. Every
process the run leaves behind (the managed SuperLink outlives `flwr run`, with its SuperExec and,
while a run lasts, flwr-simulation and Ray) is stopped by pid in `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beatsight.common.checkpoint import load_model
from beatsight.simulation.contributors import build_federation, build_heldout

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: flwr, flower-superlink, flwr-simulation

CONNECTION = """[superlink]
default = "local"

[superlink.local]
address = ":local:"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, session id, command line) of every process we can read."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        out[int(d.name)] = (int(fields[1]), int(fields[3]), cmd)
    return out


def _sessions(flwr_home: Path) -> set[int]:
    """The sessions of the managed SuperLink of this FLWR_HOME (its --log-file is there) and of
    the processes below it: the SuperLink and its SuperExec each lead one, and flwr-simulation and
    Ray live in the SuperExec's (a session keeps its members even when they are orphaned)."""
    procs = _procs()
    tree = {p for p, (_, _, cmd) in procs.items()
            if "flower-superlink" in cmd and str(flwr_home) in cmd}
    todo = list(tree)
    while todo:
        parent = todo.pop()
        kids = [p for p, (pp, _, _) in procs.items() if pp == parent and p not in tree]
        tree.update(kids)
        todo.extend(kids)
    return {procs[p][1] for p in tree} & tree  # only sessions led by those processes


def _members(sessions: set[int]) -> list[int]:
    return sorted(p for p, (_, sid, _) in _procs().items()
                  if sid in sessions and p != os.getpid() and _alive(p))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended; its parent reaps it


def _stop(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds; returns survivors."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not pids:
            break
    return pids


def test_run_config_paths_are_the_projects(tmp_path: Path, monkeypatch) -> None:
    """Relative run-config paths resolve against the checkout, whatever the working directory."""
    from flwr.app import Context, RecordDict

    from beatsight.client.clientapp import store_path
    from beatsight.common.errors import BeatSightError
    from beatsight.common.runpaths import project_root, resolve_run_path

    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    assert project_root() == PROJECT
    assert resolve_run_path("runs/data") == str(PROJECT / "runs" / "data")
    assert resolve_run_path(str(tmp_path)) == str(tmp_path) and resolve_run_path("") == ""
    for i in (0, 1):
        (tmp_path / "data" / f"contributor-{i:02d}").mkdir(parents=True)
    (tmp_path / "data" / "heldout").mkdir()

    def ctx(partition: int, root: str) -> Context:
        return Context(run_id=1, node_id=1, node_config={"partition-id": partition,
                                                         "num-partitions": 5},
                       state=RecordDict(), run_config={"sim-data-root": root})

    rel = os.path.relpath(tmp_path / "data", PROJECT)
    assert store_path(ctx(3, rel)) == tmp_path / "data" / "contributor-01"
    with pytest.raises(BeatSightError, match="beatsight-sim contributors"):
        store_path(ctx(0, str(tmp_path / "data" / "heldout")))


@pytest.fixture
def tiny_data(tmp_path: Path, kits_root: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    build_federation(data, n_contributors=2, seed=1, songs_per_contributor=1, song_seconds=4.0,
                     progress=False)
    heldout = build_heldout(data / "heldout", seed=1, songs_per_kit=1, song_seconds=4.0,
                            isolated_per_class=1, progress=False)
    return data, heldout


@pytest.mark.slow
@pytest.mark.needs_kits
def test_flwr_run_dot_runs_the_app_from_pyproject(tmp_path: Path, tiny_data) -> None:
    data, heldout = tiny_data
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(CONNECTION)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "out"

    def rel(p: Path) -> str:  # relative to the project, as the paths in pyproject.toml are
        return os.path.relpath(p, PROJECT)

    run_config = (f"num-rounds=1 min-nodes=2 sim-data-root='{rel(data)}' "
                  f"heldout='{rel(heldout)}' out-dir='{rel(out)}'")
    cmd = [str(BIN / "flwr"), "run", str(PROJECT), "local", "--stream",
           "--run-config", run_config,
           "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"]
    try:
        for _attempt in range(2):  # a busy machine can miss Flower's 15 s SuperLink start-up
            proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=400)
            if "Failed to start local SuperLink" not in proc.stdout + proc.stderr:
                break
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "Successfully started run" in log, log[-4000:]
        assert (out / "history.json").is_file(), log[-4000:]
        rounds = json.loads((out / "history.json").read_text())["rounds"]
        assert [r["round"] for r in rounds] == [0, 1]
        assert len(rounds[1]["participants"]) == 2 and "accuracy" in rounds[1]["heldout"]
        _, ckpt = load_model(out / "global_model.pth")
        assert ckpt.extra["round"] == 1
        assert (out / "checkpoints" / "latest.pth").is_file()
    finally:
        sessions = _sessions(home)
        for _ in range(3):  # again, in case something was starting while we stopped the rest
            leftovers = _stop(_members(sessions))
            if leftovers or not _members(sessions):
                break
    assert sessions, "found no managed SuperLink to stop"
    assert not leftovers, f"could not stop {leftovers}"
