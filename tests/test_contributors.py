"""Simulated contributors collect exactly what they rendered, through the real collector."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from beatsight.common.bsm import hits, read_bsm
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.simulation.contributors import (
    CONTRIBUTOR_KITS,
    HELDOUT_KITS,
    assign_kits,
    build_federation,
    build_heldout,
    class_counts,
    contributor_kits,
    songs_dir,
    split_kits,
)
from beatsight.simulation.kits import find_kits

pytestmark = pytest.mark.needs_kits
SMALL = ["Millo_MultiLayered3", "HardElectro1"]     # 1 MB + 0.4 MB: fast to render


def _rendered(store) -> Counter:
    """Per-class hit counts of every ground-truth beatmap in a contributor's song folder."""
    return Counter(h.component for bsm in songs_dir(store).glob("*.bsm")
                   for h in hits(read_bsm(bsm)))


def _nonzero(counts: dict) -> dict:
    return {c: n for c, n in counts.items() if n}


@pytest.fixture(scope="module")
def per_kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    return out, build_federation(out, 2, seed=3, songs_per_contributor=1, song_seconds=3.0,
                                 contributor_kits=SMALL, progress=False)


def test_each_store_holds_exactly_its_rendered_hits(per_kit):
    _, stores = per_kit
    assert [s.name for s in stores] == ["contributor-00", "contributor-01"]
    for store, kit in zip(stores, SMALL, strict=True):
        assert contributor_kits(store) == [kit]
        rendered = _rendered(store)
        assert sum(rendered.values()) > 20
        assert _nonzero(class_counts(store)) == dict(rendered)
    # non-IID by construction: the electronic kit's contributor has no toms or cymbals
    assert set(_nonzero(class_counts(stores[1]))) <= {"kick", "snare", "hihat_closed", "hihat_open"}
    assert {"tom_high", "ride", "crash"} <= set(_nonzero(class_counts(stores[0])))


def test_rebuild_is_cached_and_other_parameters_are_refused(per_kit):
    out, stores = per_kit
    before = [(s / "metadata.json").read_bytes() for s in stores]
    again = build_federation(out, 2, seed=3, songs_per_contributor=1, song_seconds=3.0,
                             contributor_kits=SMALL, progress=False)
    assert again == stores and [(s / "metadata.json").read_bytes() for s in stores] == before
    with pytest.raises(BeatSightError, match="other parameters"):
        build_federation(out, 2, seed=4, songs_per_contributor=1, song_seconds=3.0,
                         contributor_kits=SMALL, progress=False)


def test_interrupted_store_is_rebuilt_not_duplicated(per_kit, tmp_path):
    out, stores = per_kit
    manifest = songs_dir(stores[0]) / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "done": False}))      # as if killed mid-collection
    build_federation(out, 2, seed=3, songs_per_contributor=1, song_seconds=3.0,
                     contributor_kits=SMALL, progress=False)
    assert _nonzero(class_counts(stores[0])) == dict(_rendered(stores[0]))


def test_iid_split_deals_the_same_hits_evenly(per_kit, tmp_path):
    _, stores = per_kit
    iid = build_federation(tmp_path / "iid", 2, seed=3, songs_per_contributor=1,
                           song_seconds=3.0, split="iid", contributor_kits=SMALL, progress=False)
    pooled = sum((Counter(class_counts(s)) for s in iid), Counter())
    per_kit_total = sum((Counter(class_counts(s)) for s in stores), Counter())
    assert +pooled == +per_kit_total                    # the very same hits, only dealt
    sizes = [sum(class_counts(s).values()) for s in iid]
    assert abs(sizes[0] - sizes[1]) <= 1                 # round-robin
    for s in iid:                                        # both now hear both kits
        assert {"tom_high", "kick"} <= set(_nonzero(class_counts(s)))


def test_default_split_keeps_heldout_kits_away(kits_root):
    kits = find_kits(kits_root)
    train, held = split_kits(kits)
    assert {k.key for k in held} == set(HELDOUT_KITS)
    assert not {k.key for k in train} & set(HELDOUT_KITS)
    assert {k.key for k in train} >= set(CONTRIBUTOR_KITS)
    assert all(k.family != "percussion" for k in train + held)
    held_classes = {c for k in held for c in k.classes}
    assert held_classes == set(CLASSES) - {"china"}      # china: only ForzeeStereo has one
    for owned in assign_kits(5, train):
        assert owned and not {k.key for k in owned} & set(HELDOUT_KITS)
    with pytest.raises(BeatSightError, match="held-out kits never go to a contributor"):
        split_kits(kits, ["GMRockKit", HELDOUT_KITS[0]])


def test_heldout_store_covers_its_kits_classes(tmp_path):
    store = build_heldout(tmp_path / "heldout", seed=1, songs_per_kit=1, song_seconds=3.0,
                          isolated_per_class=1, progress=False)
    counts = _nonzero(class_counts(store))
    assert set(counts) == set(CLASSES) - {"china"}
    assert counts == dict(_rendered(store))
    assert contributor_kits(store) == sorted(HELDOUT_KITS)


@pytest.mark.slow
def test_soundfont_kits_join_the_contributors_never_the_heldout(tmp_path, font_kits_dir):
    from beatsight.simulation.soundfonts import FONT_KITS, FONT_KITS_DIR

    (tmp_path / FONT_KITS_DIR).symlink_to(font_kits_dir)  # built once per session

    stores = build_federation(tmp_path, 2, seed=3, songs_per_contributor=1, song_seconds=3.0,
                              contributor_kits=SMALL, progress=False, font_kits=True)
    owned = [set(contributor_kits(s)) for s in stores]
    fonts = {k.key for k in FONT_KITS}
    assert owned[0] | owned[1] == set(SMALL) | fonts and not owned[0] & owned[1]
    assert all(o & set(SMALL) for o in owned)                 # Hydrogen kits are dealt first
    for store, kits in zip(stores, owned, strict=True):
        sources = {p.name for p in songs_dir(store).glob("soundcheck-*.wav")}
        assert len(sources) == len(kits)                        # a sound check of every kit
        assert sum(class_counts(store).values()) > 0
    assert (tmp_path / "font-kits" / "FluidR3 Standard" / "drumkit.xml").is_file()
