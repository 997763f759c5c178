"""`beatsight-client keygen` / `join`: take part in a federation as a Flower SuperNode.

`join` checks everything it can before connecting (store, CA, key), then runs
`flower-supernode` with the local store passed as node config, only inside an optional daily
time window, with its CPU use capped. flower-supernode itself reconnects after a server
restart; a refusal (unregistered key, wrong CA) stops `join` with one line.
"""

from __future__ import annotations

import collections
import getpass
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import typer
from cryptography import x509

from beatsight.common.children import bin_dir, stop_tree, tool_env
from beatsight.common.errors import BeatSightError

from . import keys

log = logging.getLogger(__name__)

DEFAULT_KEY_DIR = Path.home() / ".beatsight"
RESTART_DELAY_S = 30.0
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS")

# What flower-supernode prints when the server refuses us: (pattern, our one-line explanation)
FATAL = (
    ("Failed to activate SuperNode",
     "the server refused this key (fingerprint {fp}): either it is not registered yet (send {pub} "
     "to the maintainers) or another SuperNode with the same key is connected"),
    ("CERTIFICATE_VERIFY_FAILED",
     "the server's certificate is not signed by {ca}: get the federation's current ca.pem from "
     "the maintainers"),
    ("Unable to parse the private key", "{key}: flower-supernode cannot read this private key"),
    ("address already in use", "local port {port} is in use: pass --local-port with a free port"),
)


@dataclass(frozen=True)
class TimeWindow:
    """A daily window in local time, e.g. 23:00-07:00 (may wrap past midnight)."""

    start: dtime
    end: dtime

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
        if not m:
            raise BeatSightError(f"--window {text!r}: expected HH:MM-HH:MM, e.g. 23:00-07:00")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise BeatSightError(f"--window {text!r}: hours are 0-23, minutes 0-59")
        start, end = dtime(h1, m1), dtime(h2, m2)
        if start == end:
            raise BeatSightError(f"--window {text!r}: start and end are equal (omit --window to "
                                 "train at any time)")
        return cls(start, end)

    def is_open(self, now: datetime) -> bool:
        t = now.time()
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def next_change(self, now: datetime) -> datetime:
        """When the window next opens (if closed now) or closes (if open now)."""
        target = self.end if self.is_open(now) else self.start
        at = now.replace(hour=target.hour, minute=target.minute, second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass
class JoinOptions:
    server: str
    ca: Path
    key: Path
    data: Path
    window: TimeWindow | None = None
    threads: int | None = None
    local_port: int = 9094
    log_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def check_server(server: str) -> str:
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})", server)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise BeatSightError(f"--server {server!r}: expected HOST:PORT, e.g. fl.example.org:8000")
    return server


def check_ca(path: Path) -> None:
    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise BeatSightError(f"--ca {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise BeatSightError(f"--ca {path}: not a PEM certificate (use the ca.pem the maintainers "
                             "sent)") from None


def usable_samples(data: Path) -> int:
    """Samples the ClientApp can train on; refuses an empty, missing or unreadable store."""
    from .store import SampleStore

    if not data.is_dir():
        raise BeatSightError(f"--data {data}: no such sample store (collect samples first with "
                             "`beatsight-client collect`)")
    n = len(SampleStore(data).usable())
    if n == 0:
        raise BeatSightError(f"--data {data}: the sample store has no usable samples (add some with "
                             "`beatsight-client collect`)")
    return n


def check(opts: JoinOptions) -> int:
    """Every check that can fail before we connect; returns the store's usable sample count."""
    check_server(opts.server)
    check_ca(opts.ca)
    keys.check_private_key(opts.key)
    if "'" in str(opts.data.resolve()):
        raise BeatSightError(f"--data {opts.data}: a path containing ' cannot be passed to Flower's "
                             "--node-config; rename or symlink the folder")
    if opts.threads is not None and opts.threads < 1:
        raise BeatSightError("--threads must be at least 1")
    return usable_samples(opts.data)


def supernode_command(opts: JoinOptions) -> list[str]:
    node_config = f"data-path='{opts.data.resolve()}'"
    if opts.threads:
        node_config += f" threads={opts.threads}"
    return [
        str(Path(bin_dir()) / "flower-supernode"),
        "--superlink", opts.server,
        "--root-certificates", str(opts.ca.resolve()),
        "--auth-supernode-private-key", str(opts.key.resolve()),
        "--node-config", node_config,
        "--port", str(opts.local_port),
    ]


def supernode_env(opts: JoinOptions) -> dict[str, str]:
    extra = dict(opts.extra_env)
    if opts.threads:
        extra.update({k: str(opts.threads) for k in THREAD_ENV})
    return tool_env(extra)


def cap_cpus(threads: int) -> list[int] | None:
    """Pin this process (and so every child: SuperNode, ClientApp) to `threads` CPUs.

    A hard cap whatever thread count the training code asks torch for. Linux only.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


class SuperNode:
    """One flower-supernode child; its output goes to our log and is scanned for refusals."""

    def __init__(self, opts: JoinOptions) -> None:
        self.opts = opts
        self.proc: subprocess.Popen | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self.fatal: str | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> int:
        self.fatal = None
        self.tail.clear()
        self.proc = subprocess.Popen(supernode_command(self.opts), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=supernode_env(self.opts), start_new_session=True,
                                     text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = re.sub(r"\x1b\[[0-9;]*m", "", raw.rstrip())
            if not line.strip():
                continue
            self.tail.append(line)
            log.info("supernode: %s", line)
            for pattern, message in FATAL:
                if pattern.lower() in line.lower() and self.fatal is None:
                    self.fatal = message

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_tree(self.proc.pid, timeout=15, proc=self.proc)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def explain_exit(self) -> str | None:
        """A one-line reason if the SuperNode exited because it was refused, else None."""
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.fatal is None:
            return None
        pub = self.opts.key.with_name(self.opts.key.name + ".pub")
        fp = "?"
        if pub.is_file():
            fp = keys.fingerprint(keys.read_public_key(pub)[0])
        return self.fatal.format(fp=fp, pub=pub, ca=self.opts.ca, key=self.opts.key,
                                 port=self.opts.local_port)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def _sleep_until(when: datetime, now=datetime.now) -> None:
    while (left := (when - now()).total_seconds()) > 0:
        time.sleep(min(left, 5.0))


def join(opts: JoinOptions, now=datetime.now) -> None:
    """Serve as a SuperNode until Ctrl-C/SIGTERM (in the window, if one is given)."""
    n = check(opts)
    if opts.threads:
        cpus = cap_cpus(opts.threads)
        log.info("capped to %d thread(s)%s", opts.threads, f" on CPU(s) {cpus}" if cpus else "")
    log.info("store %s: %d usable samples; server %s; CA %s; key %s%s", opts.data, n, opts.server,
             opts.ca, opts.key, f"; training window {opts.window}" if opts.window else "")
    node = SuperNode(opts)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        while True:
            if opts.window and not opts.window.is_open(now()):
                opens = opts.window.next_change(now())
                log.info("outside the training window %s: waiting until %s", opts.window,
                         f"{opens:%Y-%m-%d %H:%M}")
                _sleep_until(opens, now)
                continue
            pid = node.start()
            log.info("started flower-supernode (pid %d), connecting to %s", pid, opts.server)
            closes = opts.window.next_change(now()) if opts.window else None
            while node.running():
                if closes is not None and now() >= closes:
                    log.info("training window %s closed: stopping the SuperNode", opts.window)
                    node.stop()
                    break
                time.sleep(1.0)
            else:
                reason = node.explain_exit()
                if reason:
                    raise BeatSightError(reason)
                log.warning("flower-supernode exited with code %s; restarting in %.0f s",
                            node.proc.returncode if node.proc else "?", RESTART_DELAY_S)
                time.sleep(RESTART_DELAY_S)
    except (KeyboardInterrupt, _Stop):
        log.info("stopping: terminating the SuperNode")
    finally:
        node.stop()
        log.info("stopped")


# ---------------------------------------------------------------- commands
def _default_name() -> str:
    raw = f"{getpass.getuser()}-{socket.gethostname().split('.')[0]}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:64].strip("-.") or "contributor"


def _add_file_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)


def register_commands(app: typer.Typer) -> None:
    """Add `keygen` and `join` to the `beatsight-client` app."""

    @app.command()
    def keygen(
        out: Path = typer.Option(DEFAULT_KEY_DIR, "--out", help="Directory for beatsight_node "
                                 "(private, mode 600) and beatsight_node.pub."),
        name: str | None = typer.Option(None, help="Your contributor name, stored in the public key "
                                 "(default: user-host)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing key pair."),
    ) -> None:
        """Create your key pair for joining a federation; prints the public key to send."""
        priv, pub, line = keys.generate(out, name or _default_name(), overwrite=force)
        typer.echo(f"private key: {priv} (keep it; never send it)")
        typer.echo(f"public key:  {pub}  fingerprint {keys.fingerprint(line)}")
        typer.echo("send this line (or the .pub file) to the federation's maintainers:")
        typer.echo(line)

    @app.command("join")
    def join_cmd(
        server: str = typer.Option(..., help="The federation's SuperLink, HOST:PORT."),
        ca: Path = typer.Option(..., help="The federation's ca.pem (from the maintainers)."),
        key: Path = typer.Option(DEFAULT_KEY_DIR / keys.PRIVATE_NAME, help="Your private key "
                                 "(from `keygen`)."),
        data: Path = typer.Option(Path("training_data"), help="Your sample store; it never leaves "
                                  "this machine, only model weights and metrics do."),
        window: str | None = typer.Option(None, help="Daily local-time window to train in, e.g. "
                                          "23:00-07:00; outside it the SuperNode is stopped."),
        threads: int | None = typer.Option(None, help="CPU cores training may use (default: "
                                           "what the server asks for)."),
        local_port: int = typer.Option(9094, "--local-port", help="Local port of the SuperNode's "
                                       "own API (change it to run two on one machine)."),
        log_file: Path | None = typer.Option(None, "--log-file", help="Also append the log here, "
                                             "with timestamps."),
    ) -> None:
        """Train with the federation as a Flower SuperNode until Ctrl-C (or SIGTERM)."""
        if log_file is not None:
            _add_file_log(log_file)
        opts = JoinOptions(server=server, ca=ca, key=key, data=data,
                           window=TimeWindow.parse(window) if window else None,
                           threads=threads, local_port=local_port, log_file=log_file)
        join(opts)
