"""Window-level augmentations: (N, W) float32 windows + a Generator -> windows of the same shape.

They run on the raw 125 ms windows before `features.windows_to_patches`, so training sees
exactly the feature pipeline inference uses. Each augmentation is a plain function registered
by name in `AUGMENTATIONS`; `make_augment(["time_shift", "noise"], p=0.5)` composes them.
Adding one (pitch shift, EQ tilt, reverb, overlap, ...) = one function + `@register("name")`.

Note: patches are normalised to their own maximum, so `gain` alone changes nothing; it matters
only combined with something absolute (e.g. `noise`, applied after it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import BeatSightError
from .features import DEFAULT_SETTINGS, WindowAugment

# name -> fn(windows (n, W) float32, rng) -> windows (n, W); called only on the selected rows.
AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {}

DEFAULT_AUGMENT: tuple[str, ...] = ("time_shift", "gain", "noise")


def register(name: str) -> Callable:
    """Decorator: make an augmentation available to `make_augment` (and `--augment` lists)."""

    def deco(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> Callable:
        AUGMENTATIONS[name] = fn
        return fn

    return deco


@register("time_shift")
def time_shift(x: np.ndarray, rng: np.random.Generator, max_ms: float = 5.0) -> np.ndarray:
    """Move each window by up to +-5 ms (labelled onsets are never sample-exact); zero fill."""
    n, w = x.shape
    max_s = int(DEFAULT_SETTINGS.sample_rate * max_ms / 1000)
    shift = rng.integers(-max_s, max_s + 1, size=n)
    src = np.arange(w)[None, :] - shift[:, None]
    ok = (src >= 0) & (src < w)
    return np.where(ok, np.take_along_axis(x, np.clip(src, 0, w - 1), axis=1), 0.0).astype(
        np.float32)


@register("gain")
def gain(x: np.ndarray, rng: np.random.Generator, max_db: float = 12.0) -> np.ndarray:
    """Scale each window by +-12 dB (a different playing level or recording gain)."""
    g = 10.0 ** (rng.uniform(-max_db, max_db, size=(len(x), 1)) / 20.0)
    return (x * g).astype(np.float32)


@register("noise")
def noise(x: np.ndarray, rng: np.random.Generator,
          db_range: tuple[float, float] = (-70.0, -35.0)) -> np.ndarray:
    """Add white noise at -70..-35 dBFS (hiss, bleed, a noisy room)."""
    level = 10.0 ** (rng.uniform(*db_range, size=(len(x), 1)) / 20.0)
    return (x + level * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)


def make_augment(names: Sequence[str], p: float = 0.5) -> WindowAugment | None:
    """Compose registered augmentations; each is applied to a random fraction `p` of windows.

    Returns None for an empty list (no augmentation). Unknown names raise BeatSightError.
    """
    names = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise BeatSightError(f"unknown augmentation {', '.join(unknown)}; choose from "
                             f"{', '.join(sorted(AUGMENTATIONS))}")
    if not 0.0 <= p <= 1.0:
        raise BeatSightError(f"augmentation probability {p} outside 0-1")
    if not names:
        return None
    fns = [AUGMENTATIONS[n] for n in names]

    def augment(windows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.array(windows, dtype=np.float32, copy=True)
        for fn in fns:
            rows = np.flatnonzero(rng.random(len(out)) < p)
            if len(rows):
                out[rows] = fn(out[rows], rng)
        return out

    augment.names = tuple(names)  # type: ignore[attr-defined]
    return augment
