"""A band under the grooves (simulation.band): real fluidsynth renders of Fluid R3 GM."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from beatsight.common.bsm import read_bsm
from beatsight.simulation.band import band_midi, render_band, with_band
from beatsight.simulation.render import Plan, plan_song, write_song

SR = 44_100


def test_the_band_plays_on_the_grooves_eighths_from_its_first_beat(soundfonts: None) -> None:
    plan = Plan((), length_s=6.0, bpm=100.0, style="test", first_beat_s=0.7)
    audio = render_band(plan, seed=3, n_samples=int(6.0 * SR))
    assert audio.shape == (int(6.0 * SR),) and audio.dtype == np.float32
    lead = audio[: int(0.65 * SR)]
    assert np.max(np.abs(lead)) < 1e-4 < np.max(np.abs(audio[int(0.7 * SR):int(1.2 * SR)]))
    # the bass (below 150 Hz) strikes every eighth: 0.3 s at 100 BPM
    spec = np.fft.rfft(audio)
    bass = np.fft.irfft(spec * (np.fft.rfftfreq(len(audio), 1 / SR) < 150), len(audio))
    hop = SR // 200                                                  # 5 ms
    env = np.sqrt(np.mean(bass[: len(bass) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    rise = np.maximum(np.diff(env), 0)
    lags = np.arange(20, 120)                                        # 0.1-0.6 s
    ac = [np.dot(rise[:-lag], rise[lag:]) for lag in lags]
    assert lags[int(np.argmax(ac))] * hop / SR == pytest.approx(0.3, abs=0.011)


def test_band_midi_differs_by_seed_and_names_its_chords() -> None:
    plan = Plan((), length_s=10.0, bpm=100.0, style="test", first_beat_s=0.5)
    a, name = band_midi(plan, 1)
    assert a[:4] == b"MThd" and a.endswith(b"\xff\x2f\x00") and isinstance(name, str)
    assert band_midi(plan, 1) == (a, name) and band_midi(plan, 2)[0] != a


def test_with_band_sets_the_level_and_keeps_the_peak() -> None:
    rng = np.random.default_rng(0)
    drums = (rng.standard_normal(SR) * 0.1).astype(np.float32)
    band = np.sin(2 * np.pi * 110 * np.arange(SR) / SR).astype(np.float32)
    out = with_band(drums, band, -6.0)
    assert np.max(np.abs(out)) == pytest.approx(np.max(np.abs(drums)), rel=1e-5)
    # out = c * (drums + k * band): the band's level is k * band's against the drums'
    (c, ck), *_ = np.linalg.lstsq(np.stack([drums, band], axis=1), out, rcond=None)
    rms = lambda x: np.sqrt(np.mean(np.square(x, dtype=np.float64)))  # noqa: E731
    assert 20 * np.log10(rms(ck / c * band) / rms(drums)) == pytest.approx(-6.0, abs=0.01)
    assert with_band(drums, np.zeros_like(band), 0.0) is drums


@pytest.mark.needs_kits
def test_a_song_with_a_band_keeps_the_drums_truth(tmp_path, small_kit, soundfonts: None) -> None:
    dry_wav, dry_bsm = write_song(tmp_path / "dry", "s", small_kit, 5, duration_s=4.0)
    wav, bsm = write_song(tmp_path / "band", "s", small_kit, 5, duration_s=4.0, band_db=0.0)
    assert read_bsm(bsm)["hitObjects"] == read_bsm(dry_bsm)["hitObjects"]
    dry, _ = sf.read(dry_wav)
    mixed, _ = sf.read(wav)
    assert len(dry) == len(mixed) and not np.allclose(dry, mixed, atol=1e-3)
    plan = plan_song(small_kit, 5, duration_s=4.0)
    assert 0.3 <= plan.first_beat_s <= 0.7


@pytest.mark.needs_kits
def test_render_command_takes_a_band_and_refuses_one_for_isolated_hits(
        tmp_path, kits_root, soundfonts: None) -> None:
    from typer.testing import CliRunner

    from beatsight.simulation.cli import app

    args = ["render", "Millo_MultiLayered3", "--out", str(tmp_path), "--seconds", "3",
            "--kits-dir", str(kits_root), "--band", "-6"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "groove.wav").is_file() and (tmp_path / "groove.bsm").is_file()
    refused = CliRunner().invoke(app, [*args, "--isolated", "--name", "iso"])
    assert refused.exit_code == 2 and "not isolated hits" in refused.output
    assert not (tmp_path / "iso.wav").exists()
