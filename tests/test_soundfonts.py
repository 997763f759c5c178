"""SoundFont drum kits rendered by fluidsynth into Hydrogen-layout kits (real Debian fonts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from beatsight.common.errors import BeatSightError
from beatsight.simulation.kits import load_sample, map_instrument, parse_kit
from beatsight.simulation.soundfonts import (
    FONT_KITS,
    GM_NOTES,
    _midi,
    build_font_kits,
)

# What each General MIDI percussion key is (GM level 1), in the 12 classes.
GM_CLASS = {35: "kick", 36: "kick", 38: "snare", 40: "snare", 42: "hihat_closed",
            44: "hihat_closed", 46: "hihat_open", 41: "tom_low", 43: "tom_low", 45: "tom_mid",
            47: "tom_mid", 48: "tom_high", 50: "tom_high", 49: "crash", 57: "crash2", 51: "ride",
            59: "ride", 53: "ride_bell", 52: "china"}


def test_every_gm_name_maps_to_its_gm_class() -> None:
    assert {note for note, _ in GM_NOTES} == set(GM_CLASS)
    for note, name in GM_NOTES:
        assert map_instrument(name) == GM_CLASS[note], (note, name)


def test_midi_file_is_well_formed() -> None:
    data = _midi(FONT_KITS[0], 1920)
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    length = int.from_bytes(data[18:22], "big")
    assert len(data) == 22 + length and data.endswith(b"\xff\x2f\x00")
    assert data.count(bytes([0x99, 36])) == 4          # the kick struck at four velocities


@pytest.fixture(scope="module")
def font_kits(font_kits_dir: Path) -> list[Path]:
    return build_font_kits(font_kits_dir)  # built by the session fixture: the cached result


def test_font_kits_parse_as_hydrogen_kits(font_kits: list[Path]) -> None:
    kits = [parse_kit(d) for d in font_kits]
    assert [k.key for k in kits] == [k.key for k in FONT_KITS]
    for kit, spec in zip(kits, FONT_KITS, strict=True):
        assert kit.family == spec.family
        assert {"kick", "snare"} <= set(kit.classes), kit.key      # every kit can groove
        assert not kit.dropped and kit.unnamed == 0
        for inst in kit.instruments:
            assert len(inst.layers) >= 1
            x = load_sample(inst.layers[-1].path)
            assert x.size > 0.02 * 44_100 and np.max(np.abs(x)) > 0.01, inst.name
    standard, red = kits[0], kits[-1]
    assert len(standard.classes) == 12 and len(red.classes) == 12


def test_shared_recordings_train_once(font_kits: list[Path]) -> None:
    """Fluid R3's kits share one crash: only the first kit keeps it."""
    kits = {k.key: parse_kit(d) for k, d in zip(FONT_KITS, font_kits, strict=True)}
    assert "crash" in kits["FluidR3 Standard"].classes
    assert "crash" not in kits["FluidR3 Room"].classes
    # the TR-808 preset's own kick is a different recording from the Standard kit's
    a = load_sample(kits["FluidR3 Standard"].by_class()["kick"][0].layers[-1].path)[:8000]
    b = load_sample(kits["FluidR3 TR-808"].by_class()["kick"][0].layers[-1].path)[:8000]
    n = min(len(a), len(b))
    assert abs(float(np.dot(a[:n], b[:n]) / np.linalg.norm(a[:n]) / np.linalg.norm(b[:n]))) < 0.9


def test_build_is_cached(font_kits: list[Path]) -> None:
    xml = font_kits[0] / "drumkit.xml"
    before = xml.stat().st_mtime_ns
    again = build_font_kits(font_kits[0].parent)
    assert again == font_kits and xml.stat().st_mtime_ns == before


def test_missing_font_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BeatSightError, match="SoundFont not found.*apt-get install"):
        build_font_kits(tmp_path / "kits", fonts_dir=tmp_path)


def test_missing_fluidsynth_is_one_clear_error(tmp_path: Path, soundfonts: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))          # the fonts are there, fluidsynth is not
    with pytest.raises(BeatSightError, match="fluidsynth not found.*apt-get install"):
        build_font_kits(tmp_path / "kits")
    assert [p.name for p in tmp_path.iterdir()] == []     # nothing half-built left behind
