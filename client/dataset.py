"""Training arrays from snippet WAVs, decoded once and kept in an on-disk feature cache.

Every epoch and every federated round reuses `<dir>/.cache/features-<settings hash>.npz`
(the snippets as int16 PCM plus their float16 patches), keyed by sample id, so only snippets
added since the last run are decoded. Works for a sample store and for an export directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from beatsight.common.atomic import atomic_write
from beatsight.common.audio import load_audio
from beatsight.common.classes import CLASSES, NUM_CLASSES, canonical_component
from beatsight.common.errors import BeatSightError
from beatsight.common.features import (
    DEFAULT_SETTINGS,
    FeatureSettings,
    WindowAugment,
    windows_to_patches,
)

log = logging.getLogger(__name__)

CACHE_DIR = ".cache"
CACHE_VERSION = 1
PCM_SCALE = 32768.0


@dataclass(frozen=True)
class SnippetRef:
    """One labelled snippet file; `onset_offset` = samples from the file start to the onset."""

    key: str
    path: Path
    label: int
    onset_offset: int | None = None


def one_hot(y: np.ndarray) -> np.ndarray:
    """(N, classes) float32 with a 1 at each sample's own class."""
    out = np.zeros((len(y), NUM_CLASSES), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


@dataclass
class FeatureSet:
    """Labelled samples ready for training: raw windows (for augmentation) and cached patches."""

    windows: np.ndarray  # (N, W) int16 PCM, onset `settings.pre_samples` into each window
    X: np.ndarray  # (N, 1, n_mels, frames) float16 patches of the windows, un-augmented
    y: np.ndarray  # (N,) int64 class indices into CLASSES
    ids: list[str]
    settings: FeatureSettings = DEFAULT_SETTINGS
    # (N, classes) 0/1: every class struck at the sample's onset (its own included), for the
    # multi-label head. None: only the sample's own class is known.
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray | list[int]) -> FeatureSet:
        idx = np.asarray(idx, dtype=np.int64)
        return FeatureSet(self.windows[idx], self.X[idx], self.y[idx],
                          [self.ids[i] for i in idx], self.settings,
                          None if self.targets is None else self.targets[idx])

    def multi_hot(self) -> np.ndarray:
        """(N, classes) float32 targets for the multi-label head (one-hot where nothing else
        is known)."""
        return one_hot(self.y) if self.targets is None else self.targets.astype(np.float32)

    @staticmethod
    def concat(sets: list[FeatureSet]) -> FeatureSet:
        """One set of several (e.g. pooled stores); targets kept where every part has them."""
        targets = (np.concatenate([s.multi_hot() for s in sets])
                   if any(s.targets is not None for s in sets) else None)
        return FeatureSet(np.concatenate([s.windows for s in sets]),
                          np.concatenate([s.X for s in sets]), np.concatenate([s.y for s in sets]),
                          [i for s in sets for i in s.ids], sets[0].settings, targets)

    def batch(self, idx: np.ndarray, augment: WindowAugment | None = None,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """float32 model input for rows `idx`; augmented rows are recomputed from their windows."""
        if augment is None:
            return self.X[idx].astype(np.float32)
        windows = self.windows[idx].astype(np.float32) / PCM_SCALE
        windows = augment(windows, rng if rng is not None else np.random.default_rng())
        return windows_to_patches(windows, self.settings)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 (N, 1, 128, 128), y int64): the plain form other code can use directly."""
        return self.X.astype(np.float32), self.y.copy()

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=NUM_CLASSES)


def _settings_hash(settings: FeatureSettings) -> str:
    blob = json.dumps({"cache": CACHE_VERSION, **settings.to_dict()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cache_path(root: str | Path, settings: FeatureSettings = DEFAULT_SETTINGS) -> Path:
    return Path(root) / CACHE_DIR / f"features-{_settings_hash(settings)}.npz"


def _read_cache(path: Path) -> tuple[dict[str, int], np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            keys, windows, patches = z["keys"], z["windows"], z["patches"]
        if not len(keys) == len(windows) == len(patches):
            raise ValueError("length mismatch")
        return {str(k): i for i, k in enumerate(keys)}, windows, patches
    except Exception as exc:  # a damaged cache is only a cache: rebuild it
        log.warning("%s: ignoring unreadable feature cache (%s)", path, type(exc).__name__)
        return None


def _write_cache(path: Path, keys: list[str], windows: np.ndarray, patches: np.ndarray) -> None:
    def write(fh) -> None:
        np.savez(fh, keys=np.array(keys, dtype=str), windows=windows, patches=patches)

    try:
        atomic_write(path, write)
    except OSError as exc:  # read-only data dir: train anyway, just without the cache
        log.warning("%s: cannot write feature cache (%s)", path, exc.strerror or exc)


def read_window(ref: SnippetRef, settings: FeatureSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """A snippet placed in a zero window with its onset `pre_samples` in, as int16 PCM."""
    try:
        data, sr = sf.read(str(ref.path), dtype="float32", always_2d=True)
        data = data.mean(axis=1)
        if sr != settings.sample_rate:
            data = load_audio(ref.path, settings.sample_rate)
    except sf.LibsndfileError:
        data = load_audio(ref.path, settings.sample_rate)  # raises a one-line BeatSightError
    w, pre = settings.window_samples, settings.pre_samples
    offset = pre if ref.onset_offset is None else ref.onset_offset
    out = np.zeros(w, np.float32)
    dst = pre - offset  # where the snippet's first sample lands in the window
    src0, dst0 = max(0, -dst), max(0, dst)
    n = max(0, min(len(data) - src0, w - dst0))
    out[dst0:dst0 + n] = data[src0:src0 + n]
    return np.clip(np.round(out * PCM_SCALE), -32768, 32767).astype(np.int16)


def load_snippets(
    refs: list[SnippetRef],
    cache_root: str | Path | None,
    settings: FeatureSettings = DEFAULT_SETTINGS,
    progress: bool = False,
) -> FeatureSet:
    """Windows and patches for `refs`, decoding only snippets missing from the cache."""
    w = settings.window_samples
    cpath = cache_path(cache_root, settings) if cache_root is not None else None
    cached = _read_cache(cpath) if cpath is not None else None
    index, c_windows, c_patches = cached if cached else ({}, None, None)
    windows = np.zeros((len(refs), w), np.int16)
    patches = np.zeros((len(refs), 1, settings.n_mels, settings.frames), np.float16)
    missing = []
    for i, ref in enumerate(refs):
        j = index.get(ref.key)
        if j is not None and c_windows is not None and c_windows.shape[1] == w:
            windows[i], patches[i] = c_windows[j], c_patches[j]
        else:
            missing.append(i)
    if missing:
        _compute(refs, missing, windows, patches, settings, progress)
    if cpath is not None and (missing or len(index) != len(refs)):
        _write_cache(cpath, [r.key for r in refs], windows, patches)
    y = np.array([r.label for r in refs], dtype=np.int64)
    return FeatureSet(windows, patches, y, [r.key for r in refs], settings)


def _compute(refs: list[SnippetRef], rows: list[int], windows: np.ndarray, patches: np.ndarray,
             settings: FeatureSettings, progress: bool, chunk: int = 256) -> None:
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress or len(rows) < chunk) as bar:
        task = bar.add_task("decoding snippets (cached for next time)", total=len(rows))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            for i in part:
                windows[i] = read_window(refs[i], settings)
            floats = windows[part].astype(np.float32) / PCM_SCALE
            patches[part] = windows_to_patches(floats, settings).astype(np.float16)
            bar.advance(task, len(part))


# ---------------------------------------------------------------- hits struck together
# Hits of one recording closer than this share their window (kick + hi-hat on a beat).
SIMULTANEOUS_S = 0.010


def onset_groups(sources: list[str], times: list[float], gap_s: float = SIMULTANEOUS_S
                 ) -> np.ndarray:
    """Group ids: consecutive hits of the same recording less than `gap_s` apart share one."""
    order = sorted(range(len(times)), key=lambda i: (sources[i], times[i]))
    group = np.zeros(len(times), np.int64)
    g, prev = -1, None
    for i in order:
        if prev is None or sources[i] != sources[prev] or times[i] - times[prev] > gap_s:
            g += 1
        group[i], prev = g, i
    return group


def group_targets(y: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(N, classes) uint8: each sample's row marks every class struck in its group."""
    _, g = np.unique(group, return_inverse=True)
    per_group = np.zeros((int(g.max(initial=-1)) + 1, NUM_CLASSES), np.uint8)
    per_group[g, y] = 1
    return per_group[g]


# ---------------------------------------------------------------- export directories
EXPORT_SPLITS = ("train", "val")


def is_export_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "train_labels.json").is_file() or (path / "val_labels.json").is_file()


def export_refs(root: str | Path, split: str) -> list[SnippetRef]:
    """Snippets listed in `<root>/<split>_labels.json` ({file, label, component_idx} items)."""
    root = Path(root)
    labels = root / f"{split}_labels.json"
    if not labels.is_file():
        return []
    try:
        items = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BeatSightError(f"{labels}: not a readable labels file ({type(exc).__name__})") from None
    if not isinstance(items, list):
        raise BeatSightError(f"{labels}: expected a list of {{file, label, component_idx}}")
    refs, skipped = [], 0
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise BeatSightError(f"{labels}: item {i} has no 'file'")
        name = item.get("label")
        cls = canonical_component(name)[0] if isinstance(name, str) else None
        if cls is None and isinstance(item.get("component_idx"), int) and name is None:
            idx = item["component_idx"]
            cls = CLASSES[idx] if 0 <= idx < NUM_CLASSES else None
        if cls is None:
            skipped += 1
            continue
        path = root / split / item["file"]
        if not path.is_file() and (root / item["file"]).is_file():
            path = root / item["file"]
        if not path.is_file():
            raise BeatSightError(f"{labels}: item {i}: {path} is missing")
        st = path.stat()
        refs.append(SnippetRef(f"{split}/{item['file']}:{st.st_size}:{st.st_mtime_ns}", path,
                               CLASSES.index(cls)))
    if skipped:
        log.warning("%s: skipped %d samples whose label is not one of the 12 classes",
                    labels, skipped)
    return refs


def load_export(root: str | Path, settings: FeatureSettings = DEFAULT_SETTINGS,
                progress: bool = False) -> dict[str, FeatureSet]:
    """{'train': FeatureSet, 'val': FeatureSet} of an export directory (one cache for both)."""
    root = Path(root)
    per_split = {s: export_refs(root, s) for s in EXPORT_SPLITS}
    allrefs = per_split["train"] + per_split["val"]
    fs = load_snippets(allrefs, root, settings, progress)
    n_train = len(per_split["train"])
    return {"train": fs.subset(np.arange(n_train)),
            "val": fs.subset(np.arange(n_train, len(allrefs)))}
