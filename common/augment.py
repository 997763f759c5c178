"""Window-level augmentations: (N, W) float32 windows + a Generator -> windows of the same shape.

They run on the raw 125 ms windows before `features.windows_to_patches`, so training sees
exactly the feature pipeline inference uses. Each augmentation is a plain function registered
by name in `AUGMENTATIONS`; `make_augment(["time_shift", "noise"], p=0.5)` composes them.
Adding one = one function + `@register("name")`.

What differs between drum kits is tuning, spectral colour, decay, room and what else rings at the
same time, so besides `time_shift`/`gain`/`noise` there are `pitch_shift`, `eq_tilt`, `decay`,
`reverb`, `overlap` and `background`; `parse_augment("all,-overlap")` names a set of them.
Which ones help on kits nobody trained on is measured by `beatsight-sim crossval` (README,
"Model quality on unseen kits"); `DEFAULT_AUGMENT` is what that measurement kept.

Note: patches are normalised to their own maximum, so `gain` alone changes nothing; it matters
only combined with something absolute (e.g. `noise`, applied after it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import scipy.fft

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


# ---------------------------------------------------------------- what differs between kits
_SR = DEFAULT_SETTINGS.sample_rate
_PRE = DEFAULT_SETTINGS.pre_samples  # the onset's position in every window


def _peak(x: np.ndarray) -> np.ndarray:
    return np.abs(x).max(axis=1, keepdims=True)


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=1, keepdims=True))


def _shift_rows(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Row i moved right by shift[i] samples (left if negative), zero fill."""
    w = x.shape[1]
    src = np.arange(w)[None, :] - shift[:, None]
    ok = (src >= 0) & (src < w)
    return np.where(ok, np.take_along_axis(x, np.clip(src, 0, w - 1), axis=1), 0.0)


@register("pitch_shift")
def pitch_shift(x: np.ndarray, rng: np.random.Generator,
                max_semitones: float = 2.0) -> np.ndarray:
    """Retune each window by up to +-2 semitones (kits are tuned differently): resampled by
    linear interpolation around the onset, which stays where it is. Like a tighter head, a
    higher pitch also dies away a little faster."""
    n, w = x.shape
    ratio = 2.0 ** (rng.uniform(-max_semitones, max_semitones, size=(n, 1)) / 12.0)
    src = _PRE + (np.arange(w, dtype=np.float64)[None, :] - _PRE) * ratio
    i0 = np.floor(src).astype(np.int64)
    frac = (src - i0).astype(np.float32)
    ok = (i0 >= 0) & (i0 < w - 1)
    i0 = np.clip(i0, 0, w - 2)
    a = np.take_along_axis(x, i0, axis=1)
    b = np.take_along_axis(x, i0 + 1, axis=1)
    return np.where(ok, a + frac * (b - a), 0.0).astype(np.float32)


@lru_cache(maxsize=8)
def _log_bands(nfft: int, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Octaves re. 1 kHz of each rfft bin, and how to interpolate values given at `points`
    nodes spaced evenly in log frequency from 30 Hz to 20 kHz: node index k and weight of k+1.
    (Elementwise on purpose: a tiny numpy GEMM took ~15 ms under OpenBLAS thread contention.)"""
    f = np.fft.rfftfreq(nfft, 1.0 / _SR)
    octaves = np.log2(np.maximum(f, 20.0) / 1000.0)
    lo, hi = np.log2(30 / 1000), np.log2(20000 / 1000)
    pos = np.clip((octaves - lo) / (hi - lo) * (points - 1), 0.0, points - 1 - 1e-9)
    k = np.floor(pos).astype(np.int64)
    return octaves.astype(np.float32), k, (pos - k).astype(np.float32)


@register("eq_tilt")
def eq_tilt(x: np.ndarray, rng: np.random.Generator, max_tilt_db: float = 3.0,
            max_band_db: float = 6.0, points: int = 8) -> np.ndarray:
    """Recolour each window (other heads, cymbals, microphones, mixing): a spectral tilt of
    +-3 dB per octave around 1 kHz plus a random smooth EQ curve (+-6 dB at 8 nodes spaced
    evenly in log frequency), gain limited to +-24 dB; zero-phase, applied by rfft multiply."""
    n, w = x.shape
    nfft = scipy.fft.next_fast_len(2 * w)  # padded: linear, not circular, filtering
    octaves, k, frac = _log_bands(nfft, points)
    tilt = rng.uniform(-max_tilt_db, max_tilt_db, size=(n, 1)).astype(np.float32)
    bands = rng.uniform(-max_band_db, max_band_db, size=(n, points)).astype(np.float32)
    curve = bands[:, k] + frac * (bands[:, k + 1] - bands[:, k])
    gain_db = np.clip(tilt * octaves + curve, -24.0, 24.0)
    spec = scipy.fft.rfft(x, n=nfft, axis=1) * np.exp(gain_db * np.float32(np.log(10) / 20))
    return scipy.fft.irfft(spec, n=nfft, axis=1)[:, :w].astype(np.float32)


@register("decay")
def decay(x: np.ndarray, rng: np.random.Generator,
          db_per_100ms: tuple[float, float] = (-12.0, 4.0)) -> np.ndarray:
    """Change how fast each hit dies away (damped or ringing heads, cymbals): after the onset,
    multiply by an exponential envelope of -12..+4 dB per 100 ms. Mild on purpose: decay is
    what tells an open hi-hat from a closed one."""
    n, w = x.shape
    rate = rng.uniform(*db_per_100ms, size=(n, 1)) / 0.1 * np.log(10) / 20  # nepers per s
    t = np.maximum(np.arange(w) - _PRE, 0)[None, :] / _SR
    return x * np.exp((rate * t).astype(np.float32))


@register("reverb")
def reverb(x: np.ndarray, rng: np.random.Generator, rt60_s: tuple[float, float] = (0.1, 0.6),
           wet_db: tuple[float, float] = (-25.0, -10.0)) -> np.ndarray:
    """A room: convolve with exponentially decaying noise (RT60 0.1-0.6 s) and add that tail at
    -25..-10 dB re. the dry window (RMS)."""
    n, w = x.shape
    rt60 = rng.uniform(*rt60_s, size=(n, 1))
    t = np.arange(w)[None, :] / _SR
    ir = rng.standard_normal((n, w), dtype=np.float32) * np.exp(
        (-3.0 * np.log(10) * t / rt60).astype(np.float32))
    nfft = scipy.fft.next_fast_len(2 * w)
    wet = scipy.fft.irfft(scipy.fft.rfft(x, n=nfft, axis=1) * scipy.fft.rfft(ir, n=nfft, axis=1),
                          n=nfft, axis=1)[:, :w]
    level = 10.0 ** (rng.uniform(*wet_db, size=(n, 1)) / 20.0)
    g = level * _rms(x) / np.maximum(_rms(wet), 1e-12)
    return (x + g * wet).astype(np.float32)


@register("overlap")
def overlap(x: np.ndarray, rng: np.random.Generator, level_db: tuple[float, float] = (-24.0, -6.0),
            shift_ms: tuple[float, float] = (-10.0, 60.0)) -> np.ndarray:
    """What else rings at the same time: add another window of the batch, -24..-6 dB below this
    one's peak, moved by -10..+60 ms. Every row gets a different partner (a cyclic shift of the
    batch); a batch of one is returned unchanged."""
    n, w = x.shape
    if n < 2:
        return x.astype(np.float32, copy=True)
    other = x[(np.arange(n) + rng.integers(1, n)) % n]
    lo, hi = (int(round(ms * _SR / 1000)) for ms in shift_ms)
    moved = _shift_rows(other, rng.integers(lo, hi + 1, size=n))
    level = 10.0 ** (rng.uniform(*level_db, size=(n, 1)) / 20.0)
    g = level * _peak(x) / np.maximum(_peak(other), 1e-12)
    return (x + g * moved).astype(np.float32)


@register("background")
def background(x: np.ndarray, rng: np.random.Generator, below_db: tuple[float, float] = (20.0, 50.0),
               beta: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """Coloured background noise (1/f^beta, pink to brown: rumble, room, bleed) 20-50 dB below
    each window's peak; unlike `noise` its level follows the hit, so it survives normalisation."""
    n, w = x.shape
    nfft = scipy.fft.next_fast_len(w)
    f = np.fft.rfftfreq(nfft, 1.0 / _SR)
    f[0] = f[1]
    b = rng.uniform(*beta, size=(n, 1))
    shape = (f[None, :] / 1000.0) ** (-b / 2.0)
    shape[:, 0] = 0.0  # no DC
    white = scipy.fft.rfft(rng.standard_normal((n, nfft), dtype=np.float32), axis=1)
    col = scipy.fft.irfft(white * shape.astype(np.float32), n=nfft, axis=1)[:, :w]
    col /= np.maximum(_rms(col), 1e-12)
    level = _peak(x) * 10.0 ** (-rng.uniform(*below_db, size=(n, 1)) / 20.0)
    return (x + level * col).astype(np.float32)


# The order `parse_augment` composes them in: time and pitch first, then the sound itself
# (decay, what else rings, the room, the colour), then level and noise.
ORDER: tuple[str, ...] = ("time_shift", "pitch_shift", "decay", "overlap", "reverb", "eq_tilt",
                          "gain", "noise", "background")


def parse_augment(spec: str | Sequence[str]) -> list[str]:
    """Names from a comma list; `default` (DEFAULT_AUGMENT), `all` (every one in ORDER) and
    `none` expand, `-name` removes one: "all,-overlap", "default,pitch_shift". Unknown names
    raise BeatSightError (one line)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item or item == "none":
            continue
        if item.startswith("-"):
            name = item[1:].strip()
            if name not in AUGMENTATIONS:
                raise BeatSightError(f"unknown augmentation {name}; choose from "
                                     f"{', '.join(sorted(AUGMENTATIONS))}")
            out = [n for n in out if n != name]
            continue
        expand = {"default": DEFAULT_AUGMENT,
                  "all": tuple(ORDER) + tuple(n for n in AUGMENTATIONS if n not in ORDER)}
        for name in expand.get(item, (item,)):
            if name not in AUGMENTATIONS:
                raise BeatSightError(f"unknown augmentation {name}; choose from "
                                     f"{', '.join(sorted(AUGMENTATIONS))}")
            if name not in out:
                out.append(name)
    return out


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
