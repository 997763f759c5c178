"""Differential privacy: the RDP accountant, the client's clipping mod and the server's DP wrapper."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from beatsight.client.clientapp import KEY_CLIPPING_NORM, dp_clip_mod
from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN
from beatsight.server.privacy import ClientSideDP, PrivacyLedger, epsilon_from_rdp, rdp_per_order
from beatsight.server.settings import RunSettings
from beatsight.server.strategy import make_strategy

torch.manual_seed(0)
GLOBAL = {k: v.clone() for k, v in DrumClassifierCNN().state_dict().items()}
DELTA = 1e-5


# ---- accountant ---------------------------------------------------------------------------------

def gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """Tight epsilon of a Gaussian mechanism with sensitivity/std = mu (Balle & Wang 2018)."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    delta_of = lambda e: phi(-e / mu + mu / 2) - math.exp(e) * phi(-e / mu - mu / 2)  # noqa: E731
    lo, hi = 0.0, 700.0  # exp() overflows above 709
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("z,rounds", [(1.0, 1), (1.0, 4), (0.5, 10), (2.0, 100), (0.1, 4)])
def test_classic_conversion_matches_closed_form(z, rounds):
    # T rounds of the Gaussian mechanism: RDP(a) = rho a, rho = T / (2 z^2); the classic conversion
    # min_a rho a + log(1/delta)/(a-1) is rho + 2 sqrt(rho log(1/delta)) at a = 1 + sqrt(L/rho).
    rho, L = rounds / (2 * z * z), math.log(1 / DELTA)
    eps, order = PrivacyLedger(DELTA, [z] * rounds).epsilon("classic")
    assert eps == pytest.approx(rho + 2 * math.sqrt(rho * L), rel=1e-6)
    assert order == pytest.approx(1 + math.sqrt(L / rho), rel=2e-3)


@pytest.mark.parametrize("z,rounds", [(1.0, 1), (1.0, 4), (0.5, 10), (2.0, 100), (0.1, 4)])
def test_reported_epsilon_between_exact_and_classic(z, rounds):
    # T Gaussian rounds compose exactly into one Gaussian with mu = sqrt(T) / z: a lower bound.
    eps, _ = PrivacyLedger(DELTA, [z] * rounds).epsilon()
    classic, _ = PrivacyLedger(DELTA, [z] * rounds).epsilon("classic")
    exact = gaussian_exact_epsilon(math.sqrt(rounds) / z, DELTA)
    assert exact < eps < classic


def test_epsilon_agrees_with_google_dp_accounting():
    # dp-accounting 0.6.0 RdpAccountant, GaussianDpEvent(z) composed T times, get_epsilon(1e-5):
    # same conversion on a coarser grid of orders, hence at most slightly above ours.
    reference = {(1.0, 1): 4.728507, (1.0, 4): 10.725510, (0.5, 10): 48.801693, (2.0, 100): 35.081754}
    for (z, rounds), theirs in reference.items():
        ours, _ = PrivacyLedger(DELTA, [z] * rounds).epsilon()
        assert theirs * (1 - 2e-3) <= ours <= theirs + 1e-9


def test_ledger_edge_cases_and_composition():
    assert PrivacyLedger(DELTA).epsilon()[0] == 0.0
    assert PrivacyLedger(DELTA, [1.0, 0.0]).epsilon()[0] == math.inf  # a round without noise
    assert PrivacyLedger(DELTA, [1.0, 0.0]).report(5.0, 1.0)["epsilon"] is None
    # rounds with different noise add their RDP: 1/(2*1^2) + 1/(2*0.5^2) = 2.5 = 5 rounds at z=1
    mixed = PrivacyLedger(DELTA, [1.0, 0.5]).epsilon()[0]
    assert mixed == pytest.approx(PrivacyLedger(DELTA, [1.0] * 5).epsilon()[0], rel=1e-9)
    more_noise = PrivacyLedger(DELTA, [2.0] * 4).epsilon()[0]
    assert more_noise < PrivacyLedger(DELTA, [1.0] * 4).epsilon()[0]
    with pytest.raises(ValueError):
        epsilon_from_rdp(rdp_per_order([1.0]), 0.0)
    r = PrivacyLedger(DELTA, [1.0] * 4).report(5.0, 1.0, note="n")
    assert r["rounds"] == 4 and r["delta"] == DELTA and r["clipping_norm"] == 5.0 and r["note"] == "n"


def test_dp_settings_checked():
    s = RunSettings.from_run_config({"dp-noise-multiplier": "1.0", "dp-clipping-norm": 3,
                                     "dp-delta": 1e-6})
    assert s.dp and s.dp_clipping_norm == 3.0 and s.dp_delta == 1e-6
    assert not RunSettings().dp
    for bad in ({"dp_noise_multiplier": -1}, {"dp_clipping_norm": 0}, {"dp_delta": 1.0},
                {"dp_noise_multiplier": 1.0, "aggregation": "median"}):
        with pytest.raises(BeatSightError, match="dp|differential"):
            RunSettings(**bad).validate()


# ---- client: clipping ---------------------------------------------------------------------------

def _train_msg(glob: dict, clip: float | None) -> Message:
    cfg = {"lr": 1e-3} if clip is None else {"lr": 1e-3, KEY_CLIPPING_NORM: clip}
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=600, message_type=MessageType.TRAIN)
    return Message(content=RecordDict({"arrays": ArrayRecord(glob), "config": ConfigRecord(cfg)}),
                   metadata=meta)


def _fake_training(scale: float):
    """A ClientApp train function: moves every weight by `scale` x noise, counts 40 batches."""
    def train(msg: Message, ctx: Context) -> Message:
        g = torch.Generator().manual_seed(1)
        new = {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point()
               else v.to(torch.int64) + 40 for k, v in GLOBAL.items()}
        content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": 9})})
        return Message(content=content, reply_to=msg)
    return train


def _float_norm(reply: Message, glob: dict) -> float:
    out = reply.content["arrays"].to_torch_state_dict()
    return math.sqrt(sum(float(((out[k].double() - glob[k].double()) ** 2).sum())
                         for k, v in GLOBAL.items() if v.is_floating_point()))


@pytest.mark.parametrize("counters", ["int64", "float64"])  # round 1 / rounds after averaging
def test_clip_mod_bounds_the_update_norm_and_keeps_the_layout(counters):
    glob = {k: v if v.is_floating_point() or counters == "int64" else v.double() for k, v in GLOBAL.items()}
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    raw = _fake_training(0.01)(_train_msg(glob, None), ctx)
    assert _float_norm(raw, glob) > 5.0  # about 0.01 * sqrt(393k) = 6.3
    reply = dp_clip_mod(_train_msg(glob, 1.5), ctx, _fake_training(0.01))
    assert not reply.has_error()
    assert _float_norm(reply, glob) == pytest.approx(1.5, rel=1e-4)  # clipped to C, not below
    out = reply.content["arrays"].to_torch_state_dict()
    for k, v in GLOBAL.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape  # what the server's screen wants
        if not v.is_floating_point():
            assert int(out[k]) == int(v)  # counters sent back as received: no batch count leaks
    # a small update is left alone
    small = dp_clip_mod(_train_msg(glob, 100.0), ctx, _fake_training(0.01))
    assert _float_norm(small, glob) == pytest.approx(_float_norm(raw, glob), rel=1e-5)


def test_clip_mod_does_nothing_without_dp():
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    msg = _train_msg(GLOBAL, None)
    plain = _fake_training(0.01)(msg, ctx)
    reply = dp_clip_mod(msg, ctx, _fake_training(0.01))
    assert _float_norm(reply, GLOBAL) == pytest.approx(_float_norm(plain, GLOBAL))
    out = reply.content["arrays"].to_torch_state_dict()
    assert int(out["conv1.1.num_batches_tracked"]) == 40


# ---- server: the DP wrapper ---------------------------------------------------------------------

def _reply(node: int, state: dict, n: int = 100) -> Message:
    meta = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="m", group_id="1", created_at=time.time(), ttl=600,
                    message_type=MessageType.TRAIN)
    mr = MetricRecord({"num-examples": n, "train-loss": 1.0})
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "metrics": mr}), metadata=meta)


def _update(seed: int, norm: float) -> dict:
    g = torch.Generator().manual_seed(seed)
    d = {k: torch.randn(v.shape, generator=g) for k, v in GLOBAL.items() if v.is_floating_point()}
    total = math.sqrt(sum(float((x.double() ** 2).sum()) for x in d.values()))
    return {k: v + d[k] * (norm / total) if k in d else v.clone() for k, v in GLOBAL.items()}


def test_dp_strategy_noise_weights_screen_and_epsilon():
    clip, z = 2.0, 1.0
    s = make_strategy(RunSettings(min_nodes=3, dp_noise_multiplier=z, dp_clipping_norm=clip))
    assert isinstance(s, ClientSideDP) and s.strategy.weighted_by_key == "dp-weight"
    s.strategy.reference = ArrayRecord(GLOBAL)  # what the wrapped configure_train records
    assert s.reference is s.strategy.reference and s.norm_factor == 0.0  # read through the wrapper
    np.random.seed(0)
    honest = {i: _update(i, clip) for i in (1, 2, 3, 4)}
    scaled = _update(5, 10 * clip)  # a contributor that did not clip: over the cap C
    sizes = {1: 10, 2: 1000, 3: 10, 4: 10}  # unequal sizes: the DP mean ignores them
    replies = [_reply(i, st, sizes[i]) for i, st in honest.items()] + [_reply(5, scaled)]
    arrays, _ = s.aggregate_train(1, replies)
    # the ServerApp reads these through the wrapper
    assert [r["node"] for r in s.rejected] == [5] and "cap" in s.rejected[0]["reason"]
    assert {p["node"] for p in s.last_round if "error" not in p} == {1, 2, 3, 4}
    assert all(p["update-norm"] <= clip * 1.001 for p in s.last_round if "error" not in p)
    out = arrays.to_torch_state_dict()
    k = "fc.weight"
    mean = torch.stack([honest[i][k] for i in honest]).mean(0)  # unweighted
    noise = (out[k] - mean).double()
    assert abs(float(noise.mean())) < 0.02
    assert float(noise.std()) == pytest.approx(z * clip / 4, rel=0.05)  # std z C / m, m = 4 kept
    report = s.privacy_report()
    assert report["rounds"] == 1 and report["epsilon"] == pytest.approx(
        PrivacyLedger(DELTA, [z]).epsilon()[0], rel=1e-3)
    assert report["delta"] == DELTA and report["noise_multiplier"] == z and report["clipping_norm"] == clip
    s.aggregate_train(2, [_reply(i, st) for i, st in honest.items()])
    assert s.privacy_report()["rounds"] == 2 and s.privacy_report()["epsilon"] > report["epsilon"]


def test_without_dp_the_strategy_is_unwrapped():
    s = make_strategy(RunSettings(min_nodes=2))
    assert not isinstance(s, ClientSideDP) and not hasattr(s, "privacy_report")
    note = make_strategy(RunSettings(min_nodes=2, fraction_train=0.5, dp_noise_multiplier=1.0))
    assert "no amplification" in note.privacy_report()["note"]


def test_noised_variances_stay_valid():
    state = {k: v.clone() for k, v in GLOBAL.items()}
    state["conv1.1.running_var"][:3] = -0.5
    from beatsight.server.privacy import _valid_variances

    out = _valid_variances(ArrayRecord(state)).to_torch_state_dict()
    assert float(out["conv1.1.running_var"].min()) == 0.0
    assert list(out) == list(state) and out["conv1.1.num_batches_tracked"].dtype == torch.int64


# ---- end to end: a small DP federation in one process ---------------------------------------------

@pytest.mark.needs_kits
def test_dp_federation_clips_every_update_and_reports_epsilon(tmp_path, kits_root):
    from beatsight.common.checkpoint import read_checkpoint
    from beatsight.simulation.contributors import build_federation, build_heldout
    from beatsight.simulation.inprocess import simulate_in_process

    stores = build_federation(tmp_path / "data", n_contributors=3, seed=2, songs_per_contributor=1,
                              song_seconds=4.0, progress=False)
    heldout = build_heldout(tmp_path / "data" / "heldout", seed=2, songs_per_kit=1, song_seconds=3.0,
                            isolated_per_class=1, progress=False)
    clip, z = 1.0, 0.5
    settings = RunSettings(num_rounds=1, local_epochs=1, batch_size=32, min_nodes=3,
                           heldout=str(heldout), out_dir=str(tmp_path / "run"), seed=2,
                           dp_noise_multiplier=z, dp_clipping_norm=clip, threads=2,
                           fraction_evaluate=0.0)
    simulate_in_process(settings, stores)
    rounds = json.loads((tmp_path / "run" / "history.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds[1:]:
        parts = r["participants"]
        assert len(parts) == 3 and not any("error" in p for p in parts)
        # the server measured every reply's update norm: clipped to C (unclipped they are ~10x C)
        assert all(clip * 0.99 <= p["update-norm"] <= clip * 1.001 for p in parts)
        assert math.isfinite(r["heldout"]["loss"])
    expected = PrivacyLedger(DELTA, [z]).epsilon()[0]  # (composition: the ledger tests above)
    assert rounds[1]["privacy"]["epsilon"] == pytest.approx(expected, rel=1e-3)
    assert rounds[1]["privacy"]["rounds"] == 1 and rounds[1]["privacy"]["delta"] == DELTA
    final = read_checkpoint(tmp_path / "run" / "global_model.pth")
    assert final.extra["privacy"]["epsilon"] == pytest.approx(expected, rel=1e-3)
    assert final.extra["privacy"]["ledger"]["noise_multipliers"] == [z]
