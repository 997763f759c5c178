"""Robust aggregation against one poisoned contributor out of five (issue #8), measured end to end.

Five simulated per-kit contributors train a real model on rendered Hydrogen-kit audio; contributor
0 (node 1) is the attacker, either training honestly on flipped labels or sending 10x its update.
Each federation runs in this process (simulation/inprocess.py: the real ServerApp strategy and
ClientApp, no Ray start-up, a fixed order, so the numbers repeat). The held-out accuracy of every
run is written to `results.json` in the test's tmp dir and printed (`pytest -s`).

Why one round on the full held-out store (1,520 hits): every run starts from the same model and
the honest contributors' training is shared (TrainingCache), so the runs differ only in what the
attacker sent and how it was aggregated; the accuracy difference is the aggregation's doing. Over
two rounds on the 268-hit held-out store of bench/poisoning.py the differences were noise: the
weighted and the unweighted mean of the same four honest updates scored 0.239 and 0.179 after
round 2 (README, trust section).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, MessageType

from beatsight.common.checkpoint import read_checkpoint
from beatsight.server.settings import RunSettings
from beatsight.simulation.attacks import ScaledUpdate, flip_labels
from beatsight.simulation.contributors import build_federation, build_heldout
from beatsight.simulation.inprocess import simulate_in_process

pytestmark = [pytest.mark.slow, pytest.mark.needs_kits]

ROBUST = "trimmed-mean"
TOLERANCE = 0.02  # the bound: within 2 points of the clean run
# name: (attack, aggregation). The robust runs carry the assertion; the FedAvg ones are only
# reported, so they run with BEATSIGHT_POISONING_ALL=1 (the README's full table), not by default:
# each costs a held-out evaluation of 1,520 hits (~10 s).
RUNS = {
    f"clean-{ROBUST}": (None, ROBUST),
    f"flip-{ROBUST}": ("flip", ROBUST),
    f"scale-{ROBUST}": ("scale", ROBUST),
    "clean-fedavg": (None, "fedavg"),
    "flip-fedavg": ("flip", "fedavg"),
    "scale-fedavg": ("scale", "fedavg"),
    f"absent-{ROBUST}": ("absent", ROBUST),
}
REPORT_ONLY = ("clean-fedavg", "flip-fedavg", "scale-fedavg")


@pytest.fixture(scope="module")
def poisoning(tmp_path_factory, kits_root):
    root = tmp_path_factory.mktemp("poisoning")
    stores = build_federation(root / "data", n_contributors=5, seed=1, songs_per_contributor=1,
                              song_seconds=8.0, progress=False)
    heldout = build_heldout(root / "data" / "heldout", seed=1, progress=False)  # 1,520 hits
    flipped = flip_labels(stores[0], root / "data" / "flipped-00")
    return root, stores, heldout, flipped


class TrainingCache:
    """Client mod: a contributor's training on the same data from the same global model with the
    same config is done once and its reply reused by the later runs of this test (training is
    seeded, so it would come out the same). Every run starts from the same initial model, so the
    first round's honest training is shared; later rounds differ and are trained for real."""

    def __init__(self) -> None:
        self.replies: dict[tuple, Message] = {}

    def mod(self, stores: list[Path]):
        def cached(msg: Message, context: Context, call_next) -> Message:
            if msg.metadata.message_type != MessageType.TRAIN:
                return call_next(msg, context)
            h = hashlib.sha256()
            for k, a in msg.content["arrays"].items():
                h.update(k.encode() + a.data)
            store = str(stores[int(context.node_config["partition-id"])])
            key = (store, h.hexdigest(), json.dumps(dict(msg.content["config"]), sort_keys=True))
            if key not in self.replies:
                self.replies[key] = call_next(msg, context)
            reply = self.replies[key]
            if reply.has_error():
                return reply
            return Message(content=copy.deepcopy(reply.content), reply_to=msg)
        return cached


def run(name: str, root: Path, stores: list[Path], heldout: Path, flipped: Path,
        cache: TrainingCache) -> dict:
    attack, aggregation = RUNS[name]
    dirs, mods = list(stores), []
    if attack == "flip":
        dirs[0] = flipped
    elif attack == "absent":  # the four honest contributors alone: what the screen should leave
        dirs = dirs[1:]
    elif attack == "scale":
        mods = [ScaledUpdate(partition=0, factor=10.0)]  # outside the cache: scales its reply
    mods.append(cache.mod(dirs))
    settings = RunSettings(num_rounds=1, local_epochs=2, min_nodes=4, lr=2e-3, seed=1, threads=2,
                           fraction_evaluate=0.0,
                           aggregation=aggregation, heldout=str(heldout), out_dir=str(root / name))
    t0 = time.time()
    metrics = simulate_in_process(settings, dirs, client_mods=mods)
    rounds = json.loads((root / name / "history.json").read_text())["rounds"]
    rejected = [{"round": r["round"], "node": p["node"], "error": p["error"]}
                for r in rounds for p in r.get("participants", []) if "error" in p]
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "per_round": [round(r["heldout"]["accuracy"], 4) for r in rounds],
            "rejected": rejected, "seconds": round(time.time() - t0, 1)}


def _same_model(a: Path, b: Path) -> bool:
    sa, sb = (read_checkpoint(d / "global_model.pth").state_dict for d in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def shared_evaluation(monkeypatch):
    """The server's held-out evaluation of a model it has already evaluated (every run's round 0
    is the same initial model) is looked up instead of recomputed."""
    from beatsight.server.heldout import HeldOut

    evaluate, seen = HeldOut.evaluate, {}

    def memo(self, state_dict):
        h = hashlib.sha256()
        for k, v in state_dict.items():
            h.update(k.encode() + v.detach().cpu().numpy().tobytes())
        key = (self.x.shape, hashlib.sha256(self.y.tobytes()).hexdigest(), h.hexdigest())
        if key not in seen:
            seen[key] = evaluate(self, state_dict)
        return copy.deepcopy(seen[key])

    monkeypatch.setattr(HeldOut, "evaluate", memo)


def test_robust_aggregation_with_one_attacker_of_five(poisoning, shared_evaluation):
    root, stores, heldout, flipped = poisoning
    cache = TrainingCache()
    names = [n for n in RUNS if n not in REPORT_ONLY or os.environ.get("BEATSIGHT_POISONING_ALL")]
    results = {name: run(name, root, stores, heldout, flipped, cache) for name in names}
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'run':24} {'accuracy':>8} {'macro-F1':>8} {'rejected':>8} {'seconds':>7}")
    for name, r in results.items():
        print(f"{name:24} {r['accuracy']:8.3f} {r['macro_f1']:8.3f} {len(r['rejected']):8d} "
              f"{r['seconds']:7.0f}")

    clean = results[f"clean-{ROBUST}"]["accuracy"]
    assert results[f"flip-{ROBUST}"]["accuracy"] >= clean - TOLERANCE, results
    # The x10 update is screened out, so the round is the four honest contributors' alone: the same
    # global model as a run without the attacker, weight for weight. (Against the clean run of all
    # five it differs in which honest updates were averaged, and that alone moved its accuracy by
    # 0.3 to 4.6 points between set-ups; README, trust section.)
    assert _same_model(root / f"scale-{ROBUST}", root / f"absent-{ROBUST}")
    # Without an attacker nobody is rejected; the label flipper's update looks normal (its norm
    # is like everyone's), so it reaches the aggregation, where the robust rule has to cope.
    # (the FedAvg runs only where they ran: BEATSIGHT_POISONING_ALL=1)
    for name in [n for n in (f"clean-{ROBUST}", f"flip-{ROBUST}", "clean-fedavg", "flip-fedavg")
                 if n in results or ROBUST in n]:
        assert results[name]["rejected"] == [], name
    # The x10 update is caught by the server's norm screen before aggregation (by the absolute cap
    # or the round's median, whichever it crosses first) and logged as rejected.
    for name in [n for n in results if n.startswith("scale-")]:
        rejected = results[name]["rejected"]
        assert [(r["round"], r["node"]) for r in rejected] == [(1, 1)], rejected
        assert all(r["error"].startswith("rejected: update norm") for r in rejected), rejected
