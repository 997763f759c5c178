"""Drum-family spectral templates and NMF activations: which of kick, snare and hi-hat start at
an onset, each decided on its own, so a kick + hi-hat beat is found as both.

A CNN trained on a few kits recognises a kick of a kit it never heard poorly (the model-quality
section of the README). A kick's *spectrum* transfers much better: every kick puts its attack
low, every hi-hat high. So training also keeps, for each drum family, the mean attack spectrum
of its clean hits (`family_templates`, stored in the model as the `templates` buffer and
averaged by FedAvg like the BatchNorm statistics). `process` explains the song's spectrogram as
a non-negative mix of those templates (KL-NMF with the templates fixed, `activations`) and
reports a family at an onset when its activation rises there by a share of the song's typical
rise (`onset_families`; thresholds chosen on renders of training kits, see the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from .audio import SAMPLE_RATE
from .classes import FAMILIES, FAMILY_INDEX
from .onsets import OnsetSettings, centred_frames, mel_filters, periodic_hann

N_BANDS = 96


@dataclass(frozen=True)
class TemplateSettings:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 2048
    hop: int = 441                 # 10 ms frames
    n_bands: int = N_BANDS
    fmin: float = 30.0
    fmax: float = 16000.0
    attack_frames: int = 6         # a template is the mean of the first 60 ms after the onset
    iterations: int = 60           # multiplicative updates of the activations
    chunk_frames: int = 6000       # a minute of frames per NMF problem (bounded memory)


DEFAULT = TemplateSettings()
# An onset gets a family when that family's activation rise there is at least this share of
# the song's 95th-percentile rise (families not listed are left to the classifier). Chosen on
# renders of the contributors' kits, each with templates from the other kits (README).
THRESHOLDS: dict[str, float] = {"kick": 0.5, "snare": 0.35, "hihat": 0.1}


def _frame_settings(s: TemplateSettings) -> OnsetSettings:
    """The onset detector's framing and mel filters (HTK mel, built without librosa's ~2 s of
    start-up), at this module's sizes."""
    return OnsetSettings(sample_rate=s.sample_rate, n_fft=s.n_fft, hop=s.hop, n_mels=s.n_bands,
                         fmin=s.fmin, fmax=s.fmax)


def spectrogram(audio: np.ndarray, s: TemplateSettings = DEFAULT) -> np.ndarray:
    """Mel magnitude spectrogram (bands, frames), frame k centred on sample k * hop."""
    o = _frame_settings(s)
    mel, window = mel_filters(o), periodic_hann(s.n_fft)
    n = len(audio) // s.hop + 1
    out = np.zeros((s.n_bands, n), np.float32)
    for f0 in range(0, n, s.chunk_frames):
        f1 = min(n, f0 + s.chunk_frames)
        frames = centred_frames(np.asarray(audio, np.float32), f0, f1, o)
        mag = np.abs(scipy.fft.rfft(frames * window, axis=-1, workers=-1))
        out[:, f0:f1] = (mag @ mel.T).T
    return out


def attack_spectra(windows: np.ndarray, onset: int, s: TemplateSettings = DEFAULT) -> np.ndarray:
    """(N, bands): each window's mean spectrum over the first `attack_frames` frames centred
    from sample `onset` on, normalised to sum 1 (loudness is the activations' business, not
    the template's)."""
    mel, window = mel_filters(_frame_settings(s)), periodic_hann(s.n_fft)
    half = s.n_fft // 2
    out = np.zeros((len(windows), s.n_bands), np.float32)
    for i in range(0, len(windows), 256):
        w = np.asarray(windows[i:i + 256], np.float32)
        w = np.pad(w, ((0, 0), (half, half + s.hop * s.attack_frames)))
        frames = sliding_window_view(w, s.n_fft, axis=1)[:, onset:onset + s.hop * s.attack_frames:s.hop]
        mag = np.abs(scipy.fft.rfft(frames * window, axis=-1, workers=-1))
        att = (mag @ mel.T).mean(axis=1)
        out[i:i + 256] = att / np.maximum(att.sum(axis=1, keepdims=True), 1e-12)
    return out


def family_templates(windows: np.ndarray, y: np.ndarray, onset: int,
                     targets: np.ndarray | None = None, s: TemplateSettings = DEFAULT
                     ) -> np.ndarray:
    """(families, bands) mean attack spectrum of each family's hits; zeros for a family with
    none. Hits struck together with another class (`targets`, multi-hot per hit) are left out
    where the family has others: a kick template must not learn the hi-hat played with it."""
    fam = np.asarray(FAMILY_INDEX)[np.asarray(y, np.int64)]
    clean = (np.ones(len(fam), bool) if targets is None
             else np.asarray(targets).sum(axis=1) <= 1)
    out = np.zeros((len(FAMILIES), s.n_bands), np.float32)
    for f in range(len(FAMILIES)):
        rows = np.flatnonzero((fam == f) & clean)
        if not len(rows):
            rows = np.flatnonzero(fam == f)
        if len(rows):
            out[f] = attack_spectra(windows[rows], onset, s).mean(axis=0)
    return out


def usable(templates: np.ndarray | None) -> bool:
    """Whether a model carries templates for every family `onset_families` decides."""
    if templates is None:
        return False
    t = np.asarray(templates)
    return t.shape == (len(FAMILIES), N_BANDS) and all(
        t[FAMILIES.index(f)].sum() > 0 for f in THRESHOLDS)


def activations(spec: np.ndarray, templates: np.ndarray, s: TemplateSettings = DEFAULT
                ) -> np.ndarray:
    """(families, frames) H >= 0 minimising KL(spec || W H) with W = the normalised templates
    fixed: how much of each family sounds in each frame. Chunked so long songs stay bounded."""
    W = np.asarray(templates, np.float64).T
    have = W.sum(axis=0) > 0
    W = W[:, have] / W[:, have].sum(axis=0)
    H = np.zeros((len(templates), spec.shape[1]))
    w_sum = W.sum(axis=0)[:, None]
    for a in range(0, spec.shape[1], s.chunk_frames):
        V = np.asarray(spec[:, a:a + s.chunk_frames], np.float64) + 1e-9
        h = np.full((W.shape[1], V.shape[1]), V.mean() / W.shape[1])
        for _ in range(s.iterations):
            h *= (W.T @ (V / (W @ h))) / w_sum
        H[have, a:a + s.chunk_frames] = h
    return H


def onset_families(audio: np.ndarray, onsets_s: np.ndarray, templates: np.ndarray,
                   thresholds: dict[str, float] = THRESHOLDS, s: TemplateSettings = DEFAULT
                   ) -> np.ndarray:
    """(onsets, families) bool: which of the `thresholds` families start at each onset. A
    family's rise at an onset is its activation's peak in the 40 ms from just before the onset
    minus its floor in the 30 ms before that, relative to the song's 95th-percentile rise."""
    out = np.zeros((len(onsets_s), len(FAMILIES)), bool)
    if not len(onsets_s):
        return out
    H = activations(spectrogram(audio, s), templates, s)
    n = H.shape[1]
    fr = np.clip(np.round(np.asarray(onsets_s) * s.sample_rate / s.hop).astype(np.int64), 0, n - 1)
    peak_idx = np.clip(fr[:, None] + np.arange(-1, 4)[None, :], 0, n - 1)
    floor_idx = np.clip(fr[:, None] + np.arange(-4, -1)[None, :], 0, n - 1)
    for name, theta in thresholds.items():
        f = FAMILIES.index(name)
        rise = np.maximum(H[f][peak_idx].max(axis=1) - H[f][floor_idx].min(axis=1), 0.0)
        scale = np.percentile(rise, 95)
        if scale > 0:
            out[:, f] = rise >= theta * scale
    return out
