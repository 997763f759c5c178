"""Benchmark: training throughput of `beatsight-client train` vs the original training loop.

Same data (an export directory collected from a groove rendered with a real Hydrogen kit),
same model and initial weights, same epochs, same run. The original loop, as
`train_classifier.py` did it: a Dataset that decodes each snippet WAV with librosa and
recomputes its features with librosa (bench/original.py) in `__getitem__` every epoch
(validation too), NCHW float32,
DataLoader batch 32, Adam, ReduceLROnPlateau. Ours: the `train` command's path (feature
cache + `client.training.fit`), end to end: loading (cold cache = first run, warm = every
later run or federated round) plus every epoch with validation.

The variants run interleaved, one epoch each in turn, so that all of them see the same load
on a shared machine; ours continues epoch by epoch through fit's resume state (its save/load
cost is counted against ours). Then the levers one at a time (one epoch each, best of two).
Prints samples/s and ratios by wall clock and by process CPU time.

    .venv/bin/python bench/bench_train.py [--kit GMRockKit] [--seconds 45] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from original import original_patch  # bench/original.py (the script's own folder)

from beatsight.client.cli import load_splits
from beatsight.client.dataset import FeatureSet
from beatsight.client.evaluation import evaluate
from beatsight.client.store import SampleStore
from beatsight.client.training import TrainConfig, bf16_native, fit, new_model
from beatsight.common.augment import DEFAULT_AUGMENT
from beatsight.common.classes import CLASSES
from beatsight.common.features import DEFAULT_SETTINGS, extract_windows, windows_to_patches


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
        window = extract_windows(audio, [DEFAULT_SETTINGS.pre_ms / 1000])[0]
        return torch.from_numpy(original_patch(window)), CLASSES.index(it["label"])


class Original:
    """The original loop, one epoch (train + validation) per call."""

    def __init__(self, root: Path, seed: int) -> None:
        self.train_ds, val_ds = OriginalDataset(root, "train"), OriginalDataset(root, "val")
        g = torch.Generator().manual_seed(seed)
        self.train_dl = torch.utils.data.DataLoader(self.train_ds, batch_size=32, shuffle=True,
                                                    generator=g)
        self.val_dl = torch.utils.data.DataLoader(val_ds, batch_size=32)
        self.model = new_model(seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="min", patience=5)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.n_train, self.acc, self.best, self.load_s = len(self.train_ds), 0.0, 0.0, (0.0, 0.0)

    def epoch(self, e: int) -> None:
        self.model.train()
        for x, y in self.train_dl:
            self.opt.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.opt.step()
        self.model.eval()
        tot, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self.val_dl:
                out = self.model(x)
                tot += float(self.loss_fn(out, y)) * len(y)
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        self.sched.step(tot / n)
        self.acc = correct / n
        self.best = max(self.best, self.acc)


class Ours:
    """`fit` as `train` runs it, continued one epoch per call through its resume state."""

    def __init__(self, root: Path, seed: int, cfg: TrainConfig, state: Path, cold: bool) -> None:
        if cold:
            shutil.rmtree(root / ".cache", ignore_errors=True)
        t, c = time.perf_counter(), time.process_time()
        self.train, self.val = load_splits(root, seed, 0.2, progress=False)
        self.load_s = (time.perf_counter() - t, time.process_time() - c)
        self.model, self.cfg, self.state = new_model(seed), cfg, state
        self.n_train, self.acc, self.best = len(self.train), 0.0, 0.0

    def epoch(self, e: int) -> None:
        fit(self.model, self.train, replace(self.cfg, epochs=e), val_data=self.val,
            progress=False, state_path=self.state, resume=True)
        self.acc = evaluate(self.model, self.val.X, self.val.y)["accuracy"]
        self.best = max(self.best, self.acc)


def lever(train: FeatureSet, seed: int, **kw) -> tuple[float, float]:
    """(samples per wall second, per CPU second) of one training epoch on cached data."""
    cfg = TrainConfig(epochs=1, seed=seed, early_stopping_patience=0, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    fit(new_model(seed), train, cfg, progress=False)
    return len(train) / (time.perf_counter() - t0), len(train) / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default="GMRockKit")
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-levers", action="store_true", help="Skip the per-lever table.")
    args = ap.parse_args()

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
        # Warm-up (imports, oneDNN kernels) on a few samples, outside the timings.
        warm, _ = load_splits(root, args.seed, 0.2, progress=False)
        lever(warm.subset(np.arange(32)), args.seed, augment=[], precision="fp32")
        lever(warm.subset(np.arange(32)), args.seed)
        OriginalDataset(root, "train")[0]

        base = TrainConfig(seed=args.seed, early_stopping_patience=0)
        variants = {
            "original loop (decode+features per item, NCHW fp32, batch 32)":
                Original(root, args.seed),
            "ours, `train` defaults (cold cache: first run)":
                Ours(root, args.seed, replace(base, augment=list(DEFAULT_AUGMENT)),
                     work / "a.pt", cold=True),
            "ours, warm cache, fp32, no augmentation, no class weights":
                Ours(root, args.seed, replace(base, augment=[], precision="fp32",
                                              class_weight_power=0.0), work / "b.pt", cold=False),
            "ours, warm cache, auto precision, no augmentation, no class weights":
                Ours(root, args.seed, replace(base, augment=[], class_weight_power=0.0),
                     work / "c.pt", cold=False),
        }
        wall = {k: v.load_s[0] for k, v in variants.items()}
        cpu = {k: v.load_s[1] for k, v in variants.items()}
        for e in range(1, args.epochs + 1):
            for k, v in variants.items():
                t, c = time.perf_counter(), time.process_time()
                v.epoch(e)
                wall[k] += time.perf_counter() - t
                cpu[k] += time.process_time() - c
        k0 = next(iter(variants))
        print(f"\n{'end to end, ' + str(args.epochs) + ' epochs incl. validation + loading':62s} "
              f"{'wall s':>7s} {'CPU s':>7s} {'samples/s':>9s} {'ratio wall':>10s} "
              f"{'ratio CPU':>9s} {'val acc':>7s} {'best':>5s}")
        for k, v in variants.items():
            print(f"{k:62s} {wall[k]:7.1f} {cpu[k]:7.1f} "
                  f"{v.n_train * args.epochs / wall[k]:9.1f} {wall[k0] / wall[k]:9.2f}x "
                  f"{cpu[k0] / cpu[k]:8.2f}x {v.acc:7.3f} {v.best:5.3f}")
        ours_cold = variants["ours, `train` defaults (cold cache: first run)"].load_s[0]
        ours_warm = variants[
            "ours, warm cache, auto precision, no augmentation, no class weights"].load_s[0]
        print(f"loading: cold cache {ours_cold:.1f} s, warm cache {ours_warm:.2f} s")

        if not args.no_levers:
            train = variants["ours, `train` defaults (cold cache: first run)"].train
            print("\nlevers (one training epoch, cached data, best of 2): samples per wall "
                  "second, per CPU second")
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
            best = {name: (0.0, 0.0) for name, _ in settings}
            for _ in range(2):
                for name, kw in settings:
                    w, c = lever(train, args.seed, **kw)
                    best[name] = (max(best[name][0], w), max(best[name][1], c))
            for name, (w, c) in best.items():
                print(f"  {name:66s} {w:7.1f} {c:7.1f}")
            x = np.random.default_rng(0).standard_normal((256, DEFAULT_SETTINGS.window_samples))
            t0 = time.perf_counter()
            windows_to_patches(x.astype(np.float32))
            print(f"  feature extraction alone: {256 / (time.perf_counter() - t0):.0f} "
                  "windows/s")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
