"""Tempo, beat grid and snapping of hit times to a note grid.

Tempo comes from the autocorrelation of the whole onset envelope (one FFT, so an hour-long song
costs megabytes, not the gigabytes of a full tempogram), weighted towards 120 BPM. Beats come
from a vectorised version of Ellis' dynamic-programming tracker at that tempo (librosa's own
costs seconds of JIT compile per run), so the grid follows small tempo drift; each beat
interval is split into the grid's subdivisions. A hit snaps to the nearest
grid line only if it lies within `max_snap_ms` of it; hits further away keep their time
(fills, flams and rubato stay where they were played).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

# grid lines per beat (quarter note)
SUBDIVISIONS: dict[str, int] = {
    "quarter": 1, "eighth": 2, "triplet": 3, "sixteenth": 4, "thirtysecond": 8,
}
DEFAULT_BPM = 120.0
MIN_BPM, MAX_BPM = 50.0, 220.0
DEFAULT_MAX_SNAP_MS = 30.0


def estimate_tempo(env: np.ndarray, fps: float, prior_bpm: float = 120.0,
                   prior_octaves: float = 1.0) -> float | None:
    """Tempo in BPM from the envelope's autocorrelation; None if the envelope has no pulse."""
    x = np.asarray(env, np.float64)
    if len(x) < fps * 2 or not np.any(x > 0):
        return None
    x = x - x.mean()
    n = int(2 ** np.ceil(np.log2(2 * len(x))))
    spec = scipy.fft.rfft(x, n)
    ac = scipy.fft.irfft(spec * np.conj(spec), n)[: len(x)]
    if ac[0] <= 0:
        return None
    lags = np.arange(len(ac))
    lo, hi = int(np.floor(fps * 60 / MAX_BPM)), int(np.ceil(fps * 60 / MIN_BPM))
    hi = min(hi, len(ac) - 2)
    if hi <= lo + 1:
        return None
    bpm = 60.0 * fps / np.maximum(lags[lo:hi + 1], 1)
    prior = np.exp(-0.5 * (np.log2(bpm / prior_bpm) / prior_octaves) ** 2)
    score = np.maximum(ac[lo:hi + 1], 0) * prior
    k = int(np.argmax(score))
    if score[k] <= 0:
        return None
    lag = float(lags[lo + k])
    if 0 < k < len(score) - 1:                      # parabolic refinement of the peak
        a, b, c = score[k - 1], score[k], score[k + 1]
        denom = a - 2 * b + c
        if denom < 0:
            lag += 0.5 * (a - c) / denom
    return float(60.0 * fps / lag)


def track_beats(env: np.ndarray, fps: float, bpm: float, tightness: float = 100.0) -> np.ndarray:
    """Beat times (s) near `bpm`, by Ellis' dynamic programme (as librosa's tracker does).

    score[t] = local[t] + max over earlier beats tau of (score[tau] - tightness *
    log((t - tau) / period)^2). A beat's predecessor lies at least half a period back, so
    half a period of frames is solved per vectorised step: no JIT compile, no per-frame loop.
    """
    x = np.asarray(env, np.float64)
    n = len(x)
    period = fps * 60.0 / bpm
    if n < 4 or not np.any(x > 0) or period < 2:
        return np.zeros(0)
    x = x / (x.std() + 1e-12)
    k = np.arange(-int(period), int(period) + 1)
    local = np.convolve(x, np.exp(-0.5 * (k * 32.0 / period) ** 2), mode="same")
    offsets = np.arange(max(1, int(round(period / 2))), int(round(2 * period)) + 1)
    penalty = -tightness * np.log(offsets / period) ** 2
    score = np.zeros(n)
    back = np.full(n, -1, np.int64)
    step = int(offsets[0])
    for b in range(0, n, step):
        t = np.arange(b, min(b + step, n))
        tau = t[:, None] - offsets[None, :]
        cand = np.where(tau >= 0, score[np.maximum(tau, 0)] + penalty, -np.inf)
        j = np.argmax(cand, axis=1)
        best = cand[np.arange(len(t)), j]
        start = ~np.isfinite(best) | (best <= 0)      # no useful predecessor: a first beat
        score[t] = local[t] + np.where(start, 0.0, best)
        back[t] = np.where(start, -1, tau[np.arange(len(t)), j])
    tail = max(1, int(round(period)))
    f = n - tail + int(np.argmax(score[n - tail:]))
    beats = []
    while f >= 0:
        beats.append(f)
        f = back[f]
    beats = np.array(beats[::-1], np.float64)
    # drop weak beats at the ends (silence before the first / after the last hit)
    strong = local[beats.astype(np.int64)] > 0.5 * np.median(local[beats.astype(np.int64)])
    if strong.any():
        first, last = np.flatnonzero(strong)[[0, -1]]
        beats = beats[first:last + 1]
    return beats / fps


def grid_lines(beats: np.ndarray, bpm: float, division: int, start: float, end: float) -> np.ndarray:
    """Grid times covering [start, end]: each beat interval split in `division`, extended at the
    ends with the tempo's beat period."""
    period = 60.0 / bpm
    if len(beats) < 2:
        first = 0.0 if len(beats) == 0 else beats[0]
        n_before = int(np.ceil((first - start) / period)) + 1
        n_after = int(np.ceil((end - first) / period)) + 1
        beats = first + period * np.arange(-n_before, n_after + 1)
    else:
        n_before = max(0, int(np.ceil((beats[0] - start) / period)) + 1)
        n_after = max(0, int(np.ceil((end - beats[-1]) / period)) + 1)
        beats = np.concatenate([beats[0] - period * np.arange(n_before, 0, -1), beats,
                                beats[-1] + period * np.arange(1, n_after + 1)])
    frac = np.arange(division) / division
    lines = (beats[:-1, None] + np.diff(beats)[:, None] * frac[None, :]).ravel()
    return np.append(lines, beats[-1])


def snap(times: np.ndarray, grid: np.ndarray, max_snap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Move each time to its nearest grid line if within max_snap_s: (new times, snapped mask)."""
    times = np.asarray(times, np.float64)
    if len(grid) == 0 or len(times) == 0:
        return times.copy(), np.zeros(len(times), bool)
    idx = np.clip(np.searchsorted(grid, times), 1, len(grid) - 1)
    left, right = grid[idx - 1], grid[idx]
    nearest = np.where(times - left <= right - times, left, right)
    ok = np.abs(nearest - times) <= max_snap_s
    return np.where(ok, nearest, times), ok
