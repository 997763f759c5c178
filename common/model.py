"""DrumClassifierCNN: the seed's architecture, module names kept so its fine-tuning recipe works."""

from __future__ import annotations

import torch
from torch import nn

from .classes import FAMILIES, NUM_CLASSES
from .templates import N_BANDS, SPAN

# How the 12 logits are read. "single": softmax, one class per window (the original's head).
# "multi": a sigmoid per class, so one window can be kick *and* hi-hat (drummers play them
# together); trained with binary cross-entropy on every class struck at that onset.
HEADS: tuple[str, ...] = ("single", "multi")
# Besides its top class, an onset also gets each other drum family's best class whose
# probability reaches this: a softmax shares 1.0 among the classes heard, a sigmoid does not.
SECONDARY_THRESHOLD: dict[str, float] = {"single": 0.25, "multi": 0.5}


def check_head(head: str) -> str:
    from .errors import BeatSightError

    if head not in HEADS:
        raise BeatSightError(f"head {head!r}: choose {' or '.join(HEADS)}")
    return head


def head_probs(logits: torch.Tensor, head: str = "single") -> torch.Tensor:
    """Per-class probabilities: softmax (they sum to 1) or independent sigmoids."""
    return torch.sigmoid(logits) if check_head(head) == "multi" else torch.softmax(logits, dim=1)


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


# How the last block's 256 maps become the classifier's input. "avg": global average (the seed's
# CNN). "avgmax": global average and global maximum side by side (512 features): the maximum
# keeps a strong local pattern that averaging over the whole patch dilutes.
POOLINGS: tuple[str, ...] = ("avg", "avgmax")


class AvgMaxPool(nn.Module):
    """(N, C, H, W) -> (N, 2C, 1, 1): global average, then global maximum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], dim=1)


def check_pooling(pooling: str) -> str:
    from .errors import BeatSightError

    if pooling not in POOLINGS:
        raise BeatSightError(f"pooling {pooling!r}: choose {' or '.join(POOLINGS)}")
    return pooling


def pooling_of(state_dict: dict) -> str:
    """The pooling a state_dict was trained with, read from its classifier's input width."""
    fc = state_dict.get("fc.weight")
    return "avgmax" if fc is not None and fc.shape[-1] == 512 else "avg"


class DrumClassifierCNN(nn.Module):
    """Four conv blocks 1->32->64->128->256, global pooling, dropout 0.3, linear to 12 logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.3,
                 pooling: str = "avg") -> None:
        super().__init__()
        self.pooling = check_pooling(pooling)
        self.conv1 = _block(1, 32, pool=True)
        self.conv2 = _block(32, 64, pool=True)
        self.conv3 = _block(64, 128, pool=True)
        self.conv4 = _block(128, 256, pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else AvgMaxPool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(256 if pooling == "avg" else 512, num_classes)
        # Not used by forward(): each drum family's mean attack pattern in the training data
        # (common.templates), which `process` uses to find kick, snare and hi-hat. A buffer, so
        # it travels with the weights and FedAvg averages it like BatchNorm's statistics.
        # Zeros: none learnt (an original bare state_dict).
        self.register_buffer("templates", torch.zeros(len(FAMILIES), N_BANDS, SPAN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_device(device: str | None) -> torch.device:
    """'cuda' if available when not given; a clear error if cuda is asked for and missing."""
    from .errors import BeatSightError

    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BeatSightError("--device cuda: no CUDA device is available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise BeatSightError(f"--device {device!r}: not a torch device (try cpu or cuda)") from None
