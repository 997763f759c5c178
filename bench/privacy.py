"""Accuracy cost of differential privacy: the main job's federation without DP and at several noise
multipliers; held-out accuracy, macro-F1, loss and the epsilon each run reports.

    .venv/bin/python bench/privacy.py --out runs/privacy [--noise 0,0.001,0.01,1] [--clip 50]

Uses the main job's data (`--data`, default runs/data: 5 per-kit contributors and the held-out
store, built by `beatsight-sim run` or `beatsight-sim contributors --out runs/data`) and its
training defaults, run in one process (simulation/inprocess.py, contributors' local evaluation
skipped). Noise 0 is the run without DP (FedAvg weighted by sample count; with DP the mean is
unweighted); its update norms (in results.json) are what to pick --clip from. Writes
OUT/results.json and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from beatsight.server.settings import RunSettings
from beatsight.simulation.inprocess import simulate_in_process


def main(out: Path = typer.Option(Path("runs/privacy"), "--out"),
         data: Path = typer.Option(Path("runs/data"), "--data"),
         noise: str = typer.Option("0,0.001,0.01,1", help="Comma-separated noise multipliers (0: no DP)."),
         clip: float = typer.Option(RunSettings().dp_clipping_norm, help="Clipping norm."),
         delta: float = typer.Option(1e-5, help="Delta epsilon is reported at."),
         rounds: int = typer.Option(1), seed: int = typer.Option(0)) -> None:
    stores = sorted(p for p in data.glob("contributor-*") if p.is_dir())
    if not stores or not (data / "heldout").is_dir():
        raise SystemExit(f"{data}: no contributor-* / heldout stores; build them with "
                         f"`beatsight-sim contributors --out {data}`")
    results_path = out / "results.json"
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for z in [float(x) for x in noise.split(",") if x.strip()]:
        name = f"z={z:g}" + (f",clip={clip:g}" if z > 0 else "")
        settings = RunSettings(num_rounds=rounds, seed=seed, threads=2, heldout=str(data / "heldout"),
                               out_dir=str(out / name), dp_noise_multiplier=z, dp_clipping_norm=clip,
                               dp_delta=delta, fraction_evaluate=0.0)
        t0 = time.time()
        simulate_in_process(settings, stores)
        hist = json.loads((out / name / "history.json").read_text())["rounds"]
        results[name] = {
            "accuracy": [round(r["heldout"]["accuracy"], 4) for r in hist],
            "macro_f1": [round(r["heldout"]["macro_f1"], 4) for r in hist],
            "loss": [round(r["heldout"]["loss"], 3) for r in hist],
            "update_norms": [[p.get("update-norm") for p in r.get("participants", [])] for r in hist[1:]],
            "epsilon": hist[-1].get("privacy", {}).get("epsilon"), "delta": delta if z > 0 else None,
            "seconds": round(time.time() - t0),
        }
        results_path.write_text(json.dumps(results, indent=2))
        print(name, results[name], flush=True)
    print(f"{'run':20} {'epsilon':>10} {'accuracy':>9} {'macro-F1':>9} {'loss':>9}")
    for name, r in results.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.4g}"
        print(f"{name:20} {eps:>10} {r['accuracy'][-1]:9.3f} {r['macro_f1'][-1]:9.3f} {r['loss'][-1]:9.3f}")


if __name__ == "__main__":
    sys.exit(typer.run(main))
