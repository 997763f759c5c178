"""Checkpoints that carry their class list, feature settings and metrics; bare state_dicts load too."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_write
from .classes import CLASSES
from .errors import BeatSightError
from .features import DEFAULT_SETTINGS, FeatureSettings
from .model import HEADS, POOLINGS, DrumClassifierCNN, pooling_of

FORMAT = "beatsight-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    classes: tuple[str, ...] = CLASSES
    features: FeatureSettings = DEFAULT_SETTINGS
    model_version: str = "unversioned"
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    legacy: bool = False  # a bare state_dict from the original training script
    head: str = "single"  # how the logits are read (common.model.HEADS); bare files: single

    @property
    def pooling(self) -> str:
        """The architecture's pooling (common.model.POOLINGS), as its weights imply."""
        return pooling_of(self.state_dict)

    def to_payload(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": "DrumClassifierCNN",
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "classes": list(self.classes),
            "features": self.features.to_dict(),
            "model_version": self.model_version,
            "metrics": self.metrics,
            "extra": self.extra,
            "head": self.head,
            "pooling": self.pooling,
        }


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write atomically, so a crash never leaves a half-written model where a good one was."""
    buf = io.BytesIO()
    torch.save(ckpt.to_payload(), buf)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read either format with weights_only=True; every failure is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BeatSightError(f"{path}: no such model file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise BeatSightError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        _check_fields(path, obj)
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise BeatSightError(
                f"{path}: checkpoint format {obj.get('format_version')} is newer than this "
                f"tool understands ({FORMAT_VERSION}); upgrade beatsight-federated")
        try:
            return Checkpoint(
                state_dict=dict(obj["state_dict"]),
                classes=tuple(obj["classes"]),
                features=FeatureSettings.from_dict(obj["features"]),
                model_version=str(obj.get("model_version", "unversioned")),
                metrics=dict(obj.get("metrics") or {}),
                extra=dict(obj.get("extra") or {}),
                head=str(obj.get("head", "single")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BeatSightError(f"{path}: checkpoint is missing or has a bad field ({exc})") from None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(state_dict=dict(obj), model_version="legacy", legacy=True)
    raise BeatSightError(f"{path}: not a BeatSight model (neither a checkpoint nor a state_dict)")


def _check_fields(path: Path, obj: dict) -> None:
    """Field types first: a crafted file must fail with one line, not a TypeError deep inside."""
    version = obj.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise BeatSightError(f"{path}: checkpoint format_version {type(version).__name__} is not an int")
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise BeatSightError(f"{path}: checkpoint state_dict is not a mapping of names to tensors")
    for key, kind in (("classes", (list, tuple)), ("features", dict), ("metrics", (dict, type(None))),
                      ("extra", (dict, type(None)))):
        if not isinstance(obj.get(key), kind):
            raise BeatSightError(f"{path}: checkpoint field {key!r} has the wrong type "
                                 f"({type(obj.get(key)).__name__})")
    if obj.get("head", "single") not in HEADS:
        raise BeatSightError(f"{path}: checkpoint head {obj.get('head')!r} is not one of "
                             f"{', '.join(HEADS)}")
    if obj.get("pooling", pooling_of(sd)) != pooling_of(sd) or pooling_of(sd) not in POOLINGS:
        raise BeatSightError(f"{path}: checkpoint says pooling {obj.get('pooling')!r} but its "
                             f"weights are for {pooling_of(sd)!r}")
    if not all(isinstance(c, str) for c in obj["classes"]):
        raise BeatSightError(f"{path}: checkpoint classes must be strings")


def build_model(
    ckpt: Checkpoint,
    source: str | Path = "model",
    expect_classes: tuple[str, ...] = CLASSES,
    expect_features: FeatureSettings | None = DEFAULT_SETTINGS,
) -> DrumClassifierCNN:
    """A model with the checkpoint's weights, after checking classes and feature settings agree."""
    if tuple(ckpt.classes) != tuple(expect_classes):
        raise BeatSightError(
            f"{source}: model classes {list(ckpt.classes)} differ from this tool's "
            f"{list(expect_classes)}")
    if expect_features is not None and ckpt.features != expect_features:
        diff = {k: v for k, v in ckpt.features.to_dict().items()
                if expect_features.to_dict().get(k) != v}
        raise BeatSightError(f"{source}: model was trained with other feature settings {diff}")
    model = DrumClassifierCNN(num_classes=len(ckpt.classes), pooling=ckpt.pooling)
    state = dict(ckpt.state_dict)
    state.setdefault("templates", model.templates)      # the original's bare state_dict has none
    if tuple(state["templates"].shape) != tuple(model.templates.shape):
        state["templates"] = model.templates             # the first layout (one spectrum per
        #                                                  family): loads without templates
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise BeatSightError(f"{source}: weights do not fit DrumClassifierCNN ({detail[:160]})") from None
    return model


def load_model(path: str | Path, **expect) -> tuple[DrumClassifierCNN, Checkpoint]:
    ckpt = read_checkpoint(path)
    return build_model(ckpt, source=path, **expect), ckpt
