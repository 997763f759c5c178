"""Leave-kits-out cross-validation: folds, scores (12 classes and the merged view), one fold's
train/test separation, and the `beatsight-sim crossval` command end to end on real kits.

The fold, score and run_fold tests use synthetic labels and windows (no audio files needed);
the smoke test renders two small real kits.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from beatsight.client.dataset import FeatureSet, onset_groups
from beatsight.client.training import TrainConfig
from beatsight.common.classes import CLASS_INDEX, MERGED_CLASSES, MERGED_VIEW, merge_labels
from beatsight.common.errors import BeatSightError
from beatsight.common.features import DEFAULT_SETTINGS
from beatsight.simulation.crossval import (
    METRICS,
    SUBSETS,
    KitData,
    accuracy_any,
    assign_folds,
    cap_per_class,
    ceiling,
    run_fold,
    scores,
    usable_kits,
)
from beatsight.simulation.kits import Instrument, Kit, Layer

FAMILIES = {"acoustic": [f"A{i}" for i in range(10)], "electronic": [f"E{i}" for i in range(4)]}


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7, 14])
def test_every_kit_is_held_out_exactly_once_in_balanced_folds(k: int) -> None:
    folds = assign_folds(FAMILIES, k, seed=0)
    flat = [key for f in folds for key in f]
    everything = sorted(FAMILIES["acoustic"] + FAMILIES["electronic"])
    assert sorted(flat) == everything and len(flat) == len(set(flat))
    assert len(folds) == k and max(map(len, folds)) - min(map(len, folds)) <= 1
    for f in folds:  # train = all other kits: never a held-out kit in its own training set
        train = set(everything) - set(f)
        assert not train & set(f) and train | set(f) == set(everything)
    if k <= 4:  # the 4 electronic kits land in different folds
        assert all(sum(key.startswith("E") for key in f) <= 2 for f in folds)


def test_folds_are_seeded_and_do_not_depend_on_the_order_of_kits() -> None:
    shuffled = {fam: list(reversed(keys)) for fam, keys in reversed(FAMILIES.items())}
    assert assign_folds(FAMILIES, 4, seed=1) == assign_folds(shuffled, 4, seed=1)
    assert assign_folds(FAMILIES, 4, seed=1) != assign_folds(FAMILIES, 4, seed=2)
    with pytest.raises(BeatSightError, match="need 2 to 14 folds"):
        assign_folds(FAMILIES, 1)
    with pytest.raises(BeatSightError, match="need 2 to 14 folds"):
        assign_folds(FAMILIES, 15)


def test_kits_without_mapped_pieces_are_excluded() -> None:
    perc = Kit("Hands", "Hands", Path("/x"), "percussion", "", (), dropped=("Clap",))
    kick = Instrument("Kick", "kick", (Layer(Path("/y/kick.wav")),))
    kit = Kit("K", "K", Path("/y"), "acoustic", "", (kick,))
    usable, excluded = usable_kits([perc, kit])
    assert usable == [kit] and excluded == [perc]


def test_scores_on_12_classes_and_the_merged_view() -> None:
    c = CLASS_INDEX
    y = np.array([c["kick"], c["kick"], c["crash2"], c["ride_bell"], c["snare"]])
    pred = np.array([c["kick"], c["snare"], c["crash"], c["ride"], c["snare"]])
    s = scores(y, pred)
    assert s["n"] == 5
    assert s["accuracy"] == pytest.approx(2 / 5)
    assert s["accuracy_merged"] == pytest.approx(4 / 5)  # crash2->crash, bell->ride are right
    # 12 classes: kick F1 2/3, snare 2/3, crash2 0, ride_bell 0, crash 0, ride 0 (predicted)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 6)
    assert set(s["per_class_f1"]) == {"kick", "snare", "crash2", "ride_bell"}
    assert s["per_class_f1_merged"] == {"kick": pytest.approx(2 / 3, abs=1e-4),
                                        "snare": pytest.approx(2 / 3, abs=1e-4),
                                        "crash": 1.0, "ride": 1.0}
    assert s["macro_f1_merged"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert scores(np.array([], int), np.array([], int)) == {"n": 0}


def test_the_merged_view_is_defined_once_with_ten_classes() -> None:
    assert len(MERGED_CLASSES) == 10 and MERGED_VIEW == {"crash2": "crash", "ride_bell": "ride"}
    merged = merge_labels([CLASS_INDEX["crash2"], CLASS_INDEX["ride_bell"], CLASS_INDEX["china"]])
    assert [MERGED_CLASSES[i] for i in merged] == ["crash", "ride", "china"]


def test_simultaneous_hits_share_a_group_and_bound_the_accuracy() -> None:
    src = ["a.wav", "a.wav", "a.wav", "b.wav", "a.wav"]
    t = [1.000, 1.004, 1.500, 1.002, 1.509]  # a: (1.000, 1.004) together, (1.500, 1.509) together
    g = onset_groups(src, t)
    assert g[0] == g[1] and g[2] == g[4] and len({g[0], g[2], g[3]}) == 3
    y = np.array([0, 2, 1, 0, 1])  # kick + hat together; two snares 9 ms apart (one class)
    assert ceiling(y, g) == pytest.approx(4 / 5)
    assert ceiling(y, np.arange(5)) == 1.0
    pred = np.array([2, 2, 1, 1, 1])  # "hat" for the kick + hat onset: right for both by any-of
    assert accuracy_any(y, pred, g) == pytest.approx(4 / 5)


def test_cap_per_class_keeps_at_most_cap_of_each() -> None:
    y = np.array([0] * 50 + [1] * 3 + [5] * 20)
    keep = cap_per_class(y, 10, np.random.default_rng(0))
    assert np.bincount(y[keep]).tolist() == [10, 3, 0, 0, 0, 10]
    assert np.array_equal(cap_per_class(y, 0, np.random.default_rng(0)), np.arange(len(y)))


def _fake_kit(key: str, n: int, seed: int) -> KitData:
    rng = np.random.default_rng(seed)
    w = DEFAULT_SETTINGS.window_samples
    windows = (rng.standard_normal((n, w)) * 3000).astype(np.int16)
    X = rng.random((n, 1, 128, 128)).astype(np.float16)
    y = rng.integers(0, 4, n)
    fs = FeatureSet(windows, X, y, [f"{key}-{i}" for i in range(n)])
    return KitData(key, "acoustic", fs, np.arange(n) % 3 == 0, np.arange(n) // 2)


def test_a_fold_trains_only_on_the_other_kits_and_tests_on_the_held_out_ones() -> None:
    data = {k: _fake_kit(k, n, i) for i, (k, n) in enumerate([("A", 6), ("B", 7), ("C", 5)])}
    cfg = TrainConfig(epochs=1, batch_size=8, early_stopping_patience=0, augment=["gain"])
    rec, preds = run_fold(2, ["B"], data, cfg, progress=False)
    assert rec["heldout"] == ["B"] and rec["train_kits"] == ["A", "C"]
    assert rec["n_train"] == 11 and rec["metrics"]["all"]["n"] == 7
    assert rec["metrics"]["isolated"]["n"] == 3 and rec["metrics"]["groove"]["n"] == 4
    assert np.array_equal(preds["y"], data["B"].fs.y)
    assert set(rec["per_kit"]) == {"B"}
    # fake groups pair the hits up (0,0,1,1,...): only C's last hit is struck alone
    rec, _ = run_fold(2, ["B"], data, cfg, progress=False, drop_shared=True)
    assert rec["n_train"] == 1


@pytest.mark.slow
@pytest.mark.needs_kits
def test_crossval_command_smoke(kits_root: Path, tmp_path: Path, capsys) -> None:
    """2 folds over two small real kits, tiny data, 1 epoch, both folds at once in worker
    processes: the JSON has every field, and equals a run of the folds one after the other."""
    from beatsight.simulation.cli import main
    from beatsight.simulation.crossval import CrossvalConfig, crossval, merge

    out = tmp_path / "cv.json"
    kits = ["Millo_MultiLayered3", "HardElectro1", "Gimme A Hand 1.0"]
    args = ["beatsight-sim", "crossval", "--folds", "2", "--epochs", "1", "--songs", "1",
            "--seconds", "3", "--isolated", "2", *(a for k in kits for a in ("--kit", k)),
            "--augment", "all", "--data", str(tmp_path / "data"), "--out", str(out),
            "--no-progress", "--kits-dir", str(kits_root), "--jobs", "2", "--threads", "1"]
    old, sys.argv = sys.argv, args
    t0 = time.perf_counter()
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr()
    finally:
        sys.argv = old
    seconds = time.perf_counter() - t0
    text = capsys.readouterr().out
    assert "Mean ± std over 2 folds" in text and "Per-class F1" in text
    r = json.loads(out.read_text())
    assert r["kits"]["excluded"] == ["Gimme A Hand 1.0"]
    assert sorted(k for f in r["folds_assigned"] for k in f) == ["HardElectro1",
                                                                 "Millo_MultiLayered3"]
    assert len(r["folds"]) == 2
    for f in r["folds"]:
        assert not set(f["heldout"]) & set(f["train_kits"])
        for sub in SUBSETS:
            m = f["metrics"][sub]
            assert m["n"] > 0
            for key in METRICS:
                assert 0.0 <= m[key] <= 1.0
            assert all(0.0 <= v <= 1.0 for v in m["per_class_f1"].values())
            assert 0.0 <= m["accuracy"] <= m["ceiling"] <= 1.0 and 0 <= m["shared_onset"] <= 1
        assert f["metrics"]["isolated"]["ceiling"] == 1.0
    for sub in SUBSETS:
        for key in METRICS:
            s = r["summary"][sub][key]
            assert s["folds"] == 2 and 0.0 <= s["mean"] <= 1.0 and s["std"] >= 0.0
            assert 0.0 <= r["pooled"][sub][key] <= 1.0
    assert r["train"]["augment"][0] == "time_shift" and r["train"]["epochs"] == 1
    assert r["config"]["jobs"] == 2
    assert seconds < 120, f"smoke test took {seconds:.0f} s"  # ~20 s on a quiet machine

    train = TrainConfig(**r["train"])
    seen: list[tuple[int, int, bool]] = []
    serial = crossval(CrossvalConfig(**{**r["config"], "jobs": 1}), train, kits_root,
                      progress=False, on_fold=lambda rec, so_far: seen.append(
                          (rec["fold"], len(so_far["folds"]), so_far["complete"])))
    assert seen == [(1, 1, False), (2, 2, True)]   # what `--out` holds after each fold
    assert r["complete"] and serial["pooled"] == r["pooled"]
    pooled = merge([r])["pooled"]      # from the folds' confusions: the same, onsets aside
    assert pooled == {sub: {k: v for k, v in r["pooled"][sub].items() if not k.startswith("onset")}
                      for sub in SUBSETS}
    assert [f["metrics"] for f in serial["folds"]] == [f["metrics"] for f in r["folds"]]


@pytest.mark.slow
@pytest.mark.needs_kits
def test_soundfont_and_sample_kits_train_in_every_fold_and_never_test(
        kits_root: Path, tmp_path: Path, font_kits_dir: Path, sample_kits_dir: Path) -> None:
    from beatsight.simulation.crossval import CrossvalConfig, prepare
    from beatsight.simulation.samplekits import SAMPLE_KITS, SAMPLE_KITS_DIR
    from beatsight.simulation.soundfonts import FONT_KITS, FONT_KITS_DIR

    (tmp_path / FONT_KITS_DIR).symlink_to(font_kits_dir)  # built once per session
    (tmp_path / SAMPLE_KITS_DIR).symlink_to(sample_kits_dir)

    small = ["Millo_MultiLayered3", "HardElectro1"]
    cfg = CrossvalConfig(folds=2, data=str(tmp_path), songs=1, seconds=3.0,
                         isolated_per_class=1, kits=small, font_kits=True, sample_kits=True)
    data, folds, _ = prepare(cfg, kits_root, progress=False)
    extra = {k.key for k in FONT_KITS} | {k.key for k in SAMPLE_KITS}
    assert sorted(k for f in folds for k in f) == sorted(small)
    assert set(data) == set(small) | extra
    cfg_train = TrainConfig(epochs=1, batch_size=64, early_stopping_patience=0, augment=[])
    for i, heldout in enumerate(folds, 1):
        rec, _ = run_fold(i, heldout, data, cfg_train, max_per_class=2, progress=False)
        assert extra <= set(rec["train_kits"]) and not extra & set(rec["heldout"])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.needs_kits
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_fold_workers_stop_with_the_command(kits_root: Path, tmp_path: Path, sig: str) -> None:
    """Ctrl-C stops the pool at once (exit 130, no traceback); a killed command takes its
    workers with it. Either way no process is left training."""
    import os
    import signal
    import subprocess

    from beatsight.common.children import alive, descendants

    cmd = [sys.executable, "-m", "beatsight.simulation.cli", "crossval", "--folds", "2",
           "--epochs", "5000", "--songs", "1", "--seconds", "3", "--isolated", "2",
           "--kit", "Millo_MultiLayered3", "--kit", "HardElectro1", "--data",
           str(tmp_path / "data"), "--no-progress", "--kits-dir", str(kits_root), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            workers = [p for p in descendants(proc.pid) if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2, proc.communicate(timeout=60)
        time.sleep(3)  # workers past their start-up, training
        os.kill(proc.pid, getattr(signal, sig))
        _, err = proc.communicate(timeout=30)
        if sig == "SIGINT":
            assert proc.returncode == 130 and err.strip().endswith("interrupted"), err
            assert "Traceback" not in err
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in workers)
    finally:
        for p in [proc.pid, *workers]:
            if alive(p):
                os.kill(p, signal.SIGKILL)
        proc.wait(timeout=10)


def _partial(done: list, folds: list[list[str]], train: TrainConfig) -> dict:
    """What `crossval --fold ... --out` writes for the folds in `done`."""
    from beatsight.simulation.crossval import CrossvalConfig, _results

    cfg = CrossvalConfig(folds=len(folds), only_folds=[rec["fold"] for rec, _ in done])
    return {"protocol": "leave-kits-out", "config": cfg.to_dict(), "train": train.to_dict(),
            "kits": {"used": {}, "excluded": [], "samples": {}}, "folds_assigned": folds,
            **_results(done, "single"), "complete": True,
            "seconds": {"total": 1.0}}


def test_runs_of_different_folds_merge_into_the_run_of_all(tmp_path: Path, capsys) -> None:
    """Folds run apart (`--fold`) and merged score exactly as one run of every fold: pooled
    accuracy, macro-F1, per-class F1, confusion and the per-hit shares; runs that differ in
    settings, or share a fold, are refused in one line."""
    from beatsight.simulation.cli import main
    from beatsight.simulation.crossval import HIT_SHARES, merge

    folds = [["A"], ["B"], ["C"]]
    data = {k: _fake_kit(k, n, i) for i, (k, n) in enumerate([("A", 9), ("B", 7), ("C", 8)])}
    train = TrainConfig(epochs=1, batch_size=8, early_stopping_patience=0, augment=[])
    done = [run_fold(i + 1, f, data, train, progress=False) for i, f in enumerate(folds)]
    whole = _partial(done, folds, train)
    merged = merge([_partial(done[2:], folds, train), _partial(done[:2], folds, train)])
    assert [f["fold"] for f in merged["folds"]] == [1, 2, 3] and merged["complete"]
    for key in ("summary", "per_class_f1"):   # (as JSON: a class no fold tests is NaN)
        assert json.dumps(merged[key], sort_keys=True) == json.dumps(whole[key], sort_keys=True)
    for sub in SUBSETS:
        expect = {k: v for k, v in whole["pooled"][sub].items() if not k.startswith("onset")}
        assert set(expect) >= {"confusion", "confusion_merged", *METRICS, *HIT_SHARES}
        assert merged["pooled"][sub] == expect
    assert not merge([_partial(done[:1], folds, train)])["complete"]

    paths = []
    for name, part in (("a", done[:1]), ("b", done[1:])):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_partial(part, folds, train)))
    other = _partial(done[1:], folds, TrainConfig(epochs=2, augment=[]))
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "junk.json").write_text("{")
    (tmp_path / "list.json").write_text("[1, 2]")

    def run(*args: str | Path) -> tuple[int, str, str]:
        old, sys.argv = sys.argv, ["beatsight-sim", "crossval-merge", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        finally:
            sys.argv = old
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(*paths, "--out", tmp_path / "all.json")
    assert code == 0 and "Mean ± std over 3 folds" in out
    assert json.loads((tmp_path / "all.json").read_text())["pooled"]["all"]["accuracy"] == \
        pytest.approx(whole["pooled"]["all"]["accuracy"])
    code, out, _ = run(paths[0])
    assert code == 0 and "folds not run yet: 2, 3" in out
    for args, message in (((paths[0], paths[0]), "fold 1 is in two of the runs"),
                          ((paths[0], tmp_path / "other.json"), "train differ"),
                          ((tmp_path / "junk.json",), "cannot read a crossval result"),
                          ((tmp_path / "list.json",), "not a `beatsight-sim crossval` result"),
                          ((tmp_path / "missing.json",), "cannot read a crossval result")):
        code, _, err = run(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
