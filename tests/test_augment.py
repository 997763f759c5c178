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
