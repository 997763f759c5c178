"""The contributor's sample store: the original BeatSight `training_data/` layout, made safe.

Layout (readable by and from the original collector): one folder per class holding 125 ms
WAV snippets at 44.1 kHz named `<uuid>.wav`, and `metadata.json` =
`{version, samples: [{id, component, source_audio, onset_time, window_ms, sample_rate,
source, path, ...}]}`. Records written here add `dedup_key`, `audio_sha256`, `onset_offset`
(and `velocity`, `beatmap` for beatmap samples); old records without them still load.

Safety: every input is validated before anything is written; snippets are written (and
synced) before `metadata.json` is atomically replaced to refer to them, so a crash leaves
at worst unreferenced snippet files, which reads ignore and the next write removes. Writers
hold an exclusive lock on `.lock`, so two collectors cannot lose each other's samples.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from beatsight.common.atomic import atomic_write_text, file_sha256
from beatsight.common.audio import load_audio
from beatsight.common.bsm import hits, read_bsm
from beatsight.common.classes import CLASSES, ComponentMapper, canonical_component
from beatsight.common.errors import BeatSightError
from beatsight.common.features import DEFAULT_SETTINGS, FeatureSettings, extract_windows

from .dataset import FeatureSet, SnippetRef, group_targets, load_snippets, onset_groups

log = logging.getLogger(__name__)

METADATA = "metadata.json"
STORE_VERSION = "1.0.0"
DEFAULT_DATA_DIR = "training_data"
_SNIPPET_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.wav$")


@dataclass
class ExtractReport:
    """What one `extract_beatmap` did (the CLI prints it)."""

    beatmap: str
    audio: str
    hits: int = 0
    added: int = 0
    duplicates: int = 0
    aliased: dict[str, int] = field(default_factory=dict)  # "hihat_pedal -> hihat_closed": n
    skipped: dict[str, int] = field(default_factory=dict)  # unknown component name: n
    per_class: dict[str, int] = field(default_factory=dict)  # added per class


@dataclass
class ExportReport:
    out: str
    train: int = 0
    val: int = 0
    per_class: dict[str, tuple[int, int]] = field(default_factory=dict)  # class: (train, val)
    skipped: int = 0  # records not exported: component outside the 12 or snippet file gone


@dataclass(frozen=True)
class _Pending:
    time_s: float
    cls: str
    key: str
    velocity: float | None = None


def _wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    """16-bit PCM WAV in memory: soundfile's own file writer fsyncs every file (5 ms each);
    the store syncs once per batch instead."""
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()




def dedup_key(audio_sha256: str, time_s: float, cls: str) -> str:
    """Same audio content + same onset (to 0.1 ms) + same class = the same sample."""
    return f"{audio_sha256[:32]}@{time_s * 1000:.1f}ms/{cls}"


def record_groups(records: list[dict]) -> np.ndarray:
    """Onset groups of store records: hits of the same audio (by content hash, else by name)
    less than 10 ms apart were struck together and share one window."""
    sources, times = [], []
    for r in records:
        t = r.get("onset_time")
        known = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
        # a hit without a usable time is alone in its group
        sources.append(str(r.get("audio_sha256") or r.get("source_audio")) if known
                       else f"id:{r.get('id')}")
        times.append(float(t) if known else 0.0)
    return onset_groups(sources, times)


def split_stratified(records: list[dict], seed: int = 0, val_fraction: float = 0.2
                     ) -> tuple[list[dict], list[dict]]:
    """Per class: order by id, shuffle with `seed`, round(n*val_fraction) to val (never all)."""
    if not 0.0 <= val_fraction < 1.0:
        raise BeatSightError(f"val fraction {val_fraction} must be in [0, 1)")
    by_class: dict[str, list[dict]] = {}
    for rec in records:
        by_class.setdefault(rec["_class"], []).append(rec)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in CLASSES:
        group = sorted(by_class.get(cls, []), key=lambda r: str(r["id"]))
        order = rng.permutation(len(group))
        n_val = min(len(group) - 1, int(round(len(group) * val_fraction))) if group else 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


class SampleStore:
    """A folder of labelled drum-hit snippets; see the module docstring for layout and safety."""

    def __init__(self, data_dir: str | Path = DEFAULT_DATA_DIR,
                 settings: FeatureSettings = DEFAULT_SETTINGS) -> None:
        self.root = Path(data_dir)
        self.settings = settings
        if self.root.exists() and not self.root.is_dir():
            raise BeatSightError(f"{self.root}: not a directory")

    # ------------------------------------------------------------ reading
    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA

    def _read_metadata(self) -> dict:
        path = self.metadata_path
        if not path.is_file():
            return {"version": STORE_VERSION, "samples": []}
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BeatSightError(f"{path}: not a readable store index ({type(exc).__name__}); "
                                 "fix or restore it, nothing was changed") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("samples"), list):
            raise BeatSightError(f"{path}: expected {{version, samples: [...]}}")
        return meta

    def samples(self) -> list[dict]:
        """All records as stored (including ones whose component is not one of the 12)."""
        return list(self._read_metadata()["samples"])

    def path_of(self, rec: dict) -> Path:
        """Snippet file of a record: its `path` (relative to the store, as the original wrote)."""
        p = rec.get("path")
        if isinstance(p, str) and p:
            pp = Path(p.replace("\\", "/"))  # a store written on Windows
            return pp if pp.is_absolute() else self.root / pp
        return self.root / str(rec.get("component")) / f"{rec.get('id')}.wav"

    def usable(self) -> list[dict]:
        """Records with one of the 12 classes and an existing snippet; adds `_class` to each."""
        out, gone = [], 0
        for rec in self.samples():
            if not isinstance(rec, dict) or "id" not in rec:
                continue
            comp = rec.get("component")
            cls = canonical_component(comp)[0] if isinstance(comp, str) else None
            if cls is None:
                continue
            if not self.path_of(rec).is_file():
                gone += 1
                continue
            out.append({**rec, "_class": cls})
        if gone:
            log.warning("%s: %d samples have no snippet file (deleted by hand?); ignored",
                        self.root, gone)
        return out

    def stats(self) -> dict[str, int]:
        """Samples per class (all 12, zeros included), then any components outside the 12."""
        counts = Counter()
        for rec in self.samples():
            comp = rec.get("component") if isinstance(rec, dict) else None
            cls = canonical_component(comp)[0] if isinstance(comp, str) else None
            counts[cls or str(comp)] += 1
        out = {c: counts.pop(c, 0) for c in CLASSES}
        out.update(sorted(counts.items()))
        return out

    # ------------------------------------------------------------ collecting
    def add_sample(self, audio: str | Path, time_s: float, component: str,
                   source: str = "manual") -> dict | None:
        """Add one hit; returns its record, or None if the same sample is already stored."""
        cls, via_alias = canonical_component(component) if isinstance(component, str) else (
            None, False)
        if cls is None:
            raise BeatSightError(f"unknown component {component!r}; use one of: "
                                 f"{', '.join(CLASSES)}")
        if via_alias:
            log.warning("mapping component %r to %r", component, cls)
        if not isinstance(time_s, (int, float)) or not math.isfinite(time_s) or time_s < 0:
            raise BeatSightError(f"time {time_s!r}: expected seconds >= 0")
        audio = Path(audio)
        samples = load_audio(audio, self.settings.sample_rate)
        duration = len(samples) / self.settings.sample_rate
        if time_s > duration:
            raise BeatSightError(f"time {time_s:.3f} s is past the end of {audio} "
                                 f"({duration:.3f} s long)")
        digest = file_sha256(audio)
        added, _ = self._add(samples, audio, digest,
                             [_Pending(float(time_s), cls, dedup_key(digest, time_s, cls))],
                             source)
        return added[0] if added else None

    def extract_beatmap(self, bsm: str | Path, audio: str | Path,
                        progress: bool = False) -> ExtractReport:
        """Add every hit of a beatmap: one decode, one pass; re-running adds nothing new."""
        bsm, audio = Path(bsm), Path(audio)
        bm = read_bsm(bsm)
        mapper = ComponentMapper()
        all_hits = hits(bm)
        samples = load_audio(audio, self.settings.sample_rate)
        duration = len(samples) / self.settings.sample_rate
        digest = file_sha256(audio)
        pending, seen = [], set()
        for i, h in enumerate(all_hits):
            if h.time_s > duration:
                raise BeatSightError(
                    f"{bsm}: hit {i} at {h.time_s:.3f} s is past the end of {audio} "
                    f"({duration:.3f} s long): is it the right audio file?")
            cls = mapper(h.component)
            if cls is None:
                continue
            key = dedup_key(digest, h.time_s, cls)
            if key not in seen:  # the same hit listed twice in one beatmap
                seen.add(key)
                pending.append(_Pending(h.time_s, cls, key, float(h.velocity)))
        report = ExtractReport(beatmap=str(bsm), audio=str(audio), hits=len(all_hits),
                               aliased={f"{a} -> {b}": n for (a, b), n in mapper.aliased.items()},
                               skipped=dict(mapper.skipped))
        added, dups = self._add(samples, audio, digest, pending, "beatmap",
                                beatmap=bsm.name, progress=progress)
        report.added, report.duplicates = len(added), dups + (len(all_hits) - len(pending)
                                                             - sum(mapper.skipped.values()))
        report.per_class = dict(Counter(r["component"] for r in added))
        return report

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except ImportError:  # not POSIX: single-writer use only
                pass
            yield

    def _add(self, samples: np.ndarray, audio: Path, digest: str, pending: list[_Pending],
             source: str, beatmap: str | None = None, progress: bool = False
             ) -> tuple[list[dict], int]:
        """Write the new snippets, sync, then publish them in metadata.json (under the lock)."""
        from rich.progress import Progress

        sr, settings = self.settings.sample_rate, self.settings
        with self._lock():
            meta = self._read_metadata()
            self._clean_orphans(meta)
            known = {s.get("dedup_key") for s in meta["samples"] if isinstance(s, dict)}
            new = [p for p in pending if p.key not in known]
            if not new:
                return [], len(pending)
            windows = extract_windows(samples, np.array([p.time_s for p in new]), settings)
            np.clip(windows, -1.0, 1.0, out=windows)
            records = []
            with Progress(transient=True, disable=not progress or len(new) < 200) as bar:
                task = bar.add_task("writing snippets", total=len(new))
                for p, win in zip(new, windows, strict=True):
                    sid = str(uuid.uuid4())
                    rel = f"{p.cls}/{sid}.wav"
                    (self.root / p.cls).mkdir(exist_ok=True)
                    (self.root / rel).write_bytes(_wav_bytes(win, sr))
                    rec = {"id": sid, "component": p.cls, "source_audio": audio.name,
                           "onset_time": round(p.time_s, 6),
                           "window_ms": settings.pre_ms + settings.post_ms,
                           "sample_rate": sr, "source": source, "path": rel,
                           "dedup_key": p.key, "audio_sha256": digest,
                           "onset_offset": settings.pre_samples}
                    if p.velocity is not None:
                        rec["velocity"] = p.velocity
                    if beatmap:
                        rec["beatmap"] = beatmap
                    records.append(rec)
                    bar.advance(task)
            if hasattr(os, "sync"):
                os.sync()  # snippet data and directory entries reach the disk before the index
            meta["samples"] = meta["samples"] + records
            meta.setdefault("version", STORE_VERSION)
            self._write_metadata(meta)
            return records, len(pending) - len(new)

    def _write_metadata(self, meta: dict) -> None:
        atomic_write_text(self.metadata_path, json.dumps(meta, indent=2) + "\n")

    def _clean_orphans(self, meta: dict) -> int:
        """Delete `<uuid>.wav` snippets no record refers to (left by a crash mid-write)."""
        if not self.metadata_path.is_file():
            return 0  # without an index we cannot tell orphans from samples: touch nothing
        referenced = {self.path_of(s).resolve() for s in meta["samples"] if isinstance(s, dict)}
        removed = 0
        for sub in self.root.iterdir():
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            for f in sub.iterdir():
                if _SNIPPET_NAME.match(f.name) and f.resolve() not in referenced:
                    f.unlink(missing_ok=True)
                    removed += 1
        for tmp in self.root.glob(f".{METADATA}.*.tmp"):
            tmp.unlink(missing_ok=True)
        if removed:
            log.info("%s: removed %d unreferenced snippet files (an interrupted write)",
                     self.root, removed)
        return removed

    def clean(self) -> int:
        """Remove snippet files left behind by an interrupted write; returns how many."""
        with self._lock():
            return self._clean_orphans(self._read_metadata())

    # ------------------------------------------------------------ using
    def split(self, seed: int = 0, val_fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
        return split_stratified(self.usable(), seed, val_fraction)

    def export(self, out: str | Path, seed: int = 0, val_fraction: float = 0.2) -> ExportReport:
        """The original export layout: OUT/{train,val}/<id>.wav, *_labels.json, components.json.

        Shuffled with `seed` and stratified per class; a class with one sample goes to train.
        An existing export in OUT is replaced (stale snippets removed); other content refused.
        """
        out = Path(out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                                  and not (out / "components.json").is_file())):
            raise BeatSightError(f"{out}: exists and is not an earlier export; choose a new or "
                                 "empty directory")
        total = len(self.samples())
        train, val = self.split(seed, val_fraction)
        report = ExportReport(out=str(out))
        counts = {c: [0, 0] for c in CLASSES}
        for split, recs in (("train", train), ("val", val)):
            d = out / split
            d.mkdir(parents=True, exist_ok=True)
            labels, keep = [], set()
            for rec in recs:
                name = f"{rec['id']}.wav"
                dst = d / name
                src = self.path_of(rec)
                if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
                    shutil.copy2(src, dst)
                keep.add(name)
                cls = rec["_class"]
                labels.append({"file": name, "label": cls, "component_idx": CLASSES.index(cls)})
                counts[cls][0 if split == "train" else 1] += 1
            for stale in d.glob("*.wav"):
                if stale.name not in keep:
                    stale.unlink()
            atomic_write_text(out / f"{split}_labels.json", json.dumps(labels, indent=2) + "\n")
        atomic_write_text(out / "components.json", json.dumps(
            {"components": list(CLASSES), "num_classes": len(CLASSES)}, indent=2) + "\n")
        report.train, report.val = len(train), len(val)
        report.per_class = {c: (a, b) for c, (a, b) in counts.items() if a or b}
        report.skipped = total - len(train) - len(val)
        return report

    def refs(self, records: list[dict] | None = None) -> list[SnippetRef]:
        """Snippet references (key = sample id) for `records` (default: every usable sample)."""
        records = self.usable() if records is None else records
        sr = self.settings.sample_rate
        out = []
        for rec in records:
            offset = rec.get("onset_offset")
            if not isinstance(offset, int):
                # The original collector cut [onset - window/4, onset + window] clipped at 0.
                rec_sr = int(rec.get("sample_rate") or sr)
                pre = int(float(rec.get("window_ms") or 100.0) * rec_sr / 1000) // 4
                offset = min(pre, int(float(rec.get("onset_time") or 0.0) * rec_sr))
                offset = int(round(offset * sr / rec_sr))
            out.append(SnippetRef(str(rec["id"]), self.path_of(rec),
                                  CLASSES.index(rec["_class"]), offset))
        return out

    def feature_set(self, progress: bool = False, records: list[dict] | None = None
                    ) -> FeatureSet:
        """Every usable sample (or `records`) as a FeatureSet: windows + cached patches, and
        multi-label targets from the hits recorded at the same onset of the same audio."""
        records = self.usable() if records is None else records
        fs = load_snippets(self.refs(records), self.root, self.settings, progress)
        if len(records):
            fs.targets = group_targets(fs.y, record_groups(records))
        return fs

    def load_features(self, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 (N, 1, 128, 128), y int64) of every usable sample, via the feature cache."""
        return self.feature_set(progress).arrays()

    def train_val(self, seed: int = 0, val_fraction: float = 0.2, progress: bool = False
                  ) -> tuple[FeatureSet, FeatureSet]:
        """The export split (same seed -> same split) as FeatureSets, without exporting."""
        records = self.usable()
        fs = self.feature_set(progress, records)
        pos = {k: i for i, k in enumerate(fs.ids)}
        train, val = split_stratified(records, seed, val_fraction)
        return (fs.subset([pos[str(r["id"])] for r in train]),
                fs.subset([pos[str(r["id"])] for r in val]))
