"""The one training loop: `beatsight-client train`, the federated client and the central baseline.

Adam + cross-entropy (class-weighted by default), ReduceLROnPlateau on validation loss
(patience 5, as the original), early stopping, optional layer freezing and FedProx term.
Fast on CPU: batches come from cached float16 patches (augmented batches are recomputed from
the cached raw windows), and the model runs channels_last. Seeded: the same config and data
give the same weights, and a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from beatsight.common.atomic import atomic_write
from beatsight.common.augment import make_augment
from beatsight.common.classes import NUM_CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN, check_head, resolve_device
from beatsight.common.templates import family_templates

from .dataset import FeatureSet, one_hot
from .evaluation import evaluate, to_input

__all__ = ["TrainConfig", "History", "fit", "evaluate", "new_model", "class_weights"]

log = logging.getLogger(__name__)
STATE_FORMAT = "beatsight-train-state"


@dataclass
class TrainConfig:
    """Everything that shapes a training run (stored in metrics.json and the resume state)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None
    # Loss weight of class c: (n / (classes present x n_c)) ** power. 1: rare classes count as
    # much as common ones (`train`'s default); 0: unweighted; 0.5 (the federation's default):
    # between, which kept the rare classes without one rare hit dominating a batch-4 step.
    class_weight_power: float = 1.0
    augment: Sequence[str] = ()  # names from common.augment.AUGMENTATIONS
    augment_p: float = 0.5
    early_stopping_patience: int = 10  # epochs without val-loss improvement; 0 = never stop
    lr_patience: int = 5
    lr_factor: float = 0.5
    freeze: Sequence[str] = ()  # top-level modules, e.g. ("conv1", "conv2")
    fedprox_mu: float = 0.0
    num_threads: int | None = None
    channels_last: bool = True
    precision: str = "auto"  # "fp32", "bf16" (autocast), or "auto": bf16 where the CPU has it
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0: off)
    lr_schedule: str = "plateau"  # "plateau" (ReduceLROnPlateau, as the original) or "cosine"
    sampling: str = "shuffle"  # "shuffle" (every sample once per epoch) or "balanced" (classes
    #                            drawn equally often, with replacement; pair with class_weight_power=0)
    head: str = "single"  # "single" (softmax + cross-entropy, the original) or "multi" (a sigmoid
    #                       per class + binary cross-entropy on every class struck at the onset)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"], d["freeze"] = list(self.augment), list(self.freeze)
        return d


class History(list):
    """Per-epoch records (dicts); attributes describe the best epoch and how the run ended."""

    best_epoch: int = 0
    best_val_accuracy: float = float("nan")
    best_val_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    resumed_from: int = 0  # epochs already done when this run started (--resume)


@dataclass
class _Data:
    X: np.ndarray
    y: np.ndarray
    fs: FeatureSet | None = field(default=None)

    def multi_hot(self) -> np.ndarray:
        return self.fs.multi_hot() if self.fs is not None else one_hot(self.y)

    def batch(self, idx: np.ndarray, augment, rng) -> np.ndarray:
        if self.fs is not None:
            return self.fs.batch(idx, augment, rng)
        return self.X[idx].astype(np.float32)


def _as_data(data: FeatureSet | tuple[np.ndarray, np.ndarray], what: str) -> _Data:
    if isinstance(data, FeatureSet):
        return _Data(data.X, data.y, data)
    try:
        X, y = data
    except (TypeError, ValueError):
        raise BeatSightError(f"{what}: expected a FeatureSet or an (X, y) pair") from None
    X, y = np.asarray(X), np.asarray(y, dtype=np.int64)
    if X.ndim != 4 or X.shape[1] != 1 or len(X) != len(y):
        raise BeatSightError(f"{what}: expected X (N, 1, H, W) and y (N,), got {X.shape}, "
                             f"{y.shape}")
    return _Data(X, y)


def new_model(seed: int = 0, pooling: str = "avg") -> DrumClassifierCNN:
    """A freshly initialised model; the same seed gives the same initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DrumClassifierCNN(pooling=pooling)


def set_templates(model: nn.Module, fs: FeatureSet) -> None:
    """Store the training data's drum-family templates in the model (`common.templates`)."""
    t = family_templates(fs.windows, fs.y, fs.settings.pre_samples, fs.targets)
    with torch.no_grad():
        model.templates.copy_(torch.from_numpy(t))


def class_weights(y: np.ndarray, power: float = 1.0) -> torch.Tensor:
    """(n / (classes present * n_c)) ** power: at 1 rare classes count as much as common ones in
    the loss, at 0 every hit counts the same."""
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    present = counts > 0
    w = np.ones(NUM_CLASSES)
    w[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    return torch.tensor(w, dtype=torch.float32)


def check_class_weight_power(power: float) -> float:
    if not (math.isfinite(power) and power >= 0):
        raise BeatSightError(f"class weight power {power}: give a number >= 0 (0: unweighted, "
                             "1: inverse class frequency)")
    return float(power)


def pos_weights(targets: np.ndarray) -> torch.Tensor:
    """Multi-label head: sqrt(negatives / positives) per class, 1 to 10. Rare classes get more
    weight on their hits without flooding the map with false ones at the 0.5 threshold."""
    pos = targets.sum(axis=0).astype(np.float64)
    neg = len(targets) - pos
    w = np.where(pos > 0, np.sqrt(neg / np.maximum(pos, 1.0)), 1.0)
    return torch.tensor(np.clip(w, 1.0, 10.0), dtype=torch.float32)


def _balanced_probs(y: np.ndarray) -> np.ndarray:
    """Per-sample draw probabilities that give every present class the same share."""
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    p = 1.0 / counts[y]
    return p / p.sum()


def _freeze(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    children = dict(model.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise BeatSightError(f"cannot freeze {', '.join(unknown)}: the model's layers are "
                             f"{', '.join(children)}")
    frozen = [children[n] for n in names]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def _global_tensors(model: nn.Module, global_params, device) -> list[torch.Tensor]:
    """The FedProx anchor, aligned with model.parameters(); default = the weights at the start."""
    names = [n for n, _ in model.named_parameters()]
    if global_params is None:
        vals = [p.detach() for p in model.parameters()]
    elif isinstance(global_params, Mapping):
        missing = [n for n in names if n not in global_params]
        if missing:
            raise BeatSightError(f"global parameters lack {missing[0]!r}")
        vals = [torch.as_tensor(np.asarray(global_params[n])) if not isinstance(
            global_params[n], torch.Tensor) else global_params[n] for n in names]
    else:
        vals = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
                for v in global_params]
        if len(vals) != len(names):
            raise BeatSightError(f"{len(vals)} global parameters for a model with {len(names)}")
    return [v.detach().to(device=device, dtype=torch.float32).clone() for v in vals]


def bf16_native() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision not in ("fp32", "bf16", "auto"):
        raise BeatSightError(f"precision {cfg.precision!r}: choose fp32, bf16 or auto")
    if cfg.precision == "auto":
        return device.type == "cpu" and bf16_native()
    return cfg.precision == "bf16"


def _save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def load_state(path: str | Path) -> dict:
    """A resume state written by `fit(state_path=...)`; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise BeatSightError(f"{path}: no training state to resume from (run train first)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BeatSightError(f"{path}: unreadable training state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise BeatSightError(f"{path}: not a beatsight training state")
    return state


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in
            model.state_dict().items()}


def fit(
    model: nn.Module,
    train_data: FeatureSet | tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    val_data: FeatureSet | tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    global_params: Mapping[str, object] | Sequence[object] | None = None,
    on_epoch: Callable[[dict, nn.Module, History], None] | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
) -> History:
    """Train `model` in place; returns the per-epoch History (the model keeps the last weights,
    `History.best_state` holds the best-validation-accuracy weights).

    `global_params` (state_dict-like mapping or list aligned with model.parameters()) anchors
    the FedProx term when `cfg.fedprox_mu > 0`; by default the weights `model` starts with.
    `on_epoch(record, model, history)` runs after every epoch (e.g. to save checkpoints).
    `state_path`: write a resumable state there after every epoch; `resume=True` continues
    from it (same seed and data give the same result as an uninterrupted run).
    """
    train = _as_data(train_data, "training data")
    val = _as_data(val_data, "validation data") if val_data is not None else None
    if len(train.y) == 0:
        raise BeatSightError("no training samples")
    if cfg.epochs < 0 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise BeatSightError("epochs must be >= 0, batch size >= 1 and learning rate > 0")
    augment = make_augment(list(cfg.augment), cfg.augment_p)
    if augment is not None and train.fs is None:
        raise BeatSightError("augmentation needs the raw windows: pass a FeatureSet "
                             "(SampleStore.feature_set()), not (X, y) arrays")
    if train.fs is not None:
        set_templates(model, train.fs)
    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    frozen = _freeze(model, cfg.freeze)
    try:
        return _run(model, train, val, cfg, augment, device, frozen, progress, global_params,
                    on_epoch, Path(state_path) if state_path else None, resume)
    finally:
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(True)
        if cfg.channels_last:
            model.to(memory_format=torch.contiguous_format)
        torch.set_num_threads(old_threads)


def _run(model, train: _Data, val: _Data | None, cfg: TrainConfig, augment, device, frozen,
         progress: bool, global_params, on_epoch, state_path: Path | None,
         resume: bool) -> History:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from beatsight.common.cliutil import err_console

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n, bs = len(train.y), cfg.batch_size
    if cfg.lr_schedule not in ("plateau", "cosine") or cfg.sampling not in ("shuffle", "balanced"):
        raise BeatSightError(f"lr schedule {cfg.lr_schedule!r} / sampling {cfg.sampling!r}: "
                             "choose plateau or cosine / shuffle or balanced")
    cosine = cfg.lr_schedule == "cosine"
    if cosine:  # stepped every batch, from lr down to 0 over all epochs of this call
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, cfg.epochs * math.ceil(n / bs)))
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    multi = check_head(cfg.head) == "multi"
    power = check_class_weight_power(cfg.class_weight_power)
    targets = train.multi_hot() if multi else None
    if multi:
        ls = float(cfg.label_smoothing)
        bce = nn.BCEWithLogitsLoss(
            pos_weight=(pos_weights(targets) ** power).to(device) if power else None)
        smoothed = targets * (1.0 - ls) + 0.5 * ls

        def loss_fn(logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            return bce(logits, torch.from_numpy(smoothed[idx]).to(device))
    else:
        weight = class_weights(train.y, power).to(device) if power else None
        ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=float(cfg.label_smoothing))

        def loss_fn(logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            return ce(logits, torch.from_numpy(train.y[idx]).to(device))
    draw = _balanced_probs(train.y) if cfg.sampling == "balanced" else None
    bf16 = _use_bf16(cfg, device)
    mu = float(cfg.fedprox_mu)
    anchor = _global_tensors(model, global_params, device) if mu > 0 else None
    trainable = [p.requires_grad for p in model.parameters()]

    hist = History()
    bad_epochs, start = 0, 0
    es_best = float("inf")
    if resume and state_path is not None and state_path.is_file():
        st = load_state(state_path)
        if st.get("n_train") != len(train.y):
            raise BeatSightError(f"{state_path}: saved for {st.get('n_train')} training samples, "
                                 f"the dataset now has {len(train.y)}; start a new run")
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise BeatSightError(f"{state_path}: does not fit this run (other --freeze or "
                                 f"model?): {str(exc).splitlines()[0][:120]}") from None
        hist.extend(st["history"])
        hist.best_epoch, hist.best_val_accuracy = st["best_epoch"], st["best_val_accuracy"]
        hist.best_val_loss, hist.best_state = st["best_val_loss"], st["best_state"]
        bad_epochs, es_best, start = st["bad_epochs"], st["es_best"], st["epoch"]
        hist.resumed_from = start
        if st.get("stopped_early"):  # it had finished: nothing left to do
            hist.stopped_early, start = True, max(start, cfg.epochs)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True, disable=not progress) as bar:
        ep_task = bar.add_task("epochs", total=cfg.epochs, completed=start, info="")
        for epoch in range(start + 1, cfg.epochs + 1):
            rng = np.random.default_rng([cfg.seed, epoch])
            t0 = time.perf_counter()
            model.train()
            for m in frozen:  # frozen layers keep their BatchNorm statistics too
                m.eval()
            b_task = bar.add_task(f"epoch {epoch}", total=n, info="")
            tot_loss, correct = 0.0, 0
            perm = rng.permutation(n) if draw is None else rng.choice(n, size=n, p=draw)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed * 1_000_003 + epoch)
                for b in range(0, n, bs):
                    idx = np.sort(perm[b:b + bs])
                    xb = to_input(train.batch(idx, augment, rng), device, cfg.channels_last)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        logits = model(xb).float()
                    loss = loss_fn(logits, idx)
                    if anchor is not None:
                        prox = sum(((p - g) ** 2).sum() for p, g, t in
                                   zip(model.parameters(), anchor, trainable, strict=True) if t)
                        loss = loss + 0.5 * mu * prox
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if cosine:
                        sched.step()
                    tot_loss += float(loss.detach()) * len(idx)
                    top = logits.detach().argmax(1).cpu().numpy()
                    # multi head: the top class is one of those struck at that onset
                    correct += int((targets[idx, top] > 0).sum() if multi
                                   else (top == train.y[idx]).sum())
                    bar.update(b_task, advance=len(idx),
                               info=f"loss {tot_loss / min(b + bs, n):.3f}")
            bar.remove_task(b_task)
            secs = time.perf_counter() - t0
            rec = {"epoch": epoch, "train_loss": tot_loss / n, "train_accuracy": correct / n,
                   "lr": opt.param_groups[0]["lr"], "seconds": round(secs, 3),
                   "samples_per_s": round(n / secs, 2), "precision": "bf16" if bf16 else "fp32"}
            monitor = rec["train_loss"]
            if val is not None and len(val.y):
                ev = evaluate(model, val.X, val.y)
                rec.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"],
                           val_macro_f1=ev["macro_f1"])
                monitor = ev["loss"]
                better = (ev["accuracy"] > hist.best_val_accuracy
                          or math.isnan(hist.best_val_accuracy)
                          or (ev["accuracy"] == hist.best_val_accuracy
                              and ev["loss"] < hist.best_val_loss))
            else:
                better = True  # no validation data: the latest epoch is the best we know
            if better:
                hist.best_epoch = epoch
                hist.best_val_accuracy = rec.get("val_accuracy", float("nan"))
                hist.best_val_loss = rec.get("val_loss", float("inf"))
                hist.best_state = _clone_state(model)
            rec["best"] = better
            if not cosine:
                sched.step(monitor)
            if monitor < es_best - 1e-6:
                es_best, bad_epochs = monitor, 0
            else:
                bad_epochs += 1
            hist.append(rec)
            bar.update(ep_task, advance=1, info=_summary(rec))
            if progress:
                bar.console.print(f"epoch {epoch}/{cfg.epochs}: {_summary(rec)}",
                                  highlight=False, soft_wrap=True)
            stop = (val is not None and cfg.early_stopping_patience > 0
                    and bad_epochs >= cfg.early_stopping_patience)
            if state_path is not None:
                _save_state(state_path, {
                    "format": STATE_FORMAT, "epoch": epoch, "n_train": n,
                    "model": _clone_state(model), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "history": list(hist),
                    "best_epoch": hist.best_epoch, "best_val_accuracy": hist.best_val_accuracy,
                    "best_val_loss": hist.best_val_loss, "best_state": hist.best_state,
                    "bad_epochs": bad_epochs, "es_best": es_best,
                    "config": cfg.to_dict(), "stopped_early": stop})
            if on_epoch is not None:
                on_epoch(rec, model, hist)
            if stop:
                hist.stopped_early = True
                log.info("early stopping: validation loss has not improved for %d epochs",
                         bad_epochs)
                break
    if hist.best_state is None:
        hist.best_state = copy.deepcopy(_clone_state(model))
    return hist


def _summary(rec: dict) -> str:
    s = f"loss {rec['train_loss']:.3f} acc {rec['train_accuracy']:.3f}"
    if "val_accuracy" in rec:
        s += (f" | val loss {rec['val_loss']:.3f} acc {rec['val_accuracy']:.3f} "
              f"F1 {rec['val_macro_f1']:.3f}")
    return s + f" | {rec['samples_per_s']:.0f} samples/s"
