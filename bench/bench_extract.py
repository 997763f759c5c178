"""Benchmark: `collect extract-beatmap` vs the original collector's approach, same song, same run.

The song is a ~3-minute groove rendered from a real Hydrogen kit (simulation.render) with its
ground-truth .bsm (~1000 hits). The original approach, as `collect_training_data.py` did it:
for every hit, reload the whole song with librosa, cut the window, write the snippet, and
rewrite metadata.json. Ours: `SampleStore.extract_beatmap` (hash + one decode + one pass +
one sync + one metadata write). Prints both times and the ratio.

    .venv/bin/python bench/bench_extract.py [--kit GMRockKit] [--seconds 180] [--bpm 90]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np


def render(out_dir: Path, kit_key: str, seconds: float, bpm: float, seed: int = 1
           ) -> tuple[Path, Path]:
    """A groove from a real kit with its ground-truth beatmap (written by simulation.render)."""
    from beatsight.simulation.kits import get_kit
    from beatsight.simulation.render import write_song

    kit = get_kit(kit_key)
    return write_song(out_dir, f"bench_{kit.key}_{int(seconds)}s", kit, seed, duration_s=seconds,
                      bpm=bpm, style="rock")


def original_extract(bsm: Path, audio: Path, data_dir: Path) -> int:
    """The original collector's per-hit loop (reload song, cut, write, save metadata)."""
    import librosa
    import soundfile as sf

    data_dir.mkdir(parents=True, exist_ok=True)
    meta = {"samples": [], "version": "1.0.0"}
    beatmap = json.loads(bsm.read_text())
    count = 0
    for hit in beatmap.get("hitObjects", []):
        onset, comp = hit["time"] / 1000.0, hit["component"]
        y, sr = librosa.load(str(audio), sr=44100)
        window = int(100.0 * sr / 1000)
        center = int(onset * sr)
        start, end = max(0, center - window // 4), min(len(y), center + window)
        sid = str(uuid.uuid4())
        (data_dir / comp).mkdir(exist_ok=True)
        sf.write(str(data_dir / comp / f"{sid}.wav"), y[start:end], sr)
        meta["samples"].append({"id": sid, "component": comp, "source_audio": audio.name,
                                "onset_time": onset, "window_ms": 100.0, "sample_rate": sr,
                                "source": "beatmap", "path": f"{comp}/{sid}.wav"})
        (data_dir / "metadata.json").write_text(json.dumps(meta, indent=2))
        count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default="GMRockKit")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--bpm", type=float, default=90.0)
    ap.add_argument("--workdir", type=Path, default=None, help="Keep files here (default: tmp).")
    args = ap.parse_args()

    from beatsight.client.store import SampleStore
    from beatsight.common.bsm import read_bsm, write_bsm

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        wav, bsm = render(work, args.kit, args.seconds, args.bpm)
        n_hits = len(read_bsm(bsm)["hitObjects"])
        print(f"song: {wav.name}, {args.seconds:.0f} s, {n_hits} hits from kit {args.kit} "
              f"(rendered in {time.perf_counter() - t:.1f} s)")

        # Warm both paths up (lazy imports, first-call set-up) on a 3-hit beatmap first.
        warm = work / "warmup.bsm"
        bm = read_bsm(bsm)
        bm["hitObjects"] = bm["hitObjects"][:3]
        write_bsm(warm, bm)
        SampleStore(work / "warm_ours").extract_beatmap(warm, wav)
        original_extract(warm, wav, work / "warm_original")

        t, c = time.perf_counter(), time.process_time()
        rep = SampleStore(work / "ours").extract_beatmap(bsm, wav)
        ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
        print(f"ours     extract-beatmap: {ours:8.2f} s wall, {ours_cpu:7.2f} s CPU  "
              f"({rep.added} samples, {rep.added / ours:.0f} hits/s)")
        t = time.perf_counter()
        rerun = SampleStore(work / "ours").extract_beatmap(bsm, wav)
        print(f"ours     re-run (idempotent, {rerun.added} added): "
              f"{time.perf_counter() - t:.2f} s")

        t, c = time.perf_counter(), time.process_time()
        n = original_extract(bsm, wav, work / "original")
        orig, orig_cpu = time.perf_counter() - t, time.process_time() - c
        print(f"original per-hit reload: {orig:8.2f} s wall, {orig_cpu:7.2f} s CPU  "
              f"({n} samples, {n / orig:.1f} hits/s)")
        print(f"speed-up: {orig / ours:.1f}x wall clock, {orig_cpu / ours_cpu:.1f}x CPU time "
              f"(load average {os.getloadavg()[0]:.1f})")
        # Same windows? Compare one snippet's samples (ours is the feature window: 25 ms pre).
        store = SampleStore(work / "ours")
        rec = store.samples()[len(store.samples()) // 2]
        import soundfile as sf

        mine = sf.read(str(store.path_of(rec)), dtype="float32")[0]
        print(f"check: snippet length {len(mine)} samples, "
              f"peak {float(np.max(np.abs(mine))):.3f}")


if __name__ == "__main__":
    main()
