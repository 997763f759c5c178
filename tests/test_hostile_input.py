"""Hostile input, generated: .bsm text, collector inputs, checkpoint bytes (hypothesis, >1,000 cases).

Every input either works or raises BeatSightError with a one-line message; nothing else escapes,
and a rejected sample or beatmap leaves the store exactly as it was.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beatsight.client.store import SampleStore
from beatsight.common.audio import write_wav
from beatsight.common.bsm import Hit, new_beatmap, parse_bsm
from beatsight.common.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN

pytestmark = pytest.mark.slow
CFG = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow], derandomize=True)

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | \
    st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=12)
components = st.sampled_from([*CLASSES, "hihat", "tom", "snare_rim", "cowbell", "", " ", "KICK"]) \
    | st.text(max_size=10)


def rejected_cleanly(fn) -> BeatSightError | None:
    try:
        fn()
    except BeatSightError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return exc
    return None


def valid_bsm(hit_list: list[Hit]) -> dict:
    return new_beatmap(hit_list, title="t", audio_filename="a.wav", duration_ms=1000, bpm=120.0)


# ----------------------------------------------------------------------------- .bsm reader
@settings(max_examples=150, **CFG)
@given(st.text(max_size=200) | json_values.map(json.dumps))
def test_parse_bsm_arbitrary_text(text):
    rejected_cleanly(lambda: parse_bsm(text, "x.bsm"))


@settings(max_examples=250, **CFG)
@given(path=st.sampled_from([("version",), ("hitObjects",), ("hitObjects", 0),
                             ("hitObjects", 0, "time"), ("hitObjects", 0, "component"),
                             ("hitObjects", 0, "velocity"), ("metadata",), ("audio",), ("timing",),
                             ("drumKit",), ("hitObjects", 1, "time")]),
       value=json_values | st.sampled_from([float("nan"), float("inf"), -1, 1e300, "1.0.0"]))
def test_parse_bsm_mutated_fields(path, value):
    bm = valid_bsm([Hit(100, "kick", 0.8), Hit(500, "snare", 0.5)])
    node = bm
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    text = json.dumps(bm)  # NaN/inf become JSON's NaN/Infinity literals, as a hostile file may have
    parsed = [None]

    def go():
        parsed[0] = parse_bsm(text, "x.bsm")
    if rejected_cleanly(go) is None:  # accepted: what callers rely on holds
        for h in parsed[0]["hitObjects"]:
            assert math.isfinite(h["time"]) and h["time"] >= 0 and 0 <= h["velocity"] <= 1


# ----------------------------------------------------------------------------- collector
@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "song.wav"
    rng = np.random.default_rng(0)
    write_wav(path, (0.3 * rng.standard_normal(44_100)).astype(np.float32))
    return path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.parts and p.name != ".lock"}


@settings(max_examples=200, **CFG)
@given(time_s=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1.2)
       | st.sampled_from([0, 1, -0.0, "0.5", None, True]),
       component=components | st.none() | st.integers())
def test_add_sample_hostile(tmp_path, song, time_s, component):
    store = SampleStore(tmp_path / "store")
    before = _snapshot(store.root) if store.root.exists() else {}
    if rejected_cleanly(lambda: store.add_sample(song, time_s, component)) is not None:
        after = _snapshot(store.root) if store.root.exists() else {}
        assert after == before


hit_st = st.builds(lambda t, c, v: {"time": t, "component": c, "velocity": v},
                   st.integers(-100, 1500) | st.floats(-10, 2000), components,
                   st.floats(-0.5, 1.5) | st.just(0.7))


@settings(max_examples=150, **CFG)
@given(hit_list=st.lists(hit_st, max_size=8))
def test_extract_beatmap_hostile(tmp_path, song, hit_list):
    store = SampleStore(tmp_path / "store")
    bm = valid_bsm([])
    bm["hitObjects"] = hit_list
    bsm = tmp_path / "map.bsm"
    bsm.write_text(json.dumps(bm))
    before = _snapshot(store.root) if store.root.exists() else {}
    report = [None]

    def go():
        report[0] = store.extract_beatmap(bsm, song)
    if rejected_cleanly(go) is not None:
        assert (_snapshot(store.root) if store.root.exists() else {}) == before
    else:
        assert report[0].added + report[0].duplicates + sum(report[0].skipped.values()) == \
            len(hit_list)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "m.pth"
    save_checkpoint(path, Checkpoint(state_dict=DrumClassifierCNN().state_dict()))
    return path.read_bytes()


@settings(max_examples=100, **CFG)
@given(data=st.binary(max_size=2000))
def test_read_checkpoint_random_bytes(tmp_path, data):
    path = tmp_path / "x.pth"
    path.write_bytes(data)
    rejected_cleanly(lambda: read_checkpoint(path))


@settings(max_examples=150, **CFG)
@given(data=st.data())
def test_read_checkpoint_mutated_bytes(tmp_path, ckpt_bytes, data):
    buf = bytearray(ckpt_bytes)
    how = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255)) if how == "flip" else buf[i] ^ 0xFF
    path = tmp_path / "x.pth"
    path.write_bytes(bytes(buf))
    rejected_cleanly(lambda: read_checkpoint(path))


payload_values = json_values | st.just(torch.zeros(2)) | st.just({"w": torch.zeros(1)})


@settings(max_examples=150, **CFG)
@given(fields=st.dictionaries(st.sampled_from(["format_version", "state_dict", "classes",
                                               "features", "model_version", "metrics", "extra"]),
                              payload_values, max_size=7))
def test_read_checkpoint_hostile_payload(tmp_path, fields):
    payload = {"format": "beatsight-checkpoint", "format_version": 1,
               "state_dict": {"w": torch.zeros(1)}, "classes": list(CLASSES),
               "features": {}, **fields}
    raw = io.BytesIO()
    torch.save(payload, raw)
    path = tmp_path / "x.pth"
    path.write_bytes(raw.getvalue())
    rejected_cleanly(lambda: read_checkpoint(path))
