"""The whole `process` command on real audio: heuristic and CNN paths, env vars, bad input.

Quality is asserted on a rendered groove (real Hydrogen kit samples) against its ground-truth
`.bsm` with evaluate-map's own scoring. The CNN path runs end to end with an untrained
checkpoint (fast: proves the path works and its labels are the ones used) and, marked slow,
with a tiny model trained here by `client.training.fit` on other renders of the same kit.
"""

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from beatsight.common.bsm import hits, read_bsm
from beatsight.common.checkpoint import Checkpoint, save_checkpoint
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.common.mapeval import evaluate
from beatsight.common.model import DrumClassifierCNN
from beatsight.common.process import (
    DEFAULT_MODEL,
    ENV_MODEL,
    ENV_USE_ML,
    resolve_model_path,
)
from beatsight.common.quantize import estimate_tempo, grid_lines, snap

SR = 44_100
BIN = Path(sys.executable).parent


def run(args: list[str], env: dict | None = None, module: bool = False,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`beatsight process ARGS` (console script), or `python -m beatsight.common.process ARGS`."""
    cmd = ([sys.executable, "-m", "beatsight.common.process"] if module
           else [str(BIN / "beatsight"), "process"])
    full_env = {k: v for k, v in os.environ.items() if k not in (ENV_MODEL, ENV_USE_ML)}
    full_env.update(env or {})
    return subprocess.run(cmd + args, capture_output=True, text=True, env=full_env,
                          timeout=600, cwd=cwd)


def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    err = out.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def groove(tmp_path_factory, small_kit):
    """A 12-s render of the small kit (the 4-s `rendered_song` has too few hits per class
    for stable per-class F-measures): (wav, ground-truth bsm)."""
    from beatsight.simulation.render import write_song

    return write_song(tmp_path_factory.mktemp("groove"), "groove12", small_kit, 11,
                      duration_s=12.0)


@pytest.fixture(scope="module")
def untrained_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "untrained.pth"
    save_checkpoint(path, Checkpoint(state_dict=DrumClassifierCNN().state_dict(),
                                     model_version="test-untrained"))
    return path


# ---- which classifier -----------------------------------------------------------------------

def test_model_path_order_and_env_switches(tmp_path, monkeypatch):
    flag, envm, default = tmp_path / "flag.pth", tmp_path / "env.pth", tmp_path / DEFAULT_MODEL
    for p in (flag, envm, default):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(flag, None, {ENV_MODEL: str(envm)}) == flag
    assert resolve_model_path(None, None, {ENV_MODEL: str(envm)}) == envm
    assert resolve_model_path(None, None, {}) == DEFAULT_MODEL
    assert resolve_model_path(flag, None, {ENV_USE_ML: "0"}) is None
    assert resolve_model_path(flag, True, {ENV_USE_ML: "0"}) == flag   # --ml beats the env
    assert resolve_model_path(flag, False, {ENV_USE_ML: "1"}) is None  # --no-ml beats the env
    default.unlink()
    assert resolve_model_path(None, None, {}) is None                 # no model: heuristic
    with pytest.raises(BeatSightError, match="no model found"):
        resolve_model_path(None, True, {})
    with pytest.raises(BeatSightError, match="no such model file"):
        resolve_model_path(tmp_path / "nope.pth", None, {})
    with pytest.raises(BeatSightError, match=ENV_MODEL):
        resolve_model_path(None, None, {ENV_MODEL: str(tmp_path / "nope.pth")})
    with pytest.raises(BeatSightError, match=ENV_USE_ML):
        resolve_model_path(None, None, {ENV_USE_ML: "maybe"})


# ---- the heuristic path on a rendered groove ------------------------------------------------

@pytest.mark.needs_kits
def test_heuristic_map_matches_ground_truth(groove, tmp_path):
    wav, truth = groove
    out_bsm = tmp_path / "heuristic.bsm"
    out = run(["--input", str(wav), "--output", str(out_bsm), "--no-ml"], module=True)
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and "heuristic" in out.stdout
    ref, est = read_bsm(truth), read_bsm(out_bsm)
    ev = evaluate(ref, est)
    print("heuristic 3-class F:", {c: round(v.f, 3) for c, v in ev.views["3-class"].items()})
    assert ev.onsets.f >= 0.9, ev.onsets
    three = ev.views["3-class"]
    assert three["kick"].f >= 0.8, three
    assert ev.mean_f("3-class") >= 0.6, three
    ai = est["editor"]["aiGenerationMetadata"]
    assert ai["modelVersion"].startswith("heuristic") and ai["manualEdits"] == 0
    assert 0 < ai["confidence"] <= 1 and ai["processedAt"].endswith("Z")
    digest = hashlib.sha256(wav.read_bytes()).hexdigest()
    assert est["audio"]["hash"] == f"sha256:{digest}"
    assert abs(est["audio"]["duration"] - ref["audio"]["duration"]) <= 2
    true_bpm, bpm = ref["timing"]["bpm"], est["timing"]["bpm"]
    assert min(abs(bpm / true_bpm - k) for k in (0.5, 2 / 3, 1, 1.5, 2)) < 0.04, (bpm, true_bpm)
    # quantisation never moves a hit by more than the maximum snap error
    unsnapped = tmp_path / "raw.bsm"
    assert run(["-i", str(wav), "-o", str(unsnapped), "--no-ml",
                "--quantization", "none"]).returncode == 0
    raw_t = np.array(sorted({h.time_ms for h in hits(read_bsm(unsnapped))}))
    snapped_t = np.array(sorted({h.time_ms for h in hits(est)}))
    assert len(raw_t) >= len(snapped_t)
    nearest = np.abs(raw_t[:, None] - snapped_t[None, :]).min(axis=0)
    assert nearest.max() <= 31


# ---- the CNN path ---------------------------------------------------------------------------

@pytest.mark.needs_kits
def test_ml_path_runs_end_to_end_and_uses_the_cnn_labels(rendered_song, untrained_ckpt,
                                                         tmp_path):
    from beatsight.common.checkpoint import load_model
    from beatsight.common.inference import CnnPredictor
    from beatsight.common.onsets import detect_onsets
    from beatsight.common.process import decode

    out_bsm = tmp_path / "ml.bsm"
    # confidence 0: every primary label is the CNN's; no secondary classes, no band checks
    out = run(["--input", str(rendered_song.wav), "--output", str(out_bsm),
               "--ml-model", str(untrained_ckpt), "--confidence", "0", "--secondary", "1",
               "--no-band-checks", "--precision", "fp32"])
    assert out.returncode == 0, out.stderr
    est = read_bsm(out_bsm)
    assert est["editor"]["aiGenerationMetadata"]["modelVersion"] == "test-untrained"
    model, _ = load_model(untrained_ckpt)
    audio = decode(rendered_song.wav)
    onsets = detect_onsets(audio)
    probs = CnnPredictor(model, precision="fp32").predict(audio, onsets)
    expected = Counter(CLASSES[i] for i in probs.argmax(axis=1))
    got = Counter(h.component for h in hits(est))
    assert sum(got.values()) >= 0.9 * len(onsets)
    assert set(got) <= set(expected)
    mean_top = float(probs.max(axis=1).mean())
    assert abs(est["editor"]["aiGenerationMetadata"]["confidence"] - mean_top) < 0.01


@pytest.mark.needs_kits
def test_ml_model_from_env_bare_state_dict_and_env_off(rendered_song, tmp_path):
    torch.manual_seed(1)
    bare = tmp_path / "final_drum_classifier.pth"
    torch.save(DrumClassifierCNN().state_dict(), bare)           # the original script's format
    out_bsm = tmp_path / "env.bsm"
    out = run(["-i", str(rendered_song.wav), "-o", str(out_bsm)], env={ENV_MODEL: str(bare)})
    assert out.returncode == 0, out.stderr
    assert read_bsm(out_bsm)["editor"]["aiGenerationMetadata"]["modelVersion"] == "legacy"
    off = run(["-i", str(rendered_song.wav), "-o", str(out_bsm)],
              env={ENV_MODEL: str(bare), ENV_USE_ML: "0"})
    assert off.returncode == 0, off.stderr
    assert read_bsm(out_bsm)["editor"]["aiGenerationMetadata"]["modelVersion"].startswith(
        "heuristic")


@pytest.mark.needs_kits
def test_missing_or_junk_model_is_one_line_error(rendered_song, tmp_path):
    out_bsm = tmp_path / "x.bsm"
    one_line_error(run(["-i", str(rendered_song.wav), "-o", str(out_bsm)],
                       env={ENV_MODEL: str(tmp_path / "missing.pth")}), ENV_MODEL)
    not_a_model = tmp_path / "junk.pth"
    not_a_model.write_text("not a checkpoint")
    one_line_error(run(["-i", str(rendered_song.wav), "-o", str(out_bsm), "--ml-model",
                        str(not_a_model)]), "junk.pth")


def _train_tiny_model(kit, out_dir: Path) -> Path:
    """A few epochs on other renders of the same kit (never the test song's seed)."""
    from beatsight.client.training import TrainConfig, fit, new_model
    from beatsight.common.classes import CLASS_INDEX
    from beatsight.common.features import patches
    from beatsight.common.process import decode
    from beatsight.simulation.render import write_song

    X, y = [], []
    for seed in (101, 102, 103):
        wav, bsm = write_song(out_dir, f"train{seed}", kit, seed, duration_s=10.0)
        hs = hits(read_bsm(bsm))
        X.append(patches(decode(wav), np.array([h.time_s for h in hs])))
        y += [CLASS_INDEX[h.component] for h in hs]
    model = new_model(0)
    history = fit(model, (np.concatenate(X), np.array(y)),
                  TrainConfig(epochs=6, batch_size=32, early_stopping_patience=0),
                  progress=False)
    assert len(history) == 6
    path = out_dir / "tiny.pth"
    save_checkpoint(path, Checkpoint(state_dict=model.state_dict(), model_version="tiny-test"))
    return path


@pytest.mark.slow
@pytest.mark.needs_kits
def test_trained_model_map_quality(small_kit, groove, tmp_path):
    wav, truth = groove
    model = _train_tiny_model(small_kit, tmp_path)
    out_bsm = tmp_path / "cnn.bsm"
    out = run(["-i", str(wav), "-o", str(out_bsm), "--ml-model", str(model)])
    assert out.returncode == 0, out.stderr
    est = read_bsm(out_bsm)
    assert est["editor"]["aiGenerationMetadata"]["modelVersion"] == "tiny-test"
    ev = evaluate(read_bsm(truth), est)
    print("tiny CNN 3-class F:", {c: round(v.f, 3) for c, v in ev.views["3-class"].items()})
    assert ev.onsets.f >= 0.9
    assert ev.views["3-class"]["kick"].f >= 0.8, ev.views["3-class"]
    assert ev.mean_f("3-class") >= 0.6, ev.views["3-class"]


TEMPLATE_KITS = ("GMRockKit", "Audiophob", "HardElectro1")


@pytest.mark.needs_kits
def test_templates_from_other_kits_find_kick_snare_and_hihat(kits_root, groove, tmp_path):
    """Drum-family templates learnt from isolated hits of three other kits find the small kit's
    kicks, and more of its hi-hats (mostly struck with a kick or snare) than the heuristic path
    they replace; the CNN here is untrained, so what changes is the templates' doing. (On this
    kit the snare is found less well: measured on more kits in the README.)"""
    from beatsight.common.classes import CLASS_INDEX
    from beatsight.common.features import DEFAULT_SETTINGS, extract_windows
    from beatsight.common.process import decode
    from beatsight.common.templates import family_templates
    from beatsight.simulation.kits import parse_kit
    from beatsight.simulation.render import write_isolated

    windows, y = [], []
    for i, key in enumerate(TEMPLATE_KITS):
        wav, bsm = write_isolated(tmp_path, f"iso{i}", parse_kit(kits_root / key), 5, per_class=4)
        hs = hits(read_bsm(bsm))
        windows.append(extract_windows(decode(wav), np.array([h.time_s for h in hs])))
        y += [CLASS_INDEX[h.component] for h in hs]
    windows, y = np.concatenate(windows), np.array(y)
    torch.manual_seed(0)
    model = DrumClassifierCNN()
    model.templates.copy_(torch.from_numpy(
        family_templates(windows, y, DEFAULT_SETTINGS.pre_samples)))
    ckpt = tmp_path / "tpl.pth"
    save_checkpoint(ckpt, Checkpoint(state_dict=model.state_dict(), model_version="tpl-test"))
    song, truth = groove
    f = {}
    for flag in ("--templates", "--no-templates", "--no-kick-check", "--no-ghost-notes",
                 "--no-snare-check", "--no-hat-check"):
        out_bsm = tmp_path / f"{flag}.bsm"
        out = run(["-i", str(song), "-o", str(out_bsm), "--ml-model", str(ckpt), flag])
        assert out.returncode == 0, out.stderr
        ev = evaluate(read_bsm(truth), read_bsm(out_bsm))
        f[flag] = {c: round(v.f, 3) for c, v in ev.views["3-class"].items()}
    print("3-class F with / without templates:", f)
    with_t, without = f["--templates"], f["--no-templates"]
    assert with_t["kick"] >= 0.9 and with_t["hihat"] >= without["hihat"] + 0.05, f
    # the check against the song's typical kick keeps this real kit's kicks
    assert with_t["kick"] >= f["--no-kick-check"]["kick"] - 0.01, f
    # snares found by sounding like the song's snares do not cost this kit's snare F
    assert with_t["snare"] >= f["--no-ghost-notes"]["snare"] - 0.01, f
    # nor does the check against the song's typical snare, nor the one that a hi-hat hisses
    assert with_t["snare"] >= f["--no-snare-check"]["snare"] - 0.01, f
    assert with_t["hihat"] >= f["--no-hat-check"]["hihat"] - 0.01, f
    assert sum(with_t.values()) / 3 >= 0.7, f


# ---- bad input ------------------------------------------------------------------------------

def test_missing_and_undecodable_input(tmp_path):
    one_line_error(run(["-i", str(tmp_path / "nope.wav"), "-o", str(tmp_path / "o.bsm")]),
                   "nope.wav", "no such audio file")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    one_line_error(run(["-i", str(text), "-o", str(tmp_path / "o.bsm"), "--no-ml"]),
                   "notes.wav")
    assert not (tmp_path / "o.bsm").exists()


def test_silence_gives_a_valid_empty_map(tmp_path):
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(3 * SR, np.float32), SR, subtype="PCM_16")
    out = run(["-i", str(wav), "-o", str(tmp_path / "s.bsm"), "--no-ml"])
    assert out.returncode == 0, out.stderr
    bm = read_bsm(tmp_path / "s.bsm")
    assert bm["hitObjects"] == [] and bm["audio"]["duration"] == 3000
    assert bm["editor"]["aiGenerationMetadata"]["manualEdits"] == 0


def test_tenth_of_a_second_clip_gives_a_valid_map(tmp_path, untrained_ckpt):
    wav = tmp_path / "short.flac"
    clip = np.zeros(int(0.1 * SR), np.float32)
    clip[1000:1400] = np.hanning(400) * 0.8
    sf.write(wav, clip, SR)
    for extra in (["--no-ml"], ["--ml-model", str(untrained_ckpt)]):
        out = run(["-i", str(wav), "-o", str(tmp_path / "c.bsm"), *extra])
        assert out.returncode == 0, out.stderr
        bm = read_bsm(tmp_path / "c.bsm")
        assert bm["audio"]["duration"] == 100 and len(bm["hitObjects"]) <= 2


def test_bad_output_and_flags(tmp_path):
    wav = tmp_path / "s.wav"
    sf.write(wav, np.zeros(SR, np.float32), SR)
    one_line_error(run(["-i", str(wav), "-o", str(tmp_path), "--no-ml"]), "directory")
    one_line_error(run(["-i", str(wav), "-o", "/proc/beatsight.bsm", "--no-ml"]), "cannot write")
    one_line_error(run(["-i", str(wav), "-o", str(tmp_path / "x.bsm"), "--quantization",
                        "fifth"]), "--quantization")
    bad = run(["-i", str(wav), "-o", str(tmp_path / "x.bsm"), "--sensitivity", "150"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_hour_long_file_has_bounded_memory(tmp_path):
    """60 minutes of noise with clicks: a valid map, and peak RSS far below the 1-hour STFT."""
    wav = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    block = 60 * SR
    with sf.SoundFile(wav, "w", SR, 1, subtype="PCM_16") as fh:
        for _ in range(60):
            x = 0.01 * rng.standard_normal(block).astype(np.float32)
            x[:: SR // 2][:] = 0.9                                  # a click every 0.5 s
            fh.write(x)
    # Warm-up on a short clip first: on a fresh install librosa's numba functions are compiled on
    # first use (LLVM holds a few hundred MB once, whatever the file's length; CI measured 2.05
    # GB without it), and this test is about what grows with the input.
    short = tmp_path / "short.wav"
    sf.write(short, 0.01 * rng.standard_normal(2 * SR).astype(np.float32), SR)
    subprocess.run([str(BIN / "beatsight"), "process", "-i", str(short), "-o",
                    str(tmp_path / "short.bsm"), "--no-ml"], capture_output=True, check=True)
    out_bsm = tmp_path / "hour.bsm"
    proc = subprocess.Popen([str(BIN / "beatsight"), "process", "-i", str(wav), "-o",
                             str(out_bsm), "--no-ml"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read()
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    peak_gb = usage.ru_maxrss / 1024 ** 2               # ru_maxrss is in KiB on Linux
    # the audio alone is 0.64 GB as float32; a whole-file STFT would add > 2.5 GB to it
    assert peak_gb < 2.5, peak_gb
    bm = read_bsm(out_bsm)
    assert bm["audio"]["duration"] == 3_600_000
    assert len(bm["hitObjects"]) >= 7000                  # 7200 clicks
    print(json.dumps({"peak_rss_gb": round(peak_gb, 2), "hits": len(bm["hitObjects"])}))


# ---- quantisation pieces --------------------------------------------------------------------

def test_tempo_grid_and_snap():
    fps = 100.0
    env = np.zeros(3000)
    env[np.arange(50, 3000, 60)] = 1.0                         # a pulse every 0.6 s = 100 BPM
    assert estimate_tempo(env, fps) == pytest.approx(100.0, rel=0.01)
    beats = np.arange(0.5, 10.0, 0.6)
    grid = grid_lines(beats, 100.0, 3, 0.0, 11.0)              # triplets
    assert np.allclose(np.diff(grid), 0.2) and grid[0] <= 0.0 and grid[-1] >= 11.0
    times = np.array([0.505, 0.61, 0.69, 5.3])
    out, moved = snap(times, grid, 0.03)
    np.testing.assert_allclose(out, [0.5, 0.61, 0.7, 5.3])
    assert moved.tolist() == [True, False, True, True]
    assert estimate_tempo(np.zeros(500), fps) is None


def test_cnn_precisions_agree_with_float32():
    """bf16/int8 are speed options: same shapes, probabilities close to fp32's."""
    from beatsight.common.inference import CnnPredictor

    torch.manual_seed(0)
    model = DrumClassifierCNN().eval()
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(3 * SR)).astype(np.float32)
    onsets = np.arange(0.1, 2.9, 0.1)
    for i in (onsets * SR).astype(int):
        audio[i:i + 2000] += np.exp(-np.arange(2000) / 300.0).astype(np.float32)
    ref = CnnPredictor(model, precision="fp32", batch_size=8).predict(audio, onsets)
    assert ref.shape == (len(onsets), 12)
    np.testing.assert_allclose(ref.sum(axis=1), 1.0, atol=1e-5)
    # folded batch-norm and pool-before-ReLU change nothing: same as the plain model
    from beatsight.common.features import patches

    with torch.no_grad():
        plain = torch.softmax(model(torch.from_numpy(patches(audio, onsets))), dim=1).numpy()
    np.testing.assert_allclose(ref, plain, atol=1e-5)
    # the traced oneDNN graph and the zero-padded last CNN piece change nothing either
    from beatsight.common.inference import _GraphNet

    graph = CnnPredictor(model, precision="fp32", batch_size=13)
    assert isinstance(graph.net, _GraphNet)
    eager = CnnPredictor(model, precision="fp32", batch_size=13, graph=False)
    assert not isinstance(eager.net, _GraphNet)
    np.testing.assert_allclose(graph.predict(audio, onsets), plain, atol=1e-5)
    np.testing.assert_allclose(eager.predict(audio, onsets), plain, atol=1e-5)
    for precision, tol in (("bf16", 0.03), ("int8", 0.06)):
        got = CnnPredictor(model, precision=precision, batch_size=8).predict(audio, onsets)
        assert np.abs(got - ref).max() < tol, precision
    with pytest.raises(BeatSightError, match="precision"):
        CnnPredictor(model, precision="fp8")
