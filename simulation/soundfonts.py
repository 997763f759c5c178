"""More real drum kits: the sampled drum kits of Debian's SoundFont packages, as Hydrogen kits.

Cross-kit accuracy is limited by how few kits there are to learn "a kick" from (the
model-quality section of the README), and Hydrogen ships 14. Debian's `fluid-soundfont-gm`
(Fluid R3 GM, MIT) holds eight sampled GM drum kits and `avldrums.lv2-soundfont` (AVL Drumkits,
CC-BY-SA) a recorded acoustic kit. `fluidsynth` renders every kit piece at a few velocities
into a directory that looks like a Hydrogen kit (`drumkit.xml` + WAV files), so everything
downstream (`simulation.kits.parse_kit`, the renders, the contributors) reads them unchanged.

These kits only ever *train*: the held-out kits of the federation and the crossval folds stay
Hydrogen kits, so every quality number is still on kits nobody trained on. AVL's Black Pearl
is left out: it is Glen MacArthur's sampling of the same Pearl kit as Hydrogen's held-out "The
Black Pearl 1.0" (same author; the recordings' waveforms do not match, so a leak could not be
ruled out or in by the duplicate check below).
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from beatsight.common.atomic import atomic_write_text, build_dir_once
from beatsight.common.audio import SAMPLE_RATE
from beatsight.common.errors import BeatSightError

SF2_DIR = Path("/usr/share/sounds/sf2")
INSTALL_HINT = "install them with: sudo apt-get install fluidsynth fluid-soundfont-gm " \
               "avldrums.lv2-soundfont"
FORMAT_VERSION = 1
FONT_KITS_DIR = "font-kits"       # where a data root keeps its rendered SoundFont kits
HYDROGEN_NS = "http://www.hydrogen-music.org/drumkit"


@dataclass(frozen=True)
class FontKit:
    key: str          # directory name = kit key
    font: str         # file under SF2_DIR
    bank: int         # 128: a GM drum bank (MIDI channel 10); 0: a melodic bank used for drums
    program: int
    family: str
    license: str


FONT_KITS: tuple[FontKit, ...] = (
    *(FontKit(f"FluidR3 {name}", "FluidR3_GM.sf2", 128, prog, family, "MIT (Fluid R3 GM)")
      for name, prog, family in (("Standard", 0, "acoustic"), ("Room", 8, "acoustic"),
                                 ("Power", 16, "acoustic"), ("Electronic", 24, "electronic"),
                                 ("TR-808", 25, "electronic"), ("Jazz", 32, "acoustic"),
                                 ("Brush", 40, "acoustic"), ("Orchestra", 48, "acoustic"))),
    FontKit("AVL Red Zeppelin", "Red_Zeppelin_4_LV2.sf2", 0, 0, "acoustic",
            "CC-BY-SA 4.0 (AVL Drumkits, Glen MacArthur)"),
)
FONT_FAMILY: dict[str, str] = {k.key: k.family for k in FONT_KITS}

# General MIDI percussion keys -> instrument names that `simulation.kits.NAME_RULES` maps to
# the intended class (a test checks every one). Keys a kit does not fill render silent and are
# left out of its drumkit.xml.
GM_NOTES: tuple[tuple[int, str], ...] = (
    (36, "Kick"), (35, "Kick 2"),
    (38, "Snare"), (40, "Snare 2"),
    (42, "Hi-Hat Closed"), (44, "Hi-Hat Pedal"), (46, "Hi-Hat Open"),
    (41, "Floor Tom"), (43, "Floor Tom B"), (45, "Mid Tom"), (47, "Mid Tom B"),
    (48, "High Tom B"), (50, "High Tom"),
    (49, "Crash"), (57, "Crash 2"), (51, "Ride"), (59, "Ride 2"), (53, "Ride Bell"),
    (52, "China"),
)
GROOVE_PIECES = ("Kick", "Snare")   # kept even when shared: a kit needs both to groove with
VELOCITIES: tuple[int, ...] = (40, 72, 100, 127)     # one layer each, MIDI velocity
HIT_SECONDS = 4.0                                    # rendered length per hit (cymbal tails)
SILENT_DB = -60.0                                    # a key whose render peaks below: unfilled


def varlen(n: int) -> bytes:
    """A MIDI variable-length quantity (delta times)."""
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def midi_file(track: bytes, ticks_per_beat: int = 480) -> bytes:
    """A format-0 MIDI file around one track's events (end-of-track included by the caller)."""
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_beat)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def _midi(kit: FontKit, ticks_per_hit: int) -> bytes:
    """A format-0 MIDI file striking every GM key at every velocity, one hit per slot."""
    ch = 9 if kit.bank == 128 else 0
    ev = bytearray(b"\x00\xff\x51\x03" + (1_000_000).to_bytes(3, "big"))   # 60 BPM: 1 s/beat
    ev += bytes([0, 0xB0 | ch, 0, kit.bank & 0x7F, 0, 0xC0 | ch, kit.program])
    rest = ticks_per_hit
    for note, _ in GM_NOTES:
        for vel in VELOCITIES:
            ev += varlen(rest) + bytes([0x90 | ch, note, vel])
            ev += varlen(48) + bytes([0x80 | ch, note, 0])
            rest = ticks_per_hit - 48
    ev += varlen(rest) + b"\xff\x2f\x00"
    return midi_file(bytes(ev))


def render_midi(midi: bytes, font: Path) -> np.ndarray:
    """A MIDI file rendered by fluidsynth with `font` (dry: no reverb, no chorus), mono."""
    with tempfile.TemporaryDirectory(prefix="beatsight-fluidsynth-") as tmp:
        mid, wav = Path(tmp) / "render.mid", Path(tmp) / "render.wav"
        mid.write_bytes(midi)
        cmd = ["fluidsynth", "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", "0.8",
               "-r", str(SAMPLE_RATE), "-F", str(wav), str(font), str(mid)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except FileNotFoundError:
            raise BeatSightError(f"fluidsynth not found; {INSTALL_HINT}") from None
        except subprocess.CalledProcessError as exc:
            msg = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise BeatSightError(f"{font}: fluidsynth failed ({msg[0]})") from None
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise BeatSightError(f"{font}: fluidsynth rendered at {sr} Hz, not {SAMPLE_RATE}")
    return audio.mean(axis=1)


def drumkit_xml(key: str, license: str,
                instruments: list[tuple[str, list[tuple[str, float, float]]]]) -> str:
    """Hydrogen's drumkit.xml for `instruments`: (name, [(file, min velocity, max velocity)])."""
    ET.register_namespace("", HYDROGEN_NS)
    root = ET.Element(f"{{{HYDROGEN_NS}}}drumkit_info")

    def sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        el = ET.SubElement(parent, f"{{{HYDROGEN_NS}}}{tag}")
        el.text = text
        return el

    sub(root, "name", key)
    sub(root, "license", license)
    inst_list = sub(root, "instrumentList")
    for i, (name, layers) in enumerate(instruments):
        inst = sub(inst_list, "instrument")
        sub(inst, "id", str(i))
        sub(inst, "name", name)
        for fname, lo, hi in layers:
            layer = sub(inst, "layer")
            sub(layer, "filename", fname)
            sub(layer, "min", f"{lo:.3f}")
            sub(layer, "max", f"{hi:.3f}")
            sub(layer, "gain", "1")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


FINGERPRINT_S = 0.5
SAME_SAMPLE = 0.99      # correlation above which two renders are the same recording


def fingerprint(x: np.ndarray) -> np.ndarray:
    f = np.zeros(int(FINGERPRINT_S * SAMPLE_RATE), np.float32)
    onset = int(np.argmax(np.abs(x) >= np.max(np.abs(x)) * 0.01))
    seg = x[onset:onset + len(f)]
    f[:len(seg)] = seg
    return f / (np.linalg.norm(f) + 1e-12)


def _pieces(kit: FontKit, font: Path) -> list[tuple[int, str, list[np.ndarray]]]:
    """(GM key, name, one render per velocity) for every key the kit fills."""
    audio = render_midi(_midi(kit, int(HIT_SECONDS * 480)), font)   # every strike, in order
    hit = int(HIT_SECONDS * SAMPLE_RATE)
    floor = 10 ** (SILENT_DB / 20)
    pieces, slot = [], 1                          # slot 0 is the MIDI file's leading rest
    for note, name in GM_NOTES:
        layers = []
        for _ in VELOCITIES:
            x = audio[slot * hit:(slot + 1) * hit]
            slot += 1
            peak = float(np.max(np.abs(x))) if x.size else 0.0
            if peak <= floor:
                layers.append(None)
                continue
            loud = np.flatnonzero(np.abs(x) > peak * floor)     # tail ends below SILENT_DB
            layers.append(x[:loud[-1] + 1])
        if any(x is not None for x in layers):
            pieces.append((note, name, layers))
    return pieces


def _write_kits(work: Path, fonts_dir: Path) -> None:
    """Every kit of FONT_KITS as a Hydrogen kit under `work`, each recording written once."""
    bounds = np.concatenate([[0.0], (np.array(VELOCITIES[:-1]) + np.array(VELOCITIES[1:]))
                             / 2 / 127, [1.0]])
    seen: list[np.ndarray] = []
    for kit in FONT_KITS:
        kit_dir = work / kit.key
        kit_dir.mkdir()
        instruments = []
        for note, name, renders in _pieces(kit, fonts_dir / kit.font):
            loudest = next(x for x in reversed(renders) if x is not None)
            fp = fingerprint(loudest)
            if name not in GROOVE_PIECES and any(float(fp @ s) > SAME_SAMPLE for s in seen):
                continue
            seen.append(fp)
            layers = []
            for v, x in enumerate(renders):
                if x is None:
                    continue
                fname = f"{note:02d}-{name.lower().replace(' ', '-')}-v{VELOCITIES[v]}.wav"
                sf.write(kit_dir / fname, x, SAMPLE_RATE, subtype="PCM_16")
                layers.append((fname, float(bounds[v]), float(bounds[v + 1])))
            instruments.append((name, layers))
        atomic_write_text(kit_dir / "drumkit.xml", drumkit_xml(kit.key, kit.license, instruments))


def build_font_kits(out: str | Path, fonts_dir: Path = SF2_DIR) -> list[Path]:
    """Render every kit of `FONT_KITS` into `out/<key>/`; returns the kit directories.

    GM kits of one font share many recordings (Fluid R3's eight kits have one crash), so a kit
    piece whose loudest render is the same recording as a piece already written (correlation
    above SAME_SAMPLE) is left out, so each recording trains once; except the main kick and
    snare (GROOVE_PIECES), without which a kit renders no groove. Cached: a finished `out` with the
    same format and fonts is reused."""
    out = Path(out)
    fonts = sorted({k.font for k in FONT_KITS})
    for f in fonts:
        if not (fonts_dir / f).is_file():
            raise BeatSightError(f"{fonts_dir / f}: SoundFont not found; {INSTALL_HINT}")
    stamp = {"format": FORMAT_VERSION, "velocities": list(VELOCITIES),
             "kits": [[k.key, k.font, k.bank, k.program] for k in FONT_KITS],
             "font_bytes": {f: (fonts_dir / f).stat().st_size for f in fonts}}
    build_dir_once(out, "beatsight-fonts.json", stamp, lambda work: _write_kits(work, fonts_dir))
    return [out / k.key for k in FONT_KITS]
