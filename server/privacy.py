"""Differential privacy of a federation: the DP strategy wrapper and the privacy budget it spends.

Mechanism (DP-FedAvg with client-side fixed clipping, Flower's
`DifferentialPrivacyClientSideFixedClipping` + `fixedclipping_mod`): each contributor clips its
update (trained model - global model) to L2 norm <= C; the server takes the plain (unweighted)
mean of the m accepted updates and adds Gaussian noise of std z * C / m to every coordinate. That
is the sum of the clipped updates plus N(0, (z C)^2): a Gaussian mechanism with sensitivity C
and noise multiplier z, once per round, for user-level DP (neighbouring federations differ by one
contributor's whole data set, added or removed).

Accounting: Renyi DP (Mironov 2017). One round is (alpha, alpha / (2 z^2))-RDP for every
alpha > 1; T rounds compose additively: RDP(alpha) = sum_t alpha / (2 z_t^2). Epsilon at delta
is the minimum over alpha of the conversion of Canonne, Kamath & Steinke 2020 (Prop. 12; the one
Google's dp-accounting uses):
    eps = RDP(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1),
never larger than the classic eps = RDP(alpha) + log(1 / delta) / (alpha - 1), which for the
Gaussian mechanism has the closed form rho + 2 sqrt(rho log(1/delta)), rho = sum_t 1/(2 z_t^2).
No amplification by subsampling is claimed, even when fraction-train < 1: the bound is the one
for full participation (an upper bound either way).

What it does not cover: the scalar metrics contributors send (num-examples, train loss and
accuracy) and their local evaluation replies; and the noise comes from numpy's default PRNG (as
in Flower), not a cryptographically secure generator.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

log = logging.getLogger(__name__)

DP_WEIGHT = "dp-weight"  # the server sets it to 1 on every reply: the DP mean is unweighted
CLIP_TOLERANCE = 1.001  # float32 rounding of a clipped update; more than this was not clipped
ACCOUNTANT = ("RDP of the Gaussian mechanism, composed over rounds; user-level (add/remove one "
              "contributor); no amplification by sampling")
CONVERSION = "Canonne-Kamath-Steinke 2020 (Prop. 12)"

# Renyi orders searched for the best conversion: 1 + 10^-4 ... 1 + 10^6, log-spaced.
ORDERS = 1.0 + np.logspace(-4, 6, 20_001)


def rdp_per_order(noise_multipliers: Iterable[float], orders: np.ndarray = ORDERS) -> np.ndarray:
    """RDP of the composed Gaussian mechanisms at each order (inf if any round had no noise)."""
    rho = sum(math.inf if z <= 0 else 1.0 / (2.0 * z * z) for z in noise_multipliers)
    return orders * rho


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS,
                     conversion: str = "improved") -> tuple[float, float]:
    """(epsilon, best order) at `delta`; `conversion` "improved" (CKS 2020) or "classic" (Mironov)."""
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if conversion == "classic":
        eps = rdp + math.log(1.0 / delta) / (orders - 1.0)
    elif conversion == "improved":
        eps = rdp + np.log((orders - 1.0) / orders) - (math.log(delta) + np.log(orders)) / (orders - 1.0)
    else:
        raise ValueError(f"conversion {conversion!r}: improved or classic")
    if not np.isfinite(eps).any():
        return math.inf, math.nan
    i = int(np.nanargmin(eps))
    return max(0.0, float(eps[i])), float(orders[i])


class PrivacyLedger:
    """The noise multiplier of every released round, and the epsilon they add up to at `delta`."""

    def __init__(self, delta: float, noise_multipliers: Iterable[float] = ()) -> None:
        self.delta = delta
        self.noise_multipliers = [float(z) for z in noise_multipliers]

    @property
    def rounds(self) -> int:
        return len(self.noise_multipliers)

    def step(self, noise_multiplier: float) -> None:
        self.noise_multipliers.append(float(noise_multiplier))

    def epsilon(self, conversion: str = "improved") -> tuple[float, float]:
        """(epsilon, best Renyi order); (0, nan) before any round, (inf, nan) if one had no noise."""
        if not self.noise_multipliers:
            return 0.0, math.nan
        return epsilon_from_rdp(rdp_per_order(self.noise_multipliers), self.delta,
                                conversion=conversion)

    def report(self, clipping_norm: float, noise_multiplier: float, note: str = "") -> dict[str, Any]:
        """What history.json and the checkpoint record (epsilon None means unbounded)."""
        eps, order = self.epsilon()
        out: dict[str, Any] = {
            "epsilon": round(eps, 4) if math.isfinite(eps) else None,
            "delta": self.delta,
            "noise_multiplier": noise_multiplier,
            "clipping_norm": clipping_norm,
            "rounds": self.rounds,
            "order": round(order, 3) if math.isfinite(order) else None,
            "accountant": ACCOUNTANT,
            "conversion": CONVERSION,
        }
        if not math.isfinite(eps):
            out["note"] = "a released round had no noise (e.g. rounds before DP was turned on)"
        elif note:
            out["note"] = note
        return out

    def state(self) -> dict[str, Any]:
        return {"delta": self.delta, "noise_multipliers": list(self.noise_multipliers)}


def _valid_variances(arrays: ArrayRecord) -> ArrayRecord:
    """Noise can push BatchNorm running variances below 0 (a NaN model); clamp them at 0.
    Post-processing of the noised release: no effect on the privacy guarantee."""
    fixed = {}
    for k, a in arrays.items():
        x = a.numpy()
        if k.endswith("running_var") and (x < 0).any():
            fixed[k] = np.maximum(x, 0.0).astype(x.dtype)
    if not fixed:
        return arrays
    return ArrayRecord({k: Array(fixed[k]) if k in fixed else a for k, a in arrays.items()})


class ClientSideDP(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper, fitted to our strategies.

    - Attributes it does not have (last_round, rejected, reference, ...) are the wrapped
      strategy's, so the ServerApp reads them as before.
    - Replies are aggregated unweighted (Flower's accountant demands the same): the server sets
      `dp-weight` = 1 on each, and the wrapped FedAvg weighs by it.
    - The noise std is z * C / m with m the updates actually aggregated (screened ones and failed
      nodes left out), so every released round is a Gaussian mechanism with multiplier z on the
      sum. (Flower's version uses the planned sample size and skips the whole round when any node
      failed.)
    - BatchNorm running variances that the noise made negative are clamped at 0 (a NaN model
      otherwise); contributors' local evaluation stays weighted by sample count.
    - Each release is entered in `ledger`; `privacy_report()` gives epsilon so far.
    """

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float,
                 num_sampled_clients: int, delta: float, note: str = "") -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        self.ledger = PrivacyLedger(delta)
        self.note = note

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("strategy")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            if not msg.has_error() and isinstance(msg.content.get("metrics"), MetricRecord):
                msg.content["metrics"][DP_WEIGHT] = 1
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        accepted = [p for p in getattr(self.strategy, "last_round", []) if "error" not in p]
        self.num_sampled_clients = max(1, len(accepted) or len(replies))
        arrays = _valid_variances(self._add_noise_to_aggregated_arrays(arrays))
        self.ledger.step(self.noise_multiplier)
        eps, _ = self.ledger.epsilon()
        log.info("round %d: DP noise std %.3g (z=%g, clip %g, %d updates); epsilon %.3g at delta %g",
                 server_round, self.noise_multiplier * self.clipping_norm / self.num_sampled_clients,
                 self.noise_multiplier, self.clipping_norm, self.num_sampled_clients, eps,
                 self.ledger.delta)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Contributors' local evaluation (not private, informative only): weighted by sample count."""
        replies = list(replies)
        for msg in replies:
            metrics = None if msg.has_error() else msg.content.get("metrics")
            if isinstance(metrics, MetricRecord):
                metrics[DP_WEIGHT] = metrics.get("num-examples", 1)
        return self.strategy.aggregate_evaluate(server_round, replies)

    def privacy_report(self) -> dict[str, Any]:
        return self.ledger.report(self.clipping_norm, self.noise_multiplier, self.note)
