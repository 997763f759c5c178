"""Deployment on Flower's Deployment Engine with real processes on loopback (no mocks).

A SuperLink (`beatsight-server start`) with TLS and node authentication, two contributors
(`beatsight-client join`) with tiny sample stores rendered from a Hydrogen kit. Every process
is started with its own FLWR_HOME and stopped by pid (with its children) in teardown, also when
a test fails. The fast tests at the top need no processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch

from beatsight.client.join import JoinOptions, TimeWindow, check, supernode_command, supernode_env
from beatsight.client.keys import generate
from beatsight.common.children import alive, bin_dir, kill_tree, stop_tree
from beatsight.common.errors import BeatSightError

BIN = Path(bin_dir())
FAST = ["--set", "local-epochs=1", "--set", "batch-size=8", "--set", "augment="]
# Tests about the run's control flow also skip the contributors' local evaluation (informative
# only): a ClientApp process less per contributor and round. The crash-and-resume test keeps it
# in its resumed round.
NO_LOCAL_EVAL = ["--set", "fraction-evaluate=0"]


# ---------------------------------------------------------------- fast: no processes
def test_time_window_parsing_and_edges() -> None:
    w = TimeWindow.parse("23:00-07:00")
    day = datetime(2025, 3, 1)
    assert w.is_open(day.replace(hour=23, minute=30)) and w.is_open(day.replace(hour=6, minute=59))
    assert not w.is_open(day.replace(hour=7)) and not w.is_open(day.replace(hour=12))
    assert w.next_change(day.replace(hour=12)) == day.replace(hour=23)
    assert w.next_change(day.replace(hour=23, minute=5)) == day.replace(hour=7) + timedelta(days=1)
    assert w.next_change(day.replace(hour=2)) == day.replace(hour=7)
    d = TimeWindow.parse("9:15-17:00")
    assert d.is_open(day.replace(hour=9, minute=15)) and not d.is_open(day.replace(hour=17))
    assert d.next_change(day.replace(hour=18)) == day.replace(hour=9, minute=15) + timedelta(days=1)
    for bad in ("23-07", "25:00-07:00", "10:00-10:00", "10:61-11:00"):
        with pytest.raises(BeatSightError):
            TimeWindow.parse(bad)


@pytest.fixture(scope="module")
def certs_and_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from beatsight.server.certs import init_certs

    root = tmp_path_factory.mktemp("keys")
    init_certs(root / "server")
    priv, _, _ = generate(root / "alice", "alice")
    return root / "server" / "ca.pem", priv


def test_staged_app_holds_the_packages_and_config_but_not_the_checkouts_other_files(tmp_path: Path
                                                                                     ) -> None:
    from beatsight.server.superlink import app_dir, stage_app

    staged = stage_app(app_dir(), tmp_path / "app")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "server/serverapp.py", "client/clientapp.py",
            "common/features.py"} <= files
    assert not any(f.split("/")[0] in (".venv", "runs", "tests", "docs") or "__pycache__" in f
                   for f in files), sorted(files)[:20]
    assert (staged / "pyproject.toml").read_bytes() == (app_dir() / "pyproject.toml").read_bytes()
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "pyproject.toml").write_text("[tool.flwr.app]\npublisher = 'x'\n")
    assert stage_app(custom, tmp_path / "unused") == custom  # no package-dir table: used as is
    (custom / "pyproject.toml").write_text("[tool.setuptools.package-dir]\n'x.y' = 'gone'\n")
    assert stage_app(custom, tmp_path / "unused") == custom  # a listed folder is missing
    assert not (tmp_path / "unused").exists()


def test_join_refuses_empty_or_unreadable_store_in_one_line(tmp_path: Path, certs_and_key) -> None:
    ca, key = certs_and_key
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    for data, msg in ((empty, "no usable samples"), (broken, "not a readable store index"),
                      (tmp_path / "missing", "no such sample store")):
        res = subprocess.run([BIN / "beatsight-client", "join", "--server", "127.0.0.1:9", "--ca",
                              str(ca), "--key", str(key), "--data", str(data)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert msg in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) <= 3  # one message, maybe soft-wrapped
    with pytest.raises(BeatSightError, match="HOST:PORT"):
        check(JoinOptions(server="no-port", ca=ca, key=key, data=empty))


def test_supernode_command_carries_store_threads_and_tls(tmp_path: Path, certs_and_key) -> None:
    ca, key = certs_and_key
    opts = JoinOptions(server="fl.example.org:8000", ca=ca, key=key, data=tmp_path / "st", threads=2,
                       local_port=9123)
    cmd = supernode_command(opts)
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca.resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert cmd[cmd.index("--node-config") + 1] == f"data-path='{(tmp_path / 'st').resolve()}' threads=2"
    assert "--insecure" not in cmd and cmd[cmd.index("--port") + 1] == "9123"
    env = supernode_env(opts)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["PATH"].split(os.pathsep)[0] == str(BIN)


# ---------------------------------------------------------------- real processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_for(cond, timeout: float, what: str, interval: float = 1.0, logs: tuple[Path, ...] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                         + "\n".join(f"--- {p}\n{tail(p)}" for p in logs))


def ckpt_round(path: Path) -> int | None:
    if not path.is_file():
        return None
    return int(torch.load(path, weights_only=True)["extra"]["round"])


class Federation:
    """The processes of one loopback federation; `close()` stops every one of them by pid."""

    def __init__(self, root: Path, stores: dict[str, Path], heldout: Path) -> None:
        self.root, self.stores, self.heldout = root, stores, heldout
        self.state = root / "server"
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[str, subprocess.Popen] = {}
        self.server: subprocess.Popen | None = None
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
                    "FLWR_HOME": str(root / "flwr-home-cli"), "COLUMNS": "200"}
        self.keys = {n: generate(root / "keys" / n, n)[0] for n in stores}
        self.cli("init", "--dir", str(self.state))
        for n in stores:
            self.cli("register", str(self.keys[n]) + ".pub", "--dir", str(self.state))

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([BIN / "beatsight-server", *args], capture_output=True, text=True,
                             env=self.env, timeout=timeout, cwd=self.root)
        if check:
            assert res.returncode == 0, f"beatsight-server {args}: {res.stdout}\n{res.stderr}"
        return res

    def spawn(self, cmd: list, log: Path, home: str) -> subprocess.Popen:
        env = {**self.env, "FLWR_HOME": str(self.root / home)}
        with log.open("ab") as fh:
            proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.root, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_server(self) -> None:
        self.server = self.spawn([BIN / "beatsight-server", "start", "--dir", self.state,
                                  "--port", self.port], self.root / "server.log", "flwr-home-server")
        # (whitespace-insensitive: a console may still wrap the line somewhere)
        wait_for(lambda: "Ctrl-C stops" in " ".join(tail(self.root / "server.log").split()), 90,
                 "the SuperLink",
                 logs=(self.root / "server.log", self.state / "superlink.log"))

    def join(self, name: str, *extra: str, key: Path | None = None, ca: Path | None = None
             ) -> subprocess.Popen:
        log = self.root / f"join-{name}.log"
        proc = self.spawn([BIN / "beatsight-client", "join", "--server", f"127.0.0.1:{self.port}",
                           "--ca", ca or self.state / "ca.pem", "--key", key or self.keys[name],
                           "--data", self.stores.get(name, self.stores["alice"]),
                           "--local-port", free_port(), *extra], log, f"flwr-home-{name}")
        if name in self.stores:
            self.nodes[name] = proc
        return proc

    def online(self) -> set[str]:
        res = self.cli("contributors", "--dir", str(self.state), check=False)
        return {line.split()[1] for line in res.stdout.splitlines() if " online " in line}

    def ensure_nodes(self) -> None:
        for name in self.stores:
            p = self.nodes.get(name)
            if p is None or p.poll() is not None:
                self.join(name)
        wait_for(lambda: self.online() >= set(self.stores), 150, "every contributor online",
                 interval=3, logs=tuple(self.root / f"join-{n}.log" for n in self.stores))

    def run(self, out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.cli("run", "--dir", str(self.state), "--heldout", str(self.heldout), "--out-dir",
                        str(out), *FAST, *args, timeout=timeout)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                stop_tree(p.pid, timeout=15, proc=p)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, small_kit) -> tuple[dict[str, Path], Path]:
    """Two contributors' stores and a held-out store, 27 hits each, rendered from a real kit."""
    from beatsight.client.store import SampleStore
    from beatsight.simulation.render import write_isolated

    root = tmp_path_factory.mktemp("stores")
    out = {}
    for seed, name in enumerate(("alice", "bob", "heldout")):
        wav, bsm = write_isolated(root / "audio", name, small_kit, seed, per_class=3, gap_s=0.4)
        SampleStore(root / name).extract_beatmap(bsm, wav)
        out[name] = root / name
    held = out.pop("heldout")
    return out, held


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, stores):
    f = Federation(tmp_path_factory.mktemp("federation"), *stores)
    try:
        f.start_server()
        f.ensure_nodes()
        yield f
    finally:
        f.close()
        assert not any(alive(p.pid) for p in f.procs)


@pytest.mark.slow
@pytest.mark.needs_kits
def test_unregistered_key_is_refused(fed: Federation) -> None:
    priv, _, _ = generate(fed.root / "keys" / "mallory", "mallory")
    proc = fed.join("mallory", key=priv)
    rc = proc.wait(timeout=120)
    log = tail(fed.root / "join-mallory.log", 10)
    assert rc == 2, log
    assert "refused this key" in log and "mallory" in log
    assert "mallory" not in fed.online()


@pytest.mark.slow
@pytest.mark.needs_kits
def test_node_without_our_ca_or_without_tls_cannot_connect(fed: Federation, tmp_path: Path) -> None:
    from beatsight.server.certs import init_certs

    init_certs(tmp_path / "impostor")  # a CA that did not sign the server's certificate
    proc = fed.join("alice-wrong-ca", key=fed.keys["alice"], ca=tmp_path / "impostor" / "ca.pem")
    assert proc.wait(timeout=120) == 2
    assert "not signed by" in tail(fed.root / "join-alice-wrong-ca.log", 10)
    base = [BIN / "flower-supernode", "--superlink", f"127.0.0.1:{fed.port}", "--max-retries", "1"]
    # The system CA store does not know our private CA.
    sys_ca = fed.spawn(base + ["--auth-supernode-private-key", fed.keys["alice"], "--port", free_port()],
                       tmp_path / "sys-ca.log", "flwr-home-sysca")
    # Plaintext HTTP against the TLS port (node authentication needs TLS, so no key either).
    plain = fed.spawn(base + ["--insecure", "--port", free_port()], tmp_path / "plain.log",
                      "flwr-home-plain")
    assert sys_ca.wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "sys-ca.log").read_text()
    assert plain.wait(timeout=120) != 0
    assert "SuperNode ID" not in (tmp_path / "plain.log").read_text()


@pytest.mark.slow
@pytest.mark.needs_kits
def test_too_few_contributors_ends_the_run_cleanly_at_the_deadline(fed: Federation) -> None:
    out = fed.root / "run-deadline"
    t0 = time.monotonic()
    res = fed.run(out, "--rounds", "2", "--min-nodes", "3", "--round-timeout", "8")
    assert time.monotonic() - t0 < 180
    assert "only 2 contributor(s) connected" in res.stdout, res.stdout[-3000:]
    assert "finished:completed" in res.stdout
    assert not (out / "global_model.pth").exists()
    assert ckpt_round(out / "checkpoints" / "latest.pth") is None


@pytest.mark.slow
@pytest.mark.needs_kits
def test_killing_a_node_mid_round_still_finishes_the_run(fed: Federation) -> None:
    fed.ensure_nodes()
    out = fed.root / "run-kill-node"
    log = fed.root / "join-bob.log"
    seen = len(log.read_text().split("Receiving: train"))
    fed.run(out, "--rounds", "1", "--min-nodes", "1", "--round-timeout", "300", "--detach",
            *NO_LOCAL_EVAL)
    wait_for(lambda: len(log.read_text().split("Receiving: train")) > seen, 180,
             "bob's first training message", logs=(log,))
    kill_tree(fed.nodes["bob"].pid, proc=fed.nodes["bob"])
    wait_for(lambda: (out / "global_model.pth").is_file(), 480, "the run to finish", interval=3,
             logs=(fed.state / "superlink.log",))
    rounds = json.loads((out / "history.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    parts = rounds[1]["participants"]
    assert sum("error" not in p for p in parts) == 1 and sum("error" in p for p in parts) == 1
    assert ckpt_round(out / "checkpoints" / "latest.pth") == 1


@pytest.mark.slow
@pytest.mark.needs_kits
def test_two_round_tls_run_survives_a_server_crash_and_resumes_from_the_last_round(fed: Federation
                                                                                    ) -> None:
    """The whole deployment path once: two authenticated SuperNodes over TLS train for two
    rounds; the SuperLink, its SuperExec and the ServerApp are killed after round 1 and
    `--resume` runs only round 2, with the contributors' local evaluation on (as by default)."""
    fed.ensure_nodes()
    out = fed.root / "run-restart"
    t0 = time.monotonic()
    fed.run(out, "--rounds", "2", "--min-nodes", "2", "--round-timeout", "300", "--detach",
            *NO_LOCAL_EVAL)
    latest = out / "checkpoints" / "latest.pth"
    wait_for(lambda: ckpt_round(latest) == 1, 300, "round 1's checkpoint", interval=2)
    kill_tree(fed.server.pid, proc=fed.server)  # crash: SuperLink, its SuperExec and ServerApp
    assert ckpt_round(latest) == 1
    fed.start_server()
    fed.ensure_nodes()  # the SuperNodes reconnect by themselves
    assert all(p.poll() is None for p in fed.nodes.values())
    res = fed.run(out, "--rounds", "2", "--min-nodes", "2", "--round-timeout", "300", "--resume")
    seconds = time.monotonic() - t0
    assert "finished:completed" in res.stdout, res.stdout[-3000:]
    assert "[ROUND 1/1]" in res.stdout and "[ROUND 2/" not in res.stdout  # only the missing round ran
    assert ckpt_round(latest) == 2 and (out / "global_model.pth").is_file()
    rounds = json.loads((out / "history.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        parts = r["participants"]
        assert len(parts) == 2 and not any("error" in p for p in parts)
        assert sum(p["num-examples"] for p in parts) == 54
    status = fed.cli("status", "--dir", str(fed.state)).stdout
    assert "finished:completed" in status and "2 online" in status
    print(f"\n2-round deployment run (2 SuperNodes, TLS + auth, a server crash): {seconds:.0f} s")


@pytest.mark.slow
@pytest.mark.needs_kits
def test_join_starts_and_stops_the_supernode_at_window_edges(fed: Federation, tmp_path: Path) -> None:
    """A clock running 4x fast: the window opens ~5 s after start and closes 15 s later.

    Also registers a key while the SuperLink runs (a key can serve one SuperNode at a time).
    """
    priv, pub, _ = generate(fed.root / "keys" / "dave", "dave")
    assert "as node" in fed.cli("register", str(pub), "--dir", str(fed.state)).stdout
    script = tmp_path / "windowed.py"
    script.write_text(f"""
from datetime import datetime, timedelta
from pathlib import Path
from beatsight.client.join import JoinOptions, TimeWindow, join
from beatsight.common.cliutil import setup_logging
setup_logging()
t0 = datetime.now()
opens = (t0 + timedelta(minutes=2)).replace(second=0, microsecond=0)
base = opens - timedelta(seconds=20)
def now():
    return base + (datetime.now() - t0) * 4
w = TimeWindow(opens.time(), (opens + timedelta(minutes=1)).time())
opts = JoinOptions(server="127.0.0.1:{fed.port}", ca=Path(r"{fed.state / 'ca.pem'}"),
                   key=Path(r"{priv}"), data=Path(r"{fed.stores['alice']}"),
                   window=w, local_port={free_port()})
join(opts, now=now)
""")
    log = tmp_path / "windowed.log"
    proc = fed.spawn([sys.executable, script], log, "flwr-home-windowed")
    wait_for(lambda: "training window" in log.read_text() and "closed" in log.read_text(), 90,
             "the window to open and close", logs=(log,))
    text = log.read_text()
    assert text.index("outside the training window") < text.index("started flower-supernode")
    assert text.index("started flower-supernode") < text.index("closed: stopping the SuperNode")
    wait_for(lambda: log.read_text().count("outside the training window") >= 2, 30, "waiting again",
             logs=(log,))
    assert proc.poll() is None  # waits for tomorrow's window, SuperNode stopped
    from beatsight.common.children import descendants

    assert not any("flower-supernode" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                   for p in descendants(proc.pid) if Path(f"/proc/{p}/cmdline").exists())
    stop_tree(proc.pid, proc=proc)
    assert "stopped" in log.read_text()
