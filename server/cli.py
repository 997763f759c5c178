"""`beatsight-server`: what the maintainers run to host a federation on Flower's Deployment Engine.

init (CA + server certificate) -> register (contributors' public keys) -> start (the SuperLink,
TLS and node authentication on) -> run (a federation) -> status. All state is in one directory.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
import typer
from rich.console import Console
from rich.table import Table

from beatsight.common.children import alive, stop_tree
from beatsight.common.cliutil import run_app
from beatsight.common.errors import BeatSightError

from . import superlink as sl
from .certs import cert_expiry, init_certs, server_names
from .settings import RunSettings

log = logging.getLogger(__name__)
console = Console()

app = typer.Typer(help="BeatSight maintainers: host a federation on Flower's Deployment Engine "
                  "(TLS with your own CA, only registered contributors may connect).",
                  no_args_is_help=True, add_completion=False)

DIR_HELP = "Server state directory (certificates, contributor registry, SuperLink database)."
DEFAULT_DIR = Path("server_state")


def _state(path: Path) -> sl.ServerState:
    return sl.ServerState(path)


@app.callback()
def _root() -> None:
    """BeatSight federation server."""


@app.command()
def init(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP),
    host: list[str] = typer.Option([], "--host", help="DNS name contributors use to reach the "
                                   "server (repeatable). localhost is always included."),
    ip: list[str] = typer.Option([], "--ip", help="IP address contributors use (repeatable). "
                                 "127.0.0.1 is always included."),
) -> None:
    """Create the federation's private CA and the SuperLink's TLS certificate.

    Re-running keeps the CA (contributors' ca.pem stays valid) and re-issues the server
    certificate, e.g. to add a host name.
    """
    created = init_certs(dir, host, ip)
    state = _state(dir)
    names = server_names(state.certs.server_cert)
    console.print(f"{'created CA' if created else 'kept existing CA'} {state.certs.ca_cert}; "
                  f"server certificate for {', '.join(names)} (valid until "
                  f"{cert_expiry(state.certs.server_cert):%Y-%m-%d})", highlight=False)
    console.print(f"send {state.certs.ca_cert} to contributors (public); keep ca.key and server.key "
                  "private (mode 600)", highlight=False)


@app.command()
def register(
    key: Path = typer.Argument(..., help="A contributor's public key (beatsight_node.pub from "
                               "`beatsight-client keygen`)."),
    name: str | None = typer.Option(None, help="Contributor name (default: the key's comment)."),
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP),
) -> None:
    """Allow a contributor in: record their key and register it with the SuperLink.

    Works while the SuperLink is stopped too: `start` registers what is pending.
    """
    state = _state(dir)
    state.certs.check()
    registry = state.registry()
    entry = registry.add(key, name)
    if sl.running(state) is None:
        console.print(f"recorded {entry.name} ({entry.fingerprint}); it is registered with the "
                      "SuperLink at the next `beatsight-server start`", highlight=False)
        return
    try:
        node_id = sl.register_key(state, entry)
    except BeatSightError:
        registry.remove(entry.name)
        raise
    registry.set_node_id(entry.name, node_id)
    console.print(f"registered {entry.name} ({entry.fingerprint}) as node {node_id}", highlight=False)


@app.command()
def unregister(
    name: str = typer.Argument(..., help="Contributor name (see `contributors`)."),
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP),
) -> None:
    """Revoke a contributor's key: their SuperNode can no longer connect."""
    state = _state(dir)
    registry = state.registry()
    entry = registry.get(name)
    if entry.node_id is not None:
        sl.require_running(state)
        sl.unregister_node(state, entry.node_id)
    registry.remove(name)
    console.print(f"removed {name} ({entry.fingerprint})", highlight=False)


@app.command()
def contributors(dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP)) -> None:
    """List registered contributors (and, with a running SuperLink, who is online)."""
    state = _state(dir)
    registry = state.registry()
    status: dict[str, str] = {}
    if sl.running(state) is not None:
        status = {str(n.get("node-id")): str(n.get("status")) for n in sl.list_nodes(state)}
    table = Table(title=f"Contributors ({state.registry_path})")
    for col in ("name", "fingerprint", "node id", "status", "added"):
        table.add_column(col)
    for c in registry.contributors:
        st = ("pending" if c.node_id is None else
              status.get(str(c.node_id), "unknown" if status else "(SuperLink not running)"))
        table.add_row(c.name, c.fingerprint, str(c.node_id or "-"), st, c.added)
    console.print(table)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


@app.command()
def start(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP),
    host: str = typer.Option(sl.LOCAL_HOST, help="Address to listen on; 0.0.0.0 for all interfaces "
                             "(see the README's warning about the Control API)."),
    port: int = typer.Option(sl.DEFAULT_PORT, help="The SuperLink's one HTTPS port."),
) -> None:
    """Run the SuperLink (TLS, contributor authentication) in the foreground until Ctrl-C/SIGTERM."""
    state = _state(dir)
    state.certs.check()
    if (rec := sl.running(state)) is not None:
        raise BeatSightError(f"a SuperLink for {dir} is already running (pid {rec['superlink_pid']}, "
                             f"port {rec['port']})")
    if host in ("0.0.0.0", "::"):
        log.warning("listening on all interfaces: Flower's Control API (run submission, key "
                    "registration) shares this port; restrict who can reach it (see README)")
    signal.signal(signal.SIGTERM, _raise_stop)
    proc = sl.launch_superlink(state, host, port)
    try:
        sl.wait_ready(state, host, port, proc)
        sl.write_pidfile(state, proc.pid, host, port)
        synced = sl.sync_registry(state)
        n = len(state.registry().contributors)
        console.print(f"SuperLink (pid {proc.pid}) on https://{sl.client_address(host, port)}: TLS, "
                      f"contributor authentication on, {n} contributor(s) registered"
                      + (f" ({', '.join(synced)} just now)" if synced else "")
                      + f"; log: {state.log}; Ctrl-C stops", highlight=False, soft_wrap=True)
        while proc.poll() is None:
            time.sleep(0.5)
        raise BeatSightError(f"the SuperLink exited with code {proc.returncode}; see {state.log}")
    except (KeyboardInterrupt, _Stop):
        console.print("stopping the SuperLink")
    finally:
        stop_tree(proc.pid, proc=proc)
        try:
            if json.loads(state.pidfile.read_text()).get("superlink_pid") == proc.pid:
                state.pidfile.unlink()
        except (OSError, ValueError):
            pass


@app.command()
def stop(dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP)) -> None:
    """Stop the SuperLink that `start` runs for this state directory."""
    state = _state(dir)
    rec = sl.require_running(state)
    wrapper = int(rec.get("pid", 0))
    if wrapper and alive(wrapper) and _cmdline(wrapper).find("beatsight-server") >= 0:
        stop_tree(wrapper)
    else:
        stop_tree(int(rec["superlink_pid"]))
    console.print(f"stopped the SuperLink (pid {rec['superlink_pid']})")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parse_set(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as TOML (1, 0.5, true) and otherwise kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BeatSightError(f"--set {item!r}: expected KEY=VALUE, e.g. local-epochs=2")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


@app.command()
def run(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP),
    rounds: int | None = typer.Option(None, help="Federated rounds (num-rounds)."),
    min_nodes: int | None = typer.Option(None, "--min-nodes", help="Minimum contributors per round; "
                                         "fewer after the deadline ends the run (resumable)."),
    fraction: float | None = typer.Option(None, help="Share of connected contributors trained each "
                                          "round (at least --min-nodes)."),
    round_timeout: float | None = typer.Option(None, "--round-timeout", help="Deadline in seconds, "
                                               "both to wait for contributors and for their replies."),
    aggregation: str | None = typer.Option(None, help="fedavg, trimmed-mean, median or krum "
                                           "(robust to poisoned updates)."),
    heldout: Path | None = typer.Option(None, help="Held-out sample store the server evaluates the "
                                        "global model on each round (never sent to anyone)."),
    dp_noise: float | None = typer.Option(None, "--dp-noise", help="Differential privacy: noise "
                                          "multiplier z (dp-noise-multiplier; 0: off)."),
    dp_clip: float | None = typer.Option(None, "--dp-clip", help="DP clipping norm of each "
                                         "contributor's update (dp-clipping-norm)."),
    dp_delta: float | None = typer.Option(None, "--dp-delta", help="DP delta epsilon is reported "
                                          "at (dp-delta)."),
    out_dir: Path = typer.Option(Path("runs/federated"), "--out-dir", help="Checkpoints, history.json, "
                                 "global_model.pth (on the server)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT_DIR/checkpoints/latest.pth."),
    set_: list[str] = typer.Option([], "--set", help="Any other run-config key, e.g. --set "
                                   "local-epochs=2 --set batch-size=16 (repeatable)."),
    app_path: Path | None = typer.Option(None, "--app", help="Flower app directory (default: "
                                         "this package's source tree)."),
    follow: bool = typer.Option(True, "--follow/--detach", help="Stream the run's log until it ends."),
) -> None:
    """Launch a federation on the running SuperLink (`flwr run` with our run config)."""
    state = _state(dir)
    sl.require_running(state)
    overrides = _parse_set(set_)
    named = {"num-rounds": rounds, "min-nodes": min_nodes, "fraction-train": fraction,
             "round-timeout": round_timeout, "aggregation": aggregation,
             "dp-noise-multiplier": dp_noise, "dp-clipping-norm": dp_clip, "dp-delta": dp_delta}
    overrides.update({k: v for k, v in named.items() if v is not None})
    if heldout is not None:
        if not (heldout / "metadata.json").is_file():
            raise BeatSightError(f"--heldout {heldout}: not a sample store (no metadata.json)")
        overrides["heldout"] = str(heldout.resolve())
    else:
        overrides.setdefault("heldout", "")
        log.warning("no --heldout store: the server will not evaluate the global model")
    overrides["out-dir"] = str(out_dir.resolve())
    overrides["resume"] = resume
    RunSettings.from_run_config(overrides)  # one-line errors for bad keys/values, before Flower
    if resume and not (out_dir / "checkpoints" / "latest.pth").is_file():
        log.warning("--resume: %s has no checkpoint yet; starting from round 0", out_dir)
    run_id = sl.submit_run(state, app_path or sl.app_dir(), overrides)
    console.print(f"run {run_id} submitted; out dir {out_dir.resolve()}", highlight=False)
    if follow:
        sl.stream_logs(state, run_id)
        console.print(f"run {run_id}: {sl.run_status(state, run_id)}", highlight=False)


@app.command()
def status(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help=DIR_HELP),
    run_id: str | None = typer.Option(None, "--run-id", help="Show this run (default: the latest)."),
) -> None:
    """The SuperLink, who is online, runs, and the rounds of a run (from its history.json)."""
    state = _state(dir)
    rec = sl.running(state)
    ours = sl.read_runs(state)
    flower_runs: dict[str, dict] = {}
    if rec is None:
        console.print(f"SuperLink: not running ({dir})")
    else:
        console.print(f"SuperLink: running, pid {rec['superlink_pid']}, "
                      f"https://{sl.client_address(rec['host'], rec['port'])}, since {rec['started']}",
                      highlight=False)
        registry = state.registry()
        nodes = sl.list_nodes(state)
        online = [registry.name_of(n["node-id"]) or str(n["node-id"]) for n in nodes
                  if n.get("status") == "online"]
        console.print(f"contributors: {len(registry.contributors)} registered, {len(online)} online"
                      + (f" ({', '.join(online)})" if online else ""), highlight=False)
        flower_runs = {str(r["run-id"]): r for r in sl.list_runs(state)}
    ids = sorted(set(ours) | set(flower_runs), key=lambda i: (ours.get(i, {}).get("submitted", ""),
                                                              flower_runs.get(i, {}).get("pending-at", "")))
    if not ids:
        console.print("no runs yet")
        return
    table = Table(title="Runs")
    for col in ("run id", "status", "elapsed", "rounds", "out dir"):
        table.add_column(col)
    for i in ids:
        fr, ou = flower_runs.get(i, {}), ours.get(i, {})
        cfg = ou.get("run-config", {})
        table.add_row(i, str(fr.get("status", "(SuperLink not running)" if rec is None else "?")),
                      f"{float(fr['elapsed']):.0f} s" if "elapsed" in fr else "-",
                      str(cfg.get("num-rounds", "default")), str(cfg.get("out-dir", "-")))
    console.print(table)
    chosen = run_id or ids[-1]
    out = ours.get(chosen, {}).get("run-config", {}).get("out-dir")
    if out:
        _print_history(Path(out))


def _print_history(out: Path) -> None:
    hist = out / "history.json"
    if not hist.is_file():
        console.print(f"{hist}: no rounds recorded yet")
        return
    rounds = json.loads(hist.read_text()).get("rounds", [])
    table = Table(title=str(hist))
    for col in ("round", "contributors", "failed", "held-out acc", "macro-F1", "time"):
        table.add_column(col, justify="right")
    for r in rounds:
        parts = r.get("participants", [])
        failed = sum(1 for p in parts if "error" in p)
        h = r.get("heldout", {})
        table.add_row(str(r["round"]), str(len(parts) - failed), str(failed),
                      f"{h['accuracy']:.3f}" if "accuracy" in h else "-",
                      f"{h['macro_f1']:.3f}" if "macro_f1" in h else "-", f"{r.get('seconds', 0):.0f} s")
    console.print(table)
    final = out / "global_model.pth"
    console.print(f"final model: {final}" if final.is_file() else
                  f"latest checkpoint: {out / 'checkpoints' / 'latest.pth'}")


@app.command()
def keys(
    dir: Path = typer.Option(Path("release_keys"), "--dir", help="Where to write "
                             "beatsight_release.key (private, mode 600) and beatsight_release.pub."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair (users who "
                               "trust the old public key will refuse new releases)."),
) -> None:
    """Create the maintainers' Ed25519 release-signing key pair."""
    from beatsight.common.signing import fingerprint, generate_keys, load_public_key

    priv, pub = generate_keys(dir, overwrite=force)
    console.print(f"private key {priv} (mode 600: keep it offline, never share it)\n"
                  f"public key {pub} ({fingerprint(load_public_key(pub))}): publish it; users "
                  "pass it as --trust-key or env BEATSIGHT_TRUST_KEY", highlight=False)


@app.command()
def release(
    model: Path = typer.Argument(..., help="Model to release, e.g. runs/federated/global_model.pth."),
    key: Path = typer.Option(..., "--key", help="Private release key (from `keys`)."),
    out: Path = typer.Option(..., "--out", help="Release directory: the model, its manifest "
                             "(.manifest.json) and signature (.sig) are written here."),
) -> None:
    """Sign a model for release: manifest (sha256, classes, features, round, metrics) + signature."""
    from beatsight.common.signing import release as sign_release

    if not model.is_file():
        raise BeatSightError(f"{model}: no such model file")
    target, manifest, sig = sign_release(model, key, out)
    console.print(f"released {target}\nmanifest {manifest}\nsignature {sig}", highlight=False)


@app.command()
def verify(
    model: Path = typer.Argument(..., help="Released model (.pth) with its .manifest.json and .sig."),
    trust_key: Path = typer.Option(..., "--trust-key", help="The release public key."),
) -> None:
    """Check a release's signature and weights hash; prints the signed manifest."""
    from beatsight.common.signing import verify_release

    manifest = verify_release(model, trust_key)
    console.print(f"{model}: valid signature by {manifest['signer']}; {manifest['model_version']}, "
                  f"round {manifest.get('round')}, held-out {manifest.get('heldout_metrics')}",
                  highlight=False)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
