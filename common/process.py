"""The offline pipeline: song -> onsets -> classes -> tempo grid -> `.bsm`.

Stages: decode and peak-normalise (`audio.load_audio`) -> onsets (`onsets.envelope`, spectral
flux chunk by chunk, then `onsets.pick_peaks`) -> classify every onset in batches (the CNN
through `features.patches`, or the heuristic) -> simultaneous-hit rule -> tempo and snapping
(`quantize`) -> `bsm.write_bsm` with `aiGenerationMetadata`.

Run as `beatsight process ...` or `python -m beatsight.common.process ...` (the original's form).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import heuristic, quantize, templates
from .audio import SAMPLE_RATE, load_audio
from .bsm import Hit, new_beatmap, write_bsm
from .classes import CLASSES, FAMILIES, FAMILY_INDEX
from .errors import BeatSightError
from .model import SECONDARY_THRESHOLD
from .onsets import DEFAULT_ONSETS, envelope, frame_count, frames_to_times, pick_peaks

ENV_MODEL = "BEATSIGHT_ML_MODEL_PATH"
ENV_USE_ML = "BEATSIGHT_USE_ML_CLASSIFIER"
DEFAULT_MODEL = Path("models/best_drum_classifier.pth")
FEATURE_CHUNK = 2048            # onsets per batch of heuristic windows (bounded memory)

_FAMILY_IDX = np.array(FAMILY_INDEX)


@dataclass
class ProcessOptions:
    confidence: float = 0.7          # CNN predictions below this take the heuristic's label
    sensitivity: float = 60.0        # 0-100: onset threshold (higher finds softer hits)
    quantization: str = "sixteenth"  # a key of quantize.SUBDIVISIONS, or "none"
    max_snap_ms: float = quantize.DEFAULT_MAX_SNAP_MS
    secondary: float | None = None   # other-family classes with probability >= this also
    #                                  emitted (None: the model head's default, SECONDARY_THRESHOLD)
    band_checks: bool = True         # add a kick / hi-hat heard under the primary hit
    templates: bool = True           # kick, snare, hi-hat from the model's drum-family templates
    #                                  (common.templates) where it has them; band checks then off
    song_templates: bool = True      # blend the templates with the song's own confident hits
    kick_check: bool = True          # drop template kicks whose low end is unlike the song's
    #                                  typical kick (a tom; not a kick struck with one) or a
    #                                  quiet ring, add onsets where one like it starts
    #                                  (common.templates.lowest_typical)
    ghost_notes: bool = True         # a snare wherever an onset sounds like the song's snares
    #                                  (common.templates.sounds_like)
    snare_check: bool = True         # drop template snares unlike the song's typical snare (a
    #                                  hi-hat or ride; common.templates.lowest_typical)
    hat_check: bool = True           # drop template hi-hats whose top octaves ring with partials
    #                                  (a ride; common.templates.noisiness)
    device: str | None = None
    precision: str = "auto"          # CNN arithmetic: auto, fp32, bf16, int8 (see inference)


@dataclass
class ProcessResult:
    beatmap: dict
    hits: list[Hit]
    n_onsets: int
    bpm: float
    classifier: str
    mean_confidence: float
    n_fallback: int                  # CNN predictions below --confidence (heuristic label used)
    duration_s: float
    timings: dict[str, float] = field(default_factory=dict)

    def counts(self) -> Counter:
        return Counter(h.component for h in self.hits)


# ---- which classifier -----------------------------------------------------------------------

def _env_flag(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    return None


def resolve_model_path(ml_model: Path | None, use_ml: bool | None,
                       env: dict[str, str] | None = None) -> Path | None:
    """The model to use, or None for the heuristic.

    Order: `--ml-model`, then env BEATSIGHT_ML_MODEL_PATH, then models/best_drum_classifier.pth.
    `--no-ml` (or, without --ml/--no-ml, env BEATSIGHT_USE_ML_CLASSIFIER=0) forces the
    heuristic. A model the user named that does not exist is an error; a missing default
    model just means the heuristic (unless --ml asked for a model).
    """
    env = os.environ if env is None else env
    if use_ml is None and env.get(ENV_USE_ML, "").strip():
        flag = _env_flag(env[ENV_USE_ML])
        if flag is None:
            raise BeatSightError(f"{ENV_USE_ML}={env[ENV_USE_ML]!r}: expected 0 or 1")
        use_ml = flag
    if use_ml is False:
        return None
    if ml_model is not None:
        if not Path(ml_model).is_file():
            raise BeatSightError(f"--ml-model {ml_model}: no such model file")
        return Path(ml_model)
    if env.get(ENV_MODEL, "").strip():
        path = Path(env[ENV_MODEL])
        if not path.is_file():
            raise BeatSightError(f"{ENV_MODEL}={path}: no such model file")
        return path
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    if use_ml:
        raise BeatSightError(f"--ml: no model found (give --ml-model, set {ENV_MODEL}, "
                             f"or put one at {DEFAULT_MODEL})")
    return None


# ---- the pipeline ---------------------------------------------------------------------------

def _velocities(rms_db: np.ndarray) -> np.ndarray:
    """Loudness of each hit relative to the song's loud hits: 0 dB -> 1.0, -30 dB -> 0.05."""
    if len(rms_db) == 0:
        return np.zeros(0)
    ref = np.percentile(rms_db, 95)
    return np.clip(1.0 + (rms_db - ref) / 30.0 * 0.95, 0.05, 1.0)


def combine(probs: np.ndarray | None, h_label: np.ndarray, h_conf: np.ndarray,
            opts: ProcessOptions, head: str = "single"
            ) -> tuple[list[list[int]], np.ndarray, int]:
    """Classes per onset (primary first), the primary's confidence, and how many fell back.

    Primary: the CNN's top class, or the heuristic's label where the CNN's top probability
    is below `opts.confidence`. Secondary: each other drum family's most probable class when
    its probability is at least `opts.secondary` (one class per family).
    """
    n = len(h_label)
    if probs is None:
        return [[int(c)] for c in h_label], h_conf.astype(np.float64), 0
    top = probs.argmax(axis=1)
    top_p = probs[np.arange(n), top]
    low = top_p < opts.confidence
    primary = np.where(low, h_label, top)
    secondary = SECONDARY_THRESHOLD[head] if opts.secondary is None else opts.secondary
    return onset_classes(probs, secondary, primary), top_p.astype(np.float64), int(low.sum())


def onset_classes(probs: np.ndarray, secondary: float,
                  primary: np.ndarray | None = None) -> list[list[int]]:
    """Classes per onset: the primary (default: the top class), then each other drum family's
    most probable class whose probability is at least `secondary` (one per family)."""
    primary = probs.argmax(axis=1) if primary is None else primary
    out: list[list[int]] = []
    for i in range(len(probs)):
        classes = [int(primary[i])]
        families = {_FAMILY_IDX[primary[i]]}
        for c in np.argsort(-probs[i]):
            if probs[i, c] < secondary:
                break
            if _FAMILY_IDX[c] not in families:
                classes.append(int(c))
                families.add(_FAMILY_IDX[c])
        out.append(classes)
    return out


_DECIDED = [FAMILIES.index(f) for f in templates.THRESHOLDS]
_OPEN, _CLOSED = CLASSES.index("hihat_open"), CLASSES.index("hihat_closed")


def with_families(classes: list[list[int]], found: np.ndarray, probs: np.ndarray | None
                  ) -> list[list[int]]:
    """Classes per onset with kick, snare and hi-hat decided by the templates (`found`, onsets
    x families) and the other families (toms, cymbals) left as the classifier said. A hi-hat is
    open where the classifier finds open more likely than closed. An onset that only the
    classifier calls a kick, snare or hi-hat gets no hit: on renders of kits the model never
    heard, keeping the classifier's class there cost 0.09 kick F-measure (README)."""
    out = []
    for i, cls in enumerate(classes):
        keep = [c for c in cls if FAMILY_INDEX[c] not in _DECIDED]
        for f in _DECIDED:
            if found[i, f]:
                name = FAMILIES[f]
                if name == "hihat":
                    is_open = probs is not None and probs[i, _OPEN] > probs[i, _CLOSED]
                    keep.append(_OPEN if is_open else _CLOSED)
                else:
                    keep.append(CLASSES.index(name))
        out.append(keep)
    return out


def transcribe(
    audio: np.ndarray,
    opts: ProcessOptions,
    predictor=None,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[list[Hit], dict]:
    """Hits of a peak-normalised mono song; `predictor` is an inference.CnnPredictor or None."""
    info: dict = {"timings": {}}
    say = progress or (lambda stage, frac: None)
    t0 = time.perf_counter()
    s = DEFAULT_ONSETS
    tpl = getattr(predictor, "templates", None)
    use_templates = opts.templates and templates.usable(tpl)
    # the templates explain the onset pass's own spectrogram: one STFT for both
    spec = (np.zeros((s.n_mels, frame_count(len(audio), s)), np.float32) if use_templates
            else None)
    flux, loud = envelope(audio, s, progress=lambda f: say("onsets", f), mel_out=spec)
    frames = pick_peaks(flux, loud, opts.sensitivity, s)
    onsets = np.clip(frames_to_times(frames, s), 0.0, len(audio) / s.sample_rate)
    info["timings"]["onsets"] = time.perf_counter() - t0
    info["n_onsets"] = n = len(onsets)

    t0 = time.perf_counter()
    h_label = np.zeros(n, np.int64)
    h_conf = np.zeros(n)
    rms = np.zeros(n)
    feats_parts: list[heuristic.HitFeatures] = []
    for i in range(0, n, FEATURE_CHUNK):
        f = heuristic.features_at(audio, onsets[i:i + FEATURE_CHUNK])
        lab, conf = heuristic.classify(f)
        h_label[i:i + len(lab)], h_conf[i:i + len(lab)], rms[i:i + len(lab)] = lab, conf, f.rms_db
        feats_parts.append(f)
    info["timings"]["heuristic"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probs = None
    if predictor is not None and n:
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            say("classifying", done[0] / n)

        probs = predictor.predict(audio, onsets, progress=tick)
    classes, conf, n_fallback = combine(probs, h_label, h_conf, opts,
                                        getattr(predictor, "head", "single"))
    info["timings"]["classify"] = time.perf_counter() - t0

    info["templates"] = False
    if use_templates and n:
        t0 = time.perf_counter()
        found = templates.onset_families(
            audio, onsets, tpl, spec=spec,
            s=replace(templates.DEFAULT, adapt=opts.song_templates,
                      kick_match=templates.DEFAULT.kick_match if opts.kick_check else 0.0,
                      snare_match=templates.DEFAULT.snare_match if opts.ghost_notes else 0.0,
                      snare_keep=templates.DEFAULT.snare_keep if opts.snare_check else 0.0,
                      hat_ratio=templates.DEFAULT.hat_ratio if opts.hat_check else 0.0))
        classes = with_families(classes, found, probs)
        info["templates"] = True
        info["timings"]["templates"] = time.perf_counter() - t0
    elif opts.band_checks:
        primary = np.array([c[0] for c in classes], np.int64)
        for k, f in enumerate(feats_parts):
            off = k * FEATURE_CHUNK
            for i, c in heuristic.companions(f, primary[off:off + len(f)]):
                if _FAMILY_IDX[c] not in {_FAMILY_IDX[x] for x in classes[off + i]}:
                    classes[off + i].append(c)

    t0 = time.perf_counter()
    bpm = quantize.estimate_tempo(flux, s.fps) if n >= 8 else None
    times = onsets
    info["snapped"] = 0
    if bpm is not None:
        beats = quantize.track_beats(flux, s.fps, bpm)
        if len(beats) >= 2:
            bpm = float(60.0 / np.median(np.diff(beats)))
        if opts.quantization != "none":
            div = quantize.SUBDIVISIONS[opts.quantization]
            grid = quantize.grid_lines(beats, bpm, div, 0.0, len(audio) / s.sample_rate)
            times, snapped = quantize.snap(onsets, grid, opts.max_snap_ms / 1000.0)
            info["snapped"] = int(snapped.sum())
        info["offset_ms"] = int(round(beats[0] * 1000)) if len(beats) else 0
    info["timings"]["quantize"] = time.perf_counter() - t0
    info["bpm"] = bpm or quantize.DEFAULT_BPM
    info["mean_confidence"] = float(conf.mean()) if n else 0.0
    info["n_fallback"] = n_fallback

    vel = _velocities(rms)
    best: dict[tuple[int, str], Hit] = {}
    for i in range(n):
        ms = int(round(times[i] * 1000))
        for c in classes[i]:
            hit = Hit(ms, CLASSES[c], round(float(vel[i]), 3))
            key = (ms, hit.component)
            if key not in best or best[key].velocity < hit.velocity:
                best[key] = hit
    return sorted(best.values()), info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def decode(path: str | Path) -> np.ndarray:
    """Decode (quietly: decoder fallbacks warn) and peak-normalise to 1.0; silence stays zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audio = load_audio(path, SAMPLE_RATE)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio *= np.float32(1.0 / peak)
    return audio


def load_predictor(model_path: Path, opts: ProcessOptions):
    """(inference.CnnPredictor, model version) for a checkpoint or a bare state_dict."""
    from .checkpoint import load_model
    from .inference import CnnPredictor
    from .model import resolve_device

    model, ckpt = load_model(model_path)
    pred = CnnPredictor(model, ckpt.features, resolve_device(opts.device), opts.precision,
                        head=ckpt.head)
    return pred, ckpt.model_version


def process_file(
    input_path: str | Path,
    output_path: str | Path,
    opts: ProcessOptions | None = None,
    model_path: Path | None = None,
    progress: Callable[[str, float], None] | None = None,
    predictor=None,
) -> ProcessResult:
    """Decode `input_path`, transcribe it, write the `.bsm` to `output_path` atomically.

    `predictor` (anything with `.predict(audio, onsets_s, progress) -> probs`) replaces the
    model at `model_path`; the benchmark passes the original per-hit approach this way.
    """
    opts = opts or ProcessOptions()
    input_path, output_path = Path(input_path), Path(output_path)
    if opts.quantization != "none" and opts.quantization not in quantize.SUBDIVISIONS:
        raise BeatSightError(f"--quantization {opts.quantization!r}: choose one of "
                             f"{', '.join([*quantize.SUBDIVISIONS, 'none'])}")
    if opts.precision not in ("auto", "fp32", "bf16", "int8"):
        raise BeatSightError(f"--precision {opts.precision!r}: choose auto, fp32, bf16 or int8")
    if output_path.is_dir():
        raise BeatSightError(f"--output {output_path}: is a directory; give a .bsm file path")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    version = heuristic.HEURISTIC_VERSION if predictor is None else "custom"
    if predictor is None and model_path is not None:
        predictor, version = load_predictor(Path(model_path), opts)
    timings["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio = decode(input_path)
    timings["decode"] = time.perf_counter() - t0
    duration = len(audio) / SAMPLE_RATE
    hit_list, info = transcribe(audio, opts, predictor, progress)
    timings.update(info["timings"])
    del audio
    t0 = time.perf_counter()
    ai = {"modelVersion": version, "confidence": round(info["mean_confidence"], 4),
          "processedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "manualEdits": 0}
    bm = new_beatmap(hit_list, title=input_path.stem, audio_filename=input_path.name,
                     duration_ms=int(round(duration * 1000)), bpm=info["bpm"],
                     audio_hash=_sha256(input_path), creator="BeatSight process",
                     snap_divisor=quantize.SUBDIVISIONS.get(opts.quantization, 4),
                     ai_metadata=ai)
    bm["timing"]["offset"] = info.get("offset_ms", 0)
    try:
        write_bsm(output_path, bm)
    except OSError as exc:
        raise BeatSightError(f"--output {output_path}: cannot write "
                             f"({exc.strerror or type(exc).__name__})") from None
    timings["write"] = time.perf_counter() - t0
    return ProcessResult(beatmap=bm, hits=hit_list, n_onsets=info["n_onsets"], bpm=info["bpm"],
                         classifier=version if predictor is None else f"cnn:{version}",
                         mean_confidence=info["mean_confidence"],
                         n_fallback=info["n_fallback"], duration_s=duration, timings=timings)


if __name__ == "__main__":
    from .cli import process_main

    process_main()
