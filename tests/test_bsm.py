import json
from pathlib import Path

import pytest

from beatsight.common.bsm import Hit, hits, new_beatmap, parse_bsm, read_bsm, write_bsm
from beatsight.common.classes import ComponentMapper
from beatsight.common.errors import BeatSightError

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "simple_beat.bsm"
if not SEED.exists():  # CI lays shared/ beside the clone
    SEED = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "simple_beat.bsm"


def _pascal(obj):
    if isinstance(obj, dict):
        return {k[0].upper() + k[1:]: _pascal(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_pascal(v) for v in obj]
    return obj


@pytest.fixture
def seed_text():
    return SEED.read_text()


def test_real_seed_beatmap_reads(seed_text):
    bm = parse_bsm(seed_text, "simple_beat.bsm")
    hs = hits(bm)
    assert len(hs) == 17 and hs[0] == Hit(0, "kick", 0.9)
    assert [h.time_ms for h in hs] == sorted(h.time_ms for h in hs)
    assert bm["editor"]["aiGenerationMetadata"] is None


def test_pascal_case_reads_the_same(seed_text):
    camel = parse_bsm(seed_text)
    pascal = parse_bsm(json.dumps(_pascal(json.loads(seed_text))))
    assert hits(pascal) == hits(camel)
    assert pascal["timing"]["bpm"] == 120.0


def test_unsorted_hits_are_sorted_and_write_round_trips(tmp_path):
    bm = new_beatmap([Hit(500, "snare"), Hit(0, "kick", 1.0)], title="t",
                     audio_filename="a.wav", duration_ms=1000, bpm=120)
    write_bsm(tmp_path / "a.bsm", bm)
    assert hits(read_bsm(tmp_path / "a.bsm")) == [Hit(0, "kick", 1.0), Hit(500, "snare", 0.8)]


@pytest.mark.parametrize("text, field", [
    ("{not json", "not valid JSON"),
    ('{"version": "2.0.0", "hitObjects": []}', "version"),
    ('{"version": "1.0.0"}', "hitObjects"),
    ('{"version": "1.0.0", "hitObjects": [{"time": "x", "component": "kick"}]}',
     "hitObjects[0].time"),
    ('{"version": "1.0.0", "hitObjects": [{"time": 1, "component": ""}]}',
     "hitObjects[0].component"),
    ('{"version": "1.0.0", "hitObjects": [{"time": 1, "component": "kick", "velocity": 3}]}',
     "hitObjects[0].velocity"),
    ("[]", "top level"),
])
def test_malformed_input_names_file_and_field(text, field):
    with pytest.raises(BeatSightError) as err:
        parse_bsm(text, "bad.bsm")
    msg = str(err.value)
    assert msg.startswith("bad.bsm") and field in msg and "\n" not in msg


def test_component_mapper_maps_aliases_and_counts_skips():
    m = ComponentMapper()
    assert m("HiHat_Pedal") == "hihat_closed"
    assert m("splash") == "crash"
    assert m("Snare") == "snare"
    assert m("cowbell") is None and m("cowbell") is None
    assert m.skipped["cowbell"] == 2
