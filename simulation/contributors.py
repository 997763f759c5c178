"""Simulated contributors: each owns real kits, renders its practice songs, collects its samples.

Collection goes through the client's collector (`SampleStore.extract_beatmap`), the path a real
contributor takes. Held-out kits never reach a contributor: they only feed `build_heldout`.

Layout under a data root `OUT` (what `build_federation(OUT, ...)` makes):
    OUT/contributor-NN/            a contributor's sample store (client.store layout)
    OUT/songs/contributor-NN/      its rendered songs (.wav + ground-truth .bsm), manifest.json
    OUT/songs/pool/                (iid split only) the pooled songs before dealing
`build_heldout(OUT/heldout)` makes the store OUT/heldout and its songs in OUT/songs/heldout.
Everything is cached: a store whose manifest says done with the same parameters is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from beatsight.common.atomic import atomic_write_text
from beatsight.common.bsm import read_bsm, write_bsm
from beatsight.common.errors import BeatSightError

from .kits import Kit, find_kits, parse_kit
from .render import write_isolated, write_song
from .soundfonts import FONT_KITS_DIR, build_font_kits

# The fixed default split. Held-out: two acoustic kits and one electronic kit that together
# cover every class except china (only ForzeeStereo has one, so it trains). Hand-percussion
# kits have no kit pieces and are used by nobody.
HELDOUT_KITS: tuple[str, ...] = ("The Black Pearl 1.0", "ColomboAcousticDrumkit",
                                 "TR808EmulationKit")
CONTRIBUTOR_KITS: tuple[str, ...] = (
    "GMRockKit", "ForzeeStereo", "BJA_Pacific", "Millo_MultiLayered2", "Audiophob",
    "rumpf_kit_z01_h2", "Millo-Drums_v.1", "Millo_MultiLayered3",
    "ElectricEmpireKit", "HardElectro1", "VariBreaks",
)
SPLITS = ("per-kit", "iid")

DEFAULT_CONTRIBUTORS = 5
DEFAULT_SONGS = 6
DEFAULT_SECONDS = 20.0
SOUNDCHECK_PER_CLASS = 3          # isolated hits per class per kit in each contributor's check
HELDOUT_SONGS_PER_KIT = 3
HELDOUT_SECONDS = 20.0
HELDOUT_ISOLATED_PER_CLASS = 8
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def split_kits(kits: list[Kit], contributor_kits: Sequence[str] | None = None
               ) -> tuple[list[Kit], list[Kit]]:
    """(contributor kits, held-out kits). Default: the fixed tables, plus any unknown kit with a
    kick and a snare (not hand percussion). `contributor_kits` narrows the contributors' kits
    (small experiments, tests); a held-out kit there is refused."""
    by_key = {k.key: k for k in kits}
    wanted = tuple(contributor_kits) if contributor_kits else CONTRIBUTOR_KITS
    leaked = [k for k in wanted if k in HELDOUT_KITS]
    if leaked:
        raise BeatSightError(f"{', '.join(leaked)}: held-out kits never go to a contributor")
    missing = [k for k in HELDOUT_KITS + wanted if k not in by_key]
    if missing:
        raise BeatSightError(f"drum kits missing: {', '.join(missing)}; "
                             "sudo apt-get install hydrogen-drumkits hydrogen-data")
    extra = [] if contributor_kits else [
        k for k in kits if k.key not in HELDOUT_KITS + CONTRIBUTOR_KITS
        and k.family != "percussion" and {"kick", "snare"} <= set(k.classes)]
    train = [by_key[k] for k in wanted] + extra
    held = [by_key[k] for k in HELDOUT_KITS]
    return train, held


def assign_kits(n_contributors: int, kits: list[Kit]) -> list[list[Kit]]:
    """Deal kits to contributors (contributor i: kits i, i+n, ...); more contributors than
    kits share kits (different songs)."""
    if n_contributors < 1:
        raise BeatSightError("need at least one contributor")
    if n_contributors >= len(kits):
        return [[kits[i % len(kits)]] for i in range(n_contributors)]
    return [kits[i::n_contributors] for i in range(n_contributors)]


def _song_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class SongJob:
    """One file a contributor renders: a groove or a sound check (isolated hits) of one kit."""

    name: str
    kit: Kit
    seed: int
    seconds: float = 0.0
    isolated_per_class: int = 0      # > 0: isolated hits instead of a groove

    def render(self, out_dir: Path) -> tuple[Path, Path]:
        wav, bsm = out_dir / f"{self.name}.wav", out_dir / f"{self.name}.bsm"
        if wav.is_file() and bsm.is_file():
            try:
                if read_bsm(bsm)["audio"]["hash"].endswith(_sha256(wav)):
                    return wav, bsm          # rendered before (deterministic): reuse it
            except BeatSightError:
                pass
        if self.isolated_per_class:
            return write_isolated(out_dir, self.name, self.kit, self.seed,
                                  per_class=self.isolated_per_class)
        return write_song(out_dir, self.name, self.kit, self.seed, duration_s=self.seconds)

    def describe(self) -> dict:
        return {"name": self.name, "kit": self.kit.key, "seed": self.seed,
                "seconds": self.seconds, "isolated_per_class": self.isolated_per_class}


def _sha256(path: Path) -> str:
    from beatsight.common.atomic import file_sha256

    return file_sha256(path)


def contributor_jobs(index: int, kits: list[Kit], seed: int, n_songs: int,
                     seconds: float) -> list[SongJob]:
    """A contributor's practice: a sound check per kit, then songs cycling through its kits."""
    jobs = [SongJob(f"soundcheck-{_slug(k.key)}", k, _song_seed(seed, index, 1_000 + j),
                    isolated_per_class=SOUNDCHECK_PER_CLASS) for j, k in enumerate(kits)]
    for j in range(n_songs):
        k = kits[j % len(kits)]
        jobs.append(SongJob(f"song-{j:02d}-{_slug(k.key)}", k, _song_seed(seed, index, j),
                            seconds=seconds))
    return jobs


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).strip("_")


# ---------------------------------------------------------------- manifests (the cache)
def songs_dir(store: Path) -> Path:
    """Where a store's rendered songs and manifest live: beside the store, never inside it."""
    return store.parent / "songs" / store.name


def read_manifest(store: str | Path) -> dict | None:
    path = songs_dir(Path(store)) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_manifest(store: Path, manifest: dict) -> None:
    atomic_write_text(songs_dir(store) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _prepare(store: Path, params: dict) -> bool:
    """True if `store` is already built with `params`. Refuses to touch a store built with other
    parameters; clears a store this tool started but did not finish (it is only a cache)."""
    m = read_manifest(store)
    if m is not None and m.get("params") != params:
        raise BeatSightError(f"{store}: built earlier with other parameters "
                             f"({_diff(m.get('params') or {}, params)}); use another --out "
                             "or delete it")
    if m is not None and m.get("done"):
        return True
    if m is not None and store.is_dir():           # our own interrupted build: start over
        shutil.rmtree(store)
    elif m is None and store.exists() and any(store.iterdir()):
        raise BeatSightError(f"{store}: exists and was not built by beatsight-sim; "
                             "use another --out")
    _write_manifest(store, {"version": MANIFEST_VERSION, "params": params, "done": False})
    return False


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])


def _finish(store: Path, params: dict, jobs: list[dict], per_class: dict, seconds: float) -> None:
    _write_manifest(store, {"version": MANIFEST_VERSION, "params": params, "done": True,
                            "songs": jobs, "collected": per_class,
                            "build_seconds": round(seconds, 2)})


def contributor_kits(store: str | Path) -> list[str]:
    """The kits a built store's samples come from (from its manifest)."""
    m = read_manifest(store) or {}
    return list((m.get("params") or {}).get("kits", []))


def class_counts(store: str | Path) -> dict[str, int]:
    """Samples per class in a store, as the store itself reports them."""
    from beatsight.client.store import SampleStore

    return SampleStore(store).stats()


# ---------------------------------------------------------------- collecting
def _collect(store: Path, pairs: list[tuple[Path, Path]]) -> dict[str, int]:
    """The contributor's own `extract-beatmap` on each (beatmap, audio): the real path."""
    from beatsight.client.store import SampleStore

    s = SampleStore(store)
    total: dict[str, int] = {}
    for bsm, wav in pairs:
        report = s.extract_beatmap(bsm, wav)
        for c, n in report.per_class.items():
            total[c] = total.get(c, 0) + n
    return total


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _deal_iid(pool: list[tuple[Path, Path]], n: int, seed: int,
              out_dirs: list[Path]) -> list[list[tuple[Path, Path]]]:
    """Pool every hit of every song, shuffle, deal round-robin; each contributor gets, per song,
    the song's audio and a beatmap of the hits dealt to it."""
    bms = [read_bsm(bsm) for bsm, _ in pool]
    index = [(si, hi) for si, bm in enumerate(bms) for hi in range(len(bm["hitObjects"]))]
    order = np.random.default_rng([seed, 0x11D]).permutation(len(index))
    dealt: list[dict[int, list[int]]] = [{} for _ in range(n)]
    for rank, k in enumerate(order):
        si, hi = index[k]
        dealt[rank % n].setdefault(si, []).append(hi)
    out: list[list[tuple[Path, Path]]] = []
    for c in range(n):
        out_dirs[c].mkdir(parents=True, exist_ok=True)
        pairs = []
        for si in sorted(dealt[c]):
            bsm_src, wav_src = pool[si]
            bm = json.loads(json.dumps(bms[si]))
            bm["hitObjects"] = [bm["hitObjects"][i] for i in sorted(dealt[c][si])]
            bm["drumKit"]["components"] = sorted({h["component"] for h in bm["hitObjects"]})
            wav = out_dirs[c] / wav_src.name
            _link_or_copy(wav_src, wav)
            bsm = out_dirs[c] / bsm_src.name
            write_bsm(bsm, bm)
            pairs.append((bsm, wav))
        out.append(pairs)
    return out


def build_federation(out_dir: str | Path, n_contributors: int = DEFAULT_CONTRIBUTORS,
                     seed: int = 0, songs_per_contributor: int = DEFAULT_SONGS,
                     song_seconds: float = DEFAULT_SECONDS, split: str = "per-kit",
                     kits_root: str | Path | None = None, progress: bool = True,
                     contributor_kits: Sequence[str] | None = None,
                     font_kits: bool = False) -> list[Path]:
    """Build (or reuse) one sample store per contributor; returns the store dirs in order.

    font_kits: the SoundFont kits (`simulation.soundfonts`, rendered into OUT/font-kits) join
    the contributors' kits, dealt after the Hydrogen ones; they never reach the held-out store.

    per-kit: contributor i owns kits i, i+n, ... of CONTRIBUTOR_KITS and renders its own songs
    (non-IID, as real contributors are). iid: the very same songs are rendered into a pool and
    their hits dealt round-robin, so every contributor holds the same mix of kits and classes.
    """
    if split not in SPLITS:
        raise BeatSightError(f"split {split!r}: choose {' or '.join(SPLITS)}")
    if songs_per_contributor < 1 or song_seconds <= 0:
        raise BeatSightError("need at least one song of positive length per contributor")
    out = Path(out_dir)
    train, _ = split_kits(find_kits(kits_root), contributor_kits)
    if font_kits:
        train = train + [parse_kit(d) for d in build_font_kits(out / FONT_KITS_DIR)]
    owned = assign_kits(n_contributors, train)
    jobs = [contributor_jobs(i, kits, seed, songs_per_contributor, song_seconds)
            for i, kits in enumerate(owned)]
    stores = [out / f"contributor-{i:02d}" for i in range(n_contributors)]
    base = {"split": split, "contributors": n_contributors, "seed": seed,
            "songs_per_contributor": songs_per_contributor, "song_seconds": song_seconds,
            "soundcheck_per_class": SOUNDCHECK_PER_CLASS}
    params = [{**base, "index": i, "kits": sorted({k.key for k in
                                                   (owned[i] if split == "per-kit" else train)})}
              for i in range(n_contributors)]
    todo = [i for i in range(n_contributors) if not _prepare(stores[i], params[i])]
    if not todo:
        return stores
    with Progress(disable=not progress, transient=True) as bar:
        if split == "per-kit":
            task = bar.add_task("contributors rendering and collecting",
                                total=sum(len(jobs[i]) for i in todo))
            for i in todo:
                ti = time.perf_counter()
                pairs = _render_all(jobs[i], songs_dir(stores[i]), lambda: bar.advance(task))
                got = _collect(stores[i], [(b, w) for w, b in pairs])
                _finish(stores[i], params[i], [j.describe() for j in jobs[i]], got,
                        time.perf_counter() - ti)
        else:
            all_jobs = [j for js in jobs for j in js]
            task = bar.add_task("rendering the pooled songs", total=len(all_jobs))
            pool_dir = out / "songs" / "pool"
            renamed = [SongJob(f"c{i:02d}-{j.name}", j.kit, j.seed, j.seconds,
                               j.isolated_per_class) for i, js in enumerate(jobs) for j in js]
            pairs = _render_all(renamed, pool_dir, lambda: bar.advance(task))
            dealt = _deal_iid([(b, w) for w, b in pairs], n_contributors, seed,
                              [songs_dir(s) for s in stores])
            for i in todo:
                ti = time.perf_counter()
                got = _collect(stores[i], dealt[i])
                _finish(stores[i], params[i], [j.describe() for j in renamed], got,
                        time.perf_counter() - ti)
    return stores


def _render_all(jobs: list[SongJob], out_dir: Path,
                tick: Callable[[], None]) -> list[tuple[Path, Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for job in jobs:
        pairs.append(job.render(out_dir))
        tick()
    return pairs


def build_heldout(out_dir: str | Path, seed: int = 0, songs_per_kit: int = HELDOUT_SONGS_PER_KIT,
                  song_seconds: float = HELDOUT_SECONDS,
                  isolated_per_class: int = HELDOUT_ISOLATED_PER_CLASS,
                  kits_root: str | Path | None = None, progress: bool = True) -> Path:
    """Build (or reuse) the held-out store: grooves and isolated hits of HELDOUT_KITS only,
    collected the same way. Returns the store dir (`out_dir` itself)."""
    store = Path(out_dir)
    _, held = split_kits(find_kits(kits_root))
    params = {"heldout": True, "seed": seed, "songs_per_kit": songs_per_kit,
              "song_seconds": song_seconds, "isolated_per_class": isolated_per_class,
              "kits": sorted(k.key for k in held)}
    if _prepare(store, params):
        return store
    t0 = time.perf_counter()
    jobs = []
    for ki, k in enumerate(held):
        if isolated_per_class:
            jobs.append(SongJob(f"isolated-{_slug(k.key)}", k, _song_seed(seed, 90_000, ki),
                                isolated_per_class=isolated_per_class))
        jobs += [SongJob(f"song-{j:02d}-{_slug(k.key)}", k, _song_seed(seed, 90_001 + ki, j),
                         seconds=song_seconds) for j in range(songs_per_kit)]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("held-out kits rendering and collecting", total=len(jobs))
        pairs = _render_all(jobs, songs_dir(store), lambda: bar.advance(task))
    got = _collect(store, [(b, w) for w, b in pairs])
    _finish(store, params, [j.describe() for j in jobs], got, time.perf_counter() - t0)
    return store
