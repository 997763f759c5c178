"""The model-free classifier: spectral centroid, roll-off, zero-crossing rate, RMS and band levels.

Used when no model is available or ML is switched off, and as the fallback label for CNN
predictions below `--confidence`. Also supplies the band-energy checks of the simultaneous-hit
rule (a kick under a hi-hat, a hi-hat over a kick). All features are computed for every onset
at once from the same windows the CNN sees (`features.extract_windows`), never hit by hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from .classes import CLASS_INDEX
from .features import DEFAULT_SETTINGS, FeatureSettings, extract_windows

N_FFT = 4096                     # ~93 ms after the onset: 10.8 Hz bins, enough for kick pitch
BANDS = {"low": (30.0, 120.0), "lowmid": (120.0, 500.0), "mid": (500.0, 4000.0),
         "high": (6000.0, 16000.0)}


@dataclass
class HitFeatures:
    """Per-onset descriptors, each an (N,) array. Levels are dB re. the window's total energy."""

    centroid: np.ndarray        # Hz
    rolloff: np.ndarray         # Hz, 85 % of the energy below
    zcr: np.ndarray             # zero crossings per second (first 50 ms)
    rms_db: np.ndarray          # dBFS of the first 50 ms
    decay_db: np.ndarray        # level of 50-100 ms minus level of 0-50 ms (negative = decays)
    peak_hz: np.ndarray         # strongest bin between 30 and 400 Hz
    band_db: dict[str, np.ndarray]   # share of each band in the post-onset spectrum, dB
    rise_db: dict[str, np.ndarray]   # band level after the onset minus before it, dB
    band_decay_db: dict[str, np.ndarray]  # band level 50-100 ms minus 0-50 ms after the onset

    def __len__(self) -> int:
        return len(self.centroid)


def _db(x: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.maximum(x, 1e-12))


def hit_features(windows: np.ndarray, settings: FeatureSettings = DEFAULT_SETTINGS) -> HitFeatures:
    """Descriptors of every window (N, window_samples) with the onset at settings.pre_samples."""
    sr, pre = settings.sample_rate, settings.pre_samples
    w = np.asarray(windows, np.float32)
    post = w[:, pre:]
    half = int(0.05 * sr)
    first, second = post[:, :half], post[:, half:2 * half]
    fade = np.hanning(2 * N_FFT)[N_FFT:].astype(np.float32)      # attack kept, tail faded
    seg = post[:, :N_FFT]
    spec = np.abs(scipy.fft.rfft(seg * fade[: seg.shape[1]], n=N_FFT, axis=1, workers=-1)) ** 2
    freqs = np.fft.rfftfreq(N_FFT, 1 / sr)
    total = spec.sum(axis=1) + 1e-12
    centroid = (spec @ freqs) / total
    cum = np.cumsum(spec, axis=1)
    rolloff = freqs[np.minimum((cum < 0.85 * cum[:, -1:]).sum(axis=1), len(freqs) - 1)]
    signs = np.signbit(first)
    zcr = np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / (half / sr)
    e1 = np.mean(np.square(first), axis=1)
    e2 = np.mean(np.square(second), axis=1)
    lowband = (freqs >= 30) & (freqs <= 400)
    peak_hz = freqs[lowband][np.argmax(spec[:, lowband], axis=1)]
    # band levels before (the 25 ms pre-roll) and after (the first 25 ms) the onset
    n_pre = min(pre, 1024)
    pre_spec = np.abs(scipy.fft.rfft(w[:, pre - n_pre:pre], n=N_FFT, axis=1, workers=-1)) ** 2
    post_spec = np.abs(scipy.fft.rfft(post[:, :n_pre], n=N_FFT, axis=1, workers=-1)) ** 2
    s1 = np.abs(scipy.fft.rfft(first, n=N_FFT, axis=1, workers=-1)) ** 2
    s2 = np.abs(scipy.fft.rfft(second, n=N_FFT, axis=1, workers=-1)) ** 2
    band_db, rise_db, band_decay = {}, {}, {}
    for name, (lo, hi) in BANDS.items():
        m = (freqs >= lo) & (freqs < hi)
        band_db[name] = _db(spec[:, m].sum(axis=1) / total)
        rise_db[name] = _db(post_spec[:, m].sum(axis=1)) - _db(pre_spec[:, m].sum(axis=1))
        band_decay[name] = _db(s2[:, m].sum(axis=1)) - _db(s1[:, m].sum(axis=1))
    return HitFeatures(centroid=centroid, rolloff=rolloff, zcr=zcr, rms_db=_db(e1),
                       decay_db=_db(e2) - _db(e1), peak_hz=peak_hz, band_db=band_db,
                       rise_db=rise_db, band_decay_db=band_decay)


def song_slice(audio: np.ndarray, onsets_s: np.ndarray,
               settings: FeatureSettings = DEFAULT_SETTINGS) -> tuple[np.ndarray, np.ndarray]:
    """The stretch of `audio` that a batch of onsets' windows reads, and the onsets shifted into it.

    `extract_windows` pads (copies) the audio it is given; handing it only this stretch keeps a
    batch's cost independent of the song's length. Windows come out identical.
    """
    onsets_s = np.asarray(onsets_s, np.float64)
    if len(onsets_s) == 0:
        return audio[:0], onsets_s
    sr, w = settings.sample_rate, settings.window_samples
    a = max(0, int(np.floor(onsets_s.min() * sr)) - 2 * w)
    b = min(len(audio), int(np.ceil(onsets_s.max() * sr)) + 2 * w)
    return audio[a:b], onsets_s - a / sr


def features_at(audio: np.ndarray, onsets_s: np.ndarray,
                settings: FeatureSettings = DEFAULT_SETTINGS) -> HitFeatures:
    """Descriptors of a batch of onsets (sorted, close together) of one song."""
    part, shifted = song_slice(audio, onsets_s, settings)
    return hit_features(extract_windows(part, shifted, settings), settings)


# ---- the decision list: thresholds read off per-class feature ranges of hits in rendered
# grooves of 11 Hydrogen kits (GMRockKit, BJA_Pacific and Millo_MultiLayered3 held out)
HEURISTIC_VERSION = "heuristic-2"
CYMBAL_HIGH_DB = -12.0      # 6-16 kHz share above this: a hi-hat or cymbal leads the hit
CLOSED_DECAY_DB = -6.5      # the high band falls at least this much from 0-50 to 50-100 ms
RINGING_RISE_DB = 15.0      # highs rose less than this: a ride struck while it was ringing


def classify(f: HitFeatures) -> tuple[np.ndarray, np.ndarray]:
    """One class index per onset and a rough confidence (how clearly the deciding rule held)."""
    n = len(f)
    label = np.full(n, CLASS_INDEX["snare"], np.int64)
    low, mid, high = f.band_db["low"], f.band_db["mid"], f.band_db["high"]
    hdecay, hrise = f.band_decay_db["high"], f.rise_db["high"]
    # cymbal branch: closed hat decays fast in the highs; ride keeps ringing; else open hat
    cymbal = (high > CYMBAL_HIGH_DB) & (f.centroid > 1500)
    closed = cymbal & (hdecay <= CLOSED_DECAY_DB)
    ride = cymbal & ~closed & (hrise <= RINGING_RISE_DB)
    crash = cymbal & ~closed & ~ride & (mid > -6) & (hdecay > -2)
    label[closed] = CLASS_INDEX["hihat_closed"]
    label[ride] = CLASS_INDEX["ride"]
    label[cymbal & ~closed & ~ride] = CLASS_INDEX["hihat_open"]
    label[crash] = CLASS_INDEX["crash"]
    # drum branch: kick = low band dominant at a kick pitch; snare = body plus noise; else tom
    drum = ~cymbal
    kick = drum & (low > -8) & (mid < -12) & ((f.peak_hz <= 95) | (f.decay_db < -8))
    snare = drum & ~kick & (mid > -16) & ((f.zcr > 2000) | (low < -10))
    tom = drum & ~kick & ~snare
    label[kick] = CLASS_INDEX["kick"]
    label[snare] = CLASS_INDEX["snare"]
    label[tom & (f.peak_hz < 120)] = CLASS_INDEX["tom_low"]
    label[tom & (f.peak_hz >= 120) & (f.peak_hz < 200)] = CLASS_INDEX["tom_mid"]
    label[tom & (f.peak_hz >= 200)] = CLASS_INDEX["tom_high"]
    # confidence: how far the deciding feature is from its threshold, squashed to 0.3-0.9
    margin = np.where(cymbal, np.abs(hdecay - CLOSED_DECAY_DB) / 10,
                      np.where(kick, (low + 8) / 8, np.abs(mid + 16) / 10))
    conf = np.clip(0.3 + 0.6 * np.tanh(margin), 0.3, 0.9)
    conf[tom] = 0.4
    return label, conf


# ---- the simultaneous-hit rule's band-energy checks (see docs/sections/40-process.md)
KICK_SHARE_DB = -12.0     # the 30-120 Hz band holds at least this share of the hit's energy
KICK_SHARE_SNARE_DB = -6.0  # ... (under a snare, whose body is low too: this much) ...
KICK_RISE_DB = 6.0        # ... and rose by this much at the onset (not a previous kick's tail)
KICK_PEAK_HZ = 110.0      # ... with its low peak where kicks ring, below the toms
HAT_SHARE_DB = -25.0      # the 6-16 kHz band holds this share under a kick or tom ...
HAT_SHARE_SNARE_DB = -20.0  # ... or this (much more) under a snare, whose wires are bright too
HAT_RISE_DB = 6.0        # ... and rose by this much at the onset ...
HAT_DECAY_DB = 0.0       # ... and fell this much by 50-100 ms (a closed hat, not a ride)
_NOT_UNDER_KICK = {CLASS_INDEX[c] for c in ("kick", "tom_low", "tom_mid")}
_DRUMS = {CLASS_INDEX[c] for c in ("kick", "tom_low", "tom_mid", "tom_high")}


def companions(f: HitFeatures, primary: np.ndarray) -> list[tuple[int, int]]:
    """(onset index, class index) for a kick or closed hi-hat heard under the primary hit."""
    out: list[tuple[int, int]] = []
    low_ok = (f.rise_db["low"] > KICK_RISE_DB) & (f.peak_hz < KICK_PEAK_HZ)
    high_rise = (f.rise_db["high"] > HAT_RISE_DB) & (f.band_decay_db["high"] < HAT_DECAY_DB)
    for i, p in enumerate(primary.tolist()):
        kick_share = KICK_SHARE_SNARE_DB if p == CLASS_INDEX["snare"] else KICK_SHARE_DB
        if p not in _NOT_UNDER_KICK and low_ok[i] and f.band_db["low"][i] > kick_share:
            out.append((i, CLASS_INDEX["kick"]))
        share = HAT_SHARE_DB if p in _DRUMS else (
            HAT_SHARE_SNARE_DB if p == CLASS_INDEX["snare"] else None)
        if share is not None and high_rise[i] and f.band_db["high"][i] > share:
            out.append((i, CLASS_INDEX["hihat_closed"]))
    return out
