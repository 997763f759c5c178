"""Simulated attackers for the poisoning experiment (bench/poisoning.py) and tests only.

Two classic attacks by one contributor: label flipping (their store's labels rotated by one
class, so they train honestly on wrong labels) and model scaling (a client mod that sends
global + factor x (their update - global), to dominate a plain average).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, RecordDict

from beatsight.client.store import METADATA
from beatsight.common.classes import CLASSES, canonical_component


def flip_labels(src: str | Path, dst: str | Path, shift: int = 1) -> Path:
    """A copy of store `src` at `dst` whose every label is the class `shift` places later."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    meta = json.loads((dst / METADATA).read_text())
    for rec in meta["samples"]:
        cls = canonical_component(rec.get("component"))[0]
        if cls is not None:
            rec.setdefault("path", f"{rec['component']}/{rec['id']}.wav")  # keep the snippet
            rec["component"] = CLASSES[(CLASSES.index(cls) + shift) % len(CLASSES)]
    (dst / METADATA).write_text(json.dumps(meta))
    return dst


class ScaledUpdate:
    """Client mod: simulated partition `partition` multiplies its update by `factor`."""

    def __init__(self, partition: int, factor: float = 10.0) -> None:
        self.partition, self.factor = partition, factor

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if (msg.metadata.message_type != "train" or reply.has_error()
                or int(context.node_config.get("partition-id", -1)) != self.partition):
            return reply
        glob = msg.content["arrays"].to_torch_state_dict()
        mine = reply.content["arrays"].to_torch_state_dict()
        scaled = {k: glob[k] + self.factor * (v - glob[k]) if v.is_floating_point() else v
                  for k, v in mine.items()}
        content = RecordDict({"arrays": ArrayRecord(scaled), "metrics": reply.content["metrics"]})
        return Message(content=content, reply_to=msg)
