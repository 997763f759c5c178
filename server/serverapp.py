"""The maintainers' ServerApp: FedAvg/FedProx rounds, held-out evaluation, checkpoints, history."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.table import Table

from beatsight.common.checkpoint import Checkpoint, build_model, read_checkpoint, save_checkpoint
from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN
from beatsight.common.runpaths import resolve_run_path

from .deadline import NotEnoughContributors
from .heldout import HeldOut
from .history import History
from .settings import RunSettings
from .strategy import make_strategy

log = logging.getLogger(__name__)
console = Console()

LATEST = "checkpoints/latest.pth"
FINAL = "global_model.pth"


@dataclass
class RunPaths:
    out: Path
    latest: Path = field(init=False)
    final: Path = field(init=False)
    history: Path = field(init=False)
    plot: Path = field(init=False)

    def __post_init__(self) -> None:
        self.latest = self.out / LATEST
        self.final = self.out / FINAL
        self.history = self.out / "history.json"
        self.plot = self.out / "heldout_accuracy.png"


def _state_dict(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(arrays.to_torch_state_dict())


def _checkpoint(state: dict, round_: int, metrics: dict, settings: RunSettings,
                privacy: dict | None = None) -> Checkpoint:
    extra = {"round": round_, "settings": settings.to_run_config()}
    if privacy:
        extra["privacy"] = privacy  # server/privacy.py: epsilon, delta, noise, clip, the ledger
    return Checkpoint(state_dict=state, model_version=f"federated-r{round_}",
                      metrics=metrics, extra=extra, head=settings.head)


def _privacy(strategy) -> dict | None:
    """The DP wrapper's budget so far (epsilon, delta, z, clip) with its ledger; None without DP."""
    report = getattr(strategy, "privacy_report", None)
    return {**report(), "ledger": strategy.ledger.state()} if report else None


def _train_config(settings: RunSettings) -> ConfigRecord:
    return ConfigRecord({
        "local-epochs": settings.local_epochs,
        "lr": settings.lr,
        "batch-size": settings.batch_size,
        "proximal-mu": settings.proximal_mu if settings.strategy == "fedprox" else 0.0,
        "augment": settings.augment,
        "head": settings.head,
        "class-weight-power": settings.class_weight_power,
        "seed": settings.seed,
        "threads": settings.threads,
    })


def run_federation(grid: Grid, settings: RunSettings) -> dict:
    """Run (or resume) a federation; returns the last round's held-out metrics."""
    random.seed(settings.seed)  # Flower samples nodes with `random`
    torch.manual_seed(settings.seed)
    paths = RunPaths(Path(settings.out_dir))
    paths.out.mkdir(parents=True, exist_ok=True)
    history = History(paths.history)

    start_round, model, ckpt = 0, DrumClassifierCNN(pooling=settings.pooling), None
    if settings.resume and paths.latest.exists():
        ckpt = read_checkpoint(paths.latest)
        model = build_model(ckpt, source=paths.latest)
        if ckpt.pooling != settings.pooling:
            raise BeatSightError(f"{paths.latest}: the run to resume has pooling {ckpt.pooling!r}, "
                                 f"this run asks for {settings.pooling!r}")
        start_round = int(ckpt.extra.get("round", 0))
        log.info("resuming from %s after round %d", paths.latest, start_round)
    history.truncate(start_round if start_round else -1)
    remaining = settings.num_rounds - start_round
    heldout = HeldOut.from_store(settings.heldout) if settings.heldout else None
    if remaining <= 0:
        log.info("run already finished %d rounds", start_round)
        return history.rounds[-1].get("heldout", {}) if history.rounds else {}

    strategy = make_strategy(settings)
    if settings.dp and start_round:  # rounds released before the restart count (no noise: inf)
        prior = ((ckpt.extra.get("privacy") or {}).get("ledger") or {}) if ckpt else {}
        strategy.ledger.noise_multipliers = list(prior.get("noise_multipliers") or [0.0] * start_round)
    t0 = time.time()
    last: dict = {}
    final: dict | None = None

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal last
        nonlocal final
        rnd = start_round + server_round
        state = _state_dict(arrays)
        stats = getattr(strategy, "bn_stats", {}).pop(server_round, None)   # none under DP
        if stats:   # the contributors' re-estimate under these very weights (strategy.py)
            state.update({k: torch.from_numpy(v) for k, v in stats.items()})
        final = state
        metrics = heldout.evaluate(state) if heldout else {}
        entry = {"round": rnd, "heldout": metrics, "seconds": round(time.time() - t0, 1)}
        privacy = _privacy(strategy)
        if privacy:
            entry["privacy"] = {k: v for k, v in privacy.items() if k != "ledger"}
        if server_round > 0:
            parts = list(strategy.last_round)
            entry["participants"] = parts
            save_checkpoint(paths.latest, _checkpoint(state, rnd, metrics, settings, privacy))
        if server_round > 0 or start_round == 0:
            history.record(entry)
            _print_round(entry)
        last = metrics
        return MetricRecord({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=remaining,
            timeout=settings.round_timeout,
            train_config=_train_config(settings),
            evaluate_config=ConfigRecord({"bn-stats": settings.recalibrates_bn}),
            evaluate_fn=evaluate_fn,
        )
    except NotEnoughContributors as exc:  # deadline.py: end cleanly, resumable
        log.warning("run stopped: %s", exc)
        console.print(f"run stopped early: {exc}\nthe last finished round is in {paths.latest}; "
                      "continue with `beatsight-server run --resume` (run config resume=true)")
        return last
    # evaluate_fn ran for round 0 and after every round: `final` is the last global model, with
    # the contributors' BatchNorm statistics where they sent them
    assert final is not None, "the strategy never evaluated"
    privacy = _privacy(strategy)
    save_checkpoint(paths.final, _checkpoint(final, settings.num_rounds, last, settings, privacy))
    history.plot(paths.plot)
    console.print(f"global model: {paths.final}\nhistory: {paths.history}\nplot: {paths.plot}")
    if privacy:
        eps, note = privacy["epsilon"], privacy.get("note")
        console.print(f"differential privacy: ({'unbounded' if eps is None else f'{eps:.3g}'}, "
                      f"{privacy['delta']:g})-DP per contributor after {privacy['rounds']} round(s) "
                      f"(noise multiplier {privacy['noise_multiplier']:g}, clipping norm "
                      f"{privacy['clipping_norm']:g})" + (f"; {note}" if note else ""), highlight=False)
    return last


def _print_round(entry: dict) -> None:
    parts = [p for p in entry.get("participants", []) if "error" not in p]
    failed = len(entry.get("participants", [])) - len(parts)
    h = entry["heldout"]
    table = Table(show_header=True, header_style="bold", box=None)
    dp = entry.get("privacy")
    for col in ("round", "contributors", "samples", "train loss", "held-out acc", "macro-F1", "time",
                *(["epsilon"] if dp else [])):
        table.add_column(col, justify="right")
    samples = sum(int(p.get("num-examples", 0)) for p in parts)
    losses = [p["train-loss"] for p in parts if "train-loss" in p]
    table.add_row(
        str(entry["round"]),
        f"{len(parts)}" + (f" ({failed} failed)" if failed else ""),
        str(samples) if parts else "-",
        f"{sum(losses) / len(losses):.3f}" if losses else "-",
        f"{h['accuracy']:.3f}" if "accuracy" in h else "-",
        f"{h['macro_f1']:.3f}" if "macro_f1" in h else "-",
        f"{entry['seconds']:.0f}s",
        *([("inf" if dp["epsilon"] is None else f"{dp['epsilon']:.3g}")] if dp else []),
    )
    console.print(table)
    log.info("round %s participants: %s", entry["round"],
             ", ".join(f"node {p['node']}: {int(p.get('num-examples', 0))} samples" for p in parts)
             or "none (initial model)")


def make_server_app(settings: RunSettings | None = None) -> ServerApp:
    """With `settings`, a ServerApp for in-process simulation; without, read Flower's run config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if settings is not None:
            run_federation(grid, settings)
            return
        run_settings = RunSettings.from_run_config(dict(context.run_config))
        # `flwr run .`: relative paths are the project's, not the SuperLink's working directory
        run_settings.heldout = resolve_run_path(run_settings.heldout)
        run_settings.out_dir = resolve_run_path(run_settings.out_dir)
        console.print(f"out dir: {run_settings.out_dir}", highlight=False)
        run_federation(grid, run_settings)

    return server_app


# Entry point for `flwr run` and the SuperLink (see [tool.flwr.app.components] in pyproject.toml).
app = make_server_app()
