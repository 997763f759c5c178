"""Render practice grooves and isolated hits from a real kit, with a ground-truth `.bsm` beside them.

Planning (which piece is struck when, how hard) is separate from mixing (summing the kit's
recorded samples), so the same plan yields the audio and the beatmap. Every hit is placed at
exactly its integer-millisecond time in the beatmap, and kit samples are onset-aligned on
load (`kits.load_sample`), so the ground truth lines up with the audio. Same seed -> same bytes.
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from beatsight.common.atomic import atomic_write
from beatsight.common.audio import SAMPLE_RATE
from beatsight.common.bsm import Hit, new_beatmap, write_bsm
from beatsight.common.errors import BeatSightError

from .kits import Instrument, Kit, load_sample

STYLES: tuple[str, ...] = ("rock", "funk", "shuffle", "halftime")
TEMPO_RANGE = (70.0, 180.0)
# Fixed so that the same seed writes the same bytes (new_beatmap stamps the current time).
RENDER_TIMESTAMP = "2000-01-01T00:00:00Z"
_CHOKE_FADE_S = 0.008


@dataclass(frozen=True)
class Strike:
    """One planned hit: which instrument, when (integer ms, as the beatmap stores it), how hard."""

    time_ms: int
    instrument: Instrument
    velocity: float

    @property
    def hit(self) -> Hit:
        return Hit(self.time_ms, str(self.instrument.cls), self.velocity)


@dataclass(frozen=True)
class Plan:
    strikes: tuple[Strike, ...]
    length_s: float
    bpm: float
    style: str
    first_beat_s: float = 0.0       # where beat 0 falls (a band plays along from there)

    @property
    def hits(self) -> list[Hit]:
        return [s.hit for s in self.strikes]


# ---------------------------------------------------------------- the kit as a drummer uses it
_PEDAL = re.compile(r"pedal|\bpd\b", re.I)
_RIMSHOT = re.compile(r"rim ?shot", re.I)


@dataclass
class _Palette:
    """The instruments one song uses, by role (None: the kit has nothing for that role)."""

    kick: Instrument
    snare: Instrument
    snare_accent: Instrument
    hat: Instrument | None
    pedal: Instrument | None
    open: Instrument | None
    ride: Instrument | None
    bell: Instrument | None
    cymbals: list[Instrument]          # crash, crash2, china: struck on downbeats
    toms: list[Instrument]             # high to low

    def get(self, role: str) -> Instrument | None:
        if role.startswith("tom"):
            i = int(role[3:])
            return self.toms[i] if i < len(self.toms) else None
        if role.startswith("cym"):
            i = int(role[3:])
            return self.cymbals[i] if i < len(self.cymbals) else None
        found = getattr(self, role)
        fallback = {"open": "hat", "ride": "hat", "bell": "ride", "hat": "pedal"}
        if found is None and role in fallback:
            return self.get(fallback[role])
        return found


def _palette(kit: Kit, rng: np.random.Generator) -> _Palette:
    by = kit.by_class()

    def pick(cls: str, want: Callable[[Instrument], bool] = lambda i: True) -> Instrument | None:
        options = [i for i in by.get(cls, []) if want(i)] or by.get(cls, [])
        return options[int(rng.integers(len(options)))] if options else None

    kick, snare = pick("kick"), pick("snare", lambda i: not _RIMSHOT.search(i.name))
    if kick is None or snare is None:
        raise BeatSightError(f"{kit.path}: kit {kit.name!r} has no kick or no snare to groove with")
    rims = [i for i in by.get("snare", []) if _RIMSHOT.search(i.name)]
    pedals = [i for i in by.get("hihat_closed", []) if _PEDAL.search(i.name)]
    cymbals = [i for c in ("crash", "crash2", "china") if (i := pick(c)) is not None]
    toms = [i for c in ("tom_high", "tom_mid", "tom_low") if (i := pick(c)) is not None]
    return _Palette(
        kick=kick, snare=snare, snare_accent=rims[int(rng.integers(len(rims)))] if rims else snare,
        hat=pick("hihat_closed", lambda i: not _PEDAL.search(i.name)),
        pedal=pedals[0] if pedals else None, open=pick("hihat_open"),
        ride=pick("ride"), bell=pick("ride_bell"), cymbals=cymbals, toms=toms)


# ---------------------------------------------------------------- patterns
# A bar is a list of (beat within the bar, role, velocity). Roles resolve through the palette.
Event = tuple[float, str, float]


def _top(rng: np.random.Generator, sub: int, steps: list[int], top: str,
         open_p: float) -> list[Event]:
    """The time-keeping voice: hi-hat (with open accents and pedal) or ride (bell, pedal on 2/4)."""
    out: list[Event] = []
    for s in steps:
        beat = s / sub
        on_beat = s % sub == 0
        vel = 0.78 if on_beat else 0.58
        if top == "ride":
            role = "bell" if on_beat and rng.random() < 0.2 else "ride"
            out.append((beat, role, vel + 0.05))
        else:
            role = "open" if not on_beat and rng.random() < open_p else "hat"
            out.append((beat, role, vel + (0.15 if role == "open" else 0.0)))
    if top == "ride":
        out += [(1.0, "pedal", 0.55), (3.0, "pedal", 0.55)]
    return out


def _groove_bar(style: str, rng: np.random.Generator, top: str) -> tuple[int, list[Event]]:
    """One bar of a style's basic groove; returns (subdivisions per beat, events)."""
    ev: list[Event] = []
    if style == "shuffle":
        sub = 3
        ev += _top(rng, sub, [0, 2, 3, 5, 6, 8, 9, 11], top, 0.12)
        ev += [(0.0, "kick", 0.9), (2.0, "kick", 0.85), (1.0, "snare", 0.9), (3.0, "snare", 0.9)]
        if rng.random() < 0.5:
            ev.append((5 / 3, "kick", 0.7))
        ev += [(s / 3, "snare", 0.25) for s in (2, 5, 8, 11) if rng.random() < 0.25]
        return sub, ev
    sub = 4
    if style == "funk":
        steps = list(range(16)) if rng.random() < 0.7 else list(range(0, 16, 2))
        ev += _top(rng, sub, steps, top, 0.2)
        ev += [(0.0, "kick", 0.95), (1.0, "snare", 0.95), (3.0, "snare", 0.95)]
        ev += [(s / 4, "kick", 0.8) for s in (3, 6, 10, 11, 14) if rng.random() < 0.4]
        ev += [(s / 4, "snare", float(rng.uniform(0.15, 0.35)))
               for s in (1, 3, 6, 7, 9, 10, 13, 15) if rng.random() < 0.25]
    elif style == "halftime":
        ev += _top(rng, sub, list(range(0, 16, 2)), top, 0.15)
        ev += [(0.0, "kick", 0.95), (2.0, "snare", 1.0)]
        ev += [(s / 4, "kick", 0.8) for s in (3, 6, 10, 11, 14) if rng.random() < 0.35]
        ev += [(s / 4, "snare", float(rng.uniform(0.15, 0.3)))
               for s in (5, 7, 13, 15) if rng.random() < 0.3]
    else:  # rock
        steps = list(range(0, 16, 2)) if rng.random() < 0.8 else list(range(16))
        ev += _top(rng, sub, steps, top, 0.1)
        ev += [(0.0, "kick", 0.95), (2.0, "kick", 0.9), (1.0, "snare", 0.95), (3.0, "snare", 0.95)]
        ev += [(s / 4, "kick", 0.8) for s, p in ((10, 0.5), (6, 0.2), (14, 0.15), (7, 0.1))
               if rng.random() < p]
    return sub, ev


def _fill(rng: np.random.Generator, sub: int, n_toms: int, start_beat: float) -> list[Event]:
    """Snare-and-toms run from `start_beat` to the bar end, moving down the kit, kick on beats."""
    n = int(round((4.0 - start_beat) * sub))
    voices = ["snare_accent" if rng.random() < 0.3 else "snare"] + [f"tom{i}" for i in
                                                                  range(n_toms)]
    if n_toms and rng.random() < 0.4:
        voices = voices[1:]
    ev: list[Event] = []
    for i in range(n):
        if i and rng.random() < 0.15:
            continue
        beat = start_beat + i / sub
        vel = float(np.clip(0.7 + 0.25 * i / max(n - 1, 1) + rng.normal(0, 0.05), 0.3, 1.0))
        ev.append((beat, voices[min(int(i * len(voices) / n), len(voices) - 1)], vel))
        if abs(beat - round(beat)) < 1e-9 and rng.random() < 0.5:
            ev.append((beat, "kick", 0.8))
    return ev


def plan_song(kit: Kit, seed: int, *, bars: int | None = None, duration_s: float | None = None,
              style: str | None = None, bpm: float | None = None) -> Plan:
    """A humanised groove: sections of 4 bars, fills into crashes, hat or ride sections."""
    rng = np.random.default_rng([seed, zlib.crc32(kit.key.encode()), 0x5EED])
    style = style or STYLES[int(rng.integers(len(STYLES)))]
    if style not in STYLES:
        raise BeatSightError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    bpm = float(bpm if bpm is not None else round(float(rng.uniform(*TEMPO_RANGE)), 1))
    if not TEMPO_RANGE[0] / 2 <= bpm <= TEMPO_RANGE[1] * 2:
        raise BeatSightError(f"tempo {bpm} BPM is out of range")
    beat_s = 60.0 / bpm
    if bars is None:
        bars = max(1, int(np.ceil((duration_s or 8.0) / (4 * beat_s))))
    pal = _palette(kit, rng)
    timing_sd = float(rng.uniform(0.003, 0.008))       # how tight this drummer is (seconds)
    dynamics = float(rng.uniform(0.85, 1.05))
    lead_s = float(rng.uniform(0.3, 0.7))

    events: list[tuple[float, str, float]] = []         # (beat from song start, role, velocity)
    # Practice grooves: 2-bar phrases ending in a fill more often than songs would, so that
    # toms and cymbals are not vanishingly rare; hat or ride chosen per 4-bar section.
    top, prev_fill = "hat", False
    for bar in range(bars):
        if bar % 4 == 0:
            top = "ride" if (pal.ride is not None and rng.random() < 0.35) else "hat"
        sub, ev = _groove_bar(style, rng, top)
        fill_from = None
        if bar % 2 == 1 and rng.random() < 0.6:
            fill_from = float(rng.choice([3.0, 2.0, 0.0], p=[0.45, 0.35, 0.2]))
            ev = [e for e in ev if e[0] < fill_from] + _fill(rng, sub, len(pal.toms), fill_from)
        crash_at = []
        if prev_fill or (bar % 2 == 0 and rng.random() < 0.35) or (bar == 0 and rng.random() < 0.8):
            crash_at.append(0.0)
        if fill_from is None and rng.random() < 0.12:
            crash_at.append(2.0)                      # an accent crash mid-bar
        for at in crash_at if pal.cymbals else ():    # with the kick, replacing the hat
            ev = [e for e in ev if not (e[0] == at and e[1] in ("hat", "open", "ride", "bell"))]
            ev += [(at, f"cym{int(rng.integers(len(pal.cymbals)))}", 1.0), (at, "kick", 0.9)]
        prev_fill = fill_from is not None
        events += [(bar * 4 + b, role, v) for b, role, v in ev]

    # One strike per class per grid position (a crash's kick may meet the groove's kick).
    chosen: dict[tuple[float, str], tuple[Instrument, float]] = {}
    for beat, role, vel in events:
        inst = pal.get(role)
        key = (round(beat, 6), str(inst.cls) if inst else "")
        if inst is not None and (key not in chosen or chosen[key][1] < vel):
            chosen[key] = (inst, vel)
    strikes: dict[tuple[int, str], Strike] = {}
    for (beat, cls), (inst, vel) in sorted(chosen.items(), key=lambda kv: kv[0]):
        dt = float(np.clip(rng.normal(0.0, timing_sd), -3 * timing_sd, 3 * timing_sd))
        t_ms = max(0, int(round((lead_s + beat * beat_s + dt) * 1000)))
        v = round(float(np.clip(vel * dynamics + rng.normal(0.0, 0.05), 0.05, 1.0)), 3)
        if (t_ms, cls) not in strikes or strikes[(t_ms, cls)].velocity < v:
            strikes[(t_ms, cls)] = Strike(t_ms, inst, v)
    ordered = tuple(sorted(strikes.values(), key=lambda s: (s.time_ms, str(s.instrument.cls))))
    length_s = lead_s + bars * 4 * beat_s + 1.5        # let the last cymbals ring
    return Plan(ordered, length_s, bpm, style, lead_s)


def plan_isolated(kit: Kit, seed: int, *, per_class: int = 4, gap_s: float = 0.6) -> Plan:
    """One hit per onset with `gap_s` between them: every class the kit has, velocities spread."""
    rng = np.random.default_rng([seed, zlib.crc32(kit.key.encode()), 0x150])
    pool: list[tuple[Instrument, float]] = []
    for insts in kit.by_class().values():
        for k in range(per_class):
            inst = insts[(k + int(rng.integers(len(insts)))) % len(insts)]
            pool.append((inst, round(float(rng.uniform(0.25, 1.0)), 3)))
    order = rng.permutation(len(pool))
    strikes = tuple(Strike(int(round((0.3 + j * gap_s) * 1000)), pool[i][0], pool[i][1])
                    for j, i in enumerate(order))
    return Plan(strikes, 0.3 + len(pool) * gap_s + 0.3, 120.0, "isolated")


# ---------------------------------------------------------------- mixing
def mix(plan: Plan, *, seed: int, sr: int = SAMPLE_RATE, max_ring_s: float | None = None,
        normalise: bool = True) -> np.ndarray:
    """Sum the strikes' layer samples at their exact sample positions; peak-normalise, no clipping.

    Cymbals ring on under later hits; an open hi-hat is choked by the next hi-hat hit as a real
    one is. `max_ring_s` cuts every sample after that long (isolated hits stay isolated).
    `normalise=False` keeps the raw sum (tests use it to find each strike's exact start).
    """
    rng = np.random.default_rng([seed, 0x313])
    out = np.zeros(int(np.ceil(plan.length_s * sr)) + 1, dtype=np.float64)
    hat_times = [s.time_ms for s in plan.strikes if s.instrument.cls in ("hihat_closed",
                                                                           "hihat_open")]
    fade = int(_CHOKE_FADE_S * sr)
    for s in plan.strikes:
        layer = s.instrument.layer_for(s.velocity)
        sample = load_sample(layer.path, sr)
        n = len(sample)
        if s.instrument.cls == "hihat_open":
            later = [t for t in hat_times if t > s.time_ms]
            if later:
                n = min(n, int(round((later[0] - s.time_ms) * sr / 1000)) + fade)
        if max_ring_s is not None:
            n = min(n, int(max_ring_s * sr))
        start = int(round(s.time_ms * sr / 1000))
        n = min(n, len(out) - start)
        if n <= 0:
            continue
        seg = sample[:n].astype(np.float64) * (s.velocity * layer.gain * s.instrument.volume)
        if n < len(sample):
            k = min(fade, n)
            seg[n - k:] *= np.linspace(1.0, 0.0, k)
        out[start:start + n] += seg
    peak = float(np.max(np.abs(out)))
    if normalise and peak > 0:
        out *= 10 ** (float(rng.uniform(-9.0, -1.0)) / 20) / peak   # vary level, never clip
    return out.astype(np.float32)


def render_song(kit: Kit, seed: int, *, bars: int | None = None, duration_s: float | None = None,
                style: str | None = None, bpm: float | None = None) -> tuple[np.ndarray, list[Hit]]:
    """A groove's audio (mono float32, 44.1 kHz) and its ground-truth hits."""
    plan = plan_song(kit, seed, bars=bars, duration_s=duration_s, style=style, bpm=bpm)
    return mix(plan, seed=seed), plan.hits


def render_isolated(kit: Kit, seed: int, *, per_class: int = 4,
                    gap_s: float = 0.6) -> tuple[np.ndarray, list[Hit]]:
    """Isolated hits (one per onset, `gap_s` apart, tails cut before the next): for evaluation."""
    plan = plan_isolated(kit, seed, per_class=per_class, gap_s=gap_s)
    return mix(plan, seed=seed, max_ring_s=gap_s - 0.05), plan.hits


# ---------------------------------------------------------------- files
def _wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_plan(out_dir: str | Path, name: str, kit: Kit, plan: Plan, audio: np.ndarray,
               seed: int, sr: int = SAMPLE_RATE) -> tuple[Path, Path]:
    """Write `name.wav` and its ground-truth `name.bsm` (real sha256 of the WAV); both atomic."""
    out_dir = Path(out_dir)
    wav, bsm = out_dir / f"{name}.wav", out_dir / f"{name}.bsm"
    data = _wav_bytes(audio, sr)
    atomic_write(wav, lambda fh: fh.write(data))
    bm = new_beatmap(plan.hits, title=f"{name} ({plan.style}, {kit.name})",
                     audio_filename=wav.name, duration_ms=int(round(len(audio) * 1000 / sr)),
                     bpm=plan.bpm, audio_hash="sha256:" + hashlib.sha256(data).hexdigest(),
                     sample_rate=sr, artist=kit.name, creator="beatsight-sim")
    bm["metadata"]["beatmapId"] = str(uuid.UUID(bytes=hashlib.sha256(
        f"{kit.key}/{name}/{seed}".encode()).digest()[:16], version=4))
    bm["metadata"]["createdAt"] = bm["metadata"]["modifiedAt"] = RENDER_TIMESTAMP
    bm["metadata"]["description"] = (f"Rendered by beatsight-sim from the Hydrogen kit "
                                     f"{kit.name!r} ({plan.style}, seed {seed}); ground truth.")
    write_bsm(bsm, bm)
    return wav, bsm


def write_song(out_dir: str | Path, name: str, kit: Kit, seed: int, *, bars: int | None = None,
               duration_s: float | None = None, style: str | None = None,
               bpm: float | None = None, band_db: float | None = None) -> tuple[Path, Path]:
    """Render a groove and write `name.wav` + `name.bsm` into `out_dir`; returns both paths.
    `band_db`: mix in a band (`simulation.band`) at this level relative to the drums."""
    plan = plan_song(kit, seed, bars=bars, duration_s=duration_s, style=style, bpm=bpm)
    audio = mix(plan, seed=seed)
    if band_db is not None:
        from .band import render_band, with_band

        audio = with_band(audio, render_band(plan, seed, len(audio)), band_db)
    return write_plan(out_dir, name, kit, plan, audio, seed)


def write_isolated(out_dir: str | Path, name: str, kit: Kit, seed: int, *, per_class: int = 4,
                   gap_s: float = 0.6) -> tuple[Path, Path]:
    """Render isolated hits and write `name.wav` + `name.bsm`; returns both paths."""
    plan = plan_isolated(kit, seed, per_class=per_class, gap_s=gap_s)
    return write_plan(out_dir, name, kit, plan, mix(plan, seed=seed, max_ring_s=gap_s - 0.05),
                      seed)
