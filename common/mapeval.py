"""Compare an estimated `.bsm` with a reference: per-class onset F-measure (mir_eval) in 3 views.

Views (class -> the components merged into it):
- "12-class": the CNN's classes as they are.
- "5-class": kick, snare, hihat (closed + open), toms (high + mid + low),
  cymbals (crash + crash2 + ride + ride_bell + china).
- "3-class": kick, snare, hihat (closed + open): the usual drum-transcription view; toms and
  cymbals are left out of it.
Plus "onsets": every hit merged, i.e. onset detection alone.
Component names go through `classes.canonical_component`; names it cannot map are counted
and left out. Within one (merged) class, hits closer than `MERGE_S` (30 ms) count as one
onset: a kick and a hi-hat played "together" by a human land a few ms apart, and an onset
detector rightly reports one onset for them (mir_eval's matching is one-to-one).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass

import mir_eval
import numpy as np

from .bsm import hits
from .classes import CLASSES, FAMILIES, FAMILY, canonical_component

VIEWS: dict[str, dict[str, tuple[str, ...]]] = {
    "12-class": {c: (c,) for c in CLASSES},
    "5-class": {f: tuple(c for c in CLASSES if FAMILY[c] == f) for f in FAMILIES},
    "3-class": {
        "kick": ("kick",),
        "snare": ("snare",),
        "hihat": ("hihat_closed", "hihat_open"),
    },
}
DEFAULT_WINDOW = 0.05
MERGE_S = 0.03


@dataclass
class Score:
    f: float
    precision: float
    recall: float
    n_ref: int
    n_est: int


@dataclass
class MapEvaluation:
    window: float
    onsets: Score
    views: dict[str, dict[str, Score]]     # view -> class -> score (classes absent on both sides omitted)
    skipped: dict[str, int]                # unmappable component names -> count (both maps)

    def mean_f(self, view: str) -> float:
        """Macro mean F over the view's classes that occur in the reference or the estimate."""
        scores = self.views[view]
        return float(np.mean([s.f for s in scores.values()])) if scores else float("nan")

    def to_dict(self) -> dict:
        return {"window": self.window, "onsets": asdict(self.onsets),
                "views": {v: {"mean_f": self.mean_f(v),
                              "classes": {c: asdict(s) for c, s in cls.items()}}
                          for v, cls in self.views.items()},
                "skipped": self.skipped}


def class_times(beatmap: dict, skipped: Counter | None = None) -> dict[str, np.ndarray]:
    """Hit times (seconds, unique, sorted) per canonical class; unknown names go to `skipped`."""
    out: dict[str, set[int]] = {}
    for h in hits(beatmap):
        cls, _ = canonical_component(h.component)
        if cls is None:
            if skipped is not None:
                skipped[h.component] += 1
            continue
        out.setdefault(cls, set()).add(h.time_ms)
    return {c: np.array(sorted(ms), np.float64) / 1000.0 for c, ms in out.items()}


def score(ref: np.ndarray, est: np.ndarray, window: float = DEFAULT_WINDOW) -> Score:
    """mir_eval's onset F-measure (one-to-one matching within +-window); empty sides give 0."""
    if len(ref) == 0 or len(est) == 0:
        return Score(0.0, 0.0, 0.0, len(ref), len(est))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # mir_eval warns about long files; not a problem here
        f, p, r = mir_eval.onset.f_measure(np.sort(ref), np.sort(est), window=window)
    return Score(float(f), float(p), float(r), len(ref), len(est))


def collapse(times: np.ndarray, merge_s: float = MERGE_S) -> np.ndarray:
    """Sorted times with each run of hits closer than merge_s to its first hit kept once."""
    t = np.sort(np.asarray(times, np.float64))
    kept: list[float] = []
    for x in t:
        if not kept or x - kept[-1] >= merge_s:
            kept.append(float(x))
    return np.array(kept)


def _merge(times: dict[str, np.ndarray], members: tuple[str, ...]) -> np.ndarray:
    parts = [times[m] for m in members if m in times]
    return collapse(np.concatenate(parts)) if parts else np.zeros(0)


def evaluate(ref_bm: dict, est_bm: dict, window: float = DEFAULT_WINDOW) -> MapEvaluation:
    """Score `est_bm` against `ref_bm` in every view."""
    skipped: Counter = Counter()
    ref, est = class_times(ref_bm, skipped), class_times(est_bm, skipped)
    views: dict[str, dict[str, Score]] = {}
    for view, classes in VIEWS.items():
        views[view] = {}
        for name, members in classes.items():
            r, e = _merge(ref, members), _merge(est, members)
            if len(r) or len(e):
                views[view][name] = score(r, e, window)
    all_members = tuple(CLASSES)
    onsets = score(_merge(ref, all_members), _merge(est, all_members), window)
    return MapEvaluation(window=window, onsets=onsets, views=views, skipped=dict(skipped))
