"""The 12 drum classes (the CNN's output order) and the mapping of free-text component names."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Output order of the CNN; the original BeatSight training tools use exactly this order.
CLASSES: tuple[str, ...] = (
    "kick",
    "snare",
    "hihat_closed",
    "hihat_open",
    "crash",
    "ride",
    "tom_high",
    "tom_mid",
    "tom_low",
    "crash2",
    "ride_bell",
    "china",
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

# The merged 10-class view quality is also reported in: a second crash counts as a crash and a
# ride bell as the ride (which cymbal of a kind rarely matters to a drummer reading the map, and
# kits name them inconsistently). The one place this mapping lives.
MERGED_VIEW: dict[str, str] = {"crash2": "crash", "ride_bell": "ride"}
MERGED_CLASSES: tuple[str, ...] = tuple(c for c in CLASSES if c not in MERGED_VIEW)
# For each of the 12 class indices, its index in MERGED_CLASSES.
MERGED_INDEX: tuple[int, ...] = tuple(MERGED_CLASSES.index(MERGED_VIEW.get(c, c)) for c in CLASSES)


# Drum families: the 5-class view of `evaluate-map`, and what `process` reports at most one
# class of per onset. The one place this grouping lives.
FAMILIES: tuple[str, ...] = ("kick", "snare", "hihat", "toms", "cymbals")
FAMILY: dict[str, str] = {
    "kick": "kick", "snare": "snare", "hihat_closed": "hihat", "hihat_open": "hihat",
    "crash": "cymbals", "ride": "cymbals", "tom_high": "toms", "tom_mid": "toms",
    "tom_low": "toms", "crash2": "cymbals", "ride_bell": "cymbals", "china": "cymbals",
}
# For each of the 12 class indices, its index in FAMILIES.
FAMILY_INDEX: tuple[int, ...] = tuple(FAMILIES.index(FAMILY[c]) for c in CLASSES)


def merge_labels(y: Sequence[int]) -> list[int]:
    """12-class indices -> indices into MERGED_CLASSES (crash2 -> crash, ride_bell -> ride)."""
    return [MERGED_INDEX[int(i)] for i in y]

# Components beatmaps name outside the 12 classes that have an obvious nearest class.
ALIASES: dict[str, str] = {
    "hihat_pedal": "hihat_closed",
    "hihat_foot": "hihat_closed",
    "pedal_hihat": "hihat_closed",
    "hihat": "hihat_closed",
    "hh": "hihat_closed",
    "hihat_half_open": "hihat_open",
    "splash": "crash",
    "crash1": "crash",
    "bass": "kick",
    "bass_drum": "kick",
    "bassdrum": "kick",
    "bd": "kick",
    "sd": "snare",
    "snare_rim": "snare",
    "rimshot": "snare",
    "ride_cup": "ride_bell",
    "bell": "ride_bell",
    "floor_tom": "tom_low",
    "tom_floor": "tom_low",
    "tom1": "tom_high",
    "tom2": "tom_mid",
    "tom3": "tom_low",
}

# Components that carry no drum-kit class; skipped and counted rather than guessed.
_CLEAN = re.compile(r"[^a-z0-9]+")


def _key(name: str) -> str:
    return _CLEAN.sub("_", name.strip().lower()).strip("_")


def canonical_component(name: str) -> tuple[str | None, bool]:
    """Map a beatmap component name to a class: (class or None, whether an alias was used)."""
    key = _key(name)
    if key in CLASS_INDEX:
        return key, False
    if key in ALIASES:
        return ALIASES[key], True
    return None, False


@dataclass
class ComponentMapper:
    """Maps names, warns once per alias, and counts what it mapped and skipped (for reports)."""

    aliased: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def __call__(self, name: str) -> str | None:
        cls, via_alias = canonical_component(name)
        if cls is None:
            if not self.skipped[name]:
                log.warning("skipping unknown component %r (not one of the 12 classes)", name)
            self.skipped[name] += 1
        elif via_alias:
            if not self.aliased[(name, cls)]:
                log.warning("mapping component %r to %r", name, cls)
            self.aliased[(name, cls)] += 1
        return cls
