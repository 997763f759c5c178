"""Reading and writing `.bsm` beatmaps (and the desktop app's PascalCase `.bs`).

Keys are matched case-insensitively and written in camelCase. Errors name the file and field.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import BeatSightError

BSM_VERSION = "1.0.0"
DEFAULT_VELOCITY = 0.8

_KNOWN_KEYS = [
    "version", "metadata", "title", "artist", "creator", "difficulty", "beatmapId",
    "createdAt", "modifiedAt", "source", "tags", "previewTime", "description", "audio",
    "filename", "hash", "duration", "sampleRate", "drumStem", "timing", "bpm", "offset",
    "timeSignature", "timingPoints", "drumKit", "components", "layout", "hitObjects", "time",
    "component", "velocity", "lane", "editor", "snapDivisor", "bookmarks",
    "aiGenerationMetadata", "modelVersion", "confidence", "processedAt", "manualEdits",
    "visualLanes",
]
_CANON = {k.lower(): k for k in _KNOWN_KEYS}


@dataclass(frozen=True, order=True)
class Hit:
    time_ms: int
    component: str
    velocity: float = DEFAULT_VELOCITY

    @property
    def time_s(self) -> float:
        return self.time_ms / 1000.0


def _camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_CANON.get(str(k).lower(), k): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BeatSightError(f"{where}: expected a finite number, got {value!r:.40}")
    return float(value)


def parse_bsm(text: str, source: str = "<beatmap>") -> dict:
    """Parse and validate; returns the beatmap with camelCase keys and hitObjects sorted by time."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BeatSightError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise BeatSightError(f"{source}: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise BeatSightError(f"{source}: top level must be a JSON object")
    bm = _camel(raw)
    version = bm.get("version")
    if not isinstance(version, str) or version.split(".")[0] != BSM_VERSION.split(".")[0]:
        raise BeatSightError(f"{source}: version: unsupported {version!r:.40} (expected 1.x.y)")
    objs = bm.get("hitObjects")
    if not isinstance(objs, list):
        raise BeatSightError(f"{source}: hitObjects: missing or not a list")
    cleaned = []
    for i, h in enumerate(objs):
        where = f"{source}: hitObjects[{i}]"
        if not isinstance(h, dict):
            raise BeatSightError(f"{where}: expected an object")
        t = _number(h.get("time"), f"{where}.time")
        if t < 0:
            raise BeatSightError(f"{where}.time: negative time {t}")
        comp = h.get("component")
        if not isinstance(comp, str) or not comp.strip():
            raise BeatSightError(f"{where}.component: expected a non-empty string")
        vel = _number(h.get("velocity", DEFAULT_VELOCITY), f"{where}.velocity")
        if not 0.0 <= vel <= 1.0:
            raise BeatSightError(f"{where}.velocity: {vel} outside 0-1")
        cleaned.append({**h, "time": int(round(t)), "component": comp, "velocity": vel})
    bm["hitObjects"] = sorted(cleaned, key=lambda h: h["time"])
    for section in ("metadata", "audio", "timing", "drumKit"):
        if section in bm and not isinstance(bm[section], dict):
            raise BeatSightError(f"{source}: {section}: expected an object")
    return bm


def read_bsm(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BeatSightError(f"{path}: no such beatmap file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BeatSightError(f"{path}: cannot read beatmap ({type(exc).__name__})") from None
    return parse_bsm(text, str(path))


def hits(beatmap: dict) -> list[Hit]:
    return [Hit(h["time"], h["component"], h.get("velocity", DEFAULT_VELOCITY))
            for h in beatmap["hitObjects"]]


def new_beatmap(
    hit_list: list[Hit],
    *,
    title: str,
    audio_filename: str,
    duration_ms: int,
    bpm: float,
    audio_hash: str = "sha256:unknown",
    sample_rate: int = 44_100,
    artist: str = "Unknown",
    creator: str = "BeatSight",
    difficulty: float = 5.0,
    snap_divisor: int = 4,
    ai_metadata: dict | None = None,
) -> dict:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ordered = sorted(hit_list)
    components = sorted({h.component for h in ordered})
    return {
        "version": BSM_VERSION,
        "metadata": {"title": title, "artist": artist, "creator": creator,
                     "difficulty": difficulty, "beatmapId": str(uuid.uuid4()),
                     "createdAt": now, "modifiedAt": now},
        "audio": {"filename": audio_filename, "hash": audio_hash,
                  "duration": int(duration_ms), "sampleRate": sample_rate},
        "timing": {"bpm": round(float(bpm), 3), "offset": 0, "timeSignature": "4/4"},
        "drumKit": {"components": components},
        "hitObjects": [{"time": int(h.time_ms), "component": h.component,
                        "velocity": round(float(h.velocity), 3)} for h in ordered],
        "editor": {"snapDivisor": snap_divisor, "aiGenerationMetadata": ai_metadata},
    }


def write_bsm(path: str | Path, beatmap: dict) -> None:
    atomic_write_text(path, json.dumps(beatmap, indent=2) + "\n")
