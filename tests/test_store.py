"""The sample store: original layout, one-pass extraction, idempotency, crash safety, export.

Audio here is synthesised (decaying tones/noise bursts placed exactly at the beatmap's hit
times), so these tests need no drum kits; the real beatmap is the seed's simple_beat.bsm.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from beatsight.client import dataset as dataset_mod
from beatsight.client.store import SampleStore
from beatsight.common.audio import load_audio
from beatsight.common.bsm import Hit, hits, new_beatmap, read_bsm, write_bsm
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.common.features import DEFAULT_SETTINGS, extract_windows, patches

# The real beatmap from the original repository (shared/ sits beside the clone).
SEED_BSM = Path(__file__).resolve().parents[2] / "shared" / "seed" / "simple_beat.bsm"
SR = 44100


def synth_beat(hit_list: list[Hit], out: Path, seconds: float, seed: int = 0) -> Path:
    """Synthesise a drum-like WAV with one sound per hit at exactly the hit's time.

    kick: decaying 55 Hz sine; snare: noise + 180 Hz; hi-hats/cymbals: differentiated noise;
    toms: decaying 100-200 Hz sines. Not real drums: enough to test plumbing and learnability.
    """
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(seconds * SR), np.float32)
    t = np.arange(int(0.3 * SR)) / SR
    for h in hit_list:
        c = h.component
        if c == "kick":
            s = np.sin(2 * np.pi * 55 * t) * np.exp(-t / 0.08)
        elif c == "snare":
            s = (0.6 * rng.standard_normal(len(t)) + np.sin(2 * np.pi * 180 * t)) * np.exp(-t / 0.06)
        elif c.startswith("tom"):
            f = {"tom_high": 200, "tom_mid": 140, "tom_low": 100}.get(c, 150)
            s = np.sin(2 * np.pi * f * t) * np.exp(-t / 0.15)
        else:
            s = np.diff(rng.standard_normal(len(t)), prepend=0) * 0.3 * np.exp(-t / 0.03)
        i = int(round(h.time_s * SR))
        n = min(len(s), len(audio) - i)
        audio[i:i + n] += h.velocity * s[:n].astype(np.float32)
    sf.write(str(out), audio / np.abs(audio).max() * 0.8, SR, subtype="PCM_16")
    return out


def synth_store(hit_list: list[Hit], d: Path, seconds: float, seed: int = 0,
                bpm: float = 120) -> tuple[SampleStore, Path]:
    """`synth_beat` plus its beatmap, collected into `d/store` the way a contributor does;
    returns (store, the groove's WAV)."""
    wav = synth_beat(hit_list, d / "groove.wav", seconds, seed=seed)
    bsm = d / "groove.bsm"
    write_bsm(bsm, new_beatmap(hit_list, title="g", audio_filename="groove.wav",
                               duration_ms=int(seconds * 1000), bpm=bpm))
    store = SampleStore(d / "store")
    store.extract_beatmap(bsm, wav)
    return store, wav


@pytest.fixture(scope="module")
def beat_wav(tmp_path_factory) -> Path:
    """simple_beat.bsm's hits synthesised into a 4 s WAV."""
    d = tmp_path_factory.mktemp("beat")
    return synth_beat(hits(read_bsm(SEED_BSM)), d / "simple_beat.wav", 4.0)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash (to prove a store is unchanged)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def consistent(store: SampleStore) -> None:
    """Every record has its file, and every snippet file has a record."""
    recs = store.samples()
    paths = {store.path_of(r).resolve() for r in recs}
    assert all(p.is_file() for p in paths)
    wavs = {p.resolve() for p in store.root.glob("*/*.wav")}
    assert wavs == paths


def test_extract_round_trip_matches_the_original_layout(tmp_path: Path, beat_wav: Path) -> None:
    store = SampleStore(tmp_path / "training_data")
    rep = store.extract_beatmap(SEED_BSM, beat_wav)
    assert (rep.hits, rep.added, rep.duplicates) == (17, 17, 0)
    assert rep.per_class == {"kick": 2, "snare": 2, "hihat_closed": 13}
    meta = json.loads((tmp_path / "training_data" / "metadata.json").read_text())
    assert meta["version"] == "1.0.0" and len(meta["samples"]) == 17
    for rec in meta["samples"]:
        for key in ("id", "component", "source_audio", "onset_time", "window_ms",
                    "sample_rate", "source", "path"):
            assert key in rec
        assert rec["path"] == f"{rec['component']}/{rec['id']}.wav"
        assert rec["source"] == "beatmap" and rec["source_audio"] == "simple_beat.wav"
        data, sr = sf.read(str(tmp_path / "training_data" / rec["path"]))
        assert sr == SR and len(data) == DEFAULT_SETTINGS.window_samples
    assert store.stats()["hihat_closed"] == 13 and store.stats()["crash"] == 0
    consistent(store)

    # The snippet is exactly the feature window (onset 25 ms in), so the store's cached
    # features equal the one feature function applied to the whole song.
    audio = load_audio(beat_wav)
    fs = store.feature_set()
    onsets = np.array([next(r["onset_time"] for r in meta["samples"] if r["id"] == i)
                       for i in fs.ids])
    want_windows = extract_windows(audio, onsets)
    np.testing.assert_allclose(fs.windows / 32768.0, want_windows, atol=1.0 / 32768 + 1e-6)
    np.testing.assert_allclose(fs.X.astype(np.float32), patches(audio, onsets), atol=0.02)
    X, y = store.load_features()
    assert X.dtype == np.float32 and X.shape == (17, 1, 128, 128) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [2, 2, 13]


def test_extraction_and_add_sample_are_idempotent(tmp_path: Path, beat_wav: Path) -> None:
    store = SampleStore(tmp_path / "s")
    store.extract_beatmap(SEED_BSM, beat_wav)
    before = snapshot(store.root)
    rep = store.extract_beatmap(SEED_BSM, beat_wav)
    assert (rep.added, rep.duplicates) == (0, 17)
    assert store.add_sample(beat_wav, 1.0, "snare") is None  # hit already in the beatmap
    assert snapshot(store.root) == before
    # A copy of the same audio under another name is the same content: still a duplicate.
    copy = tmp_path / "renamed.wav"
    shutil.copy(beat_wav, copy)
    assert store.extract_beatmap(SEED_BSM, copy).added == 0
    # A new time is a new sample; an alias maps to its class.
    rec = store.add_sample(beat_wav, 1.1, "hihat")
    assert rec is not None and rec["component"] == "hihat_closed" and rec["source"] == "manual"
    assert len(store.samples()) == 18
    consistent(store)


def test_aliases_are_mapped_and_unknown_components_skipped(tmp_path: Path) -> None:
    hl = [Hit(200, "kick"), Hit(500, "hihat_pedal"), Hit(800, "cowbell"), Hit(1100, "splash"),
          Hit(1400, "cowbell")]
    wav = synth_beat(hl, tmp_path / "a.wav", 2.0)
    bsm = tmp_path / "a.bsm"
    write_bsm(bsm, new_beatmap(hl, title="a", audio_filename="a.wav", duration_ms=2000, bpm=120))
    rep = SampleStore(tmp_path / "s").extract_beatmap(bsm, wav)
    assert rep.added == 3 and rep.skipped == {"cowbell": 2}
    assert rep.aliased == {"hihat_pedal -> hihat_closed": 1, "splash -> crash": 1}
    assert SampleStore(tmp_path / "s").stats()["crash"] == 1


def test_crash_between_snippets_and_metadata_leaves_a_consistent_store(
        tmp_path: Path, beat_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SampleStore(tmp_path / "s")
    store.add_sample(beat_wav, 0.5, "hihat_closed")
    meta_before = store.metadata_path.read_bytes()

    def crash(self, meta):  # the process dies after the snippets are on disk
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(SampleStore, "_write_metadata", crash)
    with pytest.raises(KeyboardInterrupt):
        store.extract_beatmap(SEED_BSM, beat_wav)
    monkeypatch.undo()

    assert store.metadata_path.read_bytes() == meta_before  # index untouched
    assert len(list(store.root.glob("*/*.wav"))) > 1  # orphan snippets exist ...
    reopened = SampleStore(tmp_path / "s")
    X, y = reopened.load_features()  # ... and are ignored by every read
    assert len(y) == 1 and reopened.stats()["hihat_closed"] == 1
    rep = reopened.extract_beatmap(SEED_BSM, beat_wav)  # the next write cleans up
    assert rep.added == 16 and rep.duplicates == 1
    consistent(reopened)
    assert len(reopened.load_features()[1]) == 17


def _bad_inputs(tmp: Path, beat_wav: Path) -> dict:
    text = tmp / "notes.wav"
    text.write_text("this is not audio")
    empty = tmp / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), SR)
    bad_json = tmp / "broken.bsm"
    bad_json.write_text('{"version": "1.0.0", "hitObjects": [')
    past = tmp / "past.bsm"
    write_bsm(past, new_beatmap([Hit(1000, "kick"), Hit(9000, "snare")], title="p",
                                audio_filename="x.wav", duration_ms=9000, bpm=120))
    return {
        "unreadable audio": (lambda s: s.add_sample(text, 0.1, "kick"), "cannot decode"),
        "empty audio": (lambda s: s.add_sample(empty, 0.0, "kick"), "empty"),
        "time past end": (lambda s: s.add_sample(beat_wav, 4.5, "kick"), "past the end"),
        "negative time": (lambda s: s.add_sample(beat_wav, -1.0, "kick"), "seconds >= 0"),
        "unknown component": (lambda s: s.add_sample(beat_wav, 1.0, "cowbell"),
                              "unknown component"),
        "malformed beatmap": (lambda s: s.extract_beatmap(bad_json, beat_wav), "not valid JSON"),
        "missing beatmap": (lambda s: s.extract_beatmap(tmp / "nope.bsm", beat_wav),
                            "no such beatmap"),
        "hit past end": (lambda s: s.extract_beatmap(past, beat_wav), "hit 1 at 9.000 s"),
        "missing audio": (lambda s: s.extract_beatmap(SEED_BSM, tmp / "nope.wav"),
                          "no such audio"),
    }


def test_bad_inputs_raise_one_line_errors_and_leave_the_store_unchanged(
        tmp_path: Path, beat_wav: Path) -> None:
    cases = _bad_inputs(tmp_path, beat_wav)
    fresh = SampleStore(tmp_path / "fresh")
    used = SampleStore(tmp_path / "used")
    used.add_sample(beat_wav, 0.25, "hihat_closed")
    before = snapshot(used.root)
    for name, (call, match) in cases.items():
        for store in (fresh, used):
            with pytest.raises(BeatSightError, match=match) as err:
                call(store)
            assert "\n" not in str(err.value), name
        assert not fresh.root.exists(), name
        assert snapshot(used.root) == before, name


def test_unreadable_metadata_is_an_error_not_a_reset(tmp_path: Path, beat_wav: Path) -> None:
    store = SampleStore(tmp_path / "s")
    store.add_sample(beat_wav, 0.25, "hihat_closed")
    store.metadata_path.write_text("{ torn")
    before = snapshot(store.root)
    with pytest.raises(BeatSightError, match="metadata.json"):
        store.add_sample(beat_wav, 0.5, "hihat_closed")
    assert snapshot(store.root) == before


def _many(tmp: Path) -> SampleStore:
    """A store with 10 kicks, 5 snares, 3 hi-hats and a single tom_low."""
    hl = ([Hit(300 + 400 * i, "kick") for i in range(10)]
          + [Hit(500 + 400 * i, "snare") for i in range(5)]
          + [Hit(400 + 400 * i, "hihat_closed") for i in range(3)] + [Hit(4400, "tom_low")])
    wav = synth_beat(hl, tmp / "many.wav", 5.0, seed=1)
    bsm = tmp / "many.bsm"
    write_bsm(bsm, new_beatmap(hl, title="m", audio_filename="many.wav", duration_ms=5000,
                               bpm=120))
    store = SampleStore(tmp / "store")
    assert store.extract_beatmap(bsm, wav).added == 19
    return store


def test_export_is_stratified_shuffled_and_keeps_singletons_in_train(tmp_path: Path) -> None:
    store = _many(tmp_path)
    out = tmp_path / "dataset"
    rep = store.export(out, seed=0)
    assert rep.per_class == {"kick": (8, 2), "snare": (4, 1), "hihat_closed": (2, 1),
                             "tom_low": (1, 0)}
    train = json.loads((out / "train_labels.json").read_text())
    val = json.loads((out / "val_labels.json").read_text())
    assert json.loads((out / "components.json").read_text()) == {
        "components": list(CLASSES), "num_classes": 12}
    for split, items in (("train", train), ("val", val)):
        for it in items:
            assert set(it) == {"file", "label", "component_idx"}
            assert CLASSES[it["component_idx"]] == it["label"]
            assert (out / split / it["file"]).is_file()
    assert {it["file"] for it in train}.isdisjoint({it["file"] for it in val})
    assert len(list((out / "train").glob("*.wav"))) == 15
    # Same seed, same split; another seed shuffles differently (stratification kept).
    store.export(tmp_path / "again", seed=0)
    assert json.loads((tmp_path / "again" / "val_labels.json").read_text()) == val
    other = [store.export(tmp_path / f"s{s}", seed=s) for s in (1, 2, 3)]
    vals = {json.dumps(json.loads((tmp_path / f"s{s}" / "val_labels.json").read_text()))
            for s in (1, 2, 3)}
    assert len(vals | {json.dumps(val)}) > 1 and all(r.val == 4 for r in other)
    # Re-export into the same directory replaces it without stale files.
    store.export(out, seed=1)
    n_files = len(list((out / "train").glob("*.wav"))) + len(list((out / "val").glob("*.wav")))
    assert n_files == 19
    # A directory that is not an earlier export is refused.
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(BeatSightError, match="not an earlier export"):
        store.export(foreign)
    # The export directory trains the same as the store: same features, same labels.
    ex = dataset_mod.load_export(out)
    assert len(ex["train"]) + len(ex["val"]) == 19
    tr, va = store.train_val(seed=1)
    assert sorted(tr.ids) == sorted(Path(i.split(":")[0]).stem for i in ex["train"].ids)
    assert len(va) == len(ex["val"])


def test_a_store_written_by_the_original_collector_loads(tmp_path: Path, beat_wav: Path) -> None:
    """Records without our extra fields; snippets cut [t - 25 ms, t + 100 ms] clipped at 0;
    one record with a Windows path; one component outside the 12 classes."""
    audio = load_audio(beat_wav)
    root = tmp_path / "training_data"
    samples = []
    for i, (t, comp) in enumerate([(0.010, "kick"), (1.0, "snare"), (0.25, "hihat_closed"),
                                   (2.0, "ride_bow")]):
        sid = f"00000000-0000-4000-8000-00000000000{i}"
        (root / comp).mkdir(parents=True, exist_ok=True)
        center = int(t * SR)
        start, end = max(0, center - 4410 // 4), min(len(audio), center + 4410)
        sf.write(str(root / comp / f"{sid}.wav"), audio[start:end], SR)
        sep = "\\" if i == 1 else "/"  # one record as written on Windows
        samples.append({"id": sid, "component": comp, "source_audio": "simple_beat.wav",
                        "onset_time": t, "window_ms": 100.0, "sample_rate": SR,
                        "source": "manual", "path": f"{comp}{sep}{sid}.wav"})
    (root / "metadata.json").write_text(json.dumps({"samples": samples, "version": "1.0.0"}))
    store = SampleStore(root)
    assert store.stats()["kick"] == 1 and store.stats()["ride_bow"] == 1  # shown, not trained
    fs = store.feature_set()
    assert len(fs) == 3
    onsets = [0.010, 1.0, 0.25]
    np.testing.assert_allclose(fs.X.astype(np.float32), patches(audio, onsets), atol=0.02)
    # New samples can be added to it; old records are kept as they were.
    store.add_sample(beat_wav, 3.0, "snare")
    recs = store.samples()
    assert recs[:4] == samples and len(recs) == 5


def test_feature_cache_decodes_only_new_snippets(tmp_path: Path, beat_wav: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = SampleStore(tmp_path / "s")
    store.extract_beatmap(SEED_BSM, beat_wav)
    X1, y1 = store.load_features()
    caches = list((store.root / ".cache").glob("features-*.npz"))
    assert len(caches) == 1
    decoded = []
    real = dataset_mod.read_window
    monkeypatch.setattr(dataset_mod, "read_window",
                        lambda ref, settings: decoded.append(ref.key) or real(ref, settings))
    X2, y2 = store.load_features()
    assert decoded == []
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    rec = store.add_sample(beat_wav, 3.6, "kick")
    X3, _ = store.load_features()
    assert decoded == [rec["id"]] and len(X3) == 18
    # A damaged cache is rebuilt, not fatal.
    caches[0].write_bytes(b"garbage")
    assert len(store.load_features()[1]) == 18
