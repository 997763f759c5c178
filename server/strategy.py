"""Flower strategies by name, wrapped so each round's participants and sample counts are kept."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy

from beatsight.client.evaluation import BN_STATS
from beatsight.common.model import DrumClassifierCNN

from .deadline import NodeDeadlineMixin
from .privacy import CLIP_TOLERANCE, DP_WEIGHT, ClientSideDP
from .settings import RunSettings
from .validation import (
    UpdateRejected,
    UpdateValidationMixin,
    check_arrays,
    check_count,
    layout_of,
)

log = logging.getLogger(__name__)

# Share cut from each tail per coordinate; Flower cuts int(beta x n) values: 1 of 4..7 updates.
# (With 0.2, a round of 5 whose attacker the norm screen rejected would average the 4 left
# untrimmed: measured 7.5 points below the clean run in tests/test_robustness.py.)
TRIM_BETA = 0.25


def canonical_order(replies: Iterable[Message]) -> list[Message]:
    """Replies sorted by what they hold, not by when they arrived. FedAvg's float sums depend on
    the order of their terms, and contributors finish in any order: two runs of the main job with
    the same seed parted at round 2 (held-out 0.272 vs 0.259) after two replies swapped places.
    Node ids cannot be the key: Flower draws new ones every run."""

    def key(msg: Message) -> tuple[int, str, str]:
        if msg.has_error():
            return 1, str(msg.metadata.src_node_id), ""
        h = hashlib.sha256()
        for name, rec in sorted(msg.content.array_records.items()):
            for k, arr in rec.items():
                h.update(name.encode() + k.encode() + arr.data)
        metrics = {n: sorted(r.items()) for n, r in msg.content.metric_records.items()}
        return 0, h.hexdigest(), repr(sorted(metrics.items()))  # equal weights, other counts

    return sorted(replies, key=key)


class RoundLogMixin:
    """Remembers who contributed to the last aggregated round (node id, samples, metrics), and
    hands the replies on in their canonical order."""

    last_round: list[dict]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = canonical_order(replies)
        self.last_round = []
        norms = getattr(self, "norms", {})  # UpdateValidationMixin's, when it screened the round
        for msg in replies:
            node = msg.metadata.src_node_id
            norm = {"update-norm": round(norms[node], 4)} if node in norms else {}
            if msg.has_error():
                self.last_round.append({"node": node, "error": msg.error.reason, **norm})
                continue
            metrics = dict(msg.content["metrics"]) if "metrics" in msg.content else {}
            self.last_round.append({"node": node, **metrics, **norm})
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


class BatchNormStatsMixin:
    """Averages the BatchNorm statistics that contributors re-estimate for the new global model
    in the evaluate phase (client/clientapp.py), weighted by their sample counts, into
    `bn_stats[round]`; the server evaluates and saves the model with them. Replies whose
    statistics do not fit the model (other names or shapes, not finite, negative variance) are
    left out of the mean, as are replies with an invalid count."""

    bn_stats: dict[int, dict[str, np.ndarray]]
    layout: dict

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        got = []
        for msg in canonical_order(replies):
            if msg.has_error() or "bn-stats" not in msg.content:
                continue
            stats = {k: v.numpy() for k, v in msg.content["bn-stats"].items()}
            n = msg.content["metrics"].get("num-examples") if "metrics" in msg.content else None
            try:
                self._check(stats, n)
            except UpdateRejected as exc:
                log.warning("node %s: BatchNorm statistics left out: %s",
                            msg.metadata.src_node_id, exc)
                continue
            got.append((float(n), stats))
        total = sum(w for w, _ in got)
        if total > 0:
            self.bn_stats[server_round] = {
                k: (sum(w * s[k].astype(np.float64) for w, s in got) / total).astype(np.float32)
                for k in got[0][1]}
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]

    def _check(self, stats: dict[str, np.ndarray], n: object) -> None:
        """Fit the model's BatchNorm buffers (validation.check_arrays), a valid count, variances
        >= 0; else UpdateRejected."""
        check_arrays(stats, {k: v for k, v in self.layout.items() if k.endswith(BN_STATS)})
        check_count(n)
        if any((v < 0).any() for k, v in stats.items() if k.endswith("running_var")):
            raise UpdateRejected("negative variance")


def make_strategy(settings: RunSettings) -> Strategy:
    """The aggregation by name, with update screening, node deadlines and the round log; wrapped
    in Flower's client-side fixed-clipping DP when `dp-noise-multiplier` > 0 (server/privacy.py)."""
    fraction_evaluate = settings.fraction_evaluate
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
               (UpdateValidationMixin, NodeDeadlineMixin, RoundLogMixin, BatchNormStatsMixin,
                base), {})
    strategy = cls(**common)
    strategy.last_round = []
    strategy.bn_stats = {}
    strategy.rejected = []
    strategy.norm_factor = settings.update_norm_factor
    strategy.max_update_norm = settings.max_update_norm
    strategy.layout = layout_of({k: v.numpy() for k, v in DrumClassifierCNN(
        pooling=settings.pooling).state_dict().items()})
    strategy.node_wait = settings.round_timeout  # see deadline.py
    if not settings.dp:
        return strategy
    # Differential privacy: contributors clip to C (client/clientapp.py), so an honest update is
    # never above C: screen with that cap instead of the round's median, whose verdict would
    # depend on the other contributors' data (outside what the noise protects).
    strategy.weighted_by_key = DP_WEIGHT  # unweighted mean (ClientSideDP sets the key to 1)
    cap = CLIP_TOLERANCE * settings.dp_clipping_norm
    strategy.max_update_norm = min(settings.max_update_norm or cap, cap)
    strategy.norm_factor = 0.0
    note = ("fraction-train < 1, but no amplification by sampling is claimed: this is the bound "
            "for full participation") if settings.fraction_train < 1 else ""
    return ClientSideDP(strategy, settings.dp_noise_multiplier, settings.dp_clipping_norm,
                        num_sampled_clients=max(1, settings.min_nodes), delta=settings.dp_delta,
                        note=note)
