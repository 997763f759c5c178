"""Flower strategies by name, wrapped so each round's participants and sample counts are kept."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from beatsight.common.model import DrumClassifierCNN

from .deadline import NodeDeadlineMixin
from .settings import RunSettings
from .validation import UpdateValidationMixin, layout_of

log = logging.getLogger(__name__)

TRIM_BETA = 0.2  # share cut from each tail per coordinate: 1 of 5 contributors


class RoundLogMixin:
    """Remembers who contributed to the last aggregated round (node id, samples, metrics)."""

    last_round: list[dict]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.last_round = []
        for msg in replies:
            if msg.has_error():
                self.last_round.append({"node": msg.metadata.src_node_id,
                                        "error": msg.error.reason})
                continue
            metrics = dict(msg.content["metrics"]) if "metrics" in msg.content else {}
            self.last_round.append({"node": msg.metadata.src_node_id, **metrics})
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


def make_strategy(settings: RunSettings, fraction_evaluate: float = 1.0) -> FedAvg:
    common = dict(
        fraction_train=settings.fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=settings.min_nodes,
        min_evaluate_nodes=min(settings.min_nodes, 1) if fraction_evaluate > 0 else 0,
        min_available_nodes=settings.min_nodes,
    )
    base: type[FedAvg]
    if settings.aggregation == "trimmed-mean":
        base, common["beta"] = FedTrimmedAvg, TRIM_BETA
    elif settings.aggregation == "median":
        base = FedMedian
    elif settings.aggregation == "krum":
        # Krum needs n > 2f + 2: tolerate f = (n - 3) // 2 attackers among min_nodes contributors.
        base, common["num_malicious_nodes"] = Krum, max(0, (settings.min_nodes - 3) // 2)
    elif settings.strategy == "fedprox":
        base, common["proximal_mu"] = FedProx, settings.proximal_mu
    else:
        base = FedAvg
    # (With a robust aggregation, FedProx's proximal-mu still reaches clients via the train config.)
    cls = type(f"Logged{base.__name__}",
               (UpdateValidationMixin, NodeDeadlineMixin, RoundLogMixin, base), {})
    strategy = cls(**common)
    strategy.last_round = []
    strategy.rejected = []
    strategy.norm_factor = settings.update_norm_factor
    strategy.max_update_norm = settings.max_update_norm
    strategy.layout = layout_of({k: v.numpy() for k, v in DrumClassifierCNN().state_dict().items()})
    strategy.node_wait = settings.round_timeout  # see deadline.py
    return strategy
