"""A band to play along: bass and chords under a rendered groove.

Real songs are not drum stems: a bass guitar starts low notes with the kicks, a distorted guitar
or a piano fills the snare's and the hi-hat's bands. `process` is tuned on drum renders, so
`bench/process_quality.py --band DB` measures it on the same grooves with a band mixed in. The
band follows the groove's tempo and bars (one chord per bar, the bass in eighths on its root),
rendered by fluidsynth from Fluid R3 GM (`fluid-soundfont-gm`, the package the SoundFont kits
come from); the ground truth stays the drums'.
"""

from __future__ import annotations

import numpy as np

from beatsight.common.errors import BeatSightError

from .render import Plan
from .soundfonts import INSTALL_HINT, SF2_DIR, midi_file, render_midi, varlen

BAND_FONT = SF2_DIR / "FluidR3_GM.sf2"
TICKS = 480                                     # per beat
# (name, General MIDI program) of the instrument playing the chords
CHORD_SOUNDS: tuple[tuple[str, int], ...] = (("piano", 0), ("electric piano", 4),
                                             ("organ", 16), ("overdriven guitar", 29),
                                             ("distorted guitar", 30), ("strings", 48))
PROGRESSIONS: tuple[tuple[int, ...], ...] = ((0, 7, 9, 5), (9, 5, 0, 7), (0, 5, 7, 5),
                                             (0, 0, 5, 7))   # semitones above the key


def band_midi(plan: Plan, seed: int) -> tuple[bytes, str]:
    """The band's MIDI for `plan` (its tempo, first beat and bars) and the chords' sound."""
    rng = np.random.default_rng([seed, 0xBA4D])
    key = 28 + int(rng.integers(12))              # the bass's root: E1 .. D#2
    prog = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    name, program = CHORD_SOUNDS[int(rng.integers(len(CHORD_SOUNDS)))]
    beats_per_s = plan.bpm / 60.0
    bars = int(np.ceil((plan.length_s - plan.first_beat_s) * beats_per_s / 4))
    notes: list[tuple[int, int, int, int, int]] = []  # (start tick, end tick, channel, note, vel)
    for bar in range(bars):
        step = prog[bar % len(prog)]
        root = key + step
        t0 = bar * 4 * TICKS
        for eighth in range(8):                    # bass: eighths on the root, an octave now and then
            note = root + (12 if rng.random() < 0.15 else 0)
            start = t0 + eighth * TICKS // 2
            notes.append((start, start + TICKS * 2 // 5, 0, note,
                          int(rng.integers(80, 110))))
        chord = [root + 24, root + 28 - (step == 9), root + 31]    # minor on the sixth
        for half in range(2):                      # chords: on beats 1 and 3
            start = t0 + half * 2 * TICKS
            notes += [(start, start + 2 * TICKS - 20, 1, n, int(rng.integers(60, 90)))
                      for n in chord]
    lead = int(round(plan.first_beat_s * beats_per_s * TICKS))
    events = sorted([(s + lead, 0x90 | ch, n, v) for s, _, ch, n, v in notes]
                    + [(e + lead, 0x80 | ch, n, 0) for _, e, ch, n, _ in notes])
    track = bytearray(b"\x00\xff\x51\x03" + int(round(60e6 / plan.bpm)).to_bytes(3, "big"))
    track += bytes([0, 0xC0, 33, 0, 0xC1, program])   # fingered bass; the chords' sound
    now = 0
    for tick, status, note, vel in events:
        track += varlen(tick - now) + bytes([status, note, vel])
        now = tick
    track += b"\x00\xff\x2f\x00"
    return midi_file(bytes(track), TICKS), name


def render_band(plan: Plan, seed: int, n_samples: int) -> np.ndarray:
    """The band for `plan`, mono float32, `n_samples` long (cut or padded with silence)."""
    if not BAND_FONT.is_file():
        raise BeatSightError(f"{BAND_FONT} not found; {INSTALL_HINT}")
    audio = render_midi(band_midi(plan, seed)[0], BAND_FONT)
    out = np.zeros(n_samples, np.float32)
    out[:min(n_samples, len(audio))] = audio[:n_samples]
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def with_band(drums: np.ndarray, band: np.ndarray, db: float) -> np.ndarray:
    """`drums` with `band` mixed in at `db` of the drums' RMS level, peak at the drums' peak."""
    if _rms(band) == 0 or _rms(drums) == 0:
        return drums
    out = drums + band * (_rms(drums) / _rms(band) * 10 ** (db / 20))
    return (out * (np.max(np.abs(drums)) / np.max(np.abs(out)))).astype(np.float32)
