"""Rendered grooves: valid ground truth that lines up with the audio, and byte-for-byte repeatable."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace

import librosa
import numpy as np
import pytest
import soundfile as sf

from beatsight.common.audio import load_audio
from beatsight.common.bsm import hits, read_bsm
from beatsight.common.errors import BeatSightError
from beatsight.simulation.kits import get_kit
from beatsight.simulation.render import (
    TEMPO_RANGE,
    mix,
    plan_isolated,
    plan_song,
    render_isolated,
    render_song,
    write_song,
)

pytestmark = pytest.mark.needs_kits
SR = 44_100


def _onsets(audio: np.ndarray) -> np.ndarray:
    return librosa.onset.onset_detect(y=audio, sr=SR, units="time", hop_length=128, backtrack=True)


def test_rendered_song_is_a_valid_beatmap_of_its_wav(rendered_song):
    bm = read_bsm(rendered_song.bsm)
    data = rendered_song.wav.read_bytes()
    assert bm["audio"]["hash"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert bm["audio"]["filename"] == rendered_song.wav.name
    info = sf.info(str(rendered_song.wav))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert abs(bm["audio"]["duration"] - info.frames * 1000 / SR) <= 1
    assert TEMPO_RANGE[0] <= bm["timing"]["bpm"] <= TEMPO_RANGE[1]
    hs = hits(bm)
    assert len(hs) >= 12 and all(isinstance(h.time_ms, int) for h in hs)
    assert {h.component for h in hs} <= set(rendered_song.kit.classes)
    assert {"kick", "snare"} <= {h.component for h in hs}
    assert set(bm["drumKit"]["components"]) == {h.component for h in hs}
    audio = load_audio(rendered_song.wav)
    assert 0.05 < np.abs(audio).max() < 1.0          # levelled, never clipped
    assert hs[-1].time_ms / 1000 < len(audio) / SR


def test_each_hit_starts_at_exactly_its_millisecond(small_kit):
    """Remove one strike from the mix: the difference starts at that strike's sample index."""
    plan = plan_song(small_kit, 3, duration_s=3.0)
    full = mix(plan, seed=3, normalise=False)
    for k in range(0, len(plan.strikes), max(1, len(plan.strikes) // 6)):
        s = plan.strikes[k]
        rest = replace(plan, strikes=plan.strikes[:k] + plan.strikes[k + 1:])
        diff = np.abs(full - mix(rest, seed=3, normalise=False))
        start = int(np.argmax(diff > 1e-6))
        assert start == round(s.time_ms * SR / 1000), s


def test_isolated_hits_line_up_with_detected_onsets(small_kit):
    audio, hs = render_isolated(small_kit, 5, per_class=2)
    detected = _onsets(audio)
    truth = np.array([h.time_ms / 1000 for h in hs])
    assert len(detected) == len(truth)
    assert np.max(np.abs(np.sort(detected) - np.sort(truth))) < 0.010
    assert Counter(h.component for h in hs) == {c: 2 for c in small_kit.classes}


def test_groove_onsets_line_up_with_ground_truth(small_kit):
    """In a groove, flams merge onsets; every onset detected must still sit on a true hit."""
    audio, hs = render_song(small_kit, 11, duration_s=4.0)
    detected = _onsets(audio)
    truth = np.array(sorted({h.time_ms / 1000 for h in hs}))
    err = np.array([np.min(np.abs(truth - d)) for d in detected])
    assert len(detected) >= 0.5 * len(truth)
    assert np.median(err) < 0.005 and np.mean(err < 0.010) >= 0.8


def test_same_seed_same_bytes_other_seed_other_song(tmp_path, small_kit):
    a = write_song(tmp_path / "a", "s", small_kit, 21, duration_s=3.0)
    b = write_song(tmp_path / "b", "s", small_kit, 21, duration_s=3.0)
    c = write_song(tmp_path / "c", "s", small_kit, 22, duration_s=3.0)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()


def test_kit_without_toms_or_cymbals_uses_only_what_it_has(kits_root):
    kit = get_kit("HardElectro1", kits_root)      # kick, snare, hi-hats only
    for seed in range(4):
        _, hs = render_song(kit, seed, bars=8)
        assert {h.component for h in hs} <= {"kick", "snare", "hihat_closed", "hihat_open"}


def test_grooves_are_varied_and_humanised(small_kit):
    plans = [plan_song(small_kit, s, bars=8) for s in range(12)]
    assert len({p.style for p in plans}) >= 3
    assert all(TEMPO_RANGE[0] <= p.bpm <= TEMPO_RANGE[1] for p in plans)
    comps = Counter(s.instrument.cls for p in plans for s in p.strikes)
    assert {"tom_high", "tom_mid", "tom_low", "crash", "ride", "hihat_open"} <= set(comps)
    vels = [s.velocity for p in plans for s in p.strikes]
    assert len(set(vels)) > 50 and min(vels) < 0.4
    # kick and hi-hat land together (within humanisation) on many downbeats
    p = plans[0]
    kicks = [s.time_ms for s in p.strikes if s.instrument.cls == "kick"]
    hats = np.array([s.time_ms for s in p.strikes if s.instrument.cls.startswith("hihat")] or [-1e9])
    assert sum(np.min(np.abs(hats - k)) < 30 for k in kicks) >= 2


def test_isolated_plan_spreads_velocities_over_layers(small_kit):
    plan = plan_isolated(small_kit, 0, per_class=6)
    snares = [s for s in plan.strikes if s.instrument.cls == "snare"]
    assert len({s.instrument.layer_for(s.velocity).path for s in snares}) >= 3


def test_bad_style_and_tempo_are_one_line_errors(small_kit):
    with pytest.raises(BeatSightError, match="unknown style"):
        plan_song(small_kit, 0, style="polka")
    with pytest.raises(BeatSightError, match="tempo"):
        plan_song(small_kit, 0, bpm=1000)
