"""Rounds that cannot hang: wait for contributors with a deadline instead of forever.

Flower's `sample_nodes` loops until `min_available_nodes` are connected, with no time limit, so
one contributor switching off their machine would stall a federation indefinitely. This mixin
waits at most `node_wait` seconds; then it trains whoever is connected if that meets the minimum,
and otherwise ends the run with `NotEnoughContributors` (the last checkpoint is kept, and the
run continues from it with `resume=true`). A round whose replies fall below the minimum ends the
run the same way: aggregating fewer updates than the minimum would both weaken the model and
expose individual contributors' updates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


class NotEnoughContributors(Exception):
    """Too few contributors within the deadline: end the run cleanly, resumable from the checkpoint."""


class _FixedNodes:
    """A view of the grid whose node list is the snapshot we decided on (so sampling cannot block)."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._nodes = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class NodeDeadlineMixin:
    """Put before a Flower strategy class (FedAvg and subclasses) in the bases."""

    node_wait: float = 3600.0
    poll_interval: float = 2.0
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int

    def _wait_for(self, grid: Grid, wanted: int, needed: int, what: str) -> list[int]:
        """Connected node ids once `wanted` are there, or whatever is there at the deadline."""
        deadline = time.monotonic() + self.node_wait
        announced = False
        while True:
            nodes = list(grid.get_node_ids())
            if len(nodes) >= wanted or time.monotonic() >= deadline:
                break
            if not announced:
                log.info("%s: %d contributor(s) connected, waiting up to %.0f s for %d",
                         what, len(nodes), self.node_wait, wanted)
                announced = True
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        if len(nodes) < wanted and len(nodes) >= needed:
            log.warning("%s: deadline passed with %d of %d contributor(s); going ahead (minimum %d)",
                        what, len(nodes), wanted, needed)
        return nodes

    def _sampled(self, grid: Grid, nodes: list[int], configure: Any, *args: Any) -> Iterable[Message]:
        saved = self.min_available_nodes
        self.min_available_nodes = min(saved, len(nodes))
        try:
            return configure(*args, _FixedNodes(grid, nodes))
        finally:
            self.min_available_nodes = saved

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._wait_for(grid, self.min_available_nodes, self.min_train_nodes,
                               f"round {server_round}")
        if len(nodes) < self.min_train_nodes:
            raise NotEnoughContributors(
                f"round {server_round}: only {len(nodes)} contributor(s) connected after waiting "
                f"{self.node_wait:.0f} s (minimum {self.min_train_nodes})")
        return self._sampled(grid, nodes, super().configure_train,  # type: ignore[misc]
                             server_round, arrays, config)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if getattr(self, "fraction_evaluate", 0.0) == 0.0:
            return []
        # Contributors' local evaluation is informative only: never wait long for it.
        nodes = list(grid.get_node_ids())
        if len(nodes) < max(1, self.min_evaluate_nodes):
            log.warning("round %d: skipping contributors' evaluation (%d connected)",
                        server_round, len(nodes))
            return []
        saved = self.min_evaluate_nodes
        self.min_evaluate_nodes = min(saved, len(nodes))
        try:
            return self._sampled(grid, nodes, super().configure_evaluate,  # type: ignore[misc]
                                 server_round, arrays, config)
        finally:
            self.min_evaluate_nodes = saved

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = sum(1 for m in replies if not m.has_error())
        result = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if ok < self.min_train_nodes:
            raise NotEnoughContributors(
                f"round {server_round}: {ok} of {len(replies)} contributor(s) replied in time "
                f"(minimum {self.min_train_nodes}); this round's updates were not used")
        return result
