"""`beatsight-sim`: real drum audio for the simulated federation (kits, renders, contributors).

`app` is module-level so other modules can add commands to it (`run`, `baseline`).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from beatsight.common.augment import DEFAULT_AUGMENT, parse_augment
from beatsight.common.classes import CLASSES
from beatsight.common.cliutil import run_app
from beatsight.server.settings import RunSettings

from .contributors import DEFAULT_CONTRIBUTORS, DEFAULT_SECONDS, DEFAULT_SONGS
from .kits import find_kits, get_kit, kits_dir

app = typer.Typer(help="Simulated BeatSight contributors on real drum audio (Hydrogen kits).",
                  no_args_is_help=True, add_completion=False)
console = Console()
if not console.is_terminal:       # piped / logged: do not squeeze the class tables into 80 columns
    console.width = max(console.width, 150)

SHORT = {"kick": "kick", "snare": "snare", "hihat_closed": "hh_c", "hihat_open": "hh_o",
         "crash": "crash", "ride": "ride", "tom_high": "tom_h", "tom_mid": "tom_m",
         "tom_low": "tom_l", "crash2": "crash2", "ride_bell": "bell", "china": "china"}


@app.callback()
def _root() -> None:
    """Simulated BeatSight contributors on real drum audio."""


def _class_table(title: str, first: str, rows: list[tuple[str, list[str], dict]]) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column(first, no_wrap=True)
    table.add_column("family")
    for c in CLASSES:
        table.add_column(SHORT[c], justify="right")
    for name, extra, counts in rows:
        table.add_row(name, *extra, *[str(counts.get(c, 0) or "·") for c in CLASSES])
    return table


@app.command("kits")
def kits_cmd(
    kits_root: Path | None = typer.Option(None, "--kits-dir", help="Kits directory "
                                          "(default: env BEATSIGHT_KITS_DIR, else Hydrogen's)."),
) -> None:
    """Show each kit's instruments per class (how many map to it) and what it drops."""
    kits = find_kits(kits_root)
    rows = [(k.key, [k.family], dict(k.coverage())) for k in kits]
    console.print(_class_table(f"Drum kits in {kits_root or kits_dir()}: instruments per class",
                               "kit", rows))
    for k in kits:
        extra = f" (+{k.unnamed} unnamed)" if k.unnamed else ""
        console.print(f"[bold]{k.key}[/] drops: {', '.join(k.dropped) or '-'}{extra}",
                      highlight=False)


@app.command("render")
def render_cmd(
    kit: str = typer.Argument(..., help="Kit directory name, e.g. GMRockKit (see `kits`)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for NAME.wav + NAME.bsm."),
    name: str = typer.Option("groove", help="File name stem."),
    seconds: float = typer.Option(20.0, min=1.0, help="Approximate length of the groove."),
    seed: int = typer.Option(0, help="Same seed, same files (byte for byte)."),
    style: str | None = typer.Option(None, help="rock, funk, shuffle or halftime "
                                     "(default: chosen by the seed)."),
    bpm: float | None = typer.Option(None, help="Tempo (default: 70-180, chosen by the seed)."),
    isolated: bool = typer.Option(False, "--isolated", help="Isolated hits (one per onset, "
                                  "0.6 s apart, every class the kit has) instead of a groove."),
    band: float | None = typer.Option(None, "--band", metavar="DB", help="Mix in a band (bass "
                                      "and chords, fluidsynth) at DB relative to the drums' "
                                      "level, e.g. 0 or -6; the .bsm stays the drums'."),
    kits_root: Path | None = typer.Option(None, "--kits-dir", help="Kits directory."),
) -> None:
    """Render one practice groove (or isolated hits) with its ground-truth .bsm."""
    from .render import write_isolated, write_song

    k = get_kit(kit, kits_root)
    if isolated:
        if band is not None:
            raise typer.BadParameter("a band plays along with grooves, not isolated hits",
                                     param_hint="--band")
        wav, bsm = write_isolated(out, name, k, seed)
    else:
        wav, bsm = write_song(out, name, k, seed, duration_s=seconds, style=style, bpm=bpm,
                              band_db=band)
    console.print(f"wrote {wav} and {bsm}", highlight=False)


FONT_KITS_HELP = ("The SoundFont drum kits (fluid-soundfont-gm, avldrums) join the contributors' "
                  "kits; held-out kits stay Hydrogen's.")


@app.command("contributors")
def contributors_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Data root: contributor stores go in "
                             "OUT/contributor-NN, their songs in OUT/songs/."),
    contributors: int = typer.Option(DEFAULT_CONTRIBUTORS, "--contributors", "-n", min=1,
                                     help="Number of simulated contributors."),
    songs: int = typer.Option(DEFAULT_SONGS, "--songs", min=1,
                              help="Practice songs per contributor."),
    seconds: float = typer.Option(DEFAULT_SECONDS, "--seconds", min=2.0,
                                  help="Length of each song in seconds."),
    seed: int = typer.Option(0, help="Seed of everything rendered."),
    split: str = typer.Option("per-kit", help="per-kit (each contributor owns its kits: non-IID) "
                              "or iid (the same hits pooled and dealt round-robin)."),
    heldout: bool = typer.Option(True, "--heldout/--no-heldout", help="Also build the held-out "
                                 "store (kits no contributor has) in OUT/heldout."),
    kit: list[str] = typer.Option(None, "--kit", help="Contributor kit (repeatable; default: "
                                  "the fixed contributor split). Held-out kits are refused."),
    font_kits: bool = typer.Option(False, "--font-kits/--no-font-kits", help=FONT_KITS_HELP),
    kits_root: Path | None = typer.Option(None, "--kits-dir", help="Kits directory."),
) -> None:
    """Build the simulated contributors' sample stores (cached) and print per-class counts."""
    from . import contributors as sim

    t0 = time.perf_counter()
    stores = sim.build_federation(out, contributors, seed, songs, seconds, split=split,
                                  kits_root=kits_root, contributor_kits=kit or None,
                                  font_kits=font_kits)
    def kits_of(store: Path) -> str:
        kits = sim.contributor_kits(store)
        return ", ".join(kits) if split == "per-kit" else f"{len(kits)} kits, hits pooled"

    rows = [(p.name, [kits_of(p)], sim.class_counts(p)) for p in stores]
    if heldout:
        h = sim.build_heldout(out / "heldout", seed, kits_root=kits_root)
        rows.append((f"{h.name} (held out)", [", ".join(sim.contributor_kits(h))],
                     sim.class_counts(h)))
    table = _class_table(f"Samples per class ({split} split, seed {seed})", "store", rows)
    table.columns[1].header = "kits"
    console.print(table)
    console.print(f"built in {time.perf_counter() - t0:.1f} s", highlight=False)


DEFAULT_DATA = Path("runs/data")
FONT_DATA = Path("runs/data-fonts")   # the default data root when the SoundFont kits join
DEFAULT_ROUNDS = 6
RUN_SONGS = 2  # songs per contributor in the main job: keeps it within 10 minutes on 2 cores


def _stores(data: Path, contributors: int, songs: int, seconds: float, seed: int, split: str,
            font_kits: bool = False) -> tuple[list[Path], Path]:
    from . import contributors as sim

    if font_kits and data == DEFAULT_DATA:
        data = FONT_DATA                  # the cached default stores were built without them
    stores = sim.build_federation(data, contributors, seed, songs, seconds, split=split,
                                  font_kits=font_kits)
    heldout = sim.build_heldout(data / "heldout", seed)
    return stores, heldout


def _metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    return table


@app.command("run")
def run_cmd(
    rounds: int = typer.Option(DEFAULT_ROUNDS, "--rounds", min=1, help="Federated rounds."),
    contributors: int = typer.Option(DEFAULT_CONTRIBUTORS, "--contributors", "-n", min=1,
                                     help="Simulated contributors (one SuperNode each)."),
    local_epochs: int = typer.Option(1, "--local-epochs", min=1,
                                     help="Epochs each contributor trains per round."),
    seed: int = typer.Option(0, help="Seed of data, sampling and training."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o",
                             help="Where global_model.pth, history.json and the plot land."),
    data: Path = typer.Option(DEFAULT_DATA, "--data", help="Where the rendered contributor "
                              "stores and the held-out store are built (cached)."),
    songs: int = typer.Option(RUN_SONGS, "--songs", min=1, help="Practice songs per contributor."),
    seconds: float = typer.Option(DEFAULT_SECONDS, "--seconds", min=2.0, help="Song length (s)."),
    split: str = typer.Option("per-kit", help="per-kit (non-IID) or iid."),
    font_kits: bool = typer.Option(False, "--font-kits/--no-font-kits", help=FONT_KITS_HELP),
    strategy: str = typer.Option(RunSettings.strategy, help="fedavg or fedprox."),
    mu: float = typer.Option(0.0, "--mu", help="FedProx proximal term weight."),
    head: str = typer.Option(RunSettings.head, help="single (softmax) or multi (a sigmoid per "
                             "class: hits struck together are all learnt; see README)."),
    pooling: str = typer.Option(RunSettings.pooling, help="The global model's pooling: avg (the "
                                "seed's CNN) or avgmax (see README)."),
    aggregation: str = typer.Option(RunSettings.aggregation, help="fedavg, trimmed-mean, median "
                                    "or krum (robust to a poisoned contributor; see README)."),
    lr: float = typer.Option(RunSettings.lr, help="Contributors' learning rate."),
    batch_size: int = typer.Option(RunSettings.batch_size, "--batch-size", min=1,
                                   help="Contributors' batch size (small: more steps per round)."),
    class_weight_power: float = typer.Option(
        RunSettings.class_weight_power, "--class-weight-power", min=0.0,
        help="Contributors' loss weight of a class: (inverse class frequency) ** POWER; 0: "
        "unweighted, 1: `train`'s (see README)."),
    min_nodes: int = typer.Option(2, "--min-nodes", min=1, help="Minimum contributors per round."),
    fraction: float = typer.Option(1.0, "--fraction", help="Share of contributors per round."),
    augment: str = typer.Option(",".join(DEFAULT_AUGMENT), help="Augmentations: a comma list, "
                                "'default', 'all', 'none', '-name' removes one."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's last checkpoint."),
    recalibrate_bn: bool = typer.Option(RunSettings.recalibrate_bn,
                                        "--recalibrate-bn/--no-recalibrate-bn",
                                        help="Contributors re-estimate the global model's "
                                        "BatchNorm statistics each round (see README)."),
    dp_noise: float = typer.Option(0.0, "--dp-noise", min=0.0, help="Differential privacy: noise "
                                   "multiplier z (0: off; see README's trust section)."),
    dp_clip: float | None = typer.Option(None, "--dp-clip", help="DP clipping norm of each "
                                         "contributor's update (default: the run config's)."),
    dp_delta: float | None = typer.Option(None, "--dp-delta", help="DP delta epsilon is reported "
                                          "at (default 1e-5)."),
) -> None:
    """The main job: federate per-kit contributors on Flower's simulation engine.

    Builds (or reuses) the contributors' stores from real Hydrogen kits, runs ROUNDS of FedAvg
    with server-side evaluation on kits no contributor has, and writes the global model,
    history.json and heldout_accuracy.png to OUT.
    """

    from .federation import simulate

    t0 = time.perf_counter()
    stores, heldout = _stores(data, contributors, songs, seconds, seed, split, font_kits)
    console.print(f"data ready in {time.perf_counter() - t0:.0f} s: {len(stores)} contributors, "
                  f"held-out store {heldout}", highlight=False)
    settings = RunSettings(num_rounds=rounds, local_epochs=local_epochs, seed=seed,
                           out_dir=str(out), strategy=strategy, proximal_mu=mu, lr=lr,
                           aggregation=aggregation, head=head, pooling=pooling,
                           batch_size=batch_size, min_nodes=min(min_nodes, contributors),
                           fraction_train=fraction, augment=",".join(parse_augment(augment)),
                           heldout=str(heldout),
                           resume=resume, dp_noise_multiplier=dp_noise,
                           recalibrate_bn=recalibrate_bn,
                           class_weight_power=class_weight_power)
    if dp_clip is not None:
        settings.dp_clipping_norm = dp_clip
    if dp_delta is not None:
        settings.dp_delta = dp_delta
    final = simulate(settings, stores)
    console.print(_metrics_table(f"Held-out kits after {rounds} rounds", final))
    console.print(f"total {time.perf_counter() - t0:.0f} s", highlight=False)


@app.command("baseline")
def baseline_cmd(
    rounds: int = typer.Option(DEFAULT_ROUNDS, "--rounds", min=1, help="Rounds of the federation "
                               "this is the reference for."),
    local_epochs: int = typer.Option(1, "--local-epochs", min=1),
    contributors: int = typer.Option(DEFAULT_CONTRIBUTORS, "--contributors", "-n", min=1),
    seed: int = typer.Option(0),
    data: Path = typer.Option(DEFAULT_DATA, "--data"),
    songs: int = typer.Option(RUN_SONGS, "--songs", min=1),
    seconds: float = typer.Option(DEFAULT_SECONDS, "--seconds", min=2.0),
    lr: float = typer.Option(RunSettings.lr, help="As for `run`."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: the "
                                          "`train` command's, the recipe a user trains with."),
    augment: str = typer.Option(",".join(DEFAULT_AUGMENT), help="As for `run`."),
    head: str = typer.Option(RunSettings.head, help="As for `run`."),
    pooling: str = typer.Option(RunSettings.pooling, help="As for `run`."),
    class_weight_power: float = typer.Option(RunSettings.class_weight_power,
                                             "--class-weight-power", min=0.0, help="As for `run`."),
    font_kits: bool = typer.Option(False, "--font-kits/--no-font-kits", help=FONT_KITS_HELP),
    out: Path | None = typer.Option(None, "--out", help="Also save the model here."),
) -> None:
    """Centralised reference: pool every contributor's samples, train rounds x local-epochs
    epochs, report accuracy and macro-F1 on the held-out kits (the number to reach)."""
    from beatsight.client.training import TrainConfig
    from beatsight.common.model import check_head, check_pooling

    from .baseline import train_baseline

    stores, heldout = _stores(data, contributors, songs, seconds, seed, "per-kit", font_kits)
    cfg = TrainConfig(lr=lr, seed=seed, augment=parse_augment(augment), head=check_head(head),
                      class_weight_power=class_weight_power)
    cfg.batch_size = batch_size or cfg.batch_size
    metrics = train_baseline(stores, heldout, rounds * local_epochs, cfg, out,
                             check_pooling(pooling))
    console.print(_metrics_table(f"Centralised baseline, {rounds * local_epochs} epochs, "
                                 "held-out kits", metrics))


@app.command("crossval")
def crossval_cmd(
    folds: int = typer.Option(4, "--folds", "-k", help="Leave-kits-out folds; every usable kit "
                              "is held out exactly once."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Training epochs per fold (the last "
                               "epoch's model is tested: no checkpoint is chosen on test kits)."),
    augment: str = typer.Option(",".join(DEFAULT_AUGMENT), help="Augmentations: a comma list, "
                                "'default', 'all', 'none', '-name' removes one ('all,-overlap')."),
    augment_p: float = typer.Option(0.5, "--augment-p", help="Share of windows each one touches."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", min=0.0, max=0.5),
    lr_schedule: str = typer.Option("cosine", "--lr-schedule", help="cosine (to 0 over the "
                                    "epochs) or plateau (as `train`; no validation here)."),
    balance: str = typer.Option("loss", help="Class balance: loss (class-weighted loss, the "
                                "training default), sampling (classes drawn equally) or none."),
    class_weight_power: float = typer.Option(1.0, "--class-weight-power", min=0.0, help="With "
                                             "--balance loss: weights (inverse class frequency) "
                                             "** POWER (1: `train`'s)."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    head: str = typer.Option("single", help="single (softmax, one class per window) or multi "
                             "(a sigmoid per class, trained on every class struck at the onset)."),
    pooling: str = typer.Option("avg", help="The CNN's global pooling: avg (the seed's) or "
                                "avgmax (average and maximum side by side)."),
    seed: int = typer.Option(0, help="Seed of initial weights, shuffling, augmentation."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the rendered data and folds."),
    data: Path = typer.Option(Path("runs/crossval-data"), "--data", help="Per-kit sample stores "
                              "(rendered once, cached)."),
    songs: int = typer.Option(2, "--songs", min=0, help="Grooves rendered per kit."),
    seconds: float = typer.Option(20.0, "--seconds", min=2.0, help="Length of each groove (s)."),
    isolated: int = typer.Option(6, "--isolated", min=0, help="Isolated hits per class per kit."),
    max_per_class: int = typer.Option(15, "--max-per-class", min=0, help="Cap on training "
                                      "samples per class per kit (0: all)."),
    drop_shared: bool = typer.Option(False, "--drop-shared/--keep-shared", help="Train only on "
                                     "hits not struck together with another class."),
    kit: list[str] = typer.Option(None, "--kit", help="Use only these kits (repeatable)."),
    font_kits: bool = typer.Option(False, "--font-kits/--no-font-kits", help="Also train on "
                                   "the SoundFont drum kits (DATA/font-kits; they never test)."),
    sample_kits: bool = typer.Option(False, "--sample-kits/--no-sample-kits", help="Also train "
                                     "on the one-shot drum samples of exadrums, stk, Sonic Pi "
                                     "and LMMS (DATA/sample-kits; they never test)."),
    fold: list[int] = typer.Option(None, "--fold", help="Run only this fold (1-based, repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Folds trained at once, each in its "
                             "own process (default torch threads: cores / jobs)."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (per fold)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the full result as JSON "
                                    "(rewritten after each fold; 'complete' says if all ran)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    kits_root: Path | None = typer.Option(None, "--kits-dir", help="Kits directory."),
) -> None:
    """Model quality on unseen kits: leave-kits-out folds over every Hydrogen kit, accuracy and
    macro-F1 on the 12 classes and the merged 10-class view, per-class F1, mean and spread."""
    import json

    from beatsight.client.training import TrainConfig
    from beatsight.common.atomic import atomic_write_text
    from beatsight.common.errors import BeatSightError
    from beatsight.common.model import check_head, check_pooling

    from . import crossval as cv

    if balance not in ("loss", "sampling", "none"):
        raise BeatSightError(f"--balance {balance!r}: choose loss, sampling or none")
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                            augment=parse_augment(augment), augment_p=augment_p,
                            early_stopping_patience=0,
                            class_weight_power=class_weight_power if balance == "loss" else 0.0,
                            sampling="balanced" if balance == "sampling" else "shuffle",
                            label_smoothing=label_smoothing, lr_schedule=lr_schedule,
                            num_threads=threads, head=check_head(head))
    cfg = cv.CrossvalConfig(folds=folds, seed=data_seed, data=str(data), songs=songs, seconds=seconds,
                            isolated_per_class=isolated, max_per_class=max_per_class,
                            drop_shared=drop_shared, pooling=check_pooling(pooling),
                            kits=list(kit or []), only_folds=list(fold or []),
                            font_kits=font_kits, sample_kits=sample_kits, jobs=jobs)
    console.print(f"augmentations: {', '.join(train_cfg.augment) or 'none'}; {epochs} epochs, "
                  f"lr {lr} ({lr_schedule}), balance {balance}"
                  f"{f' (power {class_weight_power:g})' if balance == 'loss' else ''}, label smoothing "
                  f"{label_smoothing}, {head} head, {pooling} pooling", highlight=False)
    def on_fold(rec: dict, so_far: dict) -> None:
        console.print(cv.fold_line(rec), highlight=False)
        if out is not None:   # after every fold: a stopped run keeps what it finished
            atomic_write_text(out, json.dumps(so_far, indent=1) + "\n")

    result = cv.crossval(cfg, train_cfg, kits_root, progress, on_fold=on_fold)
    for table in cv.tables(result):
        console.print(table)
    if out is not None:
        console.print(f"wrote {out}", highlight=False)


@app.command("crossval-merge")
def crossval_merge_cmd(
    results: list[Path] = typer.Argument(..., help="`crossval --out` JSON files of runs that "
                                         "each ran some folds (`--fold`) with the same settings."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the merged result as JSON."),
) -> None:
    """One result from crossval runs that ran different folds (a long protocol split over days
    or machines): the same tables as `crossval`, pooled over every fold (onset F1 excepted)."""
    import json

    from beatsight.common.atomic import atomic_write_text
    from beatsight.common.errors import BeatSightError

    from . import crossval as cv

    loaded = []
    for path in results:
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise BeatSightError(f"{path}: cannot read a crossval result ({exc})") from None
    result = cv.merge(loaded, [str(p) for p in results])
    for table in cv.tables(result):
        console.print(table)
    missing = sorted(set(range(1, len(result["folds_assigned"]) + 1))
                     - set(result["config"]["only_folds"]))
    if missing:
        console.print(f"folds not run yet: {', '.join(map(str, missing))}", highlight=False)
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
        console.print(f"wrote {out}", highlight=False)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
