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
kits, see the README). The song's kit is not among the training kits, so by default the song is
decomposed twice: the second time with templates blended with the song's own clearest hits of
each family (`song_templates`). Last, checks of one song against itself: a song's kicks are
one drum, so a kick whose low end is unlike the song's typical kick is a tom, and an onset
where a low end like it starts is a kick (`lowest_typical`); a snare unlike the song's typical
snare is a hi-hat or ride, and an onset that sounds like the song's snares is one, however
quiet (`sounds_like`); a hi-hat is noise, so one whose top octaves ring with partials is a
ride (`noisiness`), and an onset that hisses and sounds like the song's hi-hats is one.
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
    # Song adaptation: each family's template is blended with the song's own hits of it (onsets
    # where its rise is >= adapt_rise of the song's 95th percentile and >= adapt_share of the
    # onset's summed rise, at least adapt_min of them), and the song is decomposed again.
    adapt: bool = True
    adapt_rise: float = 0.5
    adapt_share: float = 0.6
    adapt_min: int = 8
    adapt_weight: float = 0.5      # the song's part in the blended template
    # Families decided on the second decomposition; the others keep the first one's decision
    # (on a second dev fold of 7 kits the adapted hi-hat lost 0.023 F, kick and snare gained).
    adapt_decides: tuple[str, ...] = ("kick", "snare")
    # A song's kicks are one drum. A kick the templates found whose low end (`low_profiles`) is
    # unlike the song's typical kick (cosine below kick_match) is another drum, mostly a tom:
    # the onset STFT's 43-Hz bins put a 50-Hz kick and a 90-Hz floor tom in neighbouring bands,
    # so the kick template cannot tell them apart. 0: off.
    kick_match: float = 0.7
    kick_samples: int = 4096       # from the onset (93 ms), zero-padded to 5.4-Hz bins
    # ... and any onset whose low end matches the typical kick (cosine >= kick_like) and is at
    # least kick_gain times the low end's magnitude over the kick_samples before it (a new low
    # hit, not a ring) is a kick: one the template missed (soft, or under a cymbal). 0: off.
    kick_like: float = 0.9
    kick_gain: float = 2.0
    # ... and a kick the templates found where no low end starts and whose low end is under
    # kick_quiet of the kept kicks' median is an earlier drum's ring (a tom's, a kick's, under a
    # hi-hat or nothing). 0: off.
    kick_quiet: float = 0.5
    # ... but a kick the templates found is kept, however unlike the typical kick, where the
    # typical kick's own pitch (the five bands, 2/3 octave, around its peak) sounds at least
    # kick_core of the kept kicks' median in each band and starts there (kick_gain): a kick
    # struck with a tom or snare, whose low end is added to the kick's. 0: off.
    kick_core: float = 0.5
    # Ghost notes: a snare is also reported at any onset whose first snare_samples (46 ms) match
    # the mean of the song's snares (third-octave bands 100 Hz-16 kHz, cosine >= snare_match):
    # quiet, so its rise is small, and the hi-hat template often explains it better. 0: off.
    snare_match: float = 0.95
    snare_samples: int = 2048
    # ... after dropping the template's snares unlike the song's typical snare (the same bands,
    # cosine below snare_keep; the reference is the lowest-pitched quarter of the snares not
    # also kicks: the snare template also fires on hi-hats and rides, which sit higher). 0: off.
    snare_keep: float = 0.7
    # ... that check compares what the onset adds: each band's power over the snare_samples
    # from the onset minus its power over the snare_samples before, floored at snare_added of
    # the former. A held chord fills the mid bands before and after a hit alike; left in, it
    # makes any hit under it sound like any other. (Ghost notes are still matched by their
    # whole sound: matched on what they add, they cost snare F on tests/test_process.py's
    # groove, and the dev renders do not tell the two apart.) 0: the whole sound.
    snare_added: float = 0.1
    # A hi-hat is noise; a ride rings with partials. A hi-hat the templates found whose top
    # octaves (`noisiness`) are less than hat_ratio of the song's noisiest hi-hats (their
    # hat_quantile) is a ride, another cymbal or a snare. 0: off.
    hat_ratio: float = 0.5
    hat_quantile: float = 0.9
    hat_samples: int = 2048        # per frame (46 ms); hat_frames of them, a quarter apart
    hat_frames: int = 4
    # ... and, as for snares, a hi-hat wherever an onset hisses and its first hat_samples match
    # the mean of the song's hi-hats (third-octave bands 2-16 kHz, cosine >= hat_match). 0: off.
    hat_match: float = 0.95
    # ... unless the song's hi-hats mostly do not hiss (median noisiness under hat_floor): then
    # something else fills the top octaves (a distorted guitar), the check cannot hear the hiss,
    # and the templates' hi-hats stand. 0: always check.
    hat_floor: float = 0.35
    check_min: int = 8             # fewer kicks (snares, hi-hats) in the song: no check

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


# 1/6-octave bands from 35 Hz to 280 Hz: where kicks and toms have their pitch (the dev kits'
# kicks peak at 44-147 Hz, their toms up to 310 Hz).
LOW_EDGES_HZ = 35.0 * 2.0 ** (np.arange(19) / 6)
# 1/3-octave bands from 100 Hz to 16 kHz: a snare's body and its wires.
MID_EDGES_HZ = 100.0 * 2.0 ** (np.arange(23) / 3)
# 1/3-octave bands from 2 kHz to 16 kHz: a hi-hat's hiss, a ride's partials.
TOP_EDGES_HZ = 2000.0 * 2.0 ** (np.arange(10) / 3)
CHUNK = 256                        # onsets per block: bounded memory, no padded copy of the song


def _gather(audio: np.ndarray, starts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """audio[starts[:, None] + offsets], zeros past the end."""
    idx = starts[:, None] + offsets
    return np.where(idx < len(audio), audio[np.minimum(idx, len(audio) - 1)], 0.0)


def _starts(audio: np.ndarray, onsets_s: np.ndarray, sr: int) -> np.ndarray:
    return np.clip(np.round(np.asarray(onsets_s) * sr).astype(np.int64), 0, len(audio))


def band_profiles(audio: np.ndarray, onsets_s: np.ndarray, samples: int, edges_hz: np.ndarray,
                  fft_size: int, sr: int = DEFAULT_ONSETS.sample_rate, unit: bool = True
                  ) -> np.ndarray:
    """(onsets, bands) magnitude spectrum of the `samples` from each onset (Hann window,
    `fft_size`-point FFT), summed in the bands between `edges_hz`; with `unit`, normalised:
    what a hit sounds like, whatever its loudness."""
    freqs = np.fft.rfftfreq(fft_size, 1.0 / sr)
    band = np.digitize(freqs, edges_hz) - 1
    bins = np.flatnonzero((band >= 0) & (band < len(edges_hz) - 1))
    to_band = np.zeros((len(bins), len(edges_hz) - 1), np.float32)
    to_band[np.arange(len(bins)), band[bins]] = 1.0
    audio = np.asarray(audio, np.float32)
    starts = _starts(audio, onsets_s, sr)
    window = np.hanning(samples).astype(np.float32)
    out = np.zeros((len(starts), to_band.shape[1]), np.float32)
    for i in range(0, len(starts), CHUNK):
        frames = _gather(audio, starts[i:i + CHUNK], np.arange(samples))
        spec = scipy.fft.rfft(frames * window, fft_size, axis=-1, workers=-1)
        out[i:i + CHUNK] = np.sqrt((np.abs(spec[:, bins]) ** 2) @ to_band)
    return _unit(out) if unit else out


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def low_profiles(audio: np.ndarray, onsets_s: np.ndarray, s: TemplateSettings = DEFAULT,
                 unit: bool = True) -> np.ndarray:
    """The low end of each hit, fine enough to hear a kick's and a tom's pitch apart."""
    return band_profiles(audio, onsets_s, s.kick_samples, LOW_EDGES_HZ, 2 * s.kick_samples,
                         s.frames.sample_rate, unit)


def _cosine(profiles: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return profiles @ ref / max(float(np.linalg.norm(ref)), 1e-12)


def lowest_typical(profiles: np.ndarray, lowest: float = 0.25) -> np.ndarray:
    """The song's drum among these hits' band profiles: the mean of the `lowest` share of them
    by the profile's centroid. A family's template also fires on drums above it (the kick's on
    toms and snares, the snare's on hi-hats and rides), and those may even outnumber its own
    hits without moving this reference."""
    power = profiles ** 2
    centroid = (power * np.arange(profiles.shape[1])).sum(axis=1) / np.maximum(
        power.sum(axis=1), 1e-12)
    return profiles[centroid <= np.quantile(centroid, lowest)].mean(axis=0)


def sounds_like(audio: np.ndarray, onsets_s: np.ndarray, members: np.ndarray,
                edges_hz: np.ndarray, samples: int, threshold: float,
                sr: int = DEFAULT_ONSETS.sample_rate) -> np.ndarray:
    """(onsets,) bool: which onsets' first `samples` match the mean of the `members` (bool; the
    song's snares, say) in the bands between `edges_hz` (cosine >= threshold)."""
    return _like(band_profiles(audio, onsets_s, samples, edges_hz, samples, sr), members,
                 threshold)


def _like(profiles: np.ndarray, members: np.ndarray, threshold: float) -> np.ndarray:
    return _cosine(profiles, profiles[members].mean(axis=0)) >= threshold


def noisiness(audio: np.ndarray, onsets_s: np.ndarray, s: TemplateSettings = DEFAULT
               ) -> np.ndarray:
    """(onsets,) how noise-like each hit's top octaves are, 0-1: the spectral flatness
    (geometric over arithmetic mean of the power) within each third-octave band from 2 to
    16 kHz, over `s.hat_frames` frames from the onset, averaged over the bands by their
    energy. Within one narrow band the hiss of a hi-hat is flat whatever its colour; a ride's
    partials stand out of it."""
    sr, n = s.frames.sample_rate, s.hat_samples
    audio = np.asarray(audio, np.float32)
    starts = _starts(audio, onsets_s, sr)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    band = np.digitize(freqs, TOP_EDGES_HZ) - 1
    bands = [np.flatnonzero(band == b) for b in range(len(TOP_EDGES_HZ) - 1)]
    offsets = (np.arange(s.hat_frames)[:, None] * (n // 4) + np.arange(n)).ravel()
    window = np.hanning(n).astype(np.float32)
    out = np.zeros(len(starts), np.float32)
    for i in range(0, len(starts), CHUNK):
        frames = _gather(audio, starts[i:i + CHUNK], offsets).reshape(-1, s.hat_frames, n)
        power = (np.abs(scipy.fft.rfft(frames * window, axis=-1, workers=-1)) ** 2).mean(axis=1)
        power += np.float32(1e-20)
        log_flat = np.stack([np.log(power[:, b]).mean(axis=1) - np.log(power[:, b].mean(axis=1))
                             for b in bands], axis=1)
        energy = np.stack([power[:, b].sum(axis=1) for b in bands], axis=1)
        out[i:i + CHUNK] = np.exp((log_flat * energy).sum(axis=1) / energy.sum(axis=1))
    return out


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
    first (H is repeated back to the spectrogram's frames); chunked so long songs stay bounded.
    The shifted copies of H are stacked so each update is one matrix product per direction."""
    p = s.pool
    W = np.asarray(templates, np.float32)
    have = W.sum(axis=(1, 2)) > 0
    r = int(have.sum())
    W = W[have].reshape(r, N_BANDS, SPAN // p, p).sum(axis=3)
    W /= W.sum(axis=(1, 2), keepdims=True)          # each sums to 1: the update needs no divisor
    lags = W.shape[2]
    stacked = np.ascontiguousarray(W.transpose(1, 2, 0).reshape(N_BANDS, lags * r))
    n = spec.shape[1]
    H = np.zeros((len(templates), n), np.float32)
    step = s.chunk_frames // p * p
    for a in range(0, n, step):
        V = np.asarray(spec[:, a:a + step], np.float32)
        m = -(-V.shape[1] // p)                      # pooled frames, the last one zero-padded
        V = np.pad(V, ((0, 0), (0, m * p - V.shape[1]))).reshape(N_BANDS, m, p).sum(axis=2)
        V += np.float32(1e-9)
        h = np.full((r, m), V.mean() / r, np.float32)
        shifted = np.zeros((lags, r, m), np.float32)   # shifted[t, :, k] = h[:, k - t]
        used = range(min(lags, m))
        for _ in range(s.iterations):
            for t in used:
                shifted[t, :, t:] = h[:, :m - t]
            ratio = stacked @ shifted.reshape(lags * r, m)
            np.divide(V, ratio, out=ratio)
            back = (stacked.T @ ratio).reshape(lags, r, m)
            grad = back[0].copy()
            for t in used[1:]:
                grad[:, :m - t] += back[t, :, t:]
            h *= grad
        H[have, a:a + step] = np.repeat(h, p, axis=1)[:, :min(step, n - a)]
    return H


def rises(H: np.ndarray, onsets_s: np.ndarray, s: TemplateSettings = DEFAULT
          ) -> tuple[np.ndarray, np.ndarray]:
    """(onsets, families) activation rise at each onset (peak in `peak_ms` around it minus the
    floor in `floor_ms` before it) and the frame of that peak."""
    n = H.shape[1]
    fr = np.clip(np.round(np.asarray(onsets_s) * s.frames.sample_rate / s.frames.hop)
                 .astype(np.int64), 0, n - 1)

    def span(ms: tuple[float, float]) -> np.ndarray:
        return np.clip(fr[:, None] + np.arange(s.frames_of(ms[0]), s.frames_of(ms[1]) + 1), 0,
                       n - 1)

    peak_idx, floor_idx = span(s.peak_ms), span(s.floor_ms)
    peaks = H[:, peak_idx]                                        # (families, onsets, span)
    rise = np.maximum(peaks.max(axis=2) - H[:, floor_idx].min(axis=2), 0.0).T
    at = np.take_along_axis(peak_idx[None], peaks.argmax(axis=2)[..., None], axis=2)[..., 0].T
    return rise, at


def _shares(rise: np.ndarray) -> np.ndarray:
    return rise / np.maximum(rise.sum(axis=1, keepdims=True), 1e-30)


def song_templates(spec: np.ndarray, templates: np.ndarray, H: np.ndarray, rise: np.ndarray,
                   at: np.ndarray, s: TemplateSettings = DEFAULT) -> np.ndarray:
    """The templates blended with this song's own hits: a kit's kick is nearer its own kick than
    the training kits' mean. A family's exemplars are its confident onsets (a large rise that is
    most of the onset's), each the song's SPAN frames from the activation's peak, masked to that
    family's part of the decomposition (its reconstruction over the total), normalised to sum 1."""
    W = np.asarray(templates, np.float32)
    W = W / np.maximum(W.sum(axis=(1, 2), keepdims=True), 1e-30)
    n = spec.shape[1]
    share = _shares(rise)
    out = W.copy()
    lags = np.arange(SPAN)
    for f in np.flatnonzero(W.sum(axis=(1, 2)) > 0):
        scale = np.percentile(rise[:, f], 95)
        pick = np.flatnonzero((rise[:, f] >= s.adapt_rise * scale) & (share[:, f] >= s.adapt_share)
                              & (at[:, f] + SPAN <= n))
        if scale <= SILENT_RISE or len(pick) < s.adapt_min:
            continue
        own = np.zeros_like(W[f])
        for i in range(0, len(pick), 512):                             # bounded memory
            cols = at[pick[i:i + 512], f][:, None] + lags              # (P, SPAN) frames
            # each family's reconstruction there: sum over lags t of W[:, :, t] H[k - t]
            src = cols[:, :, None] - lags                              # (P, SPAN, lags)
            h = H[:, np.maximum(src, 0)] * (src >= 0)                  # (fam, P, SPAN, lags)
            # (fam, P, bands, SPAN); H is the pooled activations repeated, which scales every
            # family's part alike and leaves the mask as it is
            parts = np.einsum("cbt,cpjt->cpbj", W, h, optimize=True)
            seg = spec[:, cols].transpose(1, 0, 2) * (
                parts[f] / np.maximum(parts.sum(axis=0), 1e-30))       # (P, bands, SPAN)
            own += (seg / np.maximum(seg.sum(axis=(1, 2), keepdims=True), 1e-30)).sum(axis=0)
        if own.sum() > 0:
            out[f] = (1 - s.adapt_weight) * W[f] + s.adapt_weight * own / own.sum()
    return out


def onset_families(audio: np.ndarray, onsets_s: np.ndarray, templates: np.ndarray,
                   thresholds: dict[str, float] = THRESHOLDS, s: TemplateSettings = DEFAULT,
                   spec: np.ndarray | None = None, shares: dict[str, float] | None = None
                   ) -> np.ndarray:
    """(onsets, families) bool: which of the `thresholds` families start at each onset. A
    family counts where its `rises` reach a share of the song's 95th-percentile rise, or
    (families in `shares`, default SHARES) where it holds that share of the onset's summed
    rise. With `s.adapt` the song is decomposed twice, the second time with `song_templates`,
    and the families in `s.adapt_decides` are decided on that second decomposition. Then the
    checks of the song against itself: kicks by their low end (`s.kick_match`, `s.kick_quiet`,
    `s.kick_core`, `s.kick_like`), snares by their sound (`s.snare_keep`, `s.snare_added`,
    `s.snare_match`: ghost notes), hi-hats by their hiss (`s.hat_ratio`, `s.hat_match`,
    `s.hat_floor`).
    `spec`: the song's `spectrogram`, if already computed."""
    shares = SHARES if shares is None else shares
    out = np.zeros((len(onsets_s), len(FAMILIES)), bool)
    if not len(onsets_s):
        return out
    spec = spectrogram(audio, s) if spec is None else spec
    H = activations(spec, templates, s)
    rise, at = rises(H, onsets_s, s)
    adapted = rise
    if s.adapt and any(name in s.adapt_decides for name in thresholds):
        H = activations(spec, song_templates(spec, templates, H, rise, at, s), s)
        adapted, _ = rises(H, onsets_s, s)
    for name, theta in thresholds.items():
        f = FAMILIES.index(name)
        rise_of = adapted if name in s.adapt_decides else rise
        r = rise_of[:, f]
        scale = np.percentile(r, 95)
        if scale > SILENT_RISE:
            out[:, f] = r >= theta * scale
            if name in shares:   # a ghost note: quiet, but mostly this family
                out[:, f] |= (_shares(rise_of)[:, f] >= shares[name]) & (r > SILENT_RISE)
    kick, snare, hihat = (FAMILIES.index(f) for f in ("kick", "snare", "hihat"))
    onsets_s = np.asarray(onsets_s)
    if "kick" in thresholds and s.kick_match > 0 and out[:, kick].sum() >= s.check_min:
        out[:, kick] = _kicks_by_low_end(audio, onsets_s, out[:, kick], s)
    if "snare" in thresholds and s.snare_match + s.snare_keep > 0 and (
            out[:, snare].sum() >= s.check_min):
        out[:, snare] = _snares_by_sound(audio, onsets_s, out[:, snare], out[:, kick], s)
    if "hihat" in thresholds and s.hat_ratio > 0 and out[:, hihat].sum() >= s.check_min:
        out[:, hihat] = _hats_by_noise(audio, onsets_s, out[:, hihat], s)
    return out


def _kicks_by_low_end(audio: np.ndarray, onsets_s: np.ndarray, kicks: np.ndarray,
                      s: TemplateSettings) -> np.ndarray:
    """The template's `kicks` (bool) whose low end is like the song's typical kick and, where no
    low end starts, not quiet (`s.kick_quiet`), or where the typical kick's own pitch starts at
    full strength under another drum (`s.kick_core`); and the onsets where a low end like the
    kept kicks' starts (`s.kick_like`). A low end starts where it is at least `s.kick_gain`
    times what it was over the `s.kick_samples` before."""
    low = low_profiles(audio, onsets_s, s, unit=False)
    before = low_profiles(audio, onsets_s - s.kick_samples / s.frames.sample_rate, s, unit=False)
    level = np.linalg.norm(low, axis=1)
    starts = level >= s.kick_gain * np.linalg.norm(before, axis=1)
    profiles = _unit(low)
    # the reference only from kicks where a low end starts: an onset just after a kick has
    # that kick's tail for a low end, and a falling kick's tail is lower than its attack
    ref = kicks & starts if (kicks & starts).sum() >= s.check_min else kicks
    typical = lowest_typical(profiles[ref])
    out = kicks & (_cosine(profiles, typical) >= s.kick_match)
    # kicks struck with a tom or snare: joined after the ring rule and the addition, which are
    # decided on the kicks like the typical one alone
    struck_with = np.zeros_like(out)
    if s.kick_core > 0 and out.any():
        peak = int(np.argmax(typical))
        core = slice(max(peak - 2, 0), peak + 3)
        usual = np.maximum(np.median(low[out, core], axis=0), 1e-12)
        struck_with = kicks & ((low[:, core] / usual).min(axis=1) >= s.kick_core) & (
            np.linalg.norm(low[:, core], axis=1)
            >= s.kick_gain * np.linalg.norm(before[:, core], axis=1))
    if s.kick_quiet > 0 and out.any():
        out &= starts | (level >= s.kick_quiet * np.median(level[out]))
    if s.kick_like > 0 and out.any():
        like = _cosine(profiles, lowest_typical(profiles[out])) >= s.kick_like
        out |= like & starts
    return out | struck_with


def _snares_by_sound(audio: np.ndarray, onsets_s: np.ndarray, snares: np.ndarray,
                     kicks: np.ndarray, s: TemplateSettings) -> np.ndarray:
    """The template's `snares` (bool) like the song's typical snare in what each onset adds to
    the sound before it (`s.snare_keep`, `s.snare_added`; the reference leaves out onsets that
    are also `kicks`, whose low end would pass for the lowest snare), and the onsets whose whole
    sound is like the kept ones' (`s.snare_match`: ghost notes)."""
    sr, n = s.frames.sample_rate, s.snare_samples
    whole = band_profiles(audio, onsets_s, n, MID_EDGES_HZ, n, sr, unit=False)
    out = snares.copy()
    if s.snare_keep > 0:
        profiles = whole
        if s.snare_added > 0:
            before = band_profiles(audio, onsets_s - n / sr, n, MID_EDGES_HZ, n, sr, unit=False)
            profiles = np.sqrt(np.maximum(whole ** 2 - before ** 2, s.snare_added * whole ** 2))
        profiles = _unit(profiles)
        alone = snares & ~kicks
        ref = lowest_typical(profiles[alone if alone.sum() >= s.check_min else snares])
        out &= _cosine(profiles, ref) >= s.snare_keep
    if s.snare_match > 0 and out.sum() >= s.check_min:
        out |= _like(_unit(whole), out, s.snare_match)
    return out


def _hats_by_noise(audio: np.ndarray, onsets_s: np.ndarray, hats: np.ndarray,
                   s: TemplateSettings) -> np.ndarray:
    """The template's `hats` (bool) that hiss like the song's noisiest ones, and the onsets that
    hiss as much and sound like the kept ones (`s.hat_match`); all of `hats` where most of them
    do not hiss (`s.hat_floor`: a band in the top octaves)."""
    found = np.flatnonzero(hats)
    flat = noisiness(audio, onsets_s[found], s)
    if np.median(flat) < s.hat_floor:
        return hats
    cut = s.hat_ratio * np.quantile(flat, s.hat_quantile)
    out = np.zeros_like(hats)
    out[found] = flat >= cut
    if s.hat_match > 0 and out.sum() >= s.check_min:
        more = np.flatnonzero(~out & sounds_like(audio, onsets_s, out, TOP_EDGES_HZ,
                                                 s.hat_samples, s.hat_match,
                                                 s.frames.sample_rate))
        out[more] = noisiness(audio, onsets_s[more], s) >= cut
    return out
