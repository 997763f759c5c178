"""Drum-family templates and NMF activations (common.templates).

These tests synthesise their own audio (a low decaying sine as a "kick", a short burst of
high-passed noise as a "hi-hat", a mid-band burst as a "snare") so they run without the drum
kits; the real-audio check is in tests/test_process.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from beatsight.common.checkpoint import Checkpoint, load_model, save_checkpoint
from beatsight.common.classes import CLASS_INDEX, FAMILIES
from beatsight.common.features import DEFAULT_SETTINGS, extract_windows
from beatsight.common.model import DrumClassifierCNN
from beatsight.common.templates import (
    DEFAULT,
    MID_EDGES_HZ,
    N_BANDS,
    SPAN,
    THRESHOLDS,
    _hats_by_noise,
    _kicks_by_low_end,  # the references' choice, directly
    _snares_by_sound,
    activations,
    attack_patterns,
    family_templates,
    low_profiles,
    lowest_typical,
    noisiness,
    onset_families,
    rises,
    song_templates,
    sounds_like,
    spectrogram,
    usable,
)
from beatsight.simulation.band import band_midi, render_band, with_band
from beatsight.simulation.render import Plan

SR = 44_100
KICK, SNARE, HAT = FAMILIES.index("kick"), FAMILIES.index("snare"), FAMILIES.index("hihat")


def _hit(kind: str, rng: np.random.Generator, n: int = 8820) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "kick":
        return np.sin(2 * np.pi * 55 * t) * np.exp(-t / 0.08)
    if kind == "boomy_kick":   # another kit's kick: higher, longer
        return np.sin(2 * np.pi * 110 * t) * np.exp(-t / 0.2)
    if kind == "falling_kick":  # an electronic kick: its pitch falls from 200 to 45 Hz
        f0 = 45 + 155 * np.exp(-t / 0.05)
        return np.sin(2 * np.pi * np.cumsum(f0) / SR) * np.exp(-t / 0.15)
    if kind == "tom":          # a floor tom: an octave and a half above the kick, ringing
        return np.sin(2 * np.pi * 160 * t) * np.exp(-t / 0.25)
    if kind == "ride":         # partials where the hi-hat hisses, ringing on, and some wash
        phases = rng.uniform(0, 2 * np.pi, 6)
        tones = sum(np.sin(2 * np.pi * f * t + p) for f, p in
                    zip((7300, 8150, 9420, 10870, 12300, 13900), phases, strict=True))
        return (tones * 0.5 + _hit("hihat", rng, n) * 0.3 * np.exp(t / 0.03)) * np.exp(-t / 0.3)
    noise = rng.standard_normal(n)
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(n, 1 / SR)
    if kind == "clang":        # a bright metal hit the snare template also takes
        return np.fft.irfft(spec * ((f > 2500) & (f < 7000)), n) * np.exp(-t / 0.06) * 3
    band = (f > 7000) if kind == "hihat" else ((f > 300) & (f < 2500))
    return np.fft.irfft(spec * band, n) * np.exp(-t / (0.03 if kind == "hihat" else 0.06)) * 3


def _song(events: list[tuple], seconds: float, seed: int = 0) -> np.ndarray:
    """Events are (time, kind) or (time, kind, gain); the song is peak-normalised."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(seconds * SR), np.float32)
    for t, kind, *gain in events:
        x = _hit(kind, rng) * (gain[0] if gain else 1.0)
        i = int(t * SR)
        audio[i:i + len(x)] += x[: len(audio) - i]
    return audio / np.abs(audio).max()


def _training(seed: int = 1):
    """Windows of isolated synthetic hits, labelled, plus one kick struck with a hi-hat."""
    kinds = ["kick", "snare", "hihat"] * 6
    events = [(0.5 * i + 0.2, k) for i, k in enumerate(kinds)]
    audio = _song(events, 0.5 * len(kinds) + 1, seed)
    both = _song([(0.2, "kick"), (0.2, "hihat")], 1.0, seed + 1)
    audio = np.concatenate([audio, both])
    times = np.array([t for t, _ in events] + [len(audio) / SR - 1.0 + 0.2])
    labels = [{"hihat": "hihat_closed"}.get(k, k) for k in kinds] + ["kick"]
    y = np.array([CLASS_INDEX[c] for c in labels])
    return extract_windows(audio, times), y


def test_templates_are_each_familys_mean_attack_pattern() -> None:
    windows, y = _training()
    full = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    assert full.shape == (len(FAMILIES), N_BANDS, SPAN)
    np.testing.assert_allclose(full[[KICK, SNARE, HAT]].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert not full[[FAMILIES.index("toms"), FAMILIES.index("cymbals")]].any()   # none: zeros
    t = full.sum(axis=2)                                    # spectrum over the 46 ms
    bands = np.arange(N_BANDS)
    centre = (t[[KICK, SNARE, HAT]] * bands).sum(axis=1)
    assert centre[0] < centre[1] < centre[2]              # kick low, snare mid, hi-hat high
    # and over time: the short hi-hat burst has left more of its energy in the first frames
    # than the kick's 80-ms decay has
    early = full[:, :, : SPAN // 2].sum(axis=(1, 2))
    assert early[HAT] > early[KICK]
    # the kick struck with a hi-hat is left out of the kick template when the set says so
    targets = np.zeros((len(y), 12))
    targets[np.arange(len(y)), y] = 1
    targets[-1, CLASS_INDEX["hihat_closed"]] = 1
    clean = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples, targets)
    high = bands >= N_BANDS // 2
    assert clean[KICK, high].sum() < full[KICK, high].sum()
    np.testing.assert_allclose(clean[KICK], family_templates(
        windows[:-1], y[:-1], DEFAULT_SETTINGS.pre_samples)[KICK], rtol=1e-5, atol=1e-7)


def test_each_family_is_found_on_its_own_even_when_struck_together() -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    rng = np.random.default_rng(5)
    pattern = ["kick", "hihat", "snare", "hihat", "both"] * 6
    times = 0.3 + 0.4 * np.arange(len(pattern)) + rng.uniform(0, 0.02, len(pattern))
    events = [(t, k) for t, p in zip(times, pattern, strict=True)
              for k in (("kick", "hihat") if p == "both" else (p,))]
    audio = _song(events, times[-1] + 1.0, seed=9)
    found = onset_families(audio, times, tpl)
    for i, p in enumerate(pattern):
        want = {KICK, HAT} if p == "both" else {FAMILIES.index(p)}
        got = set(np.flatnonzero(found[i]))
        assert got == want, (i, p, got)


def test_activations_explain_the_spectrogram_without_negative_parts() -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    spec = spectrogram(_song([(0.2, "kick"), (0.7, "hihat")], 1.2))
    H = activations(spec, tpl)
    assert H.shape == (len(FAMILIES), spec.shape[1]) and (H >= 0).all()
    assert not H[[FAMILIES.index("toms"), FAMILIES.index("cymbals")]].any()   # no template
    kick_frame, hat_frame = DEFAULT.frames_of(220.0), DEFAULT.frames_of(720.0)
    assert H[KICK, kick_frame] > 10 * H[HAT, kick_frame]
    assert H[HAT, hat_frame] > 10 * H[KICK, hat_frame]


def test_no_onsets_or_silence_give_nothing() -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    assert onset_families(np.zeros(SR, np.float32), np.zeros(0), tpl).shape == (0, 5)
    assert not onset_families(np.zeros(SR, np.float32), np.array([0.1, 0.5]), tpl).any()


def test_templates_travel_in_the_model_and_bare_state_dicts_have_none(tmp_path) -> None:
    windows, y = _training()
    model = DrumClassifierCNN()
    assert not usable(model.templates.numpy())              # a new model has learnt none
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    model.templates.copy_(torch.from_numpy(tpl))
    save_checkpoint(tmp_path / "m.pth", Checkpoint(model.state_dict()))
    loaded, _ = load_model(tmp_path / "m.pth")
    assert torch.equal(loaded.templates, model.templates) and usable(loaded.templates.numpy())
    bare = {k: v for k, v in model.state_dict().items() if k != "templates"}   # the original's
    torch.save(bare, tmp_path / "best_drum_classifier.pth")
    old, ckpt = load_model(tmp_path / "best_drum_classifier.pth")
    assert ckpt.legacy and not old.templates.any()
    # a model of the first layout (one spectrum per family) loads, without templates
    first = dict(model.state_dict(), templates=torch.ones(len(FAMILIES), N_BANDS))
    save_checkpoint(tmp_path / "first.pth", Checkpoint(first))
    again, _ = load_model(tmp_path / "first.pth")
    assert not again.templates.any() and not usable(again.templates.numpy())
    assert torch.equal(again.fc.weight, model.fc.weight)


@pytest.mark.parametrize("family", list(THRESHOLDS))
def test_usable_needs_every_decided_family(family: str) -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    assert usable(tpl)
    tpl[FAMILIES.index(family)] = 0
    assert not usable(tpl)


def test_templates_decide_kick_snare_hihat_and_leave_toms_and_cymbals() -> None:
    from beatsight.common.classes import CLASSES
    from beatsight.common.process import with_families

    c = CLASSES.index
    classes = [[c("kick")], [c("tom_low"), c("hihat_closed")], [c("snare")], [c("crash")]]
    found = np.zeros((4, len(FAMILIES)), bool)
    found[0, [KICK, HAT]] = True            # the classifier missed the hi-hat on the beat
    found[1, KICK] = True                   # a floor tom the templates also call a kick
    # onset 2: only the classifier says snare -> no hit; onset 3: cymbals are not decided
    probs = np.zeros((4, 12))
    probs[0, c("hihat_open")], probs[0, c("hihat_closed")] = 0.3, 0.1
    out = with_families(classes, found, probs)
    assert out == [[c("kick"), c("hihat_open")], [c("tom_low"), c("kick")], [], [c("crash")]]
    assert with_families(classes, found, None)[0] == [c("kick"), c("hihat_closed")]


def test_process_reuses_the_onset_pass_spectrogram() -> None:
    """`process` hands the templates the onset detector's own STFT: the same numbers as
    `spectrogram`, and asking for it changes nothing in the onset envelope."""
    from beatsight.common.onsets import DEFAULT_ONSETS, envelope, frame_count

    audio = _song([(0.2, "kick"), (0.5, "hihat"), (0.9, "snare")], 1.5)
    plain = envelope(audio, DEFAULT_ONSETS)
    spec = np.zeros((DEFAULT_ONSETS.n_mels, frame_count(len(audio))), np.float32)
    shared = envelope(audio, DEFAULT_ONSETS, mel_out=spec)
    for a, b in zip(plain, shared, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(spec, spectrogram(audio))
    assert spec[:, DEFAULT.frames_of(220.0)].sum() > 100 * spec[:, DEFAULT.frames_of(100.0)].sum()


def test_a_quiet_snare_ghost_note_is_found_by_its_share() -> None:
    """A ghost note is far below the song's typical snare rise, but the snare holds most of that
    onset's rise: found with SHARES, missed by the loudness threshold alone."""
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    pattern = ["kick", "hihat", "snare", "hihat"] * 5
    times = 0.3 + 0.4 * np.arange(len(pattern))
    ghosts = times[2::4][:4] + 0.2                       # between a snare and the next hi-hat
    events = [*zip(times, pattern, strict=True), *((t, "snare", 0.12) for t in ghosts)]
    audio = _song(events, times[-1] + 1.5, seed=3)
    onsets = np.sort(np.concatenate([times, ghosts]))
    is_ghost = np.isin(onsets, ghosts)
    found = onset_families(audio, onsets, tpl)
    loud_only = onset_families(audio, onsets, tpl, shares={})
    assert found[is_ghost, SNARE].all()
    assert not loud_only[is_ghost, SNARE].any()
    assert not found[is_ghost][:, [KICK, HAT]].any()
    np.testing.assert_array_equal(found[~is_ghost], loud_only[~is_ghost])


def _groove_with(kick: str, bars: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Kick + hi-hat on the beat, hi-hat, snare + hi-hat, hi-hat: every kick shares its onset.
    The hi-hats are played softly (the synthetic one is far louder than the others)."""
    pattern = [("kick", "hihat"), ("hihat",), ("snare", "hihat"), ("hihat",)] * bars
    times = 0.3 + 0.4 * np.arange(len(pattern))
    gain = {"hihat": 0.05, "snare": 0.5}
    events = [(t, {"kick": kick}.get(k, k), gain.get(k, 1.0))
              for t, ks in zip(times, pattern, strict=True) for k in ks]
    return _song(events, times[-1] + 1.0, seed=5), times


def test_song_templates_move_towards_the_songs_own_kick() -> None:
    """The song's kick (110 Hz, long) is not the training kits' (55 Hz): the blended kick
    template is nearer its attack pattern, by the blend weight, and the masking keeps the
    hi-hat struck with every kick out of it."""
    windows, y = _training()
    onset = DEFAULT_SETTINGS.pre_samples
    tpl = family_templates(windows, y, onset)
    audio, times = _groove_with("boomy_kick")
    spec = spectrogram(audio)
    H = activations(spec, tpl)
    rise, at = rises(H, times)
    blended = song_templates(spec, tpl, H, rise, at)
    own = attack_patterns(extract_windows(_song([(0.2, "boomy_kick")], 1.0), np.array([0.2])),
                          onset)[0]

    def distance(w: np.ndarray) -> float:
        return float(np.abs(w / w.sum() - own).sum())

    assert distance(blended[KICK]) < 0.75 * distance(tpl[KICK])
    # the hi-hat holds ~0.37 of the top half of an unmasked kick onset here; the training kick
    # template ~0.14 (its click): masked, the song adds none of the hi-hat to it
    high = slice(N_BANDS // 2, None)
    assert blended[KICK][high].sum() <= 1.02 * tpl[KICK][high].sum() / tpl[KICK].sum()
    np.testing.assert_allclose(blended.sum(axis=(1, 2))[[KICK, SNARE, HAT]], 1.0, rtol=1e-5)


def test_song_templates_keep_a_family_with_too_few_clear_hits() -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    audio, times = _groove_with("kick", bars=1)          # one kick, one snare: below adapt_min
    spec = spectrogram(audio)
    H = activations(spec, tpl)
    rise, at = rises(H, times)
    blended = song_templates(spec, tpl, H, rise, at)
    for f in (KICK, SNARE):
        np.testing.assert_allclose(blended[f], tpl[f] / tpl[f].sum(), rtol=1e-6)


def test_song_templates_can_be_switched_off() -> None:
    """`adapt=False` is the single decomposition; on this song both find every hit. (Without
    the hi-hat check: this brick-wall hi-hat has an empty half third-octave, so its noisiness
    alone, 0.30-0.44, sits below half that of a snare + hi-hat onset, 0.73-0.78.)"""
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    audio, times = _groove_with("kick")
    s = replace(DEFAULT, hat_ratio=0.0)
    fixed = onset_families(audio, times, tpl, s=replace(s, adapt=False))
    adapted = onset_families(audio, times, tpl, s=s)
    on_beat = np.arange(len(times)) % 4 == 0
    for found in (fixed, adapted):
        np.testing.assert_array_equal(found[:, KICK], on_beat)
        assert found[:, HAT].all()


def test_a_spectrogram_shorter_than_a_template_decomposes() -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    H = activations(spectrogram(_song([(0.0, "kick")], 0.01)), tpl)
    assert H.shape[1] < SPAN and np.isfinite(H).all() and (H >= 0).all()


def test_a_songs_kicks_are_told_from_its_toms_by_their_low_end() -> None:
    """The toms outnumber the kicks here; the reference is the lowest drum's sound, so the
    kicks (55 Hz) are kept and the toms (110 and 160 Hz) are dropped."""
    kinds = ["kick"] * 6 + ["boomy_kick", "tom"] * 5
    times = 0.2 + 0.5 * np.arange(len(kinds))
    audio = _song(list(zip(times, kinds, strict=True)), times[-1] + 1.0)
    profiles = low_profiles(audio, times)
    np.testing.assert_allclose(np.linalg.norm(profiles, axis=1), 1.0, rtol=1e-5)
    typical = lowest_typical(profiles)
    np.testing.assert_array_equal(profiles @ typical / np.linalg.norm(typical)
                                  >= DEFAULT.kick_match, [k == "kick" for k in kinds])


def test_kicks_the_templates_find_on_toms_are_dropped() -> None:
    """The kick template fires on a tom (a low decaying sine, and this kit has no tom template);
    the check against the song's typical kick drops those and keeps the kicks."""
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    kinds = ["kick", "hihat", "tom", "hihat"] * 6
    times = 0.3 + 0.4 * np.arange(len(kinds))
    audio = _song(list(zip(times, kinds, strict=True)), times[-1] + 1.0, seed=3)
    is_kick, is_tom = (np.array(kinds) == "kick"), (np.array(kinds) == "tom")
    unchecked = onset_families(audio, times, tpl, s=replace(DEFAULT, kick_match=0.0))
    assert unchecked[is_tom, KICK].all()            # what the check is for
    found = onset_families(audio, times, tpl)
    np.testing.assert_array_equal(found[:, KICK], is_kick)
    np.testing.assert_array_equal(found[:, HAT], unchecked[:, HAT])


def test_soft_kicks_are_found_by_their_low_end_and_a_kicks_ring_is_not_one() -> None:
    """Soft kicks (a sixth of the level) rise too little for the kick template, but the low end
    that starts there is the song's kick. A hi-hat 50 ms after a kick has the kick's ring for a
    low end, but nothing new starts there: no kick is added."""
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    kinds = ["kick", "hihat"] * 8 + ["soft_kick", "hihat"] * 4
    times = list(0.3 + 0.6 * np.arange(len(kinds)))
    events = [(t, "kick", 1 / 6) if k == "soft_kick" else (t, k)
              for t, k in zip(times, kinds, strict=True)]
    late = [t + 0.05 for t, k in zip(times, kinds, strict=True) if k == "kick"][:4]
    events += [(t, "hihat") for t in late]
    order = np.argsort(times + late)
    times, kinds = np.array(times + late)[order], np.array(kinds + ["late_hat"] * 4)[order]
    audio = _song(events, times[-1] + 1.0, seed=9)
    unchecked = onset_families(audio, times, tpl, s=replace(DEFAULT, kick_like=0.0))
    assert not unchecked[kinds == "soft_kick", KICK].any()          # what it is for
    found = onset_families(audio, times, tpl)
    np.testing.assert_array_equal(found[:, KICK], unchecked[:, KICK] | (kinds == "soft_kick"))
    assert found[kinds == "kick", KICK].all()


def test_the_typical_kick_is_drawn_from_kicks_where_a_low_end_starts() -> None:
    """A kick whose pitch falls, and a hi-hat 110 ms after each: the template takes the hi-hats
    for kicks too (as on one dev kit), and their low end is the kick's tail, lower than its
    attack. Drawn from every template kick, the lowest-pitched quarter is tails and the kicks
    are dropped; drawn from onsets where a low end starts, the kicks are kept."""
    kinds = np.array(["falling_kick", "late_hat", "hihat", "snare"] * 8)
    times = 0.3 + 0.6 * (np.arange(len(kinds)) // 4) + np.tile([0.0, 0.11, 0.3, 0.45], 8)
    events = [(t, "hihat" if k == "late_hat" else k) for t, k in zip(times, kinds, strict=True)]
    audio = _song(events, times[-1] + 1.0, seed=11)
    flagged = np.isin(kinds, ["falling_kick", "late_hat"])
    s = replace(DEFAULT, kick_like=0.0)
    kept = _kicks_by_low_end(audio, times, flagged, s)
    np.testing.assert_array_equal(kept, kinds == "falling_kick")
    blind = _kicks_by_low_end(audio, times, flagged, replace(s, kick_gain=1e9))   # no start found
    assert not blind[kinds == "falling_kick"].any()


def test_a_quiet_low_end_that_does_not_start_is_a_ring_not_a_kick() -> None:
    """A hi-hat 150 ms after each kick has the kick's ring for a low end, the same drum's
    pitch: taken for a kick (as the templates do on rings), only its level and that nothing
    starts there tell it apart. Soft kicks, as quiet but starting, are kept."""
    kinds = np.array(["kick", "late_hat", "snare", "soft_kick"] * 4 + ["kick", "hihat"] * 4)
    times = 0.3 + 0.6 * (np.arange(len(kinds)) // 2) + np.tile([0.0, 0.15], len(kinds) // 2)
    events = [(t, "kick", 1 / 3) if k == "soft_kick" else (t, "hihat" if k == "late_hat" else k)
              for t, k in zip(times, kinds, strict=True)]
    audio = _song(events, times[-1] + 1.0, seed=12)
    flagged = np.isin(kinds, ["kick", "late_hat", "soft_kick"])
    s = replace(DEFAULT, kick_like=0.0)
    unchecked = _kicks_by_low_end(audio, times, flagged, replace(s, kick_quiet=0.0))
    assert unchecked[kinds == "late_hat"].all()           # the ring passes for the kick's sound
    kept = _kicks_by_low_end(audio, times, flagged, s)
    np.testing.assert_array_equal(kept, np.isin(kinds, ["kick", "soft_kick"]))


def test_a_kick_struck_with_a_tom_is_kept_by_its_own_pitch() -> None:
    """A kick and a tom struck together: the tom's ring makes the low end unlike the song's
    typical kick (the cosine check alone drops it), but the kick's own pitch sounds there at
    full strength. A tom alone has none of it and is still dropped."""
    kinds = np.array(["kick", "hihat", "tom", "kick_tom"] * 5)
    times = 0.3 + 0.5 * np.arange(len(kinds))
    events = [e for t, k in zip(times, kinds, strict=True)
              for e in ([(t, "kick"), (t, "tom")] if k == "kick_tom" else [(t, k)])]
    audio = _song(events, times[-1] + 1.0, seed=13)
    flagged = kinds != "hihat"
    s = replace(DEFAULT, kick_like=0.0)
    unchecked = _kicks_by_low_end(audio, times, flagged, replace(s, kick_core=0.0))
    np.testing.assert_array_equal(unchecked, kinds == "kick")   # what the rule is for
    kept = _kicks_by_low_end(audio, times, flagged, s)
    np.testing.assert_array_equal(kept, np.isin(kinds, ["kick", "kick_tom"]))


def test_too_few_kicks_are_left_unchecked() -> None:
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    kinds = ["kick", "tom"] * 3                     # 6 template kicks < check_min
    times = 0.3 + 0.5 * np.arange(len(kinds))
    audio = _song(list(zip(times, kinds, strict=True)), times[-1] + 1.0, seed=4)
    unchecked = onset_families(audio, times, tpl, s=replace(DEFAULT, kick_match=0.0))
    assert unchecked[:, KICK].sum() < DEFAULT.check_min and unchecked[1::2, KICK].any()
    np.testing.assert_array_equal(onset_families(audio, times, tpl)[:, KICK], unchecked[:, KICK])


def test_onsets_that_sound_like_the_songs_snares_get_one() -> None:
    """Ghost notes (a twelfth of the backbeat's level) sound like the song's snares; its
    hi-hats and kicks do not."""
    kinds = ["snare"] * 8 + ["ghost"] * 4 + ["hihat", "kick"] * 4
    times = 0.2 + 0.4 * np.arange(len(kinds))
    events = [(t, "snare", 1 / 12) if k == "ghost" else (t, k)
              for t, k in zip(times, kinds, strict=True)]
    audio = _song(events, times[-1] + 1.0, seed=6)
    loud = np.array([k == "snare" for k in kinds])
    def like(threshold: float) -> np.ndarray:
        return sounds_like(audio, times, loud, MID_EDGES_HZ, DEFAULT.snare_samples, threshold)

    np.testing.assert_array_equal(like(DEFAULT.snare_match),
                                  [k in ("snare", "ghost") for k in kinds])
    assert not like(1.01).any()


def test_snares_unlike_the_songs_typical_snare_are_dropped() -> None:
    """The snare template also fires on a brighter hit; the song's typical snare is the
    lowest-pitched quarter of its snares that are not also kicks (here a boomy kick is struck
    with half of them), so the bright hits are dropped and every snare is kept."""
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    kinds = ["snare_kick", "hihat", "snare", "hihat"] * 9 + ["clang", "hihat"] * 6
    times = 0.3 + 0.4 * np.arange(len(kinds))
    events = [e for t, k in zip(times, kinds, strict=True)
              for e in ([(t, "snare"), (t, "boomy_kick", 0.5)] if k == "snare_kick" else [(t, k)])]
    audio = _song(events, times[-1] + 1.0, seed=10)
    kinds = np.array(kinds)
    unchecked = onset_families(audio, times, tpl, s=replace(DEFAULT, snare_keep=0.0))
    assert unchecked[kinds == "clang", SNARE].all()                 # what the check is for
    found = onset_families(audio, times, tpl)
    np.testing.assert_array_equal(found[:, SNARE], np.isin(kinds, ["snare", "snare_kick"]))


def test_the_typical_snare_leaves_out_snares_struck_with_a_kick() -> None:
    """With a loud, high kick under half the snares, those are the lowest-pitched snare hits; a
    reference drawn from them would drop every snare struck alone. Drawn from the snares that
    are not kicks, it keeps those (the snares under the kick are the ones lost here: a limit)."""
    kinds = np.array(["snare_kick", "hihat", "snare", "hihat"] * 9)
    times = 0.3 + 0.4 * np.arange(len(kinds))
    events = [e for t, k in zip(times, kinds, strict=True)
              for e in ([(t, "snare"), (t, "boomy_kick", 1.2)] if k == "snare_kick" else [(t, k)])]
    audio = _song(events, times[-1] + 1.0, seed=10)
    snares, kicks = kinds != "hihat", kinds == "snare_kick"
    kept = _snares_by_sound(audio, times, snares, kicks, replace(DEFAULT, snare_match=0.0))
    assert kept[kinds == "snare"].all()
    unaware = _snares_by_sound(audio, times, snares, np.zeros_like(kicks),
                               replace(DEFAULT, snare_match=0.0))
    assert not unaware[kinds == "snare"].any()


def test_a_held_chord_does_not_make_a_bright_hit_sound_like_the_snare() -> None:
    """A chord held under every hit (as loud as the hits, a new one every two beats) fills the
    mid bands at each onset; the check on the onset's whole sound then hears the chord in the
    snares and in the bright hits alike and keeps those. On what each onset adds to the sound
    before it, the bright hits are dropped and the snares kept."""
    kinds = np.array(["snare", "hihat", "clang", "hihat"] * 4 + ["snare", "hihat"] * 8)
    times = 0.3 + 0.4 * np.arange(len(kinds))
    audio = _song(list(zip(times, kinds, strict=True)), times[-1] + 1.0, seed=14)
    t = np.arange(len(audio)) / SR
    chord = np.zeros_like(audio)
    for j, start in enumerate(np.arange(0.1, t[-1], 0.8)):
        held = (t >= start) & (t < start + 0.8)
        root = 220.0 * 2 ** (j % 4 / 6)
        for ratio in (1.0, 1.26, 1.5, 2.0, 2.52, 3.0):
            chord[held] += np.sin(2 * np.pi * root * ratio * t[held])
    audio = audio + chord / np.abs(chord).max()
    snares, no_kicks = kinds != "hihat", np.zeros(len(kinds), bool)
    s = replace(DEFAULT, snare_match=0.0)
    whole = _snares_by_sound(audio, times, snares, no_kicks, replace(s, snare_added=0.0))
    assert whole[kinds == "clang"].all()                  # what it is for
    kept = _snares_by_sound(audio, times, snares, no_kicks, s)
    np.testing.assert_array_equal(kept, kinds == "snare")


def test_a_hihat_hisses_and_a_ride_rings() -> None:
    """Noisiness is the hiss of the top octaves, whatever the hit's loudness: the ride's
    partials score far below the hi-hat at a tenth of the level."""
    kinds = ["hihat", "ride", "quiet_hihat"] * 4
    times = 0.2 + 0.5 * np.arange(len(kinds))
    events = [(t, "hihat", 0.1) if k == "quiet_hihat" else (t, k)
              for t, k in zip(times, kinds, strict=True)]
    flat = noisiness(_song(events, times[-1] + 1.0, seed=7), times)
    hats, rides = flat[np.array(kinds) != "ride"], flat[np.array(kinds) == "ride"]
    assert ((flat > 0) & (flat <= 1)).all()
    assert rides.max() < DEFAULT.hat_ratio * hats.min()


def test_hihats_under_a_distorted_guitar_are_left_as_the_templates_found_them(
        soundfonts: None) -> None:
    """A distorted guitar (`simulation.band`, fluidsynth, as loud as the drums) fills the top
    octaves with partials: the hi-hats' hiss is masked, most score as unnoisy, and the check
    would drop real hi-hats (as it did on the band renders). The song's hi-hats mostly not
    hissing, it leaves them as the templates found them."""
    kinds = ["hihat", "quiet_hihat"] * 8
    times = 0.2 + 0.25 * np.arange(len(kinds))
    events = [(t, "hihat", 0.3) if k == "quiet_hihat" else (t, k)
              for t, k in zip(times, kinds, strict=True)]
    dry = _song(events, times[-1] + 1.0, seed=13)
    plan = Plan((), length_s=len(dry) / SR, bpm=120.0, style="test", first_beat_s=0.2)
    assert band_midi(plan, 9)[1] == "distorted guitar"
    audio = with_band(dry, render_band(plan, 9, len(dry)), 0.0)
    hats = np.ones(len(times), bool)
    assert np.median(noisiness(audio, times)) < DEFAULT.hat_floor <= np.median(
        noisiness(dry, times))                              # the dry song is checked
    blind = _hats_by_noise(audio, times, hats, replace(DEFAULT, hat_floor=0.0))
    assert blind.sum() <= len(times) - 4                    # what the floor is for
    np.testing.assert_array_equal(_hats_by_noise(audio, times, hats, DEFAULT), hats)


def test_hihats_the_templates_find_on_rides_are_dropped_and_quiet_ones_found() -> None:
    """The hi-hat template fires on a ride (energy where a hi-hat has it); the noisiness check
    drops those. Hi-hats at a twelfth of the level rise too little for the template and are
    found by sounding like the song's hi-hats."""
    windows, y = _training()
    tpl = family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)
    kinds = ["kick", "hihat", "snare", "hihat"] * 4 + ["ride", "ghost_hat"] * 4
    times = 0.3 + 0.4 * np.arange(len(kinds))
    events = [(t, "hihat", 1 / 12) if k == "ghost_hat" else (t, k)
              for t, k in zip(times, kinds, strict=True)]
    audio = _song(events, times[-1] + 1.0, seed=8)
    kinds = np.array(kinds)
    unchecked = onset_families(audio, times, tpl, s=replace(DEFAULT, hat_ratio=0.0))
    assert unchecked[kinds == "ride", HAT].all()                # what the check is for
    assert not unchecked[kinds == "ghost_hat", HAT].any()
    no_match = onset_families(audio, times, tpl, s=replace(DEFAULT, hat_match=0.0))
    np.testing.assert_array_equal(no_match[:, HAT], kinds == "hihat")
    found = onset_families(audio, times, tpl)
    np.testing.assert_array_equal(found[:, HAT], np.isin(kinds, ["hihat", "ghost_hat"]))
    np.testing.assert_array_equal(found[:, KICK], unchecked[:, KICK])
