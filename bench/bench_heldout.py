"""Held-out evaluation speed: `predict_logits` against plain contiguous batches of 256, same run.

The server evaluates the global model on the held-out store after every round, and `crossval`
on every fold's test hits. This times both ways on the same patches, alternating, and prints
patches per second and the ratio (machines are noisy: only the in-run ratio means much).

    .venv/bin/python bench/bench_heldout.py                        # the main job's held-out store
    .venv/bin/python bench/bench_heldout.py --heldout runs/data/heldout --threads 2 --repeat 3
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import typer

from beatsight.client.evaluation import predict_logits
from beatsight.client.store import SampleStore
from beatsight.common.model import DrumClassifierCNN


@torch.no_grad()
def plain(model: DrumClassifierCNN, X: np.ndarray, batch: int = 256) -> np.ndarray:
    """The way evaluation ran before: contiguous model and input, batches of 256."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(X[i:i + batch].astype(np.float32))).numpy()
                           for i in range(0, len(X), batch)])


def main(heldout: Path = typer.Option(Path("runs/data/heldout"), help="A sample store."),
         threads: int = typer.Option(2, min=1), repeat: int = typer.Option(3, min=1)) -> None:
    torch.set_num_threads(threads)
    X, _ = SampleStore(heldout).load_features()
    if len(X) == 0:
        raise SystemExit(f"{heldout}: no samples (build it with `beatsight-sim contributors`)")
    torch.manual_seed(0)
    model = DrumClassifierCNN()
    times: dict[str, list[float]] = {"plain": [], "predict_logits": []}
    for _ in range(repeat):
        for name, fn in (("plain", plain), ("predict_logits", predict_logits)):
            t0 = time.perf_counter()
            out = fn(model, X)
            times[name].append(time.perf_counter() - t0)
            if name == "plain":
                ref = out
        diff = float(np.abs(out - ref).max())
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(X)} patches, {threads} thread(s), best of {repeat}")
    for name, t in best.items():
        print(f"  {name:15} {t:6.2f} s  {len(X) / t:7.0f} patches/s  (runs: "
              + ", ".join(f"{x:.2f}" for x in times[name]) + ")")
    print(f"  speed-up {best['plain'] / best['predict_logits']:.1f}x; largest logit difference "
          f"{diff:.1e}")


if __name__ == "__main__":
    typer.run(main)
