"""`beatsight-client`: what a contributor runs: collect labelled hits, train and evaluate locally.

`collect` is a sub-app (the original collector's four actions); `train` and `evaluate` keep
the original training script's flags. Further top-level commands (e.g. keygen, join) are added
with `@app.command()` in their own modules, imported at the bottom.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from beatsight.common.atomic import atomic_write_text
from beatsight.common.augment import AUGMENTATIONS, DEFAULT_AUGMENT
from beatsight.common.classes import CLASSES
from beatsight.common.cliutil import run_app
from beatsight.common.errors import BeatSightError
from beatsight.common.features import DEFAULT_SETTINGS

from .dataset import FeatureSet, is_export_dir, load_export
from .join import register_commands
from .store import DEFAULT_DATA_DIR, SampleStore

log = logging.getLogger(__name__)
console = Console(soft_wrap=True)

app = typer.Typer(help="BeatSight contributor tools: collect labelled drum hits from your own "
                  "audio, train and evaluate the drum classifier locally.",
                  no_args_is_help=True, add_completion=False)
collect_app = typer.Typer(help="Your local sample store (default training_data/): add hits, "
                          "extract a beatmap's hits, show counts, export a train/val split.",
                          no_args_is_help=True)
app.add_typer(collect_app, name="collect")

# The seed README's "Recommended Data Distribution" table: (minimum, recommended).
RECOMMENDED: dict[str, tuple[int, int]] = {
    "kick": (100, 500), "snare": (100, 500), "hihat_closed": (150, 750),
    "hihat_open": (50, 250), "crash": (75, 300), "ride": (75, 300),
    "tom_high": (50, 200), "tom_mid": (50, 200), "tom_low": (50, 200),
}

DATA_DIR_HELP = "Sample store directory (the original collector's training_data/ layout)."
MODEL_FILES = ("best_drum_classifier.pth", "final_drum_classifier.pth")
STATE_FILE = "last_state.pt"


@app.callback()
def _root() -> None:
    """BeatSight contributor tools."""


# ---------------------------------------------------------------- collect
@collect_app.command("add-sample")
def add_sample(
    audio: Path = typer.Argument(..., help="Audio file (wav, flac, mp3, ...)."),
    time_s: float = typer.Argument(..., metavar="TIME", help="Onset time in seconds."),
    component: str = typer.Argument(..., help=f"One of: {', '.join(CLASSES)}."),
    data_dir: Path = typer.Option(Path(DEFAULT_DATA_DIR), "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Add one labelled hit (a 125 ms snippet around TIME) to the store."""
    rec = SampleStore(data_dir).add_sample(audio, time_s, component)
    if rec is None:
        console.print(f"already stored: {component} at {time_s:.3f} s of {audio.name}")
    else:
        console.print(f"added {rec['component']} sample {rec['id']}")


@collect_app.command("extract-beatmap")
def extract_beatmap(
    beatmap: Path = typer.Argument(..., help=".bsm (or PascalCase .bs) beatmap."),
    audio: Path = typer.Argument(..., help="The beatmap's audio file."),
    data_dir: Path = typer.Option(Path(DEFAULT_DATA_DIR), "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Add every hit of a beatmap (decodes the song once; re-running adds nothing twice)."""
    t0 = time.perf_counter()
    r = SampleStore(data_dir).extract_beatmap(beatmap, audio, progress=True)
    console.print(f"{beatmap.name}: {r.hits} hits, added {r.added}, already stored "
                  f"{r.duplicates} ({time.perf_counter() - t0:.2f} s)", highlight=False)
    for what, n in r.aliased.items():
        console.print(f"  mapped {what}: {n}")
    for name, n in r.skipped.items():
        console.print(f"  skipped unknown component {name!r}: {n}")
    if r.per_class:
        console.print("  added per class: " + ", ".join(f"{c} {n}" for c, n in
                                                        sorted(r.per_class.items())))


@collect_app.command("stats")
def stats(
    data_dir: Path = typer.Option(Path(DEFAULT_DATA_DIR), "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Samples per class against the recommended minimum and target counts."""
    counts = SampleStore(data_dir).stats()
    table = Table(title=f"Samples in {data_dir}")
    for col, just in (("Component", "left"), ("Samples", "right"), ("Minimum", "right"),
                      ("Recommended", "right"), ("Status", "left")):
        table.add_column(col, justify=just)
    for name, n in counts.items():
        lo, hi = RECOMMENDED.get(name, (None, None))
        if name not in CLASSES:
            status = "[dim]not one of the 12 classes: ignored in training[/]"
        elif lo is None:
            status = "[dim]no target[/]" if n else "[dim]none yet[/]"
        elif n >= hi:
            status = "[green]recommended reached[/]"
        elif n >= lo:
            status = "[yellow]minimum reached[/]"
        else:
            status = f"[red]needs {lo - n} more[/]"
        table.add_row(name, str(n), str(lo or "-"), f"{hi}+" if hi else "-", status)
    table.add_section()
    table.add_row("TOTAL", str(sum(counts.values())), "", "", "")
    console.print(table)


@collect_app.command("export")
def export(
    out: Path = typer.Argument(..., help="Output directory (new, empty or an earlier export)."),
    data_dir: Path = typer.Option(Path(DEFAULT_DATA_DIR), "--data-dir", help=DATA_DIR_HELP),
    seed: int = typer.Option(0, help="Shuffle seed (same seed, same split)."),
    val_fraction: float = typer.Option(0.2, help="Share of each class for validation."),
) -> None:
    """Write a train/val split in the original export layout (stratified, shuffled)."""
    r = SampleStore(data_dir).export(out, seed=seed, val_fraction=val_fraction)
    console.print(f"exported to {out}: {r.train} train, {r.val} val"
                  + (f" ({r.skipped} records skipped)" if r.skipped else ""))


# ---------------------------------------------------------------- train / evaluate
def load_splits(dataset: Path, seed: int, val_fraction: float,
                progress: bool = True) -> tuple[FeatureSet, FeatureSet]:
    """(train, val) of an export directory, or of a sample store split like `collect export`."""
    if is_export_dir(dataset):
        s = load_export(dataset, progress=progress)
        return s["train"], s["val"]
    if (dataset / "metadata.json").is_file():
        return SampleStore(dataset).train_val(seed, val_fraction, progress=progress)
    raise BeatSightError(f"{dataset}: neither an export directory (train_labels.json) nor a "
                         "sample store (metadata.json)")


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _checkpoint(state: dict, metrics: dict, extra: dict):
    from beatsight.common.checkpoint import Checkpoint

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Checkpoint(state_dict=state, classes=CLASSES, features=DEFAULT_SETTINGS,
                      model_version=f"local-{stamp}", metrics=metrics, extra=extra,
                      head=str(extra.get("config", {}).get("head", "single")))


def _best_metrics(rec: dict, n_train: int, n_val: int) -> dict:
    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1")
    return {**{k: rec[k] for k in keys if k in rec}, "train_samples": n_train,
            "val_samples": n_val}


@app.command("train")
def train(
    dataset: Path = typer.Option(..., "--dataset", help="Export directory or sample store."),
    epochs: int = typer.Option(50, help="Maximum epochs."),
    batch_size: int = typer.Option(32, help="Batch size."),
    lr: float = typer.Option(0.001, help="Adam learning rate."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
    output: Path = typer.Option(Path("models"), help="Where checkpoints and metrics go."),
    seed: int = typer.Option(0, help="Seed for initialisation, shuffling and augmentation."),
    resume: bool = typer.Option(False, "--resume", help=f"Continue from OUTPUT/{STATE_FILE}."),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start from this model."),
    trust_key: Path | None = typer.Option(None, "--trust-key", help="Maintainers' release public "
                                          "key: --init-from must carry their valid signature "
                                          "(default: env BEATSIGHT_TRUST_KEY; unset: no check).",
                                          show_default=False),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="With a trust key, still "
                                        "start from a local model that has no signature files."),
    freeze: str = typer.Option("", help="Layers to keep fixed, e.g. conv1,conv2."),
    patience: int = typer.Option(10, help="Stop after this many epochs without a better "
                                 "validation loss (0: never)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Augment training hits."),
    augmentations: str = typer.Option(",".join(DEFAULT_AUGMENT), help="Which augmentations: "
                                      f"{', '.join(sorted(AUGMENTATIONS))}."),
    val_fraction: float = typer.Option(0.2, help="Validation share when DATASET is a store."),
    threads: int | None = typer.Option(None, help="CPU threads for torch (default: all)."),
    class_weight_power: float = typer.Option(
        1.0, "--class-weight-power", min=0.0,
        help="Loss weight of a class: (inverse class frequency) ** POWER; 0: unweighted."),
    precision: str = typer.Option("auto", help="fp32, bf16 (mixed precision), or auto: bf16 on "
                                  "CPUs with native bfloat16 (AVX512-BF16/AMX), else fp32."),
    head: str = typer.Option("single", help="single (softmax: one class per hit, the original) "
                             "or multi (a sigmoid per class: hits struck together, e.g. kick + "
                             "hi-hat, are all learnt and all reported by `process`)."),
    pooling: str = typer.Option("avg", help="The CNN's global pooling for a new model: avg (the "
                                "seed's) or avgmax (average and maximum; see README). With "
                                "--init-from the model's own is kept."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Train the drum classifier; writes best/final checkpoints and metrics.json to OUTPUT."""
    from beatsight.common.checkpoint import load_model, save_checkpoint
    from beatsight.common.model import check_head, check_pooling

    from .training import TrainConfig, fit, new_model

    if resume and init_from is not None:
        raise BeatSightError("--resume continues an earlier run; it cannot be combined with "
                             "--init-from")
    state_path = output / STATE_FILE
    if resume and not state_path.is_file():
        raise BeatSightError(f"--resume: {state_path} does not exist (nothing to continue)")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      augment=_split_list(augmentations) if augment else [],
                      early_stopping_patience=patience, freeze=_split_list(freeze),
                      num_threads=threads, class_weight_power=class_weight_power,
                      precision=precision, head=check_head(head))
    if init_from is not None:
        from beatsight.common.signing import check_model

        check_model(init_from, trust_key, allow_unsigned)
        model, _ = load_model(init_from)
    else:
        model = new_model(seed, check_pooling(pooling))
    train_fs, val_fs = load_splits(dataset, seed, val_fraction, progress)
    if len(train_fs) == 0:
        raise BeatSightError(f"{dataset}: no training samples of the 12 classes")
    counts = {CLASSES[i]: int(n) for i, n in enumerate(train_fs.class_counts()) if n}
    console.print(f"training on {len(train_fs)} samples, validating on {len(val_fs)}: "
                  + ", ".join(f"{c} {n}" for c, n in counts.items()), highlight=False)
    output.mkdir(parents=True, exist_ok=True)
    extra = {"config": cfg.to_dict(), "dataset": str(dataset),
             "init_from": str(init_from) if init_from else None}

    def on_epoch(rec: dict, net, hist) -> None:
        if rec["best"]:
            save_checkpoint(output / MODEL_FILES[0], _checkpoint(
                hist.best_state, _best_metrics(rec, len(train_fs), len(val_fs)), extra))

    t0 = time.perf_counter()
    hist = fit(model, train_fs, cfg, val_data=val_fs if len(val_fs) else None,
               progress=progress, on_epoch=on_epoch, state_path=state_path, resume=resume)
    seconds = time.perf_counter() - t0
    if not hist:
        raise BeatSightError("no epochs were run (--epochs 0?)")
    from .evaluation import evaluate

    final = hist[-1]
    save_checkpoint(output / MODEL_FILES[1], _checkpoint(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        _best_metrics(final, len(train_fs), len(val_fs)), extra))
    if not (output / MODEL_FILES[0]).is_file():  # e.g. resumed after the last best epoch
        save_checkpoint(output / MODEL_FILES[0], _checkpoint(
            hist.best_state, _best_metrics(hist[hist.best_epoch - 1], len(train_fs),
                                           len(val_fs)), extra))
    final_eval = evaluate(model, val_fs.X, val_fs.y) if len(val_fs) else {}
    final_eval.pop("predictions", None)
    run = hist[hist.resumed_from:]
    sps = len(train_fs) * len(run) / sum(r["seconds"] for r in run) if run else 0.0
    metrics = {
        "dataset": str(dataset), "config": cfg.to_dict(), "train_samples": len(train_fs),
        "val_samples": len(val_fs), "train_class_counts": counts,
        "best_epoch": hist.best_epoch, "best": hist[hist.best_epoch - 1],
        "final": {"epoch": final["epoch"], **final_eval}, "stopped_early": hist.stopped_early,
        "resumed_from_epoch": hist.resumed_from, "wall_seconds": round(seconds, 2),
        "train_samples_per_s": round(sps, 2), "history": list(hist),
    }
    atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    best = hist[hist.best_epoch - 1]
    console.print(f"best epoch {hist.best_epoch}: val accuracy "
                  f"{best.get('val_accuracy', float('nan')):.3f}, macro-F1 "
                  f"{best.get('val_macro_f1', float('nan')):.3f}"
                  f"{' (stopped early)' if hist.stopped_early else ''}; wrote "
                  f"{output / MODEL_FILES[0]}, {output / MODEL_FILES[1]}, "
                  f"{output / 'metrics.json'}", highlight=False)


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="Checkpoint (.pth) to evaluate."),
    dataset: Path = typer.Option(..., "--dataset", help="Export directory or sample store."),
    split: str | None = typer.Option(None, help="train, val or all (default: val of an export "
                                     "directory, all of a store)."),
    out: Path | None = typer.Option(None, "--out", help="Directory for confusion_matrix.png "
                                    "and evaluation.json."),
    seed: int = typer.Option(0, help="Split seed when DATASET is a store and --split is not all."),
    val_fraction: float = typer.Option(0.2, help="Validation share when DATASET is a store."),
) -> None:
    """Accuracy, macro-F1, per-class report and confusion matrix of a model on a dataset."""
    from beatsight.common.checkpoint import load_model

    from .evaluation import evaluate, plot_confusion, report_text

    net, ckpt = load_model(model)
    export_dir = is_export_dir(dataset)
    split = split or ("val" if export_dir else "all")
    if split not in ("train", "val", "all"):
        raise BeatSightError(f"--split {split!r}: choose train, val or all")
    if not export_dir and split == "all" and (dataset / "metadata.json").is_file():
        data = SampleStore(dataset).feature_set(progress=True)
    else:
        tr, va = load_splits(dataset, seed, val_fraction)
        data = {"train": tr, "val": va}.get(split) or _concat(tr, va)
    if len(data) == 0:
        raise BeatSightError(f"{dataset}: no samples in split {split!r}")
    res = evaluate(net, data.X, data.y)
    pred = np.asarray(res.pop("predictions"))
    console.print(f"{model} on {dataset} ({split}, {res['n']} samples): accuracy "
                  f"{res['accuracy']:.3f}, macro-F1 {res['macro_f1']:.3f}, loss "
                  f"{res['loss']:.3f}", highlight=False)
    console.print(report_text(data.y, pred), highlight=False)
    if out is not None:
        png = plot_confusion(res["confusion"], out / "confusion_matrix.png",
                             title=f"{model.name} on {dataset.name} ({split})")
        atomic_write_text(out / "evaluation.json", json.dumps(
            {"model": str(model), "model_version": ckpt.model_version, "dataset": str(dataset),
             "split": split, **res}, indent=2) + "\n")
        console.print(f"wrote {png} and {out / 'evaluation.json'}")


def _concat(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    return FeatureSet(np.concatenate([a.windows, b.windows]), np.concatenate([a.X, b.X]),
                      np.concatenate([a.y, b.y]), a.ids + b.ids, a.settings)


register_commands(app)  # keygen, join (client/join.py)


def main() -> None:
    # librosa's fallback decoder warns before common.audio turns the failure into one line.
    warnings.filterwarnings("ignore", message="PySoundFile failed")
    warnings.filterwarnings("ignore", message=r"librosa\.core\.audio\.__audioread_load")
    run_app(app)


if __name__ == "__main__":
    main()
