"""Onset detection against known hit times: a rendered groove (real kit) and synthesised clicks."""

import mir_eval
import numpy as np
import pytest

from beatsight.common.bsm import hits, read_bsm
from beatsight.common.mapeval import collapse
from beatsight.common.onsets import (
    DEFAULT_ONSETS,
    OnsetSettings,
    delta_for,
    detect_onsets,
    envelope,
)
from beatsight.common.process import decode

SR = DEFAULT_ONSETS.sample_rate


def _clicks(times_s, levels, length_s, seed=0) -> np.ndarray:
    """Decaying noise bursts (synthesised here: no kit needed) at the given times and levels."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(length_s * SR), np.float32)
    n = int(0.08 * SR)
    burst = rng.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / (0.01 * SR))
    for t, lv in zip(times_s, levels, strict=True):
        i = int(round(t * SR))
        out[i:i + n] += lv * burst[: len(out) - i]
    return out


@pytest.mark.needs_kits
def test_rendered_groove_onsets_match_ground_truth(rendered_song):
    audio = decode(rendered_song.wav)
    ref = collapse([h.time_s for h in hits(read_bsm(rendered_song.bsm))])
    est = detect_onsets(audio)
    f, p, r = mir_eval.onset.f_measure(ref, est, window=0.05)
    assert f >= 0.9, (f, p, r, len(ref), len(est))
    # detected times are close, not just within the window
    matched = mir_eval.util.match_events(ref, est, 0.05)
    err_ms = np.abs([1000 * (est[j] - ref[i]) for i, j in matched])
    assert np.median(err_ms) < 10


def test_clicks_found_at_their_times_with_soft_and_loud_hits():
    times = np.arange(0.3, 5.0, 0.25)
    levels = np.where(np.arange(len(times)) % 2 == 0, 1.0, 0.1)   # 20 dB softer every other hit
    audio = _clicks(times, levels, 5.5)
    est = detect_onsets(audio / np.abs(audio).max())
    f, _, _ = mir_eval.onset.f_measure(times, est, window=0.05)
    assert f == 1.0
    assert np.max(np.abs(est - times)) < 0.012


def test_silence_and_empty_give_no_onsets():
    assert len(detect_onsets(np.zeros(SR * 2, np.float32))) == 0
    assert len(detect_onsets(np.zeros(0, np.float32))) == 0
    assert len(detect_onsets(np.zeros(int(0.1 * SR), np.float32))) == 0


def test_sensitivity_moves_the_threshold():
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0.2, 9.5, 60))
    times = times[np.concatenate([[True], np.diff(times) > 0.06])]
    levels = 10 ** (rng.uniform(-30, 0, len(times)) / 20)        # 0 to -30 dB ...
    background = 0.03 * rng.standard_normal(10 * SR).astype(np.float32)   # ... over steady noise
    audio = _clicks(times, levels, 10.0) + background
    counts = [len(detect_onsets(audio, s)) for s in (0, 30, 60, 100)]
    assert counts == sorted(counts) and counts[0] < counts[2] <= len(times) + 2
    assert delta_for(0) > delta_for(60) > delta_for(100) > 0


def test_chunked_envelope_equals_one_pass():
    rng = np.random.default_rng(1)
    audio = _clicks(rng.uniform(0.1, 2.9, 20), np.ones(20), 3.0)
    whole, loud_whole = envelope(audio, OnsetSettings(chunk_frames=1 << 20))
    parts, loud_parts = envelope(audio, OnsetSettings(chunk_frames=37))
    np.testing.assert_allclose(parts, whole, atol=1e-4)
    np.testing.assert_allclose(loud_parts, loud_whole, atol=1e-3)
