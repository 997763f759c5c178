"""One-shot drum samples of Debian packages written as Hydrogen kits (real packages' files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from beatsight.common.audio import SAMPLE_RATE
from beatsight.common.errors import BeatSightError
from beatsight.simulation.kits import map_instrument, parse_kit
from beatsight.simulation.samplekits import SAMPLE_KITS, SHARE, build_sample_kits, sample_files

pytestmark = pytest.mark.needs_kits

# What each kit holds, by class (the names in SAMPLE_KITS are chosen to map to these).
EXPECTED = {
    "exaDrums Default": {"kick", "snare", "hihat_closed", "crash", "ride", "ride_bell",
                         "tom_high", "tom_low"},
    "STK Drums": {"kick", "snare", "hihat_closed", "crash", "ride", "tom_high", "tom_mid",
                  "tom_low"},
    "Sonic Pi Drums": {"kick", "snare", "hihat_closed", "hihat_open", "crash", "tom_high",
                       "tom_mid", "tom_low"},
    "Sonic Pi Electro": {"kick", "snare"},
    "LMMS Acoustic": {"kick", "snare", "hihat_closed", "hihat_open", "crash", "crash2", "ride",
                      "tom_high", "tom_mid", "tom_low"},
    "LMMS Electro": {"kick", "snare"},
}


def test_every_piece_maps_to_a_class_and_the_name_says_which() -> None:
    assert {k.key for k in SAMPLE_KITS} == set(EXPECTED)
    for kit in SAMPLE_KITS:
        classes = {map_instrument(name) for name, _ in kit.pieces}
        assert classes == EXPECTED[kit.key], kit.key


def test_sample_kits_parse_as_hydrogen_kits(sample_kits_dir: Path) -> None:
    for kit in SAMPLE_KITS:
        parsed = parse_kit(sample_kits_dir / kit.key)
        assert parsed.family == kit.family and not parsed.dropped
        assert set(parsed.by_class()) == EXPECTED[kit.key]
        assert len(parsed.instruments) == len(kit.pieces)
        for inst in parsed.instruments:
            for layer in inst.layers:
                info = sf.info(layer.path)
                assert info.samplerate == SAMPLE_RATE and info.frames > SAMPLE_RATE // 20
    sonic_kick = next(i for i in parse_kit(sample_kits_dir / "Sonic Pi Drums").instruments
                      if i.name == "Kick")
    assert [ly.path.stem for ly in sonic_kick.layers] == ["drum_bass_soft", "drum_bass_hard"]
    assert sonic_kick.layer_for(0.2).path.stem == "drum_bass_soft"
    assert sonic_kick.layer_for(0.9).path.stem == "drum_bass_hard"


def test_a_hydrogen_recording_is_left_out(tmp_path: Path, kits_root: Path,
                                          sample_kits_dir: Path) -> None:
    """A package file that is one of Hydrogen's recordings never trains: it could be a held-out
    kit's."""
    share = tmp_path / "share"
    for f in sample_files():
        (share / f).parent.mkdir(parents=True, exist_ok=True)
        (share / f).symlink_to(SHARE / f)
    hat = share / "exadrums/HiHat.wav"
    hat.unlink()
    hydrogen_hat = next(layer.path for inst in parse_kit(kits_root / "GMRockKit").instruments
                        if inst.cls == "hihat_closed" for layer in inst.layers)
    x, sr = sf.read(hydrogen_hat)
    sf.write(hat, x, sr)            # same recording, another file format
    out = tmp_path / "kits"
    build_sample_kits(out, share=share, kits_root=kits_root)
    exa = parse_kit(out / "exaDrums Default")
    assert "hihat_closed" not in exa.by_class() and "kick" in exa.by_class()
    assert json.loads((out / "beatsight-samples.json").read_text())["left_out"] == {
        "exaDrums Default": ["exadrums/HiHat.wav"]}
    real = json.loads((sample_kits_dir / "beatsight-samples.json").read_text())
    assert real["left_out"] == {}     # none of the packages' own files is a Hydrogen recording


def test_build_is_cached_and_missing_packages_are_one_error(tmp_path: Path,
                                                            sample_kits_dir: Path) -> None:
    out = tmp_path / "kits"
    shutil.copytree(sample_kits_dir, out)
    xml = out / "STK Drums" / "drumkit.xml"
    before = xml.stat().st_mtime_ns
    assert build_sample_kits(out) == [out / k.key for k in SAMPLE_KITS]
    assert xml.stat().st_mtime_ns == before
    with pytest.raises(BeatSightError, match="drum sample not found .*apt-get install exadrums"):
        build_sample_kits(tmp_path / "other", share=tmp_path / "empty")
    assert not (tmp_path / "other").exists()
