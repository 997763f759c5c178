"""Run settings of a federation: one dataclass, read from Flower's run config or set in code."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from beatsight.common.errors import BeatSightError

AGGREGATIONS = ("fedavg", "trimmed-mean", "median", "krum")


def _default_augment() -> str:
    from beatsight.common.augment import DEFAULT_AUGMENT  # said once, there (imported lazily)

    return ",".join(DEFAULT_AUGMENT)


@dataclass
class RunSettings:
    """Defaults are the simulated main job's; `flwr run --run-config "num-rounds=5"` overrides."""

    num_rounds: int = 8
    fraction_train: float = 1.0
    # Contributors asked each round to report the global model's accuracy on their own data
    # (informative only; the held-out evaluation is the server's). 0 saves a message per round.
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    local_epochs: int = 1
    lr: float = 1e-3
    # Contributors' batch size. A contributor holds a few hundred hits, so one local epoch at 32
    # is only ~12 optimiser steps and averaging shrinks them further; at 4 a round moves the
    # global model about as far as a central epoch (measured: README, federation section).
    batch_size: int = 4
    strategy: str = "fedavg"  # fedavg | fedprox
    head: str = "single"  # single | multi (common.model.HEADS): how contributors train the logits
    pooling: str = "avg"  # avg | avgmax (common.model.POOLINGS): the global model's architecture
    proximal_mu: float = 0.0
    # Contributors weight their loss by (inverse class frequency) ** power. `train`'s 1 let one
    # rare hit dominate a batch-4 step; 0 lost the rare classes; 0.5 kept both (README, federation
    # section).
    class_weight_power: float = 0.5
    # Contributors re-estimate the new global model's BatchNorm statistics on their data in the
    # evaluate phase (needs fraction-evaluate > 0); the server evaluates and saves the model with
    # their count-weighted mean (README, federation section). Off under differential privacy
    # (its accounting covers the training updates only) and with a robust aggregation.
    recalibrate_bn: bool = True
    aggregation: str = "fedavg"  # fedavg | trimmed-mean | median | krum (see strategy.py)
    update_norm_factor: float = 5.0  # reject updates > this x the round's median norm (0: off)
    max_update_norm: float = 1000.0  # reject updates with a larger L2 norm (0: off)
    augment: str = field(default_factory=_default_augment)  # common.augment.DEFAULT_AUGMENT
    heldout: str = ""  # a sample store of held-out kits, evaluated on the server every round
    out_dir: str = "runs/latest"
    seed: int = 0
    resume: bool = False
    round_timeout: float = 3600.0
    threads: int = 1  # torch threads per simulated contributor
    # Differential privacy (server/privacy.py): contributors clip their update to dp-clipping-norm,
    # the server adds Gaussian noise of std dp-noise-multiplier x clip / contributors. 0: off.
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 50.0  # main job, round 1: update norms 48-94, median 64 (README)
    dp_delta: float = 1e-5

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> RunSettings:
        """Read kebab-case keys (Flower's convention); unknown keys are an error, not ignored."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            f = known.get(key)
            if f is None:
                if key.startswith("sim-"):  # simulation-only keys read by the ClientApp
                    continue
                raise BeatSightError(f"run config: unknown key {key!r} (known: {', '.join(known)})")
            values[f.name] = _coerce(key, value, type(getattr(cls(), f.name)))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.num_rounds < 1:
            raise BeatSightError("num-rounds must be at least 1")
        if not 0.0 < self.fraction_train <= 1.0:
            raise BeatSightError("fraction-train must be in (0, 1]")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise BeatSightError("fraction-evaluate must be in [0, 1] (0: no local evaluation)")
        from beatsight.client.training import check_class_weight_power  # said once, there

        check_class_weight_power(self.class_weight_power)
        if self.min_nodes < 1:
            raise BeatSightError("min-nodes must be at least 1")
        if self.strategy not in ("fedavg", "fedprox"):
            raise BeatSightError(f"strategy {self.strategy!r}: choose fedavg or fedprox")
        from beatsight.common.model import check_head, check_pooling  # said once, there

        check_head(self.head)
        check_pooling(self.pooling)
        if self.aggregation not in AGGREGATIONS:
            raise BeatSightError(f"aggregation {self.aggregation!r}: choose {', '.join(AGGREGATIONS)}")
        if self.update_norm_factor < 0 or self.max_update_norm < 0:
            raise BeatSightError("update-norm-factor and max-update-norm must be >= 0 (0: off)")
        if not (math.isfinite(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0):
            raise BeatSightError("dp-noise-multiplier must be >= 0 (0: no differential privacy)")
        if not (math.isfinite(self.dp_clipping_norm) and self.dp_clipping_norm > 0):
            raise BeatSightError("dp-clipping-norm must be > 0")
        if not 0.0 < self.dp_delta < 1.0:
            raise BeatSightError("dp-delta must be in (0, 1), e.g. 1e-5")
        if self.dp_noise_multiplier > 0 and self.aggregation != "fedavg":
            raise BeatSightError(f"differential privacy needs aggregation fedavg, not "
                                 f"{self.aggregation!r}: the noise is calibrated to a plain mean of "
                                 "clipped updates (a median or trimmed mean has another sensitivity)")
        from beatsight.common.augment import AUGMENTATIONS

        unknown = [a for a in self.augment_names if a not in AUGMENTATIONS]
        if unknown:
            raise BeatSightError(f"augment: unknown {', '.join(unknown)}; choose from "
                                 f"{', '.join(sorted(AUGMENTATIONS))}")

    @property
    def dp(self) -> bool:
        return self.dp_noise_multiplier > 0

    @property
    def recalibrates_bn(self) -> bool:
        return (self.recalibrate_bn and self.fraction_evaluate > 0 and not self.dp
                and self.aggregation == "fedavg")

    @property
    def augment_names(self) -> list[str]:
        return [a.strip() for a in self.augment.split(",") if a.strip()]

    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def _coerce(key: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise BeatSightError(f"run config: {key}={value!r} is not a valid {kind.__name__}") from None
