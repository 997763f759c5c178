"""Window augmentations: shapes, determinism, what each one does, composition and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from beatsight.common.augment import AUGMENTATIONS, DEFAULT_AUGMENT, make_augment, register
from beatsight.common.errors import BeatSightError
from beatsight.common.features import DEFAULT_SETTINGS, patches

W = DEFAULT_SETTINGS.window_samples


def _windows(n: int = 8, seed: int = 0) -> np.ndarray:
    # Synthetic decaying noise bursts (no audio files needed for window-level maths).
    rng = np.random.default_rng(seed)
    env = np.exp(-np.arange(W) / 800.0).astype(np.float32)
    return (0.3 * rng.standard_normal((n, W)).astype(np.float32) * env).astype(np.float32)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_keeps_shape_is_seeded_and_changes_input(name: str) -> None:
    x = _windows()
    fn = AUGMENTATIONS[name]
    a = fn(x.copy(), np.random.default_rng(1))
    b = fn(x.copy(), np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, x)


def test_time_shift_moves_an_impulse_by_at_most_5_ms_with_zero_fill() -> None:
    x = np.zeros((64, W), np.float32)
    x[:, 2000] = 1.0
    out = AUGMENTATIONS["time_shift"](x, np.random.default_rng(0))
    pos = out.argmax(axis=1)
    limit = int(DEFAULT_SETTINGS.sample_rate * 0.005)
    assert np.all(np.abs(pos - 2000) <= limit)
    assert len(set(pos.tolist())) > 10  # shifts differ per window
    assert np.allclose(out.sum(axis=1), 1.0)  # nothing wrapped around or duplicated


def test_gain_scales_each_window_by_one_factor_within_12_db() -> None:
    x = _windows()
    out = AUGMENTATIONS["gain"](x, np.random.default_rng(0))
    ratio = out / np.where(x == 0, 1, x)
    per_row = ratio[:, :100]
    assert np.allclose(per_row, per_row[:, :1], rtol=1e-5)
    db = 20 * np.log10(per_row[:, 0])
    assert np.all(np.abs(db) <= 12.0 + 1e-4)


def test_noise_adds_noise_at_the_stated_level() -> None:
    x = np.zeros((32, W), np.float32)
    out = AUGMENTATIONS["noise"](x, np.random.default_rng(0))
    rms_db = 20 * np.log10(np.sqrt((out ** 2).mean(axis=1)))
    assert np.all(rms_db > -71) and np.all(rms_db < -34)


def test_make_augment_composes_and_respects_p() -> None:
    x = _windows(200)
    assert make_augment([]) is None
    assert make_augment(["", " "]) is None
    none = make_augment(list(DEFAULT_AUGMENT), p=0.0)
    np.testing.assert_array_equal(none(x, np.random.default_rng(0)), x)
    every = make_augment(["gain"], p=1.0)(x, np.random.default_rng(0))
    assert np.all(np.any(every != x, axis=1))
    half = make_augment(["gain"], p=0.5)(x, np.random.default_rng(0))
    changed = np.any(half != x, axis=1).mean()
    assert 0.3 < changed < 0.7
    x_before = x.copy()
    make_augment(list(DEFAULT_AUGMENT), p=1.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x_before)  # input not modified in place


def test_unknown_names_and_bad_p_are_one_line_errors() -> None:
    with pytest.raises(BeatSightError, match="unknown augmentation reverbb"):
        make_augment(["time_shift", "reverbb"])
    with pytest.raises(BeatSightError, match="outside 0-1"):
        make_augment(["gain"], p=1.5)


def test_registering_a_new_augmentation_makes_it_usable_by_name() -> None:
    @register("invert_test")
    def invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return -x

    try:
        x = _windows(4)
        out = make_augment(["invert_test"], p=1.0)(x, np.random.default_rng(0))
        np.testing.assert_array_equal(out, -x)
    finally:
        AUGMENTATIONS.pop("invert_test")


def test_augment_plugs_into_the_one_feature_function() -> None:
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(44100)).astype(np.float32)
    onsets = np.array([0.2, 0.5, 0.9])
    aug = make_augment(list(DEFAULT_AUGMENT), p=1.0)
    plain = patches(audio, onsets)
    augmented = patches(audio, onsets, augment=aug, rng=np.random.default_rng(0))
    assert augmented.shape == plain.shape == (3, 1, 128, 128)
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    assert not np.allclose(augmented, plain)


# ---------------------------------------------------------------- what differs between kits
# Synthetic signals again (sines, impulses, constants): each test checks the one thing the
# augmentation claims to do.
PRE = DEFAULT_SETTINGS.pre_samples
SR = DEFAULT_SETTINGS.sample_rate


def _peak_hz(x: np.ndarray) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x, n=8 * x.shape[1], axis=1))
    return np.fft.rfftfreq(8 * x.shape[1], 1 / SR)[spec.argmax(axis=1)]


def test_pitch_shift_moves_the_spectral_peak_by_the_drawn_semitones_and_keeps_the_onset() -> None:
    n = 16
    t = np.arange(W) - PRE
    x = np.where(t >= 0, np.sin(2 * np.pi * 1000.0 * t / SR), 0.0)[None].repeat(n, 0)
    x = x.astype(np.float32)
    out = AUGMENTATIONS["pitch_shift"](x, np.random.default_rng(5))
    semis = np.random.default_rng(5).uniform(-2, 2, size=n)  # the function's first draw
    np.testing.assert_allclose(_peak_hz(out[:, PRE:]), 1000.0 * 2 ** (semis / 12), rtol=0.01)
    assert np.ptp(_peak_hz(out)) > 80  # different per window
    assert np.all(out[:, :PRE] == 0) and np.all(np.abs(out[:, PRE + 1:PRE + 20]).max(1) > 0.1)


def _gain_db(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude response (dB) of windows that were an impulse in the middle, 100 Hz-10 kHz."""
    f = np.fft.rfftfreq(W, 1 / SR)
    band = (f > 100) & (f < 10000)
    return f[band], 20 * np.log10(np.abs(np.fft.rfft(out, axis=1))[:, band])


def test_eq_tilt_is_a_smooth_bounded_tilt_that_differs_per_window() -> None:
    x = np.zeros((16, W), np.float32)
    x[:, W // 2] = 1.0
    tilt_only = AUGMENTATIONS["eq_tilt"](x, np.random.default_rng(0), max_band_db=0.0)
    f, db = _gain_db(tilt_only)
    slopes = np.polyfit(np.log2(f), db.T, 1)[0]  # dB per octave, one per window
    drawn = np.random.default_rng(0).uniform(-3, 3, size=16)
    np.testing.assert_allclose(slopes, drawn, atol=0.05)
    out = AUGMENTATIONS["eq_tilt"](x, np.random.default_rng(1))
    f, db = _gain_db(out)
    assert np.abs(db).max() <= 24.1
    assert np.abs(np.diff(db, axis=1)).max() < 1.0  # a smooth curve, not a comb
    assert np.std(db[:, len(f) // 2]) > 1.0  # each window has its own colour


def test_decay_multiplies_after_the_onset_by_an_exponential_within_its_range() -> None:
    x = np.ones((32, W), np.float32)
    out = AUGMENTATIONS["decay"](x, np.random.default_rng(0))
    np.testing.assert_array_equal(out[:, :PRE + 1], 1.0)
    db = 20 * np.log10(out[:, PRE:])
    slope = (db[:, -1] - db[:, 0]) / ((W - 1 - PRE) / SR) * 0.1  # dB per 100 ms
    assert np.all(slope >= -12.01) and np.all(slope <= 4.01) and np.ptp(slope) > 8
    mid = (W - PRE) // 2
    np.testing.assert_allclose(db[:, mid], slope * mid / SR / 0.1, atol=0.01)  # exponential


def test_reverb_adds_a_causal_decaying_tail() -> None:
    x = np.zeros((16, W), np.float32)
    x[:, PRE] = 1.0
    out = AUGMENTATIONS["reverb"](x, np.random.default_rng(0))
    assert np.abs(out[:, :PRE]).max() < 1e-6  # nothing before the hit (FFT rounding only)
    tail = out[:, PRE + 1:]
    early = np.sqrt(np.mean(tail[:, :1000] ** 2, axis=1))
    late = np.sqrt(np.mean(tail[:, -1000:] ** 2, axis=1))
    assert np.all(early > 0) and np.all(late < early)
    dry_over_wet = out[:, PRE] / np.sqrt(np.sum(tail ** 2, axis=1))
    assert np.all(dry_over_wet > 0.5)  # the hit itself still dominates


def test_overlap_adds_another_window_of_the_batch_quieter_and_shifted() -> None:
    n = 12
    x = np.zeros((n, W), np.float32)
    x[np.arange(n), PRE] = np.linspace(0.2, 0.9, n)
    out = AUGMENTATIONS["overlap"](x, np.random.default_rng(0))
    np.testing.assert_allclose(out[:, PRE], x[:, PRE], rtol=1e-6)  # own hit untouched
    other = out.copy()
    other[:, PRE] = 0
    pos = np.abs(other).argmax(axis=1)
    rel_db = 20 * np.log10(np.abs(other).max(axis=1) / x[:, PRE])
    assert np.all((rel_db >= -24.01) & (rel_db <= -5.99))
    shift_ms = (pos - PRE) / SR * 1000
    assert np.all((shift_ms >= -10.01) & (shift_ms <= 60.01)) and np.ptp(shift_ms) > 5
    single = AUGMENTATIONS["overlap"](x[:1], np.random.default_rng(0))
    np.testing.assert_array_equal(single, x[:1])


def test_background_adds_coloured_noise_relative_to_the_hit() -> None:
    x = np.zeros((32, W), np.float32)
    x[:, PRE] = 0.5
    out = AUGMENTATIONS["background"](x, np.random.default_rng(0))
    added = out - x
    rel_db = 20 * np.log10(np.sqrt(np.mean(added ** 2, axis=1)) / 0.5)
    assert np.all((rel_db > -50.1) & (rel_db < -19.9))
    power = np.abs(np.fft.rfft(added, axis=1)) ** 2
    f = np.fft.rfftfreq(W, 1 / SR)
    low = power[:, (f > 50) & (f < 500)].mean(axis=1)
    high = power[:, (f > 5000) & (f < 10000)].mean(axis=1)
    assert np.all(low > 3 * high)  # pink to brown, not white
    assert np.array_equal(AUGMENTATIONS["background"](np.zeros((2, W), np.float32),
                                                      np.random.default_rng(0)),
                          np.zeros((2, W), np.float32))  # silence stays silence


def test_parse_augment_expands_all_default_none_and_removals() -> None:
    from beatsight.common.augment import ORDER, parse_augment

    assert parse_augment("all") == list(ORDER)
    assert set(ORDER) == set(AUGMENTATIONS)
    assert parse_augment("default") == list(DEFAULT_AUGMENT)
    assert parse_augment("none") == [] and parse_augment("") == []
    assert "overlap" not in parse_augment("all,-overlap")
    assert parse_augment("gain, noise,gain") == ["gain", "noise"]
    with pytest.raises(BeatSightError, match="unknown augmentation echo"):
        parse_augment("all,-echo")
    with pytest.raises(BeatSightError, match="unknown augmentation echo"):
        parse_augment("echo")
