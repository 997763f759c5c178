"""Onset detection: log-mel spectral flux with an adaptive (moving mean + median) threshold.

The flux is computed chunk by chunk from frames at fixed positions, so the result is the same
as one pass over the whole file while memory stays at one chunk's spectrogram (an hour-long
song never holds its full STFT). Peak picking then runs on the small whole-song envelope.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter1d, median_filter

from .audio import SAMPLE_RATE


@dataclass(frozen=True)
class OnsetSettings:
    """Frame geometry and peak-picking windows; `sensitivity` (0-100) only moves `delta`."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop: int = 256                 # 5.8 ms frames
    n_mels: int = 80
    fmin: float = 30.0
    fmax: float = 16000.0
    lag_frames: int = 2            # flux against the frame this many hops earlier
    floor_db: float = -80.0        # band levels in dBFS, floored: absolute, chunks share no ref
    chunk_frames: int = 8192       # ~48 s of frames per STFT chunk
    max_ms: float = 30.0           # a peak is the maximum within +-max_ms
    mean_pre_ms: float = 100.0     # moving-mean threshold window before ...
    mean_post_ms: float = 70.0     # ... and after the frame
    median_ms: float = 400.0       # moving-median window (tracks dense textures)
    wait_ms: float = 30.0          # two onsets are at least this far apart
    silence_db: float = -60.0      # frames quieter than this (dBFS after normalising) never fire
    lag_ms: float = 0.0            # constant shift of reported times (calibrated, see tests)

    @property
    def fps(self) -> float:
        return self.sample_rate / self.hop

    def frames(self, ms: float) -> int:
        return max(1, int(round(ms / 1000 * self.fps)))


DEFAULT_ONSETS = OnsetSettings()


def delta_for(sensitivity: float) -> float:
    """Flux (mean dB rise per band) a peak must exceed its local mean and median by.

    The flux is in dB, so the threshold is level-independent: sensitivity 0 -> 4 dB (only
    strong hits), 60 (default) -> 0.84 dB, 100 -> 0.3 dB; log-linear in between.
    """
    s = min(max(float(sensitivity), 0.0), 100.0) / 100.0
    return float(4.0 * (0.3 / 4.0) ** s)


@lru_cache(maxsize=4)
def mel_filters(settings: OnsetSettings) -> np.ndarray:
    """Triangular filters (peak 1) evenly spaced on the HTK mel scale: (n_mels, n_fft//2+1).

    Built here rather than by librosa.filters, whose import (scipy.signal) costs ~1 s of
    start-up that the heuristic path would otherwise pay.
    """
    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    fmax = min(settings.fmax, settings.sample_rate / 2)
    edges = hz(np.linspace(mel(np.float64(settings.fmin)), mel(np.float64(fmax)),
                           settings.n_mels + 2))
    freqs = np.fft.rfftfreq(settings.n_fft, 1.0 / settings.sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def frame_count(n_samples: int, settings: OnsetSettings = DEFAULT_ONSETS) -> int:
    """Frames of a signal, frame k centred on sample k * hop."""
    return n_samples // settings.hop + 1


def periodic_hann(n_fft: int) -> np.ndarray:
    """The analysis window of every STFT here (and of `common.templates`)."""
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


def centred_frames(audio: np.ndarray, f0: int, f1: int, s: OnsetSettings) -> np.ndarray:
    """Centred frames f0..f1-1 (frame f is centred on sample f*hop), zeros beyond the file."""
    half = s.n_fft // 2
    lo, hi = f0 * s.hop - half, (f1 - 1) * s.hop + half
    seg = np.zeros(hi - lo, np.float32)
    a, b = max(lo, 0), min(hi, len(audio))
    if b > a:
        seg[a - lo:b - lo] = audio[a:b]
    return sliding_window_view(seg, s.n_fft)[:: s.hop][: f1 - f0]


def envelope(
    audio: np.ndarray,
    settings: OnsetSettings = DEFAULT_ONSETS,
    progress: Callable[[float], None] | None = None,
    mel_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spectral flux per frame and frame loudness in dBFS, both (n_frames,), chunk by chunk.
    `mel_out` (n_mels, n_frames), if given, receives the mel magnitude spectrogram of the same
    STFT (`common.templates` explains it with the drum-family templates)."""
    s = settings
    n_frames = frame_count(len(audio), s)
    flux = np.zeros(n_frames, np.float32)
    loud = np.full(n_frames, -120.0, np.float32)
    mel = mel_filters(s)
    window = periodic_hann(s.n_fft)
    wnorm = float(np.sum(window) ** 2) / 4.0      # a full-scale sine -> 0 dB
    prev: np.ndarray | None = None
    for f0 in range(0, n_frames, s.chunk_frames):
        f1 = min(n_frames, f0 + s.chunk_frames)
        frames = centred_frames(audio, f0, f1, s)
        spec = scipy.fft.rfft(frames * window, axis=-1, workers=-1)
        power = np.square(spec.real) + np.square(spec.imag)
        del spec
        loud[f0:f1] = 10 * np.log10(np.maximum(power.sum(axis=1) / wnorm, 1e-12))
        if mel_out is not None:
            mel_out[:, f0:f1] = (np.sqrt(power) @ mel.T).T
        logmel = 10 * np.log10(np.maximum((power @ mel.T) / wnorm, 10 ** (s.floor_db / 10)))
        del power
        ref = maximum_filter1d(logmel, size=3, axis=1)       # SuperFlux: spread in frequency
        lag = s.lag_frames
        if prev is None:
            prev = np.repeat(ref[:1], lag, axis=0)
        before = np.vstack([prev, ref])[: len(ref)]
        flux[f0:f1] = np.maximum(logmel - before, 0.0).mean(axis=1)
        prev = np.vstack([prev, ref])[-lag:]
        if progress is not None:
            progress(f1 / n_frames)
    return flux, loud


def pick_peaks(
    flux: np.ndarray,
    loud: np.ndarray,
    sensitivity: float = 60.0,
    settings: OnsetSettings = DEFAULT_ONSETS,
) -> np.ndarray:
    """Frames where the flux is a local maximum above mean + median-based adaptive thresholds."""
    s = settings
    if len(flux) < 3 or not np.any(flux > 0):
        return np.zeros(0, np.int64)
    norm = flux.astype(np.float64)
    max_w = 2 * s.frames(s.max_ms) + 1
    is_max = norm >= maximum_filter1d(norm, size=max_w, mode="constant")
    pre, post = s.frames(s.mean_pre_ms), s.frames(s.mean_post_ms)
    mean = _window_mean(norm, pre, post)
    med = median_filter(norm, size=s.frames(s.median_ms) | 1, mode="constant")
    delta = delta_for(sensitivity)
    ok = is_max & (norm >= mean + delta) & (norm >= med + delta) & (norm > 2 * delta)
    ok &= maximum_filter1d(loud, size=max_w, mode="nearest") > s.silence_db
    candidates = np.flatnonzero(ok)
    return _enforce_wait(candidates, norm, s.frames(s.wait_ms))


def _window_mean(x: np.ndarray, pre: int, post: int) -> np.ndarray:
    """Mean of x[i-pre : i+post+1] (zeros outside), via a cumulative sum."""
    c = np.concatenate([np.zeros(pre + 1), np.cumsum(x), np.full(post, np.sum(x))])
    i = np.arange(len(x))
    return (c[i + pre + post + 1] - c[i]) / (pre + post + 1)


def _enforce_wait(frames: np.ndarray, strength: np.ndarray, wait: int) -> np.ndarray:
    """Keep the stronger of two peaks closer than `wait` frames (greedy, left to right)."""
    kept: list[int] = []
    for f in frames:
        if kept and f - kept[-1] < wait:
            if strength[f] > strength[kept[-1]]:
                kept[-1] = int(f)
            continue
        kept.append(int(f))
    return np.asarray(kept, np.int64)


def frames_to_times(frames: np.ndarray, settings: OnsetSettings = DEFAULT_ONSETS) -> np.ndarray:
    return np.asarray(frames, np.float64) / settings.fps + settings.lag_ms / 1000.0


def detect_onsets(
    audio: np.ndarray,
    sensitivity: float = 60.0,
    settings: OnsetSettings = DEFAULT_ONSETS,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Onset times in seconds (sorted) of a mono float32 signal at settings.sample_rate."""
    flux, loud = envelope(audio, settings, progress)
    times = frames_to_times(pick_peaks(flux, loud, sensitivity, settings), settings)
    return np.clip(times, 0.0, max(0.0, len(audio) / settings.sample_rate))
