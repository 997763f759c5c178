"""A federation in one process, without Ray: the real ServerApp logic and ClientApp, called directly.

For tests and experiments that run many small federations (tests/test_robustness.py): no engine
start-up (10-30 s per run on 2 cores), contributors train one after another in a fixed order, so
the same seeds give the same numbers. Node i (1..n) is simulated partition i-1, as in
`simulation.federation.simulate`; Flower's transport is not exercised here (tests/test_federation.py
does that).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from beatsight.client.clientapp import make_client_app
from beatsight.server.serverapp import run_federation
from beatsight.server.settings import RunSettings


class InProcessGrid(Grid):
    """Sends each message straight to `client_app` with that node's Context; replies in order."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict | None = None
                 ) -> None:
        self.client_app, self.num_nodes = client_app, num_nodes
        self.run_config = dict(run_config or {})
        self.states = {node: RecordDict() for node in range(1, num_nodes + 1)}

    def set_run(self, run) -> None:  # noqa: ANN001 (Flower's Run)
        pass

    @property
    def run(self):  # noqa: ANN201
        return None

    def create_message(self, *args, **kwargs) -> Message:  # not used by the strategies
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.states)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, state=self.states[node], run_config=self.run_config,
                          node_config={"partition-id": node - 1, "num-partitions": self.num_nodes})
            replies.append(self.client_app(msg, ctx))
        return replies


def simulate_in_process(settings: RunSettings, data_dirs: list[Path],
                        client_mods: list | None = None) -> dict:
    """Like `simulation.federation.simulate`, in this process; returns the last held-out metrics.
    (`settings.fraction_evaluate = 0` skips the contributors' local evaluation, informative only.)"""
    settings.validate()
    client_app = make_client_app([str(p) for p in data_dirs], mods=client_mods)
    # Flower stamps instruction messages with the identity of the task that sends them; in a real
    # run the ServerApp process has one. Lend it one for the duration, then put back what was.
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    try:
        run_federation(InProcessGrid(client_app, len(data_dirs)), settings)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    hist = Path(settings.out_dir) / "history.json"
    rounds = json.loads(hist.read_text())["rounds"] if hist.exists() else []
    return rounds[-1]["heldout"] if rounds else {}
