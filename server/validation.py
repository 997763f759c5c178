"""Check every contributor's update before it reaches aggregation; reject bad ones, keep the round.

A reply is rejected (turned into an error reply, so the round log and the minimum-contributors
check see it as failed) when it is not exactly one ArrayRecord `arrays` + one MetricRecord
`metrics`, when its arrays differ from the global model's keys, shapes or dtypes, hold NaN/inf,
when `num-examples` is not a positive finite count, or when the L2 norm of (update - global) is
absurd: above `max_update_norm`, or above `norm_factor` x the median of the round's norms (with
at least 3 replies). Flower would otherwise either crash the round (inconsistent keys), spread
NaN into the global model, or let one scaled update dominate the average.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

REJECTED = 4600  # error code of a reply the server refused (outside Flower's own codes)
MAX_EXAMPLES = 10_000_000


class UpdateRejected(ValueError):
    """One contributor's update is unusable; the message says why."""


def _arrays_of(ref: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in ref.items()}


Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


def layout_of(arrays: dict[str, np.ndarray]) -> Layout:
    """Keys, shapes and dtypes a reply must have: the model's own, not the aggregate's (Flower's
    averaging turns integer buffers such as BatchNorm's num_batches_tracked into float64)."""
    return {k: (tuple(a.shape), a.dtype) for k, a in arrays.items()}


def check_structure(content: RecordDict, reference: Layout) -> dict[str, np.ndarray]:
    """The reply's arrays, if they match the model's layout and are finite."""
    kinds = {k: type(v).__name__ for k, v in content.items()}
    if set(kinds) != {"arrays", "metrics"} or not isinstance(content["arrays"], ArrayRecord) \
            or not isinstance(content["metrics"], MetricRecord):
        raise UpdateRejected(f"records {kinds}, expected arrays (ArrayRecord) + metrics (MetricRecord)")
    try:
        arrays = _arrays_of(content["arrays"])
    except Exception as exc:  # undecodable bytes from the wire
        raise UpdateRejected(f"arrays cannot be decoded ({type(exc).__name__})") from None
    check_arrays(arrays, reference)
    check_count(content["metrics"].get("num-examples"))
    return arrays


def check_arrays(arrays: dict[str, np.ndarray], reference: Layout) -> None:
    """The keys, shapes and dtypes of `reference`, finite values; else UpdateRejected."""
    missing, extra = set(reference) - set(arrays), set(arrays) - set(reference)
    if missing or extra:
        raise UpdateRejected(f"array keys differ: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    for k, (shape, dtype) in reference.items():
        a = arrays[k]
        if tuple(a.shape) != shape:
            raise UpdateRejected(f"{k}: shape {list(a.shape)}, expected {list(shape)}")
        if a.dtype != dtype:
            raise UpdateRejected(f"{k}: dtype {a.dtype}, expected {dtype}")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise UpdateRejected(f"{k}: non-finite values (NaN or inf)")


def check_count(n: object) -> None:
    """A reply's `num-examples`, the weight it gets in a mean; else UpdateRejected."""
    if not isinstance(n, (int, float)) or not math.isfinite(n) or not 0 < n <= MAX_EXAMPLES:
        raise UpdateRejected(f"num-examples {n!r}: expected a count in 1..{MAX_EXAMPLES}")


def update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                layout: Layout) -> float:
    """L2 norm of (update - global) over the model's floating-point arrays (not counters)."""
    total = 0.0
    for k, ref in reference.items():
        if layout[k][1].kind == "f":
            d = arrays[k].astype(np.float64) - ref.astype(np.float64)
            total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def screen_replies(replies: list[Message], reference: ArrayRecord, norm_factor: float,
                   max_norm: float, layout: Layout | None = None,
                   norms: dict[int, float] | None = None) -> tuple[list[Message], list[dict]]:
    """Replies with rejected ones replaced by error replies, and what was rejected (node, reason).

    `layout` is the model's (default: the reference's own, fine before any aggregation); `norms`,
    if given, receives each well-formed reply's update norm by node id."""
    ref = _arrays_of(reference)
    layout = layout or layout_of(ref)
    checked: dict[int, tuple[Message, float]] = {}
    rejected: dict[int, str] = {}
    for i, msg in enumerate(replies):
        if msg.has_error():
            continue
        try:
            arrays = check_structure(msg.content, layout)
            norm = update_norm(arrays, ref, layout)
            if norms is not None:
                norms[msg.metadata.src_node_id] = norm
            if not math.isfinite(norm) or (max_norm > 0 and norm > max_norm):
                raise UpdateRejected(f"update norm {norm:.3g} exceeds the cap {max_norm:.3g}")
            checked[i] = (msg, norm)
        except UpdateRejected as exc:
            rejected[i] = str(exc)
    if norm_factor > 0 and len(checked) >= 3:
        median = float(np.median([n for _, n in checked.values()]))
        for i, (_, norm) in list(checked.items()):
            if median > 0 and norm > norm_factor * median:
                rejected[i] = (f"update norm {norm:.3g} is {norm / median:.1f}x the round's median "
                               f"{median:.3g} (limit {norm_factor:g}x)")
                del checked[i]
    common_metrics: set[str] | None = None
    for msg, _ in checked.values():
        keys = {k for k, v in msg.content["metrics"].items() if isinstance(v, (int, float))}
        common_metrics = keys if common_metrics is None else common_metrics & keys
    out, report = [], []
    for i, msg in enumerate(replies):
        if i in rejected:
            node = msg.metadata.src_node_id
            log.warning("rejected the update of node %s: %s", node, rejected[i])
            report.append({"node": node, "reason": rejected[i]})
            out.append(Message(metadata=msg.metadata,
                               error=Error(code=REJECTED, reason=f"rejected: {rejected[i]}")))
        elif i in checked:
            # Same metric keys for everyone: Flower skips a whole round on mismatched keys.
            metrics = MetricRecord({k: v for k, v in msg.content["metrics"].items()
                                    if k in (common_metrics or set())})
            out.append(Message(metadata=msg.metadata, content=RecordDict(
                {"arrays": msg.content["arrays"], "metrics": metrics})))
        else:
            out.append(msg)
    return out, report


class UpdateValidationMixin:
    """Put first in a Flower strategy's bases: remembers the global model it sends each round and
    screens the replies against it before anything else sees them."""

    norm_factor: float = 5.0
    max_update_norm: float = 1000.0
    rejected: list[dict]
    norms: dict[int, float]  # this round's update norms by node id (the round log shows them)
    reference: ArrayRecord | None = None  # the global model sent this round
    layout: Layout | None = None  # the model's keys/shapes/dtypes (make_strategy sets it)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.reference = arrays
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.rejected, self.norms = [], {}
        if self.reference is not None:
            replies, self.rejected = screen_replies(replies, self.reference, self.norm_factor,
                                                    self.max_update_norm, self.layout, self.norms)
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]
