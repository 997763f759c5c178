"""Server-side update screening and robust aggregation, fed real Flower reply Messages."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict

from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN
from beatsight.server.settings import RunSettings
from beatsight.server.strategy import make_strategy

torch.manual_seed(0)
GLOBAL = {k: v.clone() for k, v in DrumClassifierCNN().state_dict().items()}


def reply(node: int, state: dict, n: float = 100, metrics: dict | None = None,
          extra: dict | None = None) -> Message:
    meta = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="m", group_id="1", created_at=time.time(), ttl=600,
                    message_type=MessageType.TRAIN)
    mr = MetricRecord({"num-examples": n, "train-loss": 1.0, **(metrics or {})})
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": mr, **(extra or {})})
    return Message(content=content, metadata=meta)


def honest(seed: int, scale: float = 1e-3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in GLOBAL.items()}


def strategy(aggregation: str = "fedavg"):
    s = make_strategy(RunSettings(min_nodes=2, aggregation=aggregation))
    s.reference = ArrayRecord(GLOBAL)  # what configure_train records before sending
    return s


def test_bad_updates_rejected_with_reason_rest_aggregated():
    good = {1: honest(1), 2: honest(2), 3: honest(3)}
    nan = honest(4)
    nan["conv1.0.weight"][0, 0, 0, 0] = float("nan")
    shape = honest(5)
    shape["fc.bias"] = torch.zeros(13)
    dtype = {k: v.double() if v.is_floating_point() else v for k, v in honest(6).items()}
    missing = {k: v for k, v in honest(7).items() if k != "fc.bias"}
    scaled = {k: GLOBAL[k] + 10 * (v - GLOBAL[k]) if v.is_floating_point() else v
              for k, v in honest(8).items()}
    huge = {k: v + 5.0 if v.is_floating_point() else v for k, v in honest(9).items()}
    replies = [reply(i, s) for i, s in good.items()] + [
        reply(4, nan), reply(5, shape), reply(6, dtype), reply(7, missing), reply(8, scaled),
        reply(9, huge), reply(10, honest(10), n=1e12), reply(11, honest(11), n=float("nan")),
        reply(12, honest(12), extra={"config": MetricRecord({"x": 1})}),
        reply(13, honest(13), metrics={"evil-key": 1.0}),  # extra metric: kept, key dropped
    ]
    s = strategy()
    arrays, metrics = s.aggregate_train(1, replies)
    why = {r["node"]: r["reason"] for r in s.rejected}
    assert set(why) == {4, 5, 6, 7, 8, 9, 10, 11, 12}
    assert "non-finite" in why[4] and "shape" in why[5] and "dtype" in why[6]
    assert "missing" in why[7] and "median" in why[8] and "num-examples" in why[10]
    assert "cap" in why[9] or "median" in why[9]
    assert all("\n" not in r for r in why.values())
    # the round log shows the rejected ones as failed, with the reason
    errs = {p["node"]: p["error"] for p in s.last_round if "error" in p}
    assert set(errs) == set(why) and errs[4].startswith("rejected: ")
    # the result is the plain average of the accepted updates (equal counts)
    out = arrays.to_torch_state_dict()
    accepted = [good[1], good[2], good[3], honest(13)]
    for k in ("conv1.0.weight", "fc.bias"):
        expect = torch.stack([a[k] for a in accepted]).mean(0)
        assert torch.allclose(out[k], expect, atol=1e-6)
    assert np.isfinite(out["conv1.0.weight"].numpy()).all()


def test_all_rejected_ends_round_instead_of_corrupting():
    from beatsight.server.deadline import NotEnoughContributors

    bad = honest(1)
    bad["fc.weight"][:] = float("inf")
    with pytest.raises(NotEnoughContributors):
        strategy().aggregate_train(1, [reply(1, bad), reply(2, honest(2))])


@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean", "krum"])
def test_robust_aggregations_ignore_one_outlier(aggregation):
    states = [honest(i) for i in range(1, 5)]
    # an attacker below the norm screen's limits, but far off in one direction
    shifted = {k: v + 0.02 if v.is_floating_point() else v for k, v in honest(5).items()}
    s = strategy(aggregation)
    s.norm_factor = 0  # isolate the aggregation rule
    arrays, _ = s.aggregate_train(1, [reply(i + 1, st) for i, st in enumerate(states)]
                                  + [reply(5, shifted)])
    out = arrays.to_torch_state_dict()["fc.weight"]
    dist = (out - GLOBAL["fc.weight"]).abs().mean().item()
    fed = strategy("fedavg")
    fed.norm_factor = 0
    avg, _ = fed.aggregate_train(1, [reply(i + 1, st) for i, st in enumerate(states)]
                                 + [reply(5, shifted)])
    avg_dist = (avg.to_torch_state_dict()["fc.weight"] - GLOBAL["fc.weight"]).abs().mean().item()
    assert avg_dist > 0.0035 and dist < 0.0015  # fedavg moves by 0.02/5; robust ones do not


def test_aggregation_setting_checked():
    with pytest.raises(BeatSightError, match="aggregation"):
        RunSettings(aggregation="mean-ish").validate()
    assert type(make_strategy(RunSettings(aggregation="median"))).__name__ == "LoggedFedMedian"


def test_second_round_reference_with_float_counters_accepts_normal_replies():
    """Flower's averaging makes num_batches_tracked float64 in the global model from round 2 on;
    contributors' models keep it int64. That must not reject everyone (it ended runs once)."""
    averaged = {k: v.double() if not v.is_floating_point() else v for k, v in GLOBAL.items()}
    s = strategy()
    s.reference = ArrayRecord(averaged)
    replies = []
    for i in (1, 2, 3):
        st = honest(i)
        for k, v in st.items():
            if not v.is_floating_point():
                st[k] = v + 40  # 40 batches trained: a counter, not part of the update norm
        replies.append(reply(i, st))
    arrays, _ = s.aggregate_train(2, replies)
    assert s.rejected == [] and arrays is not None


def test_aggregate_does_not_depend_on_the_order_replies_arrive_in():
    """Contributors finish in any order and Flower draws new node ids every run; the aggregate
    must come out bit for bit the same so a seeded run repeats."""
    import itertools

    states = [honest(20 + i, scale=10.0 ** -i) for i in range(4)]  # magnitudes that round apart
    sizes = [333, 440, 463, 386]
    outs = []
    for perm in itertools.permutations(range(4)):
        s = strategy()
        arrays, _ = s.aggregate_train(2, [reply(100 + j, states[i], n=sizes[i])
                                          for j, i in enumerate(perm)])
        outs.append(arrays.to_torch_state_dict())
    for out in outs[1:]:
        for k, v in outs[0].items():
            assert torch.equal(out[k], v), k
