"""More real drum recordings: the one-shot drum samples of Debian packages, as Hydrogen kits.

Cross-kit accuracy grows with the number of kits trained on (model-quality section of the
README). Besides Hydrogen's kits and the SoundFonts (`simulation.soundfonts`), Debian ships
single drum hits with four programs: the software drum module exaDrums (one recorded acoustic
kit), the Synthesis ToolKit (`stk`: an eight-piece kit), Sonic Pi (`sonic-pi-samples`: an
acoustic kit with soft and hard strikes, and electronic kicks and snares) and LMMS
(`lmms-common`: acoustic and electronic kicks, snares, hi-hats, cymbals and toms). Grouped into
six kits here and written as Hydrogen kits (`drumkit.xml` + WAV), everything downstream reads
them unchanged. A piece with two recordings (soft, hard) gets two velocity layers.

Like the SoundFont kits they only ever *train*: held-out kits stay Hydrogen kits. A recording
that is one of Hydrogen's (fingerprint correlation above `SAME_SAMPLE`) is left out, so no
held-out kit is heard in training through another package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from beatsight.common.atomic import atomic_write_text, build_dir_once
from beatsight.common.audio import SAMPLE_RATE, load_audio
from beatsight.common.errors import BeatSightError

from .soundfonts import SAME_SAMPLE, drumkit_xml, fingerprint

SHARE = Path("/usr/share")
PACKAGES = ("exadrums", "stk", "sonic-pi-samples", "lmms-common")
INSTALL_HINT = f"install them with: sudo apt-get install {' '.join(PACKAGES)}"
SAMPLE_KITS_DIR = "sample-kits"    # where a data root keeps its sample kits
FORMAT_VERSION = 1
STK_RATE = 22050                   # STK's rawwaves: headerless 16-bit big-endian mono

EXA, STK, SP, LM = "exadrums", "stk/rawwaves", "sonic-pi/samples", "lmms/samples/drums"


@dataclass(frozen=True)
class SampleKit:
    key: str                                          # directory name = kit key
    family: str
    license: str
    pieces: tuple[tuple[str, tuple[str, ...]], ...]   # (instrument name, files softest first)


def _numbered(name: str, files: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """"Kick 1", "Kick 2", ...: one instrument per recording (`kits.NAME_RULES` maps them)."""
    return tuple((f"{name} {i + 1}", (f,)) for i, f in enumerate(files))


def _copyright(package: str) -> str:
    return f"see /usr/share/doc/{package}/copyright (Debian package {package})"


SAMPLE_KITS: tuple[SampleKit, ...] = (
    SampleKit("exaDrums Default", "acoustic", _copyright("exadrums"), (
        ("Kick", (f"{EXA}/BD_Acou_01.wav",)), ("Snare", (f"{EXA}/Snr_Acou_01.wav",)),
        ("Hi-Hat Closed", (f"{EXA}/HiHat.wav",)), ("Crash", (f"{EXA}/Crash_High.wav",)),
        ("Ride", (f"{EXA}/RideEdge.wav",)), ("Ride Bell", (f"{EXA}/RideBell.wav",)),
        ("High Tom", (f"{EXA}/Tom01.wav",)), ("Floor Tom", (f"{EXA}/Tom03.wav",)))),
    SampleKit("STK Drums", "acoustic", _copyright("stk"), (
        ("Kick", (f"{STK}/bassdrum.raw",)), ("Snare", (f"{STK}/snardrum.raw",)),
        ("Hi-Hat Closed", (f"{STK}/hihatcym.raw",)), ("High Tom", (f"{STK}/tomhidrm.raw",)),
        ("Mid Tom", (f"{STK}/tommiddr.raw",)), ("Floor Tom", (f"{STK}/tomlowdr.raw",)),
        ("Crash", (f"{STK}/crashcym.raw",)), ("Ride", (f"{STK}/ridecymb.raw",)))),
    SampleKit("Sonic Pi Drums", "acoustic", _copyright("sonic-pi-samples"), (
        ("Kick", (f"{SP}/drum_bass_soft.flac", f"{SP}/drum_bass_hard.flac")),
        ("Kick 2", (f"{SP}/drum_heavy_kick.flac",)),
        ("Snare", (f"{SP}/drum_snare_soft.flac", f"{SP}/drum_snare_hard.flac")),
        ("Hi-Hat Closed", (f"{SP}/drum_cymbal_closed.flac",)),
        ("Hi-Hat Pedal", (f"{SP}/drum_cymbal_pedal.flac",)),
        ("Hi-Hat Open", (f"{SP}/drum_cymbal_open.flac",)),
        ("Crash", (f"{SP}/drum_cymbal_soft.flac", f"{SP}/drum_cymbal_hard.flac")),
        ("High Tom", (f"{SP}/drum_tom_hi_soft.flac", f"{SP}/drum_tom_hi_hard.flac")),
        ("Mid Tom", (f"{SP}/drum_tom_mid_soft.flac", f"{SP}/drum_tom_mid_hard.flac")),
        ("Floor Tom", (f"{SP}/drum_tom_lo_soft.flac", f"{SP}/drum_tom_lo_hard.flac")))),
    SampleKit("Sonic Pi Electro", "electronic", _copyright("sonic-pi-samples"), (
        *_numbered("Kick", [f"{SP}/{n}.flac" for n in (
            "bd_808", "bd_ada", "bd_boom", "bd_fat", "bd_gas", "bd_haus", "bd_klub",
            "bd_mehackit", "bd_pure", "bd_sone", "bd_tek", "bd_zome", "bd_zum",
            "elec_hollow_kick", "elec_soft_kick")]),
        *_numbered("Snare", [f"{SP}/{n}.flac" for n in (
            "sn_dolf", "sn_dub", "sn_generic", "sn_zome", "elec_filt_snare", "elec_hi_snare",
            "elec_lo_snare", "elec_mid_snare", "elec_snare")]))),
    SampleKit("LMMS Acoustic", "acoustic", _copyright("lmms-common"), (
        *_numbered("Kick", [f"{LM}/bassdrum_acoustic0{i}.ogg" for i in (1, 2)]),
        *_numbered("Snare", [f"{LM}/{n}.ogg" for n in (
            "snare_acoustic01", "snare_muffled01", "snare_muffled02")]),
        *_numbered("Hi-Hat Closed", [f"{LM}/hihat_closed0{i}.ogg" for i in range(1, 6)]),
        ("Hi-Hat Pedal", (f"{LM}/hihat_foot_pedal01.ogg",)),
        *_numbered("Hi-Hat Open", [f"{LM}/hihat_opened0{i}.ogg" for i in range(1, 4)]),
        ("Crash", (f"{LM}/crash01.ogg",)), ("Crash 2", (f"{LM}/crash02.ogg",)),
        *_numbered("Ride", [f"{LM}/ride0{i}.ogg" for i in (1, 2)]),
        ("High Tom", (f"{LM}/tom_hi01.ogg",)), ("Mid Tom", (f"{LM}/tom_mid01.ogg",)),
        ("Floor Tom", (f"{LM}/tom_low01.ogg",)))),
    # kick04.ogg is left out: libsndfile cannot decode it
    SampleKit("LMMS Electro", "electronic", _copyright("lmms-common"), (
        *_numbered("Kick", [f"{LM}/{n}.ogg" for n in (
            "kick01", "kick02", "kick03", "bassdrum01", "bassdrum02", "bassdrum03",
            "bassdrum04", "kick_hard01", "kick_soft01", "kick_soft02", "kick_long01",
            "kick_hiphop01", "kick_distorted01", "kick_hardcore01")]),
        *_numbered("Snare", [f"{LM}/{n}.ogg" for n in (
            "snare01", "snare02", "snare03", "snare04", "snare05", "snare06", "snare07",
            "snare_electro01", "snare_harsh01", "snare_hiphop01", "snare_hiphop02",
            "snare_short01", "snare_rim01")]))),
)
SAMPLE_FAMILY: dict[str, str] = {k.key: k.family for k in SAMPLE_KITS}


def sample_files() -> list[str]:
    """Every recording the kits use, relative to the share directory."""
    return sorted({f for k in SAMPLE_KITS for _, fs in k.pieces for f in fs})


def read_sample(path: Path) -> np.ndarray:
    """One recording as float32 mono at SAMPLE_RATE."""
    if path.suffix == ".raw":
        x = np.frombuffer(path.read_bytes(), ">i2").astype(np.float32) / 32768
        return librosa.resample(x, orig_sr=STK_RATE, target_sr=SAMPLE_RATE)
    return load_audio(path)


def _hydrogen_fingerprints(kits_root: str | Path | None) -> np.ndarray:
    from .kits import find_kits  # kits imports SAMPLE_FAMILY from here

    prints = [fingerprint(load_audio(layer.path)) for kit in find_kits(kits_root)
              for inst in kit.instruments for layer in inst.layers]
    return np.stack(prints)


def _write_kits(work: Path, share: Path, hydrogen: np.ndarray) -> dict[str, list[str]]:
    """Every kit of SAMPLE_KITS under `work`; returns the files left out per kit."""
    left_out: dict[str, list[str]] = {}
    for kit in SAMPLE_KITS:
        kit_dir = work / kit.key
        kit_dir.mkdir()
        instruments = []
        for name, files in kit.pieces:
            layers = []
            for i, rel in enumerate(files):
                x = read_sample(share / rel)
                if float(np.max(hydrogen @ fingerprint(x))) > SAME_SAMPLE:
                    left_out.setdefault(kit.key, []).append(rel)
                    continue
                fname = Path(rel).stem + ".wav"
                sf.write(kit_dir / fname, x, SAMPLE_RATE, subtype="PCM_16")
                layers.append((fname, i / len(files), (i + 1) / len(files)))
            if layers:
                instruments.append((name, layers))
        atomic_write_text(kit_dir / "drumkit.xml", drumkit_xml(kit.key, kit.license, instruments))
    return left_out


def build_sample_kits(out: str | Path, share: Path = SHARE,
                      kits_root: str | Path | None = None) -> list[Path]:
    """Write every kit of `SAMPLE_KITS` into `out/<key>/`; returns the kit directories.
    Cached: a finished `out` built from the same files is reused."""
    out = Path(out)
    files = sample_files()
    missing = [f for f in files if not (share / f).is_file()]
    if missing:
        raise BeatSightError(f"{share / missing[0]}: drum sample not found "
                             f"({len(missing)} missing); {INSTALL_HINT}")
    stamp = {"format": FORMAT_VERSION,
             "kits": [[k.key, [[n, list(fs)] for n, fs in k.pieces]] for k in SAMPLE_KITS],
             "bytes": {f: (share / f).stat().st_size for f in files}}
    build_dir_once(out, "beatsight-samples.json", stamp, lambda work: {
        "left_out": _write_kits(work, share, _hydrogen_fingerprints(kits_root))})
    return [out / k.key for k in SAMPLE_KITS]
