"""Poisoning experiment: 5 simulated contributors, one attacker; held-out accuracy per defence.

    .venv/bin/python bench/poisoning.py --out runs/poisoning [--rounds 2] [--only clean-fedavg,...]

Attacks: `flip` (contributor 0 trains on labels rotated by one class) and `scale` (contributor 0
sends 10x its update). Each is run with plain FedAvg and with a robust aggregation; `scale`
also with the server's update-norm screen off, to see what the aggregation alone does.
Writes OUT/results.json and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from beatsight.server.settings import RunSettings
from beatsight.simulation.attacks import ScaledUpdate, flip_labels
from beatsight.simulation.contributors import build_federation, build_heldout
from beatsight.simulation.federation import simulate

# name: (attack, aggregation, update-norm screen on)
RUNS = {
    "clean-fedavg": (None, "fedavg", True),
    "clean-trimmed-mean": (None, "trimmed-mean", True),
    "flip-fedavg": ("flip", "fedavg", True),
    "flip-trimmed-mean": ("flip", "trimmed-mean", True),
    "scale-fedavg-noscreen": ("scale", "fedavg", False),
    "scale-trimmed-mean-noscreen": ("scale", "trimmed-mean", False),
    "scale-fedavg": ("scale", "fedavg", True),
}


def run_one(name: str, out: Path, stores: list[Path], heldout: Path, rounds: int, epochs: int,
            seed: int) -> dict:
    attack, aggregation, screen = RUNS[name]
    dirs, mods = list(stores), []
    if attack == "flip":
        dirs[0] = flip_labels(stores[0], out / "data" / "flipped-00")
    elif attack == "scale":
        mods = [ScaledUpdate(partition=0, factor=10.0)]
    settings = RunSettings(num_rounds=rounds, local_epochs=epochs, min_nodes=len(dirs) - 1,
                           heldout=str(heldout), out_dir=str(out / name), seed=seed, lr=2e-3,
                           aggregation=aggregation, update_norm_factor=5.0 if screen else 0.0,
                           max_update_norm=1000.0 if screen else 0.0)
    t0 = time.time()
    metrics = simulate(settings, dirs, client_mods=mods)
    hist = json.loads((out / name / "history.json").read_text())["rounds"]
    rejected = [p for r in hist for p in r.get("participants", []) if "error" in p]
    return {"accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
            "rejected": len(rejected), "seconds": round(time.time() - t0)}


def main(out: Path = typer.Option(Path("runs/poisoning"), "--out"),
         rounds: int = typer.Option(2), epochs: int = typer.Option(2, "--local-epochs"),
         seed: int = typer.Option(1), only: str = typer.Option("", help="Comma-separated run names.")
         ) -> None:
    stores = build_federation(out / "data", n_contributors=5, seed=seed, songs_per_contributor=1,
                              song_seconds=8.0, progress=False)
    heldout = build_heldout(out / "data" / "heldout", seed=seed, songs_per_kit=1, song_seconds=6.0,
                            isolated_per_class=2, progress=False)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in [n for n in (only.split(",") if only else RUNS) if n]:
        results[name] = run_one(name, out, stores, heldout, rounds, epochs, seed)
        results_path.write_text(json.dumps(results, indent=2))
        print(name, results[name], flush=True)
    print(f"{'run':32} {'acc':>6} {'F1':>6} {'rejected':>8}")
    for name, r in results.items():
        print(f"{name:32} {r['accuracy']:6.3f} {r['macro_f1']:6.3f} {r['rejected']:8d}")


if __name__ == "__main__":
    sys.exit(typer.run(main))
