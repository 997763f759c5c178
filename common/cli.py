"""`beatsight`: the tools anyone runs offline (model info; process and evaluate-map live beside)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .classes import CLASSES
from .cliutil import run_app

app = typer.Typer(help="BeatSight offline tools: inspect models, turn songs into .bsm drum maps.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """BeatSight offline tools."""


@app.command("model-info")
def model_info(model: Path | None = typer.Argument(None, help="Checkpoint to inspect; "
               "omitted: describe the architecture.")) -> None:
    """Print the architecture's parameter count, or a checkpoint's classes, version and metrics."""
    from .checkpoint import load_model  # torch: imported only by commands that need it
    from .model import DrumClassifierCNN, count_parameters

    if model is None:
        net = DrumClassifierCNN()
        typer.echo(f"DrumClassifierCNN: {count_parameters(net):,} parameters, "
                   f"input 1x128x128, {len(CLASSES)} classes: {', '.join(CLASSES)}")
        return
    net, ckpt = load_model(model, expect_features=None)
    typer.echo(f"{model}: {count_parameters(net):,} parameters, version {ckpt.model_version}"
               f"{' (bare state_dict)' if ckpt.legacy else ''}")
    typer.echo(f"classes: {', '.join(ckpt.classes)}")
    typer.echo(f"head: {ckpt.head} ({'a sigmoid per class' if ckpt.head == 'multi' else 'softmax'})"
               f", pooling: {ckpt.pooling}")
    from .templates import usable

    typer.echo("drum-family templates: " + ("yes (process finds kick, snare and hi-hat with them)"
                                            if usable(net.templates.numpy()) else "none"))
    for k, v in ckpt.metrics.items():
        typer.echo(f"{k}: {v}")


QUANTIZATIONS = ["quarter", "eighth", "triplet", "sixteenth", "thirtysecond", "none"]


def process(
    input: Path = typer.Option(..., "--input", "-i", help="Song to transcribe (wav, flac, ogg, "
                               "mp3, ...).", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Beatmap to write (.bsm).",
                                show_default=False),
    confidence: float = typer.Option(0.7, min=0.0, max=1.0, help="CNN predictions below this "
                                     "probability take the heuristic's label (hits are kept)."),
    sensitivity: float = typer.Option(60.0, min=0.0, max=100.0, help="Onset sensitivity 0-100: "
                                      "higher finds softer hits (and more false ones)."),
    quantization: str = typer.Option("sixteenth", help="Grid to snap hits to: "
                                     + ", ".join(QUANTIZATIONS) + "."),
    ml_model: Path | None = typer.Option(None, "--ml-model", help="Model checkpoint (.pth); "
                                         "default: env BEATSIGHT_ML_MODEL_PATH, then "
                                         "models/best_drum_classifier.pth.", show_default=False),
    ml: bool | None = typer.Option(None, "--ml/--no-ml", help="Force the CNN / the heuristic "
                                   "(overrides env BEATSIGHT_USE_ML_CLASSIFIER).",
                                   show_default=False),
    max_snap_ms: float = typer.Option(30.0, min=0.0, help="Hits further than this from the "
                                      "grid keep their time."),
    secondary: float | None = typer.Option(None, min=0.0, max=1.0, help="Also emit another "
                                           "drum family's class when the CNN gives it this "
                                           "probability [default: 0.25 for a softmax model, "
                                           "0.5 for a multi-label one].", show_default=False),
    templates: bool = typer.Option(True, "--templates/--no-templates", help="Find kick, snare "
                                   "and hi-hat with the model's drum-family spectro-temporal "
                                   "templates (convolutive NMF), each on its own, where the "
                                   "model has them; --no-templates: the classifier and band "
                                   "checks decide."),
    song_templates: bool = typer.Option(True, "--song-templates/--no-song-templates",
                                        help="Blend the templates with the song's own clearest "
                                        "hits and decompose again; kick and snare are decided "
                                        "on that second pass (adapts to the song's kit)."),
    kick_check: bool = typer.Option(True, "--kick-check/--no-kick-check", help="With the "
                                    "templates: drop a kick whose low end (35-280 Hz) is unlike "
                                    "the song's typical kick (it is a tom) unless the kick's own "
                                    "pitch starts there at full strength (struck with a tom or "
                                    "snare), or quiet where nothing starts (a drum's ring), and "
                                    "add one wherever "
                                    "a low end like it starts (a soft kick, or one under a "
                                    "crash). Turn off for songs "
                                    "with two differently tuned kicks, or mixes whose bass "
                                    "notes start with the kicks."),
    ghost_notes: bool = typer.Option(True, "--ghost-notes/--no-ghost-notes", help="With the "
                                     "templates: also report a snare wherever an onset sounds "
                                     "like the song's snares (quiet ghost notes)."),
    snare_check: bool = typer.Option(True, "--snare-check/--no-snare-check", help="With the "
                                     "templates: drop a snare whose sound (100 Hz-16 kHz, what "
                                     "the onset adds to the sound before it) is unlike the "
                                     "song's typical snare (a hi-hat or ride the snare template "
                                     "fired on)."),
    hat_check: bool = typer.Option(True, "--hat-check/--no-hat-check", help="With the "
                                   "templates: drop a hi-hat whose top octaves (2-16 kHz) ring "
                                   "with partials instead of hissing like the song's hi-hats (a "
                                   "ride); it stands aside where the song's hi-hats mostly do not "
                                   "hiss (a distorted guitar over them). Turn off for mixes "
                                   "whose hi-hats sit under guitars or keys."),
    band_checks: bool = typer.Option(True, "--band-checks/--no-band-checks", help="Add a kick "
                                     "or hi-hat heard under another hit (band energies)."),
    device: str | None = typer.Option(None, help="torch device for the CNN (default: cuda if "
                                      "available, else cpu).", show_default=False),
    precision: str = typer.Option("auto", help="CNN arithmetic: auto (bf16 where the CPU has it "
                                  "natively, else fp32), fp32, bf16 or int8 (fastest, least "
                                  "exact)."),
    trust_key: Path | None = typer.Option(None, "--trust-key", help="Maintainers' release public "
                                          "key: refuse a model without their valid signature "
                                          "(default: env BEATSIGHT_TRUST_KEY; unset: no check).",
                                          show_default=False),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="With a trust key, still "
                                        "load a local model that has no signature files."),
) -> None:
    """Transcribe a song's drums into a .bsm beatmap (onsets, CNN or heuristic, tempo grid)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .cliutil import err_console
    from .errors import BeatSightError
    from .process import ProcessOptions, process_file, resolve_model_path

    if quantization not in QUANTIZATIONS:
        raise BeatSightError(f"--quantization {quantization!r}: choose one of "
                             f"{', '.join(QUANTIZATIONS)}")
    opts = ProcessOptions(confidence=confidence, sensitivity=sensitivity,
                          quantization=quantization, max_snap_ms=max_snap_ms,
                          secondary=secondary, band_checks=band_checks, templates=templates,
                          song_templates=song_templates, kick_check=kick_check,
                          ghost_notes=ghost_notes, snare_check=snare_check,
                          hat_check=hat_check,
                          device=device, precision=precision)
    model_path = resolve_model_path(ml_model, ml)
    if model_path is not None:
        from .signing import check_model

        check_model(model_path, trust_key, allow_unsigned)
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:
        tasks: dict[str, object] = {}

        def progress(stage: str, frac: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=1.0)
            bar.update(tasks[stage], completed=frac)

        result = process_file(input, output, opts, model_path, progress)
    took = time.perf_counter() - t0
    counts = ", ".join(f"{c} {n}" for c, n in sorted(result.counts().items()))
    speed = f", {result.duration_s / took:.0f}x real time" if took > 0 else ""
    typer.echo(f"wrote {output}: {len(result.hits)} hits from {result.n_onsets} onsets "
               f"({counts or 'none'}); {result.bpm:.1f} BPM; {result.classifier}, "
               f"mean confidence {result.mean_confidence:.2f}"
               f"{f', {result.n_fallback} below --confidence' if result.n_fallback else ''}; "
               f"{result.duration_s:.1f} s of audio in {took:.1f} s{speed}")


def evaluate_map(
    reference: Path = typer.Argument(..., help="Ground-truth .bsm (or .bs).", show_default=False),
    estimate: Path = typer.Argument(..., help="The .bsm to score.", show_default=False),
    window: float = typer.Option(0.05, min=0.001, max=1.0, help="Match window in seconds (+-)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Per-class onset F-measure of ESTIMATE against REFERENCE (12-, 5- and 3-class views)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from .bsm import read_bsm
    from .mapeval import evaluate

    ev = evaluate(read_bsm(reference), read_bsm(estimate), window)
    if as_json:
        typer.echo(json.dumps(ev.to_dict(), indent=2))
        return
    console = Console()
    o = ev.onsets
    console.print(f"onsets, any class (+-{window * 1000:.0f} ms): F {o.f:.3f}  P {o.precision:.3f}"
                  f"  R {o.recall:.3f}  ref {o.n_ref}  est {o.n_est}")
    for view, scores in ev.views.items():
        table = Table(title=f"{view}: mean F {ev.mean_f(view):.3f}", title_justify="left")
        for col in ("class", "F", "precision", "recall", "ref", "est"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for name, sc in scores.items():
            table.add_row(name, f"{sc.f:.3f}", f"{sc.precision:.3f}", f"{sc.recall:.3f}",
                          str(sc.n_ref), str(sc.n_est))
        console.print(table)
    if ev.skipped:
        console.print("skipped components: "
                      + ", ".join(f"{k} x{v}" for k, v in sorted(ev.skipped.items())))


app.command("process")(process)
app.command("evaluate-map")(evaluate_map)

# `python -m beatsight.common.process --input ... --output ...`: the original's form, no subcommand
process_app = typer.Typer(add_completion=False, help="Transcribe a song's drums into a .bsm.")
process_app.command()(process)


def process_main() -> None:
    run_app(process_app)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
