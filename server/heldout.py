"""Server-side evaluation of the global model on held-out kits (never seen by any contributor)."""

from __future__ import annotations

import numpy as np
import torch

from beatsight.client.evaluation import evaluate
from beatsight.client.store import SampleStore
from beatsight.common.classes import CLASSES
from beatsight.common.model import DrumClassifierCNN, pooling_of


class HeldOut:
    """Features are computed once; each round only runs inference."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    @classmethod
    def from_store(cls, path: str) -> HeldOut:
        x, y = SampleStore(path).load_features()
        return cls(x, y)

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        model = DrumClassifierCNN(pooling=pooling_of(state_dict))
        model.load_state_dict(state_dict)
        res = evaluate(model, self.x, self.y)  # evaluation picks the batch for the device
        flat = {"accuracy": float(res["accuracy"]), "macro_f1": float(res["macro_f1"]),
                "loss": float(res["loss"]), "num-examples": int(len(self.y))}
        flat.update({f"f1-{c}": float(r["f1-score"]) for c, r in res["per_class"].items()
                     if (self.y == CLASSES.index(c)).any()})
        return flat
