"""`beatsight-client` end to end: collect, export, train, resume, evaluate, and bad input.

Audio is synthesised (test_store.synth_beat) at the real seed beatmap's hit times. Errors
are checked on the real console script once (subprocess) and in-process for the rest
(`main()` is exactly what the console script runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_store import SEED_BSM, snapshot, synth_beat

from beatsight.client.cli import main
from beatsight.common.bsm import Hit, hits, new_beatmap, read_bsm, write_bsm
from beatsight.common.checkpoint import Checkpoint, load_model, save_checkpoint
from beatsight.common.model import DrumClassifierCNN

SCRIPT = Path(sys.executable).parent / "beatsight-client"


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the console script's main() in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["beatsight-client", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("songs")
    beat = synth_beat(hits(read_bsm(SEED_BSM)), d / "simple_beat.wav", 4.0)
    hl = []
    for i in range(8):
        hl += [Hit(200 + 900 * i, "kick"), Hit(500 + 900 * i, "snare"),
               Hit(800 + 900 * i, "hihat_closed")]
    groove = synth_beat(hl, d / "groove.wav", 7.7, seed=2)
    write_bsm(d / "groove.bsm", new_beatmap(hl, title="g", audio_filename="groove.wav",
                                            duration_ms=7700, bpm=100))
    empty = d / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 44100)
    (d / "notes.wav").write_text("not audio at all")
    (d / "broken.bsm").write_text('{"version": "1.0.0", "hitObjects": [{"time": 1')
    wrong = d / "wrong_shape.pth"  # a bare state_dict of a 10-class model
    torch.save(DrumClassifierCNN(num_classes=10).state_dict(), wrong)
    return {"beat": beat, "groove": groove, "groove_bsm": d / "groove.bsm", "empty": empty,
            "notes": d / "notes.wav", "broken": d / "broken.bsm", "wrong": wrong}


def test_console_script_reports_bad_audio_as_one_line(tmp_path: Path, songs) -> None:
    store = tmp_path / "training_data"
    proc = subprocess.run([str(SCRIPT), "collect", "add-sample", str(songs["notes"]), "0.5",
                           "kick", "--data-dir", str(store)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "notes.wav" in line and "cannot decode" in line
    assert not store.exists()


@pytest.mark.parametrize("case,args,match", [
    ("empty audio", ["collect", "add-sample", "{empty}", "0", "kick"], "empty"),
    ("past the end", ["collect", "add-sample", "{beat}", "4.2", "kick"], "past the end"),
    ("unknown component", ["collect", "add-sample", "{beat}", "1.0", "gong"],
     "unknown component 'gong'"),
    ("malformed json", ["collect", "extract-beatmap", "{broken}", "{beat}"], "not valid JSON"),
    ("beatmap past audio", ["collect", "extract-beatmap", "{groove_bsm}", "{beat}"],
     "past the end"),
])
def test_bad_collect_input_is_one_line_and_leaves_the_store_alone(
        capsys, tmp_path: Path, songs, case: str, args: list[str], match: str) -> None:
    store = tmp_path / "store"
    code, _, _ = run(capsys, "collect", "add-sample", songs["beat"], "0.25", "hihat_closed",
                     "--data-dir", store)
    assert code == 0
    before = snapshot(store)
    code, _, err = run(capsys, *[a.format(**songs) for a in args], "--data-dir", store)
    assert code == 2, case
    assert match in one_error_line(err)
    assert snapshot(store) == before


def test_collect_stats_export(capsys, tmp_path: Path, songs) -> None:
    store = tmp_path / "store"
    code, out, _ = run(capsys, "collect", "extract-beatmap", SEED_BSM, songs["beat"],
                       "--data-dir", store)
    assert code == 0 and "added 17" in out
    code, out, _ = run(capsys, "collect", "extract-beatmap", SEED_BSM, songs["beat"],
                       "--data-dir", store)
    assert "added 0, already stored 17" in out
    code, out, _ = run(capsys, "collect", "stats", "--data-dir", store)
    assert code == 0
    row = next(ln for ln in out.splitlines() if "hihat_closed" in ln)
    assert "13" in row and "150" in row and "needs 137 more" in row
    code, out, _ = run(capsys, "collect", "export", tmp_path / "ds", "--data-dir", store)
    assert code == 0 and "14 train, 3 val" in out
    assert (tmp_path / "ds" / "components.json").is_file()


def test_train_resume_evaluate_and_bad_checkpoints(capsys, tmp_path: Path, songs) -> None:
    store = tmp_path / "store"
    assert run(capsys, "collect", "extract-beatmap", songs["groove_bsm"], songs["groove"],
               "--data-dir", store)[0] == 0
    assert run(capsys, "collect", "export", tmp_path / "ds", "--data-dir", store)[0] == 0
    models = tmp_path / "models"
    code, out, err = run(capsys, "train", "--dataset", tmp_path / "ds", "--epochs", "1",
                         "--batch-size", "8", "--output", models, "--threads", "1",
                         "--no-progress")
    assert code == 0, err
    for name in ("best_drum_classifier.pth", "final_drum_classifier.pth"):
        model, ckpt = load_model(models / name)
        assert isinstance(model, DrumClassifierCNN) and not ckpt.legacy
        assert ckpt.metrics["epoch"] == 1 and ckpt.metrics["train_samples"] == 18
    metrics = json.loads((models / "metrics.json").read_text())
    assert len(metrics["history"]) == 1 and metrics["val_samples"] == 6
    assert {"accuracy", "macro_f1", "per_class"} <= set(metrics["final"])

    # --resume continues the same run to 2 epochs.
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "ds", "--epochs", "2",
                       "--batch-size", "8", "--output", models, "--threads", "1", "--resume",
                       "--no-progress")
    assert code == 0, err
    metrics = json.loads((models / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["resumed_from_epoch"] == 1

    # Fine-tune from the trained model with frozen early layers, straight on the store.
    code, _, err = run(capsys, "train", "--dataset", store, "--epochs", "1", "--batch-size",
                       "8", "--output", tmp_path / "ft", "--init-from",
                       models / "best_drum_classifier.pth", "--freeze", "conv1,conv2",
                       "--threads", "1", "--no-progress")
    assert code == 0, err
    start, _ = load_model(models / "best_drum_classifier.pth")
    tuned, _ = load_model(tmp_path / "ft" / "final_drum_classifier.pth")
    assert torch.equal(start.conv1[0].weight, tuned.conv1[0].weight)
    assert not torch.equal(start.fc.weight, tuned.fc.weight)

    # The multi-label head and the avgmax pooling: recorded in the checkpoints it writes.
    code, _, err = run(capsys, "train", "--dataset", store, "--epochs", "1", "--batch-size",
                       "8", "--output", tmp_path / "mh", "--head", "multi", "--pooling",
                       "avgmax", "--threads", "1", "--no-progress")
    assert code == 0, err
    for name in ("best_drum_classifier.pth", "final_drum_classifier.pth"):
        _, ck = load_model(tmp_path / "mh" / name)
        assert (ck.head, ck.pooling) == ("multi", "avgmax")
    code, _, err = run(capsys, "train", "--dataset", store, "--output", tmp_path / "mh2",
                       "--head", "both")
    assert code == 2 and "head 'both': choose single or multi" in one_error_line(err)

    # evaluate: metrics on stdout, confusion-matrix PNG and JSON with --out.
    code, out, err = run(capsys, "evaluate", "--model", models / "best_drum_classifier.pth",
                         "--dataset", tmp_path / "ds", "--out", tmp_path / "eval")
    assert code == 0, err
    assert "accuracy" in out and "macro-F1" in out and "precision" in out
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ev = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert ev["n"] == 6 and sum(map(sum, ev["confusion"])) == 6

    # A checkpoint of the wrong shape is a one-line error for both commands.
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "ds", "--epochs", "1",
                       "--output", tmp_path / "x", "--init-from", songs["wrong"])
    assert code == 2 and "do not fit DrumClassifierCNN" in one_error_line(err)
    code, _, err = run(capsys, "evaluate", "--model", songs["wrong"], "--dataset",
                       tmp_path / "ds")
    assert code == 2 and "wrong_shape.pth" in one_error_line(err)
    # So is a checkpoint made for other feature settings, and resuming with nothing saved.
    other = tmp_path / "other.pth"
    from beatsight.common.features import FeatureSettings

    save_checkpoint(other, Checkpoint(DrumClassifierCNN().state_dict(),
                                      features=FeatureSettings(n_mels=64)))
    code, _, err = run(capsys, "evaluate", "--model", other, "--dataset", tmp_path / "ds")
    assert code == 2 and "feature settings" in one_error_line(err)
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "ds", "--output",
                       tmp_path / "nothing", "--resume")
    assert code == 2 and "nothing to continue" in one_error_line(err)
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "nope")
    assert code == 2 and "neither an export directory" in one_error_line(err)
