"""Hydrogen drum kits: find them, parse `drumkit.xml` defensively, map instruments to the 12 classes.

The kits are the project's only real drum audio (Debian `hydrogen-drumkits` + `hydrogen-data`).
Instrument names are free text, so one explicit table of patterns (`NAME_RULES`) decides which
class each instrument is, or that it is dropped; `beatsight-sim kits` shows the result per kit.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from beatsight.common.audio import SAMPLE_RATE, load_audio
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError

from .samplekits import SAMPLE_FAMILY
from .soundfonts import FONT_FAMILY

DEFAULT_KITS_DIR = Path("/usr/share/hydrogen/data/drumkits")
KITS_ENV = "BEATSIGHT_KITS_DIR"
INSTALL_HINT = "install them with: sudo apt-get install hydrogen-drumkits hydrogen-data"

# What each shipped kit is; the federation split uses it (hand percussion has no kit pieces).
KIT_FAMILY: dict[str, str] = {
    "GMRockKit": "acoustic",
    "ForzeeStereo": "acoustic",
    "BJA_Pacific": "acoustic",
    "ColomboAcousticDrumkit": "acoustic",
    "The Black Pearl 1.0": "acoustic",
    "Millo-Drums_v.1": "acoustic",
    "Millo_MultiLayered2": "acoustic",
    "Millo_MultiLayered3": "acoustic",
    "Audiophob": "acoustic",
    "rumpf_kit_z01_h2": "acoustic",
    "TR808EmulationKit": "electronic",
    "ElectricEmpireKit": "electronic",
    "HardElectro1": "electronic",
    "VariBreaks": "electronic",
    "Gimme A Hand 1.0": "percussion",
    "circAfrique v4": "percussion",
}

# THE mapping table: (pattern, class or None = drop), first match wins, matched with re.search
# against the normalised name (see `normalise_name`: lower case, brand/size in parentheses
# removed, punctuation -> space, letters and digits split: "crash16inch" -> "crash 16 inch").
# Drops come first so that e.g. "tambourine pedal" never reaches the pedal-hat rule.
NAME_RULES: tuple[tuple[str, str | None], ...] = (
    # --- not drum-kit pieces, or not a single hit of one: dropped
    (r"clap|snap|cowbell|tambourine|agogo|conga|bongo|clave|shaker|maraca|cajon|"
     r"woodblock|waterglass|whistle|djembe|sangban|dununba|kenkeni|zap|\bfx\b|click", None),
    (r"stick|rim click", None),                 # side stick / cross stick: no class for it
    (r"roll", None),                            # a snare roll is many hits, not one
    (r"choke|swish", None),                     # choked / swished cymbals: not a normal hit
    (r"\bside\b", None),                        # HardElectro "Side HH": ambiguous
    (r"hat (low|ring)|hi hat free", None),      # ambiguous hi-hat variants
    (r"^cymbal \d", None),                      # rumpf "cymbal 1/2": ride or china, unknown
    (r"^(vari breaks )?drum \d", None),         # electronic "Drum 1": not a named piece
    # --- kick
    (r"kick|bass ?drum|\bbd\b", "kick"),
    # --- hi-hats (pedal before open/closed; "hat"/"hh"/"hihat"/"hi hat")
    (r"(hat|hh).*\b(pedal|pd)\b|\bpedal (hat|hh)", "hihat_closed"),
    (r"(hat|hh).*\b(open|opened|semi ?open|semiopen|op)\b|\b(open|semi ?open) (hat|hh)|\bohh\b",
     "hihat_open"),
    (r"(hat|hh).*\b(closed|cl)\b|\bclosed (hat|hh)|\bchh\b", "hihat_closed"),
    # --- snare (rimshots are snare hits; aliases in common.classes agree)
    (r"snare|^redo\b", "snare"),                # Colombo's "redo super opaco" = muted snare
    # --- toms
    (r"floor|tom low|low tom|tom 3\b", "tom_low"),
    (r"tom mid|mid(dle)? tom|tom 2\b", "tom_mid"),
    (r"tom hi(gh)?|hi(gh)? tom|tomhi|tom 1\b|^(pearl )?tom$", "tom_high"),
    # --- ride bell before ride and crash ("crash ride bell", "ride cup", GMRock "Bell")
    (r"bell|cup", "ride_bell"),
    (r"china", "china"),
    # --- second crash: explicitly named second / right / jazz crash, or a crash/ride played as crash
    (r"crash.*(\b2$|right|jazz)|^crash ride$", "crash2"),
    (r"^ride crash|ride", "ride"),              # "ride crash 20 inch", "crash ride bow" -> ride
    (r"crash|splash|^cymbal$", "crash"),        # TR808 "Cymbal" is its crash
)
_COMPILED = tuple((re.compile(p), c) for p, c in NAME_RULES)


def normalise_name(name: str) -> str:
    """Lower case, drop parenthesised brand/size text, punctuation to spaces, split letter-digit."""
    s = re.sub(r"\([^)]*\)?", " ", name.lower())
    s = re.sub(r"^[a-g]#?\d\s*-\s*", "", s.strip())       # rumpf's "c#3 - bass drum 1"
    s = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", s)
    s = re.sub(r"hi\s*hat|hi-hat", "hat", s)
    s = re.sub(r"[^a-z0-9]+", " ", s)
    s = re.sub(r"\bvaribreaks\b", "vari breaks", s)
    return " ".join(s.split())


def is_placeholder(name: str) -> bool:
    """Slots with no real name: empty, a bare number, or rumpf's "Sample: beats_01-39.flac"."""
    norm = normalise_name(name)
    return not norm or norm.isdigit() or norm.startswith("sample ")


def map_instrument(name: str) -> str | None:
    """The class an instrument name maps to, or None (dropped, unrecognised or unnamed)."""
    if is_placeholder(name):
        return None
    norm = normalise_name(name)
    for pattern, cls in _COMPILED:
        if pattern.search(norm):
            return cls
    return None


@dataclass(frozen=True)
class Layer:
    """One recorded sample of an instrument, played for velocities in [vmin, vmax]."""

    path: Path
    vmin: float = 0.0
    vmax: float = 1.0
    gain: float = 1.0


@dataclass(frozen=True)
class Instrument:
    name: str
    cls: str | None
    layers: tuple[Layer, ...]
    volume: float = 1.0

    def layer_for(self, velocity: float) -> Layer:
        """The layer whose velocity range covers `velocity` (nearest range if none does)."""
        v = min(max(float(velocity), 0.0), 1.0)
        covering = [ly for ly in self.layers if ly.vmin <= v <= ly.vmax]
        if covering:
            return min(covering, key=lambda ly: ly.vmax - ly.vmin)
        return min(self.layers, key=lambda ly: min(abs(v - ly.vmin), abs(v - ly.vmax)))


@dataclass(frozen=True)
class Kit:
    name: str            # the display name from drumkit.xml
    key: str             # the directory name (stable id used in splits and manifests)
    path: Path
    family: str
    license: str
    instruments: tuple[Instrument, ...]             # mapped instruments with at least one layer
    dropped: tuple[str, ...] = field(default=())    # named instruments with samples but no class
    unnamed: int = 0                                # sample-bearing slots without a usable name

    def by_class(self) -> dict[str, list[Instrument]]:
        out: dict[str, list[Instrument]] = {}
        for inst in self.instruments:
            if inst.cls is not None:
                out.setdefault(inst.cls, []).append(inst)
        return {c: out[c] for c in CLASSES if c in out}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.by_class())

    def coverage(self) -> Counter:
        return Counter(inst.cls for inst in self.instruments if inst.cls is not None)


def kits_dir() -> Path:
    """The kits directory: env BEATSIGHT_KITS_DIR, else Debian's hydrogen location."""
    return Path(os.environ.get(KITS_ENV) or DEFAULT_KITS_DIR)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


def _text(elem: ET.Element, name: str, default: str = "") -> str:
    c = _child(elem, name)
    return (c.text or "").strip() if c is not None and c.text else default


def _float(elem: ET.Element, name: str, default: float) -> float:
    try:
        value = float(_text(elem, name, str(default)))
    except ValueError:
        return default
    return value if np.isfinite(value) else default


def _layers(inst: ET.Element, kit_path: Path) -> list[Layer]:
    """Layers wherever the format put them: instrumentComponent/layer, layer, or bare filename."""
    found: list[Layer] = []
    for el in inst.iter():
        if _local(el.tag) != "layer":
            continue
        fname = _text(el, "filename")
        if fname:
            found.append(Layer(kit_path / fname, _float(el, "min", 0.0), _float(el, "max", 1.0),
                               _float(el, "gain", 1.0)))
    if not found and _text(inst, "filename"):
        found.append(Layer(kit_path / _text(inst, "filename")))
    return [ly for ly in found if ly.path.is_file()]


def parse_kit(kit_path: str | Path) -> Kit:
    """Parse one kit directory's drumkit.xml; raise BeatSightError naming the file if unusable."""
    kit_path = Path(kit_path)
    xml_path = kit_path / "drumkit.xml"
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise BeatSightError(f"{xml_path}: no drumkit.xml in this kit directory") from None
    except (ET.ParseError, OSError) as exc:
        raise BeatSightError(f"{xml_path}: cannot parse ({exc})") from None
    inst_list = _child(root, "instrumentList")
    mapped: list[Instrument] = []
    dropped: list[str] = []
    unnamed = 0
    for inst in (list(inst_list) if inst_list is not None else []):
        if _local(inst.tag) != "instrument":
            continue
        name = _text(inst, "name")
        layers = _layers(inst, kit_path)
        if not layers:
            continue                    # placeholder slot without samples: nothing to drop
        if is_placeholder(name):
            unnamed += 1
            continue
        cls = map_instrument(name)
        if cls is None:
            dropped.append(name)
            continue
        mapped.append(Instrument(name, cls, tuple(layers), _float(inst, "volume", 1.0)))
    license_ = _text(root, "license") or _text(root, "licence")
    return Kit(name=_text(root, "name") or kit_path.name, key=kit_path.name, path=kit_path,
               family=(KIT_FAMILY.get(kit_path.name) or FONT_FAMILY.get(kit_path.name)
                       or SAMPLE_FAMILY.get(kit_path.name, "unknown")),
               license=license_,
               instruments=tuple(mapped), dropped=tuple(dropped), unnamed=unnamed)


def find_kits(root: str | Path | None = None) -> list[Kit]:
    """Every kit under `root` (default `kits_dir()`), sorted by directory name."""
    root = Path(root) if root is not None else kits_dir()
    if not root.is_dir():
        raise BeatSightError(f"drum kits not found at {root} ({KITS_ENV} overrides); "
                             f"{INSTALL_HINT}")
    kits = [parse_kit(p) for p in sorted(root.iterdir()) if (p / "drumkit.xml").is_file()]
    if not kits:
        raise BeatSightError(f"{root}: no drumkit.xml in any subdirectory; {INSTALL_HINT}")
    return kits


def get_kit(key: str, root: str | Path | None = None) -> Kit:
    """One kit by directory name (or display name)."""
    for kit in find_kits(root):
        if key in (kit.key, kit.name):
            return kit
    raise BeatSightError(f"no drum kit named {key!r} under {root or kits_dir()}")


ONSET_DB = -40.0        # a sample's onset: its first value within 40 dB of its peak
MAX_SAMPLE_S = 8.0      # longer cymbal tails are faded out here (inaudible under a groove)


@lru_cache(maxsize=2048)
def load_sample(path: Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a kit sample once per process, its leading silence cut so that index 0 is the onset.

    Some kits start their files 5-28 ms before the hit; without the cut, ground-truth times
    would be late by that much. Mono float32 at `sr`, read-only (it is shared by every caller).
    """
    audio = load_audio(path, sr)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        start = int(np.argmax(np.abs(audio) >= peak * 10 ** (ONSET_DB / 20)))
        audio = audio[start:]
    limit = int(MAX_SAMPLE_S * sr)
    if len(audio) > limit:
        fade = int(0.2 * sr)
        audio = audio[:limit].copy()
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    audio.setflags(write=False)
    return audio
