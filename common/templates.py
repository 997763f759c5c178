"""Drum-family spectro-temporal templates and their activations: which of kick, snare and hi-hat
start at an onset, each decided on its own, so a kick + hi-hat beat is found as both.

A CNN trained on a few kits recognises a kick of a kit it never heard poorly (the model-quality
section of the README). How a kick *sounds over its first 46 ms* transfers much better: every
kick puts its attack low and dies fast, every hi-hat is high, a tom rings. So training also
keeps, for each drum family, the mean mel spectrogram of the first SPAN frames of its clean
hits (`family_templates`, stored in the model as the `templates` buffer and averaged by FedAvg
like the BatchNorm statistics). `process` explains the song's spectrogram as a non-negative mix
of those templates, each started at any frame (convolutive NMF, "NMFD", KL divergence, templates
fixed: `activations`), and reports a family at an onset when its activation rises there by a
share of the song's typical rise (`onset_families`; thresholds chosen on renders of training
kits, see the README). One spectrum per family (the first version) scored lower on the same dev
renders: kick 0.86 vs 0.93, snare 0.75 vs 0.79.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from .classes import FAMILIES, FAMILY_INDEX
from .onsets import (
    DEFAULT_ONSETS,
    OnsetSettings,
    envelope,
    frame_count,
    mel_filters,
    periodic_hann,
)

N_BANDS = DEFAULT_ONSETS.n_mels
SPAN = 8      # STFT frames per template: 46 ms of a hit from its onset (5.8-ms hop)


@dataclass(frozen=True)
class TemplateSettings:
    frames: OnsetSettings = DEFAULT_ONSETS   # the onset detector's STFT and mel bands: one pass
    pool: int = 2                  # frames summed in pairs for the decomposition: a third of
    #                                the work at 5.8 ms, the same scores on the dev renders
    peak_ms: tuple[float, float] = (-10.0, 30.0)    # an onset's activation: its peak here ...
    floor_ms: tuple[float, float] = (-40.0, -20.0)  # ... minus its floor here
    iterations: int = 30           # multiplicative updates of the activations
    chunk_frames: int = 6000       # 35 s of frames per NMF problem (bounded memory)

    def frames_of(self, ms: float) -> int:
        return int(round(ms / 1000.0 * self.frames.sample_rate / self.frames.hop))


DEFAULT = TemplateSettings()
# An onset gets a family when that family's activation rise there is at least this share of
# the song's 95th-percentile rise (families not listed are left to the classifier). Chosen on
# renders of the contributors' kits, each with templates from the other kits (README).
THRESHOLDS: dict[str, float] = {"kick": 0.3, "snare": 0.3, "hihat": 0.15}
# ... or where its rise is at least this share of all families' rises at that onset: a snare
# ghost note is a fraction of the backbeat's loudness but still mostly snare (dev renders, README).
SHARES: dict[str, float] = {"snare": 0.4}
# A song whose typical rise is below this (mel magnitude; a hit peaking at -60 dBFS rises over
# 1000x more) is silence: the decomposition of an empty spectrogram wobbles at its edges.
SILENT_RISE = 1e-4


def spectrogram(audio: np.ndarray, s: TemplateSettings = DEFAULT) -> np.ndarray:
    """Mel magnitude spectrogram (bands, frames) of the onset detector's STFT, frame k centred
    on sample k * hop (`process` takes it from the onset pass instead of computing it again)."""
    out = np.zeros((s.frames.n_mels, frame_count(len(audio), s.frames)), np.float32)
    envelope(np.asarray(audio, np.float32), s.frames, mel_out=out)
    return out


def attack_patterns(windows: np.ndarray, onset: int, s: TemplateSettings = DEFAULT
                    ) -> np.ndarray:
    """(N, bands, SPAN): each window's mel magnitude spectrogram over the SPAN frames centred
    from sample `onset` on, normalised to sum 1 (loudness is the activations' business, not the
    template's)."""
    f = s.frames
    mel, window = mel_filters(f), periodic_hann(f.n_fft)
    half = f.n_fft // 2
    out = np.zeros((len(windows), f.n_mels, SPAN), np.float32)
    for i in range(0, len(windows), 256):
        w = np.asarray(windows[i:i + 256], np.float32)
        w = np.pad(w, ((0, 0), (half, half + f.hop * SPAN)))
        frames = sliding_window_view(w, f.n_fft, axis=1)[:, onset:onset + f.hop * SPAN:f.hop]
        mag = np.abs(scipy.fft.rfft(frames * window, axis=-1, workers=-1))
        pat = (mag @ mel.T).transpose(0, 2, 1)                     # (n, bands, SPAN)
        out[i:i + 256] = pat / np.maximum(pat.sum(axis=(1, 2), keepdims=True), 1e-12)
    return out


def family_templates(windows: np.ndarray, y: np.ndarray, onset: int,
                     targets: np.ndarray | None = None, s: TemplateSettings = DEFAULT
                     ) -> np.ndarray:
    """(families, bands, SPAN) mean attack pattern of each family's hits; zeros for a family with
    none. Hits struck together with another class (`targets`, multi-hot per hit) are left out
    where the family has others: a kick template must not learn the hi-hat played with it."""
    fam = np.asarray(FAMILY_INDEX)[np.asarray(y, np.int64)]
    clean = (np.ones(len(fam), bool) if targets is None
             else np.asarray(targets).sum(axis=1) <= 1)
    out = np.zeros((len(FAMILIES), N_BANDS, SPAN), np.float32)
    for f in range(len(FAMILIES)):
        rows = np.flatnonzero((fam == f) & clean)
        if not len(rows):
            rows = np.flatnonzero(fam == f)
        if len(rows):
            out[f] = attack_patterns(windows[rows], onset, s).mean(axis=0)
    return out


def usable(templates: np.ndarray | None) -> bool:
    """Whether a model carries templates for every family `onset_families` decides."""
    if templates is None:
        return False
    t = np.asarray(templates)
    return t.shape == (len(FAMILIES), N_BANDS, SPAN) and all(
        t[FAMILIES.index(f)].sum() > 0 for f in THRESHOLDS)


def activations(spec: np.ndarray, templates: np.ndarray, s: TemplateSettings = DEFAULT
                ) -> np.ndarray:
    """(families, frames) H >= 0 minimising KL(spec || sum_t W_t H shifted by t), the templates
    W fixed: how strongly each family starts at each frame. Frames are summed in `s.pool`s
    first (H is repeated back to the spectrogram's frames); chunked so long songs stay bounded."""
    p = s.pool
    W = np.asarray(templates, np.float32)
    have = W.sum(axis=(1, 2)) > 0
    W = W[have].reshape(int(have.sum()), N_BANDS, SPAN // p, p).sum(axis=3)
    W /= W.sum(axis=(1, 2), keepdims=True)          # each sums to 1: the update needs no divisor
    taps = [np.ascontiguousarray(W[:, :, t].T) for t in range(W.shape[2])]   # (bands, families)
    n = spec.shape[1]
    H = np.zeros((len(templates), n), np.float32)
    step = s.chunk_frames // p * p
    for a in range(0, n, step):
        V = np.asarray(spec[:, a:a + step], np.float32)
        m = -(-V.shape[1] // p)                      # pooled frames, the last one zero-padded
        V = np.pad(V, ((0, 0), (0, m * p - V.shape[1]))).reshape(N_BANDS, m, p).sum(axis=2)
        V += np.float32(1e-9)
        h = np.full((W.shape[0], m), V.mean() / W.shape[0], np.float32)
        for _ in range(s.iterations):
            model = np.zeros_like(V)
            for t, w in enumerate(taps[:m]):
                model[:, t:] += w @ h[:, :m - t]
            ratio = V / model
            grad = np.zeros_like(h)
            for t, w in enumerate(taps[:m]):
                grad[:, :m - t] += w.T @ ratio[:, t:]
            h *= grad
        H[have, a:a + step] = np.repeat(h, p, axis=1)[:, :min(step, n - a)]
    return H


def onset_families(audio: np.ndarray, onsets_s: np.ndarray, templates: np.ndarray,
                   thresholds: dict[str, float] = THRESHOLDS, s: TemplateSettings = DEFAULT,
                   spec: np.ndarray | None = None, shares: dict[str, float] | None = None
                   ) -> np.ndarray:
    """(onsets, families) bool: which of the `thresholds` families start at each onset. A
    family's rise at an onset is its activation's peak in `peak_ms` around the onset minus its
    floor in `floor_ms` before it; it counts relative to the song's 95th-percentile rise, or
    (families in `shares`, default SHARES) as its share of the onset's summed rise. `spec`: the
    song's `spectrogram`, if already computed."""
    shares = SHARES if shares is None else shares
    out = np.zeros((len(onsets_s), len(FAMILIES)), bool)
    if not len(onsets_s):
        return out
    H = activations(spectrogram(audio, s) if spec is None else spec, templates, s)
    n = H.shape[1]
    fr = np.clip(np.round(np.asarray(onsets_s) * s.frames.sample_rate / s.frames.hop)
                 .astype(np.int64), 0, n - 1)

    def span(ms: tuple[float, float]) -> np.ndarray:
        return np.clip(fr[:, None] + np.arange(s.frames_of(ms[0]), s.frames_of(ms[1]) + 1), 0,
                       n - 1)

    peak_idx, floor_idx = span(s.peak_ms), span(s.floor_ms)
    rises = np.maximum(H[:, peak_idx].max(axis=2) - H[:, floor_idx].min(axis=2), 0.0).T
    share = rises / np.maximum(rises.sum(axis=1, keepdims=True), 1e-30)
    for name, theta in thresholds.items():
        f = FAMILIES.index(name)
        rise = rises[:, f]
        scale = np.percentile(rise, 95)
        if scale > SILENT_RISE:
            out[:, f] = rise >= theta * scale
            if name in shares:   # a ghost note: quiet, but mostly this family
                out[:, f] |= (share[:, f] >= shares[name]) & (rise > SILENT_RISE)
    return out
