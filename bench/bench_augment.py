"""Benchmark: what each window augmentation costs per training batch, against the features.

Augmentation runs on every batch of every epoch, on the raw windows, before the one feature
function (`common.features.windows_to_patches`) recomputes the augmented rows' patches. This
times each registered augmentation on a batch of 32 synthetic windows (decaying noise bursts;
the maths does not depend on the content), then compositions with `make_augment` at p = 0.5 as
training uses them, and prints each as a share of `windows_to_patches` on the same batch.

    .venv/bin/python bench/bench_augment.py [--batch 32] [--reps 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from beatsight.common.augment import AUGMENTATIONS, DEFAULT_AUGMENT, ORDER, make_augment
from beatsight.common.features import DEFAULT_SETTINGS, windows_to_patches


def best_ms(fn, reps: int) -> float:
    """Median of `reps` timed calls after one warm-up (robust on a shared machine)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = DEFAULT_SETTINGS.window_samples
    env = np.exp(-np.arange(w) / 800.0).astype(np.float32)
    x = (0.3 * rng.standard_normal((args.batch, w)).astype(np.float32) * env)
    base = best_ms(lambda: windows_to_patches(x), args.reps)
    print(f"windows_to_patches, {args.batch} windows: {base:.2f} ms (= 100 %)")
    print(f"{'augmentation (every window)':34s} {'ms':>7s} {'share':>7s}")
    for name in ORDER:
        fn = AUGMENTATIONS[name]
        r = np.random.default_rng(1)
        ms = best_ms(lambda fn=fn, r=r: fn(x, r), args.reps)
        print(f"{name:34s} {ms:7.2f} {ms / base * 100:6.1f} %")
    for label, names in (("DEFAULT_AUGMENT", DEFAULT_AUGMENT), ("all (ORDER)", ORDER)):
        aug = make_augment(list(names), p=0.5)
        r = np.random.default_rng(1)
        ms = best_ms(lambda aug=aug, r=r: aug(x, r), args.reps)
        print(f"{label + ', p=0.5':34s} {ms:7.2f} {ms / base * 100:6.1f} %")


if __name__ == "__main__":
    main()
