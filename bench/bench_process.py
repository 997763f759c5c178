"""Benchmark: `process` on a 3-minute rendered groove, as a multiple of real time.

Runs in one process, on the same song and the same onsets:
- ours: `process_file` (decode, onsets, batched features + batched CNN, heuristic, tempo grid,
  write), with the CNN precision chosen by `--precision` (default auto: int8 on x86);
- the original approach: the same pipeline with the CNN stage done hit by hit, as the original
  BeatSight processor did: slice one window, compute its patch with librosa
  (bench/original.py: the same numbers as ours, computed call by call), run the CNN on a batch
  of one (float32, torch.no_grad);
- the console command `beatsight process` in a fresh process (wall clock: Python, torch and
  librosa start-up included).
Speed does not depend on the weights, so without `--model` an untrained checkpoint is used.

    .venv/bin/python bench/bench_process.py [--seconds 180] [--kit GMRockKit] [--model M.pth]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from original import original_patch  # bench/original.py (the script's own folder)

from beatsight.common.checkpoint import Checkpoint, load_model, save_checkpoint
from beatsight.common.features import DEFAULT_SETTINGS
from beatsight.common.model import DrumClassifierCNN
from beatsight.common.process import ProcessOptions, process_file

TARGET_REALTIME = 30.0
TARGET_SPEEDUP = 10.0


class PerHitPredictor:
    """The original approach: one window sliced, one patch computed, one CNN call per hit."""

    def __init__(self, model: torch.nn.Module, limit: int = 0) -> None:
        self.model = model.eval()
        self.limit = limit          # > 0: only the first `limit` onsets (the rest stay zero)
        self.scale = 1.0            # how many times more work the full run would have been

    def predict(self, audio: np.ndarray, onsets_s: np.ndarray, progress=None) -> np.ndarray:
        s = DEFAULT_SETTINGS
        out = np.zeros((len(onsets_s), 12), np.float32)
        todo = onsets_s[: self.limit] if 0 < self.limit < len(onsets_s) else onsets_s
        self.scale = len(onsets_s) / max(len(todo), 1)
        with torch.no_grad():
            for k, t in enumerate(todo):
                start = int(round(t * s.sample_rate)) - s.pre_samples
                window = np.zeros(s.window_samples, np.float32)
                a, b = max(start, 0), min(start + s.window_samples, len(audio))
                if b > a:
                    window[a - start:b - start] = audio[a:b]
                x = torch.from_numpy(original_patch(window, s)[None])
                out[k] = torch.softmax(self.model(x), dim=1)[0].numpy()
        return out


def render(out_dir: Path, kit_key: str, seconds: float, seed: int) -> Path:
    from beatsight.simulation.kits import get_kit
    from beatsight.simulation.render import write_song

    wav, _ = write_song(out_dir, "bench", get_kit(kit_key), seed, duration_s=seconds)
    return wav


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--kit", default="GMRockKit")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="runs of ours (best is reported)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-templates", dest="templates", action="store_false",
                    help="ours without the drum-family templates stage (the model's templates "
                         "unused), to see what that stage costs")
    ap.add_argument("--baseline-hits", type=int, default=0,
                    help="time the original's per-hit CNN stage on this many onsets only and "
                         "scale it to all of them (0 = run it on every onset)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wav = render(tmp, args.kit, args.seconds, args.seed)
        model_path = args.model
        if model_path is None:
            torch.manual_seed(0)
            model_path = tmp / "untrained.pth"
            save_checkpoint(model_path, Checkpoint(DrumClassifierCNN().state_dict(),
                                                   model_version="bench-untrained"))
        opts = ProcessOptions(precision=args.precision, templates=args.templates)
        print(f"song: {args.seconds:.0f} s render of {args.kit} (seed {args.seed}); "
              f"torch threads {torch.get_num_threads()}")

        best = None
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            res = process_file(wav, tmp / "ours.bsm", opts, model_path)
            took, cpu = time.perf_counter() - t0, time.process_time() - c0
            if best is None or took < best[0]:
                best = (took, cpu, res)
        took, cpu, res = best
        n = res.n_onsets
        stages = ", ".join(f"{k} {v:.2f}" for k, v in res.timings.items())
        print(f"ours:     {took:6.2f} s = {res.duration_s / took:6.1f}x real time "
              f"({n} onsets, {len(res.hits)} hits; {stages}; CPU time {cpu:.2f} s; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")

        t0 = time.perf_counter()
        cli = subprocess.run([str(Path(sys.executable).parent / "beatsight"), "process", "-i",
                              str(wav), "-o", str(tmp / "cli.bsm"), "--ml-model",
                              str(model_path), "--precision", args.precision,
                              "--templates" if args.templates else "--no-templates"],
                             capture_output=True, text=True)
        cli_took = time.perf_counter() - t0
        if cli.returncode != 0:
            sys.exit(f"beatsight process failed: {cli.stderr.strip()}")
        print(f"command:  {cli_took:6.2f} s = {res.duration_s / cli_took:6.1f}x real time "
              f"(fresh process: interpreter, torch and librosa start-up included)")

        if args.no_baseline:
            return
        model, _ = load_model(model_path)
        per_hit = PerHitPredictor(model, args.baseline_hits)
        t0 = time.perf_counter()
        base = process_file(wav, tmp / "orig.bsm", opts, None, predictor=per_hit)
        base_took = time.perf_counter() - t0
        note = "same onsets"
        if per_hit.scale != 1.0:
            extra = base.timings["classify"] * (per_hit.scale - 1.0)
            base_took += extra
            base.timings["classify"] += extra
            note = (f"CNN stage timed on {args.baseline_hits} of {base.n_onsets} onsets and "
                    f"scaled")
        print(f"original: {base_took:6.2f} s = {base.duration_s / base_took:6.1f}x real time "
              f"(per-hit features + one-at-a-time CNN, {note}; "
              f"classify {base.timings['classify']:.2f} s)")
        ratio = base_took / took
        print(f"speed-up: {ratio:.1f}x over the original approach "
              f"(CNN stage alone {base.timings['classify'] / res.timings['classify']:.1f}x)")
        def verdict(ok: bool) -> str:
            return "met" if ok else "MISSED"

        print(f"targets: >= {TARGET_REALTIME:.0f}x real time: in-process "
              f"{verdict(res.duration_s / took >= TARGET_REALTIME)}, fresh command "
              f"{verdict(res.duration_s / cli_took >= TARGET_REALTIME)}; "
              f">= {TARGET_SPEEDUP:.0f}x the original: {verdict(ratio >= TARGET_SPEEDUP)}")


if __name__ == "__main__":
    main()
