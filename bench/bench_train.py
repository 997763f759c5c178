"""Benchmark: training throughput of `beatsight-client train` vs the original training loop.

Same data (an export directory collected from a groove rendered with a real Hydrogen kit),
same model and initial weights, same epochs, same run. The original loop, as
`train_classifier.py` did it: a Dataset that decodes each snippet WAV with librosa and
recomputes its features in `__getitem__` every epoch (validation too), NCHW float32,
DataLoader batch 32. Ours: the `train` command's path (feature cache + `client.training.fit`),
end to end including loading, cold cache (first run) and warm cache (every later run / round).
Then the levers one at a time, one training epoch each. Prints samples/s and ratios.

    .venv/bin/python bench/bench_train.py [--kit GMRockKit] [--seconds 45] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from beatsight.client.cli import load_splits
from beatsight.client.evaluation import evaluate
from beatsight.client.store import SampleStore
from beatsight.client.training import TrainConfig, bf16_native, fit, new_model
from beatsight.common.augment import DEFAULT_AUGMENT
from beatsight.common.classes import CLASSES
from beatsight.common.features import DEFAULT_SETTINGS, patches


class OriginalDataset(torch.utils.data.Dataset):
    """Decode + features per item, every epoch (the original DrumSampleDataset's pattern)."""

    def __init__(self, root: Path, split: str) -> None:
        self.dir = root / split
        self.items = json.loads((root / f"{split}_labels.json").read_text())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import librosa

        it = self.items[i]
        audio, _ = librosa.load(str(self.dir / it["file"]), sr=44100)
        x = patches(audio, [DEFAULT_SETTINGS.pre_ms / 1000])[0]
        return torch.from_numpy(x), CLASSES.index(it["label"])


def original_train(root: Path, epochs: int, seed: int) -> tuple[float, float, int]:
    """The original loop; returns (wall seconds, final val accuracy, train samples)."""
    train_ds, val_ds = OriginalDataset(root, "train"), OriginalDataset(root, "val")
    g = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=32, shuffle=True, generator=g)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=32)
    model = new_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=5)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train_dl:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        model.eval()
        tot, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in val_dl:
                out = model(x)
                tot += float(loss_fn(out, y)) * len(y)
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        sched.step(tot / n)
        acc = correct / n
    return time.perf_counter() - t0, acc, len(train_ds)


def ours_train(root: Path, epochs: int, seed: int, cold: bool, **kw) -> tuple[float, float, int]:
    """The `train` command's work: load (cache) + fit with validation every epoch."""
    if cold:
        shutil.rmtree(root / ".cache", ignore_errors=True)
    t0 = time.perf_counter()
    train, val = load_splits(root, seed, 0.2, progress=False)
    model = new_model(seed)
    cfg = TrainConfig(epochs=epochs, seed=seed, early_stopping_patience=0, **kw)
    fit(model, train, cfg, val_data=val, progress=False)
    secs = time.perf_counter() - t0
    return secs, evaluate(model, val.X, val.y)["accuracy"], len(train)


def lever(root: Path, seed: int, **kw) -> float:
    """Training samples/s of one epoch (warm cache, no validation) for one setting."""
    train, _ = load_splits(root, seed, 0.2, progress=False)
    cfg = TrainConfig(epochs=1, seed=seed, early_stopping_patience=0, **kw)
    return fit(new_model(seed), train, cfg, progress=False)[0]["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default="GMRockKit")
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-levers", action="store_true", help="Skip the per-lever table.")
    args = ap.parse_args()

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_extract import render

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wav, bsm = render(work, args.kit, args.seconds, 90.0)
        store = SampleStore(work / "store")
        store.extract_beatmap(bsm, wav)
        root = work / "dataset"
        rep = store.export(root, seed=args.seed)
        print(f"data: {rep.train} train / {rep.val} val samples from {wav.name}; "
              f"{args.epochs} epochs; torch threads {torch.get_num_threads()}; native bf16: "
              f"{bf16_native()}; load average {os.getloadavg()[0]:.1f}")
        print("per class (train, val): " + ", ".join(f"{c} {a}/{b}"
                                                     for c, (a, b) in rep.per_class.items()))
        lever(root, args.seed, augment=[])  # warm-up: imports, oneDNN kernels, cache

        rows = []
        t, acc, n = original_train(root, args.epochs, args.seed)
        rows.append(("original loop (decode+features per item, NCHW, batch 32)", t, acc, n))
        default = dict(augment=list(DEFAULT_AUGMENT))  # what `train` does without flags
        t, acc, n = ours_train(root, args.epochs, args.seed, cold=True, **default)
        rows.append(("ours, `train` defaults, cold cache (first run)", t, acc, n))
        t, acc, n = ours_train(root, args.epochs, args.seed, cold=False, **default)
        rows.append(("ours, `train` defaults, warm cache (later runs/rounds)", t, acc, n))
        t, acc, n = ours_train(root, args.epochs, args.seed, cold=False, augment=[],
                               precision="fp32")
        rows.append(("ours, warm cache, fp32, no augmentation", t, acc, n))
        base = rows[0][2] and (rows[0][3] * args.epochs / rows[0][1])
        print(f"\n{'end to end, ' + str(args.epochs) + ' epochs incl. validation':60s} "
              f"{'wall s':>7s} {'samples/s':>9s} {'ratio':>6s} {'val acc':>7s}")
        for name, t, acc, n in rows:
            sps = n * args.epochs / t
            print(f"{name:60s} {t:7.1f} {sps:9.1f} {sps / base:5.2f}x {acc:7.3f}")

        if not args.no_levers:
            print("\nlevers (one training epoch, warm cache, samples/s):")
            fp32 = dict(augment=[], precision="fp32")
            settings = [
                ("NCHW, fp32, batch 32", dict(fp32, channels_last=False)),
                ("channels_last, fp32, batch 32", fp32),
                ("channels_last, bf16, batch 32", dict(augment=[], precision="bf16")),
                ("channels_last, fp32, batch 64", dict(fp32, batch_size=64)),
                ("channels_last, fp32, batch 32, 1 thread", dict(fp32, num_threads=1)),
                ("channels_last, auto precision, augmentation (per-batch features)",
                 dict(augment=list(DEFAULT_AUGMENT))),
            ]
            for name, kw in settings:
                print(f"  {name:62s} {lever(root, args.seed, **kw):7.1f}")
            x = np.random.default_rng(0).standard_normal((256, DEFAULT_SETTINGS.window_samples))
            from beatsight.common.features import windows_to_patches

            t0 = time.perf_counter()
            windows_to_patches(x.astype(np.float32))
            print(f"  feature extraction alone: {256 / (time.perf_counter() - t0):.0f} "
                  "windows/s")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
