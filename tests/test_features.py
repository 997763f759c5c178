"""The one feature function, checked on signals whose spectra are known (synthesised here)."""

import numpy as np
import pytest

from beatsight.common.features import (
    DEFAULT_SETTINGS,
    extract_windows,
    patches,
    windows_to_patches,
)

SR = DEFAULT_SETTINGS.sample_rate


def test_window_geometry_is_original():
    assert DEFAULT_SETTINGS.window_samples == 5512  # 25 ms + 100 ms at 44.1 kHz
    assert DEFAULT_SETTINGS.pre_samples == 1102
    assert DEFAULT_SETTINGS.hop * DEFAULT_SETTINGS.frames <= DEFAULT_SETTINGS.window_samples


def test_windows_zero_pad_at_edges_instead_of_dropping():
    audio = np.arange(1, SR + 1, dtype=np.float32)
    w = extract_windows(audio, np.array([0.0, 0.5, 0.99]))
    assert w.shape == (3, 5512)
    assert np.all(w[0, :1102] == 0) and w[0, 1102] == 1.0  # onset sample sits 25 ms in
    assert w[1, 1102] == audio[int(0.5 * SR)]
    assert np.all(w[2, -100:] == 0)  # runs off the end: zeros, not dropped


def test_sine_energy_lands_in_the_right_mel_band_in_every_frame():
    t = np.arange(SR) / SR
    low = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    high = np.sin(2 * np.pi * 4000 * t).astype(np.float32)
    p_low, p_high = patches(low, [0.5]), patches(high, [0.5])
    assert p_low.shape == (1, 1, 128, 128) and p_low.dtype == np.float32
    assert 0.0 <= p_low.min() and p_low.max() == pytest.approx(1.0)
    band_low = p_low[0, 0].mean(axis=1).argmax()
    band_high = p_high[0, 0].mean(axis=1).argmax()
    assert band_low < 30 < band_high
    # a steady tone: every one of the 128 frames has its peak in the same band (no wrapped rows)
    assert np.all(np.abs(p_low[0, 0].argmax(axis=0) - band_low) <= 1)


def test_impulse_appears_at_the_onset_frame_not_wrapped():
    audio = np.zeros(SR, np.float32)
    audio[int(0.5 * SR)] = 1.0
    p = patches(audio, [0.5])[0, 0]
    energy = p.sum(axis=0)
    onset_frame = DEFAULT_SETTINGS.pre_samples / DEFAULT_SETTINGS.hop
    assert abs(int(energy.argmax()) - onset_frame) <= 1
    assert energy[-10:].max() < energy.max() * 0.5


def test_silence_is_zero_and_gain_does_not_change_features():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SR).astype(np.float32)
    assert patches(np.zeros(SR, np.float32), [0.2]).max() == 0.0
    np.testing.assert_allclose(patches(noise, [0.3]), patches(noise * 0.1, [0.3]), atol=1e-4)


def test_batch_equals_one_at_a_time():
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(3 * SR).astype(np.float32)
    onsets = np.array([0.1, 1.0, 2.9])
    batch = patches(audio, onsets)
    single = np.concatenate([patches(audio, [t]) for t in onsets])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(windows_to_patches(extract_windows(audio, onsets), chunk=1), batch,
                               atol=1e-5)


def test_librosa_per_window_matches():
    """The benchmarks' baseline (librosa called per window, as the original tools did) computes
    the same patches as the one feature function, so speed ratios compare like with like."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "bench" / "original.py"
    spec = importlib.util.spec_from_file_location("bench_original", path)
    original = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(original)
    rng = np.random.default_rng(2)
    t = np.arange(DEFAULT_SETTINGS.window_samples) / SR
    windows = np.stack([rng.standard_normal(len(t)) * np.exp(-t * 30),
                        np.sin(2 * np.pi * 220 * t) * np.exp(-t * 10)]).astype(np.float32)
    ours = windows_to_patches(windows)
    for w, p in zip(windows, ours, strict=True):
        np.testing.assert_allclose(original.original_patch(w), p, atol=2e-3)


def test_patches_survive_scipys_fft_pool_being_down(monkeypatch):
    """While another thread forks (Ray starting beside Flower's server thread), scipy's FFT pool
    refuses work; the patches are then computed in the calling thread, the same values."""
    import scipy.fft

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, DEFAULT_SETTINGS.window_samples)).astype(np.float32)
    expected = windows_to_patches(w)
    real, calls = scipy.fft.rfft, []

    def pool_down(x, axis=-1, workers=None):
        calls.append(workers)
        if workers != 1:
            raise RuntimeError("Work item submitted after shutdown")
        return real(x, axis=axis, workers=workers)

    monkeypatch.setattr(scipy.fft, "rfft", pool_down)
    np.testing.assert_array_equal(windows_to_patches(w), expected)
    assert calls == [-1, 1]


_PATCH_SCRIPT = """
import sys, numpy as np
from beatsight.common.features import windows_to_patches, DEFAULT_SETTINGS
w = np.random.default_rng(0).standard_normal((2, DEFAULT_SETTINGS.window_samples)).astype(np.float32)
np.save(sys.argv[1], windows_to_patches(w))
print("librosa.filters" in sys.modules)
"""


def test_mel_filters_are_librosas_and_cached_between_processes(tmp_path, monkeypatch):
    """The first process computes librosa's filters and keeps them; the next one gets the same
    patches without importing librosa.filters (~0.9 s of start-up); a damaged cache file is
    computed again."""
    import subprocess
    import sys

    import librosa

    monkeypatch.setenv("BEATSIGHT_CACHE_DIR", str(tmp_path / "cache"))

    def run(name: str) -> tuple[bool, np.ndarray]:
        out = subprocess.run([sys.executable, "-c", _PATCH_SCRIPT, str(tmp_path / name)],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() == "True", np.load(tmp_path / name)

    imported_first, first = run("a.npy")
    cached = list((tmp_path / "cache").glob("mel-*.npy"))
    assert imported_first and len(cached) == 1
    s = DEFAULT_SETTINGS
    np.testing.assert_array_equal(np.load(cached[0]), librosa.filters.mel(
        sr=s.sample_rate, n_fft=s.n_fft, n_mels=s.n_mels, fmax=s.fmax).astype(np.float32))
    imported_second, second = run("b.npy")
    assert not imported_second
    np.testing.assert_array_equal(first, second)
    cached[0].write_bytes(b"not an array")
    imported_third, third = run("c.npy")
    assert imported_third
    np.testing.assert_array_equal(first, third)
