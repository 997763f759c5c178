"""evaluate-map: per-class onset F-measure in 12-, 5- and 3-class views, on real .bsm files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beatsight.common.bsm import Hit, new_beatmap, read_bsm, write_bsm
from beatsight.common.mapeval import collapse, evaluate

SEED_BSM = Path("/work/shared/seed/simple_beat.bsm")


def _map(path: Path, hits: list[tuple[int, str]]) -> Path:
    bm = new_beatmap([Hit(t, c) for t, c in hits], title="t", audio_filename="x.wav",
                     duration_ms=10_000, bpm=120)
    write_bsm(path, bm)
    return path


REF = [(500, "kick"), (500, "hihat_closed"), (750, "hihat_open"), (1000, "snare"),
       (1000, "hihat_closed"), (1250, "tom_high"), (1500, "kick"), (1500, "crash"),
       (2000, "ride_bell")]


def test_identical_maps_score_one_everywhere(tmp_path):
    ref = read_bsm(_map(tmp_path / "ref.bsm", REF))
    ev = evaluate(ref, ref)
    assert ev.onsets.f == 1.0
    for view in ("12-class", "5-class", "3-class"):
        assert all(s.f == 1.0 for s in ev.views[view].values()), view
        assert ev.mean_f(view) == 1.0
    assert set(ev.views["3-class"]) == {"kick", "snare", "hihat"}
    assert set(ev.views["5-class"]) == {"kick", "snare", "hihat", "toms", "cymbals"}


def test_window_is_respected(tmp_path):
    ref = read_bsm(_map(tmp_path / "ref.bsm", [(1000, "kick"), (2000, "kick")]))
    near = read_bsm(_map(tmp_path / "near.bsm", [(1040, "kick"), (1960, "kick")]))
    far = read_bsm(_map(tmp_path / "far.bsm", [(1060, "kick"), (1940, "kick")]))
    assert evaluate(ref, near).views["12-class"]["kick"].f == 1.0
    assert evaluate(ref, far).views["12-class"]["kick"].f == 0.0
    assert evaluate(ref, far, window=0.07).views["12-class"]["kick"].f == 1.0


def test_views_merge_classes(tmp_path):
    ref = read_bsm(_map(tmp_path / "ref.bsm", [(500, "hihat_open"), (900, "tom_low"),
                                                (1300, "ride")]))
    est = read_bsm(_map(tmp_path / "est.bsm", [(500, "hihat_closed"), (900, "tom_high"),
                                                (1300, "crash2")]))
    ev = evaluate(ref, est)
    assert ev.views["12-class"]["hihat_open"].f == 0.0
    assert ev.views["12-class"]["hihat_closed"].precision == 0.0
    assert ev.views["3-class"]["hihat"].f == 1.0
    assert ev.views["5-class"]["toms"].f == 1.0 and ev.views["5-class"]["cymbals"].f == 1.0
    assert "toms" not in ev.views["3-class"] and "cymbals" not in ev.views["3-class"]


def test_half_right_map_counts(tmp_path):
    ref = read_bsm(_map(tmp_path / "ref.bsm", [(500, "kick"), (1000, "snare"),
                                                (1500, "kick"), (2000, "snare")]))
    est = read_bsm(_map(tmp_path / "est.bsm", [(500, "kick"), (1000, "kick"),
                                                (1500, "kick"), (2000, "snare")]))
    ev = evaluate(ref, est)
    kick, snare = ev.views["12-class"]["kick"], ev.views["12-class"]["snare"]
    assert kick.recall == 1.0 and kick.precision == pytest.approx(2 / 3)
    assert snare.precision == 1.0 and snare.recall == 0.5
    assert ev.onsets.f == 1.0


def test_near_simultaneous_hits_are_one_onset_and_aliases_map(tmp_path):
    # a human kick+hat lands a few ms apart; an alias and an unknown component
    ref = read_bsm(_map(tmp_path / "ref.bsm", [(1000, "kick"), (1008, "hihat_pedal"),
                                                (2000, "cowbell")]))
    est = read_bsm(_map(tmp_path / "est.bsm", [(1003, "kick"), (1003, "hihat_closed")]))
    ev = evaluate(ref, est)
    assert ev.onsets.n_ref == 1 and ev.onsets.f == 1.0
    assert ev.views["12-class"]["hihat_closed"].f == 1.0
    assert ev.skipped == {"cowbell": 1}
    assert list(collapse([0.0, 0.01, 0.029, 0.031, 0.5])) == [0.0, 0.031, 0.5]


def test_real_seed_beatmap_scores_itself(tmp_path):
    if not SEED_BSM.is_file():
        pytest.skip("seed beatmap not present")
    bm = read_bsm(SEED_BSM)
    ev = evaluate(bm, bm)
    assert ev.onsets.f == 1.0 and ev.mean_f("12-class") == 1.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beatsight.common", "evaluate-map", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_json_and_table(tmp_path):
    ref = _map(tmp_path / "ref.bsm", REF)
    est = _map(tmp_path / "est.bsm", [(t + 20, c) for t, c in REF if c != "snare"])
    out = _cli(str(ref), str(est), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["window"] == 0.05
    assert data["views"]["3-class"]["classes"]["snare"]["recall"] == 0.0
    assert data["views"]["3-class"]["classes"]["kick"]["f"] == 1.0
    assert data["onsets"]["f"] == 1.0
    table = _cli(str(ref), str(est), "--window", "0.01")
    assert table.returncode == 0 and "3-class" in table.stdout and "kick" in table.stdout
    assert "F 0.000" in table.stdout                 # 20 ms off, 10 ms window: nothing matches


def test_cli_bad_input_is_one_line(tmp_path):
    ref = _map(tmp_path / "ref.bsm", REF)
    bad = tmp_path / "bad.bsm"
    bad.write_text("{not json")
    for args in ([str(ref), str(tmp_path / "missing.bsm")], [str(ref), str(bad)]):
        out = _cli(*args)
        assert out.returncode == 2
        assert out.stderr.strip().startswith("error:") and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
