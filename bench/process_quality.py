"""Quality of `process` on held-out kits: F-measure per class against the renders' ground truth.

Renders grooves from the held-out kits (no contributor trained on them), runs the whole
`process` pipeline on each with the given model (or the heuristic), scores every map with
`evaluate-map`'s scorer (±50 ms) and prints the mean F per class in the 3- and 5-class views.

    .venv/bin/python bench/process_quality.py --model runs/latest/global_model.pth
    .venv/bin/python bench/process_quality.py --heuristic
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from beatsight.common.bsm import read_bsm
from beatsight.common.mapeval import evaluate
from beatsight.common.process import ProcessOptions, process_file
from beatsight.simulation.contributors import HELDOUT_KITS
from beatsight.simulation.kits import get_kit
from beatsight.simulation.render import write_song

TARGETS = {"kick": 0.95, "snare": 0.90, "hihat": 0.85}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--heuristic", action="store_true", help="no model: the heuristic classifier")
    ap.add_argument("--songs", type=int, default=2, help="grooves per held-out kit")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=1000, help="render seed (not a training seed)")
    ap.add_argument("--kit", action="append", default=None,
                    help="render these kits instead of the held-out ones (repeatable): a dev set "
                         "of kits the model never heard, to choose settings on without "
                         "touching the held-out kits")
    ap.add_argument("--no-templates", dest="templates", action="store_false",
                    help="ignore the model's drum-family templates (the classifier decides)")
    ap.add_argument("--no-song-templates", dest="song_templates", action="store_false",
                    help="the model's templates as they are, not blended with the song's hits")
    ap.add_argument("--no-kick-check", dest="kick_check", action="store_false",
                    help="keep every kick the templates find (no check against the song's "
                         "typical kick)")
    ap.add_argument("--no-ghost-notes", dest="ghost_notes", action="store_false",
                    help="no snare for onsets that merely sound like the song's snares")
    ap.add_argument("--no-snare-check", dest="snare_check", action="store_false",
                    help="keep every snare the templates find (no check against the song's "
                         "typical snare)")
    ap.add_argument("--no-hat-check", dest="hat_check", action="store_false",
                    help="keep every hi-hat the templates find (no check that it hisses)")
    ap.add_argument("--band", type=float, default=None, metavar="DB",
                    help="mix a band (bass and chords, `simulation.band`) into every render at "
                         "DB relative to the drums' RMS level (0: as loud; the truth stays the "
                         "drums')")
    ap.add_argument("--sensitivity", type=float, default=ProcessOptions.sensitivity,
                    help="onset sensitivity, 0-100, as `process --sensitivity`")
    args = ap.parse_args()
    if args.model is None and not args.heuristic:
        ap.error("give --model M.pth or --heuristic")

    kits = args.kit or list(HELDOUT_KITS)
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory() as tmp:
        for k, kit_key in enumerate(kits):
            for s in range(args.songs):
                wav, bsm = write_song(Path(tmp), f"{k}-{s}", get_kit(kit_key),
                                      args.seed + 10 * k + s, duration_s=args.seconds,
                                      band_db=args.band)
                est = Path(tmp) / f"{k}-{s}.est.bsm"
                process_file(wav, est, ProcessOptions(templates=args.templates,
                                                       song_templates=args.song_templates,
                                                       kick_check=args.kick_check,
                                                       ghost_notes=args.ghost_notes,
                                                       snare_check=args.snare_check,
                                                       hat_check=args.hat_check,
                                                       sensitivity=args.sensitivity),
                             None if args.heuristic else args.model)
                ev = evaluate(read_bsm(bsm), read_bsm(est))
                per["onsets"]["any"].append(ev.onsets.f)
                for view in ("3-class", "5-class"):
                    for cls, sc in ev.views[view].items():
                        per[view][cls].append(sc.f)
                row = ", ".join(f"{c} {sc.f:.3f}" for c, sc in ev.views["3-class"].items())
                print(f"{kit_key} song {s}: 3-class mean F {ev.mean_f('3-class'):.3f} ({row})",
                      flush=True)
    what = "heuristic" if args.heuristic else str(args.model)
    which = "held-out" if kits == list(HELDOUT_KITS) else "dev"
    print(f"\n{what}: mean F-measure over {len(kits) * args.songs} {which} renders "
          f"({', '.join(kits)})")
    for view, classes in per.items():
        row = ", ".join(f"{c} {np.mean(v):.3f}" for c, v in classes.items())
        print(f"  {view}: {row}")
    for cls, target in TARGETS.items():
        got = float(np.mean(per["3-class"][cls]))
        print(f"  target {cls} >= {target}: {got:.3f} {'met' if got >= target else 'MISSED'}")


if __name__ == "__main__":
    main()
