"""The one feature function: (audio, onset times) -> batch of 1x128x128 log-mel patches.

Training, federation and inference all call `patches`, so a model always sees at inference
exactly what it saw in training (the original tools computed features differently at times).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np
import scipy.fft
import torch
from numpy.lib.stride_tricks import sliding_window_view

from .audio import SAMPLE_RATE
from .onsets import periodic_hann

AMIN = 1e-10


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that changes the numbers a model sees; stored in every checkpoint."""

    sample_rate: int = SAMPLE_RATE
    pre_ms: float = 25.0
    post_ms: float = 100.0
    n_mels: int = 128
    fmax: float = 8000.0
    n_fft: int = 2048
    frames: int = 128
    top_db: float = 80.0

    @property
    def pre_samples(self) -> int:
        return int(self.sample_rate * self.pre_ms / 1000)

    @property
    def window_samples(self) -> int:
        return self.pre_samples + int(self.sample_rate * self.post_ms / 1000)

    @property
    def hop(self) -> int:
        """Hop that yields `frames` honest STFT frames across the window (no resize/wrap)."""
        return self.window_samples // self.frames

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSettings:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


DEFAULT_SETTINGS = FeatureSettings()

# An augmentation takes windows (N, W) float32 and a Generator and returns windows of equal shape.
WindowAugment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def extract_windows(
    audio: np.ndarray, onsets_s: np.ndarray, settings: FeatureSettings = DEFAULT_SETTINGS
) -> np.ndarray:
    """Cut a window per onset (25 ms before, 100 ms after), zero-padded where it runs off the file."""
    onsets = np.atleast_1d(np.asarray(onsets_s, dtype=np.float64))
    w, pre = settings.window_samples, settings.pre_samples
    starts = np.round(onsets * settings.sample_rate).astype(np.int64) - pre
    padded = np.concatenate([np.zeros(w, np.float32), np.asarray(audio, np.float32),
                             np.zeros(w, np.float32)])
    idx = np.clip(starts, -w, len(audio))[:, None] + w + np.arange(w)[None, :]
    return padded[idx]


def cache_dir() -> Path:
    """Where computed-once data lives between runs: $BEATSIGHT_CACHE_DIR, else
    $XDG_CACHE_HOME/beatsight, else ~/.cache/beatsight."""
    if os.environ.get("BEATSIGHT_CACHE_DIR"):
        return Path(os.environ["BEATSIGHT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "beatsight"


@lru_cache(maxsize=4)
def _mel_basis(settings: FeatureSettings) -> tuple[np.ndarray, int]:
    """librosa's mel filters cropped to the FFT bins below fmax (the rest are all zero). Kept
    in `cache_dir()`: importing librosa.filters (scipy.signal, numba) costs ~0.9 s of start-up
    in every fresh `process` and every Flower ClientApp process, the filters themselves 1 ms."""
    path = cache_dir() / (f"mel-{settings.sample_rate}-{settings.n_fft}-{settings.n_mels}-"
                          f"{settings.fmax:g}-librosa{librosa.__version__}.npy")
    mel = None
    try:
        mel = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        pass
    if mel is None or mel.shape != (settings.n_mels, settings.n_fft // 2 + 1):
        mel = librosa.filters.mel(sr=settings.sample_rate, n_fft=settings.n_fft,
                                  n_mels=settings.n_mels, fmax=settings.fmax).astype(np.float32)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:   # best effort: a read-only home only costs the import next time
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                np.save(fh, mel)
            os.replace(tmp, path)
        except OSError:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
    mel = np.asarray(mel, np.float32)
    n_bins = int(np.nonzero(mel.any(axis=0))[0].max()) + 1
    return np.ascontiguousarray(mel[:, :n_bins]), n_bins


def _rfft(x: np.ndarray) -> np.ndarray:
    """rfft on every core; in the calling thread if scipy's pool is down. The pool shuts down
    while another thread forks (Ray starting its workers beside Flower's server thread) and
    refuses work until the fork is over: seen once in tests/test_federation.py."""
    try:
        return scipy.fft.rfft(x, axis=-1, workers=-1)
    except RuntimeError as exc:
        if "after shutdown" not in str(exc):
            raise
        return scipy.fft.rfft(x, axis=-1, workers=1)


def windows_to_patches(
    windows: np.ndarray, settings: FeatureSettings = DEFAULT_SETTINGS, chunk: int = 8
) -> np.ndarray:
    """Log-mel (dB re. each patch's max, scaled to [0, 1]) of each window: (N, 1, mels, frames).

    Frames are centred STFT frames at `settings.hop`, so the 128 frames span the window
    honestly; windows are processed in chunks to keep memory bounded on long songs.
    """
    n = len(windows)
    out = np.zeros((n, 1, settings.n_mels, settings.frames), np.float32)
    mel, n_bins = _mel_basis(settings)
    half = settings.n_fft // 2
    hann = periodic_hann(settings.n_fft)
    for i in range(0, n, chunk):
        x = np.pad(np.asarray(windows[i:i + chunk], np.float32), ((0, 0), (half, half)))
        frames = sliding_window_view(x, settings.n_fft, axis=1)[:, :: settings.hop]
        spec = _rfft(frames[:, : settings.frames] * hann)
        power = np.square(spec.real[..., :n_bins]) + np.square(spec.imag[..., :n_bins])
        # torch for the GEMM: numpy's OpenBLAS pool deadlocked when called from Flower's server
        # thread inside a Ray simulation (seen here, twice); torch's pool has no such problem.
        flat = torch.from_numpy(np.ascontiguousarray(power).reshape(-1, n_bins))
        m = (flat @ torch.from_numpy(mel).T).numpy()
        m = m.reshape(len(power), settings.frames, -1).transpose(0, 2, 1)  # (B, mels, frames)
        peak = m.max(axis=(1, 2), keepdims=True)
        db = 10 * np.log10(np.maximum(m, AMIN)) - 10 * np.log10(np.maximum(peak, AMIN))
        scaled = (np.maximum(db, -settings.top_db) + settings.top_db) / settings.top_db
        out[i:i + chunk, 0] = np.where(peak > AMIN, scaled, 0.0)  # silence stays 0
    return out


def patches(
    audio: np.ndarray,
    onsets_s: np.ndarray,
    settings: FeatureSettings = DEFAULT_SETTINGS,
    augment: WindowAugment | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Model input for every onset of one decoded song, in one pass: (N, 1, 128, 128) float32."""
    windows = extract_windows(audio, onsets_s, settings)
    if augment is not None:
        windows = augment(windows, rng if rng is not None else np.random.default_rng())
    return windows_to_patches(windows, settings)
