"""Model quality on labelled patches: loss, accuracy, macro-F1, per-class report, confusion matrix."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from beatsight.common.atomic import atomic_write
from beatsight.common.classes import CLASSES, NUM_CLASSES
from beatsight.common.inference import CNN_BATCH


def _uses_channels_last(model: nn.Module) -> bool:
    """Read off the last conv weight: the first one has a single input channel, and such a
    tensor counts as channels_last in either layout."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and weights[-1].is_contiguous(memory_format=torch.channels_last)


def to_input(x: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A float32 NCHW batch on `device`, channels_last when the model is."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Logits (N, classes) in eval mode; the model's train/eval mode and memory format are kept.

    On a CPU the model runs channels_last, CNN_BATCH patches at a time, as `process` does: the
    activations then stay in cache. bench/bench_heldout.py, 1,520 held-out patches, 2 threads:
    4.5x faster than contiguous batches of 256, the same logits to 1e-8. GPUs get batches of 256.
    """
    was_training, device = model.training, next(model.parameters()).device
    cpu = device.type == "cpu"
    bs = batch_size or (CNN_BATCH if cpu else 256)
    cl = _uses_channels_last(model)
    model.eval()
    if cpu and not cl:
        model.to(memory_format=torch.channels_last)
    try:
        out = [model(to_input(X[i:i + bs], device, cpu or cl)).float().cpu().numpy()
               for i in range(0, len(X), bs)]
    finally:
        if cpu and not cl:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


BN_STATS = ("running_mean", "running_var")


def batchnorm_statistics(model: nn.Module, X: np.ndarray, batch_size: int = 16
                         ) -> dict[str, np.ndarray]:
    """Every BatchNorm layer's running mean and variance re-estimated on X under `model`'s own
    weights (a forward pass in training mode, statistics averaged over all batches; the model
    itself is not changed). FedAvg's averaged statistics were gathered under each contributor's
    drifting local weights, not under the averaged ones (README, federation section)."""
    m = copy.deepcopy(model).float().to(memory_format=torch.channels_last)  # ~2x NCHW on a CPU
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None                      # a plain average over the batches
    m.train()
    device = next(m.parameters()).device
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            if len(X[i:i + batch_size]) > 1:         # BatchNorm needs two values per channel
                m(to_input(X[i:i + batch_size], device, channels_last=True))
    return {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()
            if k.endswith(BN_STATS)}


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int | None = None
             ) -> dict:
    """loss (plain cross-entropy), accuracy, macro_f1, per_class report, confusion (12x12 list).

    macro_f1 averages over the classes present in `y` or predicted (scikit-learn's default).
    """
    # scikit-learn is imported here, not at the top: it costs ~1 s of start-up, and Flower
    # starts a fresh ClientApp process for every training message, which never needs it.
    from sklearn.metrics import classification_report, confusion_matrix, f1_score

    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return {"n": 0, "loss": float("nan"), "accuracy": float("nan"),
                "macro_f1": float("nan"), "per_class": {}, "confusion": []}
    logits = predict_logits(model, X, batch_size)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
    pred = logits.argmax(axis=1)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    per_class = classification_report(
        y, pred, labels=present, target_names=[CLASSES[i] for i in present],
        output_dict=True, zero_division=0)
    return {
        "n": int(len(y)),
        "loss": loss,
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "per_class": {k: v for k, v in per_class.items() if k in CLASSES},
        "confusion": confusion_matrix(y, pred, labels=list(range(NUM_CLASSES))).tolist(),
        "predictions": pred.tolist(),
    }


def report_text(y: np.ndarray, pred: np.ndarray) -> str:
    """scikit-learn's text classification report over the classes that occur."""
    from sklearn.metrics import classification_report

    present = sorted(set(np.asarray(y).tolist()) | set(np.asarray(pred).tolist()))
    return classification_report(y, pred, labels=present,
                                  target_names=[CLASSES[i] for i in present], zero_division=0)


def plot_confusion(confusion: list[list[int]] | np.ndarray, path: str | Path,
                   title: str = "Drum classifier confusion matrix") -> Path:
    """Write a confusion-matrix PNG (rows: true class, columns: predicted), atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    top = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center",
                    color="white" if v > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    return path
