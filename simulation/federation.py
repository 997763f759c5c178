"""The main job: a federation of simulated per-kit contributors on Flower's simulation engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from beatsight.client.clientapp import make_client_app
from beatsight.server.serverapp import make_server_app
from beatsight.server.settings import RunSettings

log = logging.getLogger(__name__)


def backend_config(threads: int) -> dict:
    """One CPU per simulated contributor; as many run at once as the machine has cores."""
    cores = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": max(1, min(threads, cores)), "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "include_dashboard": False,
                      "log_to_driver": False, "logging_level": "warning"},
    }


def simulate(settings: RunSettings, data_dirs: list[Path], client_mods: list | None = None) -> dict:
    """Run `settings` over one simulated SuperNode per contributor store; returns held-out metrics."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.simulation import run_simulation

    settings.validate()
    # numpy's OpenBLAS pool can deadlock when Flower's server thread calls it beside Ray (seen
    # here); torch does the heavy maths, so single-threaded BLAS costs nothing.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    server_app = make_server_app(settings)
    client_app = make_client_app([str(p) for p in data_dirs], mods=client_mods)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(data_dirs),
                   backend_config=backend_config(settings.threads))
    hist = Path(settings.out_dir) / "history.json"
    import json

    rounds = json.loads(hist.read_text())["rounds"] if hist.exists() else []
    return rounds[-1]["heldout"] if rounds else {}
