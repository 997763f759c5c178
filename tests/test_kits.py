"""The kit parser and THE instrument-name table, on real Hydrogen kits and on hand-made XML."""

from __future__ import annotations

import numpy as np
import pytest

from beatsight.common.audio import write_wav
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.simulation.kits import (
    KIT_FAMILY,
    find_kits,
    get_kit,
    load_sample,
    map_instrument,
    parse_kit,
)

# Real instrument names from the shipped kits and what they must map to (None = dropped).
KNOWN_NAMES = [
    ("Pearl Kick", "kick"), ("BassDrum", "kick"), ("c3 - bass drum 1", "kick"),
    ('Kick (Tama Superstar 22")', "kick"), ("VariBreaks Kick 2", "kick"),
    ("Snare", "snare"), ("Snare1", "snare"), ("Pearl Snare Rimshot", "snare"),
    ("redo super opaco", "snare"), ("Snare Roll", None),
    ('Hi-Hat Closed (Paiste Alpha Metal edge 14")', "hihat_closed"), ("Closed HH", "hihat_closed"),
    ("Closed Hat", "hihat_closed"), ("VariBreaks Hat 1 Cl", "hihat_closed"),
    ("Hat Pedal", "hihat_closed"), ("Pedal HH", "hihat_closed"), ("VariBreaks Hat 1 Pd", "hihat_closed"),
    ("Sabian Hat Semi-Open", "hihat_open"), ("Hi Hat Opened", "hihat_open"), ("Open HH", "hihat_open"),
    ("Hat Op Dirty", "hihat_open"), ('Hi-Hat Semiopen (Paiste Alpha Metal edge 14")', "hihat_open"),
    ("Crash", "crash"), ("crash16inch", "crash"), ("Zildjian Splash", "crash"), ("Cymbal", "crash"),
    ("Crash Left", "crash"), ("Crash Right", "crash2"), ("crash20inch--2", "crash2"),
    ("Crash Jazz", "crash2"), ('Crash/Ride (Paiste Rude Crash/Ride 18")', "crash2"),
    ("Ride", "ride"), ("Ride 2", "ride"), ("ride-crash20inch", "ride"), ("Paiste Ride Flink", "ride"),
    ("Ride Bell", "ride_bell"), ("ride-cup", "ride_bell"), ("Bell", "ride_bell"),
    ('Crash/Ride Bell (Paiste Rude Crash/Ride 18")', "ride_bell"),
    ('China (Paiste Alpha 18")', "china"),
    ("Tom Hi", "tom_high"), ("Pearl Tom 1", "tom_high"), ("tomhi3", "tom_high"),
    ("d4 - high tom", "tom_high"),
    ("Tom Mid", "tom_mid"), ("Tom 2", "tom_mid"), ("c4 - middle tom", "tom_mid"),
    ("Floor Tom", "tom_low"), ("Pearl Tom Floor", "tom_low"), ("b3 - low tom", "tom_low"),
    ("Hand Clap", None), ("Cowbell", None), ("Stick", None), ("Pearl Side Stick", None),
    ("Tambourine Pedal (Pearl PTM-10GH)", None), ("Sabian Hat Choke", None), ("Conga 1", None),
    ("Djembe1 Bass", None), ("", None), ("17", None), ("Sample: beats_01-39.flac", None),
]


@pytest.mark.parametrize(("name", "expected"), KNOWN_NAMES)
def test_name_table(name, expected):
    assert map_instrument(name) == expected
    assert expected is None or expected in CLASSES


def _wav(path, n=2000):
    """A synthesised decaying noise burst standing in for a drum sample (no kits needed)."""
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(300), rng.normal(0, 0.3, n) * np.exp(-np.arange(n) / 400)])
    write_wav(path, audio.astype(np.float32))


def test_parser_handles_namespaces_old_layouts_and_placeholders(tmp_path):
    kit = tmp_path / "Odd Kit"
    kit.mkdir()
    for f in ("k1.wav", "k2.wav", "sn.wav", "clap.wav", "x.wav"):
        _wav(kit / f)
    (kit / "drumkit.xml").write_text(
        '<?xml version="1.0"?>\n'
        '<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">'
        "<name>Odd</name><componentList><drumkitComponent><name>Main</name>"
        "</drumkitComponent></componentList><instrumentList>"
        "<instrument><name>Kick</name><instrumentComponent>"
        "<layer><filename>k1.wav</filename><min>0</min><max>0.5</max><gain>1</gain></layer>"
        "<layer><filename>k2.wav</filename><min>0.5</min><max>1</max><gain>0.8</gain></layer>"
        "</instrumentComponent></instrument>"
        "<instrument><name>Snare</name><filename>sn.wav</filename></instrument>"   # old layout
        "<instrument><name>Tom Hi</name></instrument>"                            # no layer
        "<instrument><name></name><filename>x.wav</filename></instrument>"        # empty name
        "<instrument><name>Ride</name><filename>missing.wav</filename></instrument>"
        "<instrument><name>Hand Clap</name><layer><filename>clap.wav</filename></layer></instrument>"
        "</instrumentList></drumkit_info>")
    k = parse_kit(kit)
    assert k.name == "Odd" and k.key == "Odd Kit" and k.family == "unknown"
    assert [(i.name, i.cls, len(i.layers)) for i in k.instruments] == [("Kick", "kick", 2),
                                                                      ("Snare", "snare", 1)]
    assert k.dropped == ("Hand Clap",) and k.unnamed == 1
    kick = k.instruments[0]
    assert kick.layer_for(0.2).path.name == "k1.wav" and kick.layer_for(0.9).path.name == "k2.wav"
    assert kick.layers[1].gain == 0.8 and all(ly.path.is_absolute() for ly in kick.layers)


def test_broken_xml_and_missing_dir_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "Bad").mkdir()
    (tmp_path / "Bad" / "drumkit.xml").write_text("<drumkit_info><name>x</name>")
    with pytest.raises(BeatSightError, match="drumkit.xml: cannot parse"):
        parse_kit(tmp_path / "Bad")
    monkeypatch.setenv("BEATSIGHT_KITS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(BeatSightError, match="apt-get install hydrogen-drumkits hydrogen-data"):
        find_kits()


@pytest.mark.needs_kits
def test_every_installed_kit_parses_and_accounts_for_every_instrument(kits_root):
    kits = find_kits(kits_root)
    assert {k.key for k in kits} >= set(KIT_FAMILY)
    for k in kits:
        # every instrument is mapped by the table and every layer file exists
        assert all(i.cls in CLASSES and i.cls == map_instrument(i.name) for i in k.instruments)
        assert all(ly.path.is_file() and 0 <= ly.vmin <= ly.vmax <= 1
                   for i in k.instruments for ly in i.layers)
        assert all(map_instrument(name) is None for name in k.dropped)
        if k.family in ("acoustic", "electronic"):
            assert {"kick", "snare", "hihat_closed", "hihat_open"} <= set(k.classes), k.key
        if k.family == "acoustic":
            assert {"tom_high", "tom_low", "crash"} <= set(k.classes)
        if k.family == "percussion":
            assert k.classes == ()


@pytest.mark.needs_kits
def test_known_kits_map_as_expected(kits_root):
    gm = get_kit("GMRockKit", kits_root)
    assert dict(gm.coverage()) == {"kick": 1, "snare": 2, "hihat_closed": 2, "hihat_open": 2,
                                   "crash": 2, "ride": 2, "tom_high": 1, "tom_mid": 1,
                                   "tom_low": 1, "ride_bell": 1}
    assert set(gm.dropped) == {"Stick", "Hand Clap", "Cowbell"}
    forzee = get_kit("ForzeeStereo", kits_root)
    assert set(forzee.classes) == set(CLASSES)      # the one kit with every class (china too)
    assert get_kit("Millo-Drums_v.1", kits_root).unnamed == 16   # "17".."32" placeholders


@pytest.mark.needs_kits
def test_velocity_layers_cover_their_velocities(kits_root):
    kick = get_kit("GMRockKit", kits_root).by_class()["kick"][0]
    assert len(kick.layers) == 5
    chosen = {v: kick.layer_for(v) for v in np.linspace(0, 1, 41)}
    assert all(ly.vmin <= v <= ly.vmax for v, ly in chosen.items())
    assert len({ly.path for ly in chosen.values()}) == 5     # soft to hard, every layer used


@pytest.mark.needs_kits
def test_samples_load_onset_aligned_and_cached(small_kit):
    path = small_kit.by_class()["snare"][0].layers[0].path
    a = load_sample(path)
    assert a.dtype == np.float32 and a.ndim == 1 and not a.flags.writeable
    assert abs(a[0]) >= 0.01 * np.abs(a).max()           # index 0 is the onset (-40 dB)
    assert load_sample(path) is a


def _sim(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "beatsight.simulation.cli", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.needs_kits
def test_kits_command_shows_coverage_and_drops(kits_root):
    res = _sim("kits", "--kits-dir", str(kits_root))
    assert res.returncode == 0, res.stderr
    for key in KIT_FAMILY:
        assert key in res.stdout
    assert "GMRockKit drops: Stick, Hand Clap, Cowbell" in res.stdout


def test_kits_command_without_kits_is_one_line(tmp_path):
    res = _sim("kits", env={"BEATSIGHT_KITS_DIR": str(tmp_path / "none")})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error:" in res.stderr and "apt-get install hydrogen-drumkits" in res.stderr
