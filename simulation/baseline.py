"""The centralised reference: all contributors' samples pooled, trained with the same budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from beatsight.client.dataset import FeatureSet
from beatsight.client.store import SampleStore
from beatsight.client.training import History, TrainConfig, fit, new_model
from beatsight.common.checkpoint import Checkpoint, save_checkpoint
from beatsight.server.heldout import HeldOut


def pooled(stores: list[Path]) -> FeatureSet:
    return FeatureSet.concat([SampleStore(p).feature_set(progress=True) for p in stores])


def train_baseline(stores: list[Path], heldout: Path, epochs: int, cfg: TrainConfig,
                   out: Path | None = None, pooling: str = "avg",
                   on_epoch: Callable[[dict, torch.nn.Module, History], None] | None = None) -> dict:
    """Train one model on the pooled data for `epochs` epochs; held-out metrics of the last epoch.

    The same number of passes over the data as a federation of `rounds x local epochs`, the same
    augmentations and learning rate, and no early stopping: only where the data sits differs.
    `on_epoch` is `fit`'s per-epoch callback (bench/fed_vs_central.py evaluates every epoch).
    """
    data = pooled(stores)
    model = new_model(cfg.seed, pooling)
    cfg.epochs, cfg.early_stopping_patience = epochs, 0
    fit(model, data, cfg, progress=True, on_epoch=on_epoch)
    metrics = HeldOut.from_store(str(heldout)).evaluate(model.state_dict())
    if out is not None:
        save_checkpoint(out, Checkpoint(model.state_dict(), model_version="central-baseline",
                                        metrics=metrics, head=cfg.head))
    return metrics
