"""The maintainers' side of Flower's Deployment Engine: the SuperLink process and the `flwr` CLI.

Everything lives in one state directory (`beatsight-server init --dir`): TLS material, the
contributor registry, the SuperLink's database (registered keys and runs survive a restart),
its log, and a private FLWR_HOME whose `config.toml` holds the `beatsight` connection that the
`flwr` commands use. Flower is driven through its own CLIs (flower-superlink, flwr), never by
its internal Python APIs, which change between releases.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from beatsight.common.atomic import atomic_write_text
from beatsight.common.children import alive, bin_dir, tool_env
from beatsight.common.errors import BeatSightError

from .certs import CertPaths, server_names
from .registry import Contributor, Registry

log = logging.getLogger(__name__)

CONNECTION = "beatsight"
DEFAULT_PORT = 8000
LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerState:
    """Paths inside the maintainers' state directory."""

    root: Path

    @property
    def certs(self) -> CertPaths:
        return CertPaths(self.root)

    @property
    def registry_path(self) -> Path:
        return self.root / "contributors.json"

    @property
    def database(self) -> Path:
        return self.root / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    @property
    def log(self) -> Path:
        return self.root / "superlink.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "superlink.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs.json"

    def registry(self) -> Registry:
        return Registry(self.registry_path)

    def env(self) -> dict[str, str]:
        return tool_env({"FLWR_HOME": str(self.flwr_home.resolve())})


def client_address(host: str, port: int) -> str:
    """Where local tools reach a SuperLink bound to `host` (a wildcard bind means loopback)."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = LOCAL_HOST
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_connection(state: ServerState, host: str, port: int) -> None:
    """The `beatsight` connection in our private FLWR_HOME: TLS, pinned to our own CA."""
    conf = {"superlink": {"default": CONNECTION, CONNECTION: {
        "address": client_address(host, port),
        "root-certificates": str(state.certs.ca_cert.resolve()),
    }}}
    state.flwr_home.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state.flwr_home / "config.toml", tomli_w.dumps(conf))


def superlink_command(state: ServerState, host: str, port: int) -> list[str]:
    c = state.certs
    return [
        str(Path(bin_dir()) / "flower-superlink"),
        "--ssl-ca-certfile", str(c.ca_cert.resolve()),
        "--ssl-certfile", str(c.server_cert.resolve()),
        "--ssl-keyfile", str(c.server_key.resolve()),
        "--enable-supernode-auth",
        "--host", host, "--port", str(port),
        "--database", str(state.database.resolve()),
        # The app's dependencies are this package's; never `uv sync` them from the network.
        "--disable-runtime-dependency-installation",
    ]


def check_host(state: ServerState, host: str) -> None:
    """The SuperLink's own ServerApp process connects to `host` and verifies the certificate."""
    if host in ("0.0.0.0", "::"):
        return
    names = server_names(state.certs.server_cert)
    if host not in names:
        raise BeatSightError(f"--host {host} is not in the server certificate ({', '.join(names)}); "
                             f"re-run `beatsight-server init --dir {state.root} --ip/--host {host}`")


def launch_superlink(state: ServerState, host: str, port: int) -> subprocess.Popen:
    """Start `flower-superlink` (TLS + node authentication), its output appended to the log."""
    state.certs.check()
    check_host(state, host)
    write_connection(state, host, port)
    with state.log.open("ab") as fh:
        fh.write(f"\n=== beatsight-server start {datetime.now(UTC).isoformat()} "
                 f"on {host}:{port} ===\n".encode())
        return subprocess.Popen(superlink_command(state, host, port), stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=state.env(), cwd=state.root, start_new_session=True)


def wait_ready(state: ServerState, host: str, port: int, proc: subprocess.Popen | None = None,
               timeout: float = 60.0) -> None:
    """Block until the SuperLink completes a TLS handshake against our CA, or fail in one line."""
    ctx = ssl.create_default_context(cafile=str(state.certs.ca_cert))
    target = client_address(host, port).rsplit(":", 1)[0].strip("[]")
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BeatSightError(f"the SuperLink exited with code {proc.returncode} "
                                 f"(is port {port} in use?); see {state.log}")
        try:
            with socket.create_connection((target, port), timeout=2) as sock:
                with ctx.wrap_socket(sock, server_hostname=target):
                    return
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise BeatSightError(f"the SuperLink did not answer on {target}:{port} within "
                                     f"{timeout:.0f} s; see {state.log}") from None
            time.sleep(0.5)


# ---------------------------------------------------------------- running SuperLink record
def write_pidfile(state: ServerState, superlink_pid: int, host: str, port: int) -> None:
    atomic_write_text(state.pidfile, json.dumps({
        "pid": os.getpid(), "superlink_pid": superlink_pid, "host": host, "port": port,
        "started": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")


def running(state: ServerState) -> dict | None:
    """The record of a live `beatsight-server start` for this state directory, if any."""
    try:
        rec = json.loads(state.pidfile.read_text())
    except (OSError, ValueError):
        return None
    pid = int(rec.get("superlink_pid", 0))
    try:  # after a reboot the pid may belong to something else
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmd = b"flower-superlink"  # no /proc: trust the pid
    return rec if alive(pid) and b"flower-superlink" in cmd else None


def require_running(state: ServerState) -> dict:
    rec = running(state)
    if rec is None:
        raise BeatSightError(f"no SuperLink is running for {state.root}: start one with "
                             f"`beatsight-server start --dir {state.root}`")
    return rec


# ---------------------------------------------------------------- the `flwr` CLI
def flwr_json(state: ServerState, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run `flwr ARGS --format json` against our connection; a failure becomes one line."""
    cmd = [str(Path(bin_dir()) / "flwr"), *args, "--format", "json"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=state.env(), timeout=timeout,
                             cwd=state.root)
    except subprocess.TimeoutExpired:
        raise BeatSightError(f"`flwr {args[0]}` did not answer within {timeout:.0f} s") from None
    out = res.stdout
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else {}
    except ValueError:
        data = {}
    if not data.get("success"):
        msg = str(data.get("error-message") or res.stderr or out).strip()
        msg = " ".join(re.sub(r"^\[code: \d+\]\s*", "", line.strip()) for line in msg.splitlines()
                       if line.strip() and not line.startswith("Using SuperLink"))
        raise BeatSightError(f"flwr {' '.join(args[:2])}: {msg or 'failed'}")
    return data


def register_key(state: ServerState, contributor: Contributor) -> int:
    """Hand a contributor's public key to the SuperLink; returns the node id it assigned."""
    with tempfile.TemporaryDirectory() as tmp:
        pub = Path(tmp) / f"{contributor.name}.pub"
        pub.write_text(f"{contributor.public_key} {contributor.name}\n")
        try:
            data = flwr_json(state, "supernode", "register", str(pub), CONNECTION, "--name",
                             contributor.name)
        except BeatSightError as exc:
            if "already in use" not in str(exc):
                raise
            raise BeatSightError(
                f"the SuperLink already knows this key ({contributor.fingerprint}): it is registered, "
                "or it was unregistered, and Flower never accepts a revoked key again; the "
                "contributor makes a new one with `beatsight-client keygen --force`") from None
    return int(data["node-id"])


def unregister_node(state: ServerState, node_id: int) -> None:
    flwr_json(state, "supernode", "unregister", str(node_id), CONNECTION)


def list_nodes(state: ServerState) -> list[dict]:
    return list(flwr_json(state, "supernode", "ls", CONNECTION).get("nodes", []))


def list_runs(state: ServerState) -> list[dict]:
    return list(flwr_json(state, "ls", CONNECTION).get("runs", []))


def sync_registry(state: ServerState) -> list[str]:
    """Register every contributor recorded while the SuperLink was down; returns their names."""
    registry = state.registry()
    done = []
    for c in registry.pending():
        try:
            registry.set_node_id(c.name, register_key(state, c))
            done.append(c.name)
        except BeatSightError as exc:
            log.warning("could not register %s (%s): %s", c.name, c.fingerprint, exc)
    return done


# ---------------------------------------------------------------- runs
def app_dir() -> Path:
    """The Flower app (pyproject.toml with [tool.flwr.app]): the source tree of this package."""
    import beatsight.server as pkg

    root = Path(pkg.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text(encoding="utf-8"):
        raise BeatSightError("cannot find the BeatSight Flower app next to the installed package; "
                             "pass --app with the source checkout's directory")
    return root


def stage_app(app: Path, dest: Path) -> Path:
    """A copy of the app with only what its FAB carries: pyproject.toml, LICENSE and the
    packages' sources (`[tool.setuptools.package-dir]`). `flwr run` walks and resolves every
    file under the app directory before it applies .gitignore; in a checkout with its .venv
    (~44,000 files) that walk took about 6 of the build's 7.5 s, and a large runs/ adds more.
    An app without that table, or missing one of its folders (a custom --app), is used as is."""
    try:
        meta = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return app
    sources = sorted(set(meta.get("tool", {}).get("setuptools", {}).get("package-dir", {}).values()))
    if not sources or not all((app / src).is_dir() for src in sources):
        return app
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "LICENSE"):
        if (app / name).is_file():
            shutil.copy2(app / name, dest / name)
    for src in sources:
        shutil.copytree(app / src, dest / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def submit_run(state: ServerState, app: Path, overrides: dict[str, Any]) -> str:
    """`flwr run APP beatsight --run-config <toml>`; returns the run id.

    Overrides go through a TOML file, so paths with spaces or quotes need no shell quoting.
    """
    runs_dir = state.root / "runs"
    runs_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cfg = runs_dir / f"run-config-{stamp}.toml"
    atomic_write_text(cfg, tomli_w.dumps(overrides))
    with tempfile.TemporaryDirectory(prefix="app-", dir=state.root) as tmp:
        staged = stage_app(app, Path(tmp) / app.name)
        data = flwr_json(state, "run", str(staged), CONNECTION, "--run-config", str(cfg.resolve()))
    run_id = str(data["run-id"])
    record_run(state, run_id, overrides, cfg)
    return run_id


def record_run(state: ServerState, run_id: str, overrides: dict[str, Any], cfg: Path) -> None:
    runs = read_runs(state)
    runs[run_id] = {"submitted": datetime.now(UTC).isoformat(timespec="seconds"),
                    "run-config": overrides, "run-config-file": str(cfg)}
    atomic_write_text(state.runs, json.dumps(runs, indent=2) + "\n")


def read_runs(state: ServerState) -> dict[str, dict]:
    try:
        return json.loads(state.runs.read_text())
    except (OSError, ValueError):
        return {}


def stream_logs(state: ServerState, run_id: str) -> int:
    """Follow a run's log (ServerApp output) until it ends; returns flwr's exit code."""
    cmd = [str(Path(bin_dir()) / "flwr"), "log", run_id, CONNECTION, "--stream"]
    return subprocess.call(cmd, env=state.env(), cwd=state.root)


def run_status(state: ServerState, run_id: str) -> str:
    for r in list_runs(state):
        if str(r.get("run-id")) == str(run_id):
            return str(r.get("status", "unknown"))
    return "unknown"
