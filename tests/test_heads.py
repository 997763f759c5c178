"""The multi-label head: targets from hits struck together, BCE training, checkpoints that record
their head, and `process` reporting every class a sigmoid head hears at one onset.

Synthetic audio (tests/test_store.synth_beat): a 55 Hz kick and a noise hi-hat, alone and
together, so the test needs no drum kits and says exactly which classes share an onset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_store import synth_store

from beatsight.client.dataset import FeatureSet, group_targets, onset_groups
from beatsight.client.evaluation import predict_logits
from beatsight.client.store import SampleStore
from beatsight.client.training import TrainConfig, fit, new_model, pos_weights
from beatsight.common.bsm import Hit, read_bsm
from beatsight.common.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from beatsight.common.classes import CLASS_INDEX, NUM_CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.common.model import SECONDARY_THRESHOLD, head_probs
from beatsight.common.process import ProcessOptions, combine, onset_classes, process_file
from beatsight.simulation.crossval import onset_scores

KICK, HAT, SNARE = CLASS_INDEX["kick"], CLASS_INDEX["hihat_closed"], CLASS_INDEX["snare"]


def _hits() -> list[Hit]:
    out = []
    for i in range(12):  # per 1.5 s: kick alone, hi-hat alone, kick + hi-hat together
        t = 200 + 1500 * i
        out += [Hit(t, "kick", 0.9), Hit(t + 500, "hihat_closed", 0.7),
                Hit(t + 1000, "kick", 0.9), Hit(t + 1000, "hihat_closed", 0.7)]
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[SampleStore, Path]:
    d = tmp_path_factory.mktemp("heads")
    return synth_store(_hits(), d, 18.5, seed=4)


def test_targets_mark_every_class_struck_at_the_onset(store) -> None:
    fs = store[0].feature_set()
    assert fs.targets is not None and fs.targets.shape == (len(fs), NUM_CLASSES)
    both = fs.targets[:, KICK].astype(bool) & fs.targets[:, HAT].astype(bool)
    assert both.sum() == 24  # 12 shared beats, each a kick sample and a hi-hat sample
    assert (fs.targets.sum(1) == np.where(both, 2, 1)).all()
    assert (fs.targets[np.arange(len(fs)), fs.y] == 1).all()  # own class always marked
    # subsets and concatenation carry the targets along
    sub = fs.subset(np.flatnonzero(both)[:3])
    assert (sub.targets[:, [KICK, HAT]] == 1).all()
    cat = FeatureSet.concat([sub, fs.subset([0])])
    assert cat.targets.shape == (4, NUM_CLASSES)


def test_onset_groups_and_targets_by_hand() -> None:
    g = onset_groups(["a", "a", "a", "b"], [1.000, 1.004, 2.0, 1.000])
    assert g[0] == g[1] and len({g[1], g[2], g[3]}) == 3
    t = group_targets(np.array([KICK, HAT, SNARE, KICK]), g)
    assert t[0, KICK] == t[0, HAT] == t[1, KICK] == 1 and t[2].sum() == 1 and t[3].sum() == 1
    w = pos_weights(t.astype(np.float32))
    assert w[SNARE] == pytest.approx(3 ** 0.5) and w[HAT] == 1.0
    assert float(w.min()) >= 1.0 and float(w.max()) <= 10.0


def _train(store: SampleStore, head: str) -> torch.nn.Module:
    model = new_model(0)
    cfg = TrainConfig(epochs=6, batch_size=4, seed=1, num_threads=1, head=head, augment=[])
    hist = fit(model, store.feature_set(), cfg, progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    return model


def test_multi_head_hears_both_drums_of_a_shared_beat_single_head_cannot(store) -> None:
    s = store[0]
    fs = s.feature_set()
    both = (fs.targets[:, KICK] == 1) & (fs.targets[:, HAT] == 1)
    kick_alone = (fs.y == KICK) & ~both
    hat_alone = (fs.y == HAT) & ~both
    multi = head_probs(torch.from_numpy(predict_logits(_train(s, "multi"), fs.X.astype(
        np.float32))), "multi").numpy()
    # a shared beat: both sigmoids above 0.5; a lone drum: only its own
    assert ((multi[both, KICK] >= 0.5) & (multi[both, HAT] >= 0.5)).mean() >= 0.8
    assert (multi[kick_alone, HAT] < 0.5).mean() >= 0.8
    assert (multi[hat_alone, KICK] < 0.5).mean() >= 0.8
    single = head_probs(torch.from_numpy(predict_logits(_train(s, "single"), fs.X.astype(
        np.float32))), "single").numpy()
    assert np.allclose(single.sum(1), 1.0, atol=1e-4)  # softmax: the two share one unit


def test_checkpoint_records_its_head(tmp_path: Path) -> None:
    sd = new_model(0).state_dict()
    save_checkpoint(tmp_path / "m.pth", Checkpoint(sd, head="multi"))
    assert read_checkpoint(tmp_path / "m.pth").head == "multi"
    torch.save(sd, tmp_path / "bare.pth")  # the original script's bare state_dict
    assert read_checkpoint(tmp_path / "bare.pth").head == "single"
    payload = Checkpoint(sd).to_payload()
    payload["head"] = "octopus"
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(BeatSightError, match="bad.pth: checkpoint head 'octopus'"):
        read_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(BeatSightError, match="head 'both'"):
        fit(new_model(0), (np.zeros((2, 1, 128, 128), np.float32), np.zeros(2, np.int64)),
            TrainConfig(epochs=1, head="both"), progress=False)


def test_secondary_threshold_follows_the_head() -> None:
    probs = np.zeros((1, NUM_CLASSES))
    probs[0, KICK], probs[0, HAT] = 0.9, 0.4
    h = np.array([SNARE])
    c = np.ones(1)
    opts = ProcessOptions(confidence=0.0)
    assert combine(probs, h, c, opts, "single")[0] == [[KICK, HAT]]   # 0.4 >= 0.25
    assert combine(probs, h, c, opts, "multi")[0] == [[KICK]]         # 0.4 < 0.5
    assert onset_classes(probs, SECONDARY_THRESHOLD["multi"]) == [[KICK]]
    opts.secondary = 0.3
    assert combine(probs, h, c, opts, "multi")[0] == [[KICK, HAT]]    # the user's value wins


def test_onset_scores_count_each_class_of_a_shared_onset() -> None:
    y = np.array([KICK, HAT, SNARE])
    group = np.array([0, 0, 1])
    probs = np.zeros((3, NUM_CLASSES))
    probs[:2, KICK], probs[:2, HAT] = 0.9, 0.8   # the shared beat: both found
    probs[2, KICK] = 0.9                          # the snare called a kick
    r = onset_scores(y, group, probs, 0.5)
    # TP kick, hihat; FP kick (onset 2); FN snare -> micro F1 = 4 / (4 + 1 + 1)
    assert r["onset_f1_micro"] == pytest.approx(4 / 6, abs=1e-4)
    assert r["onset_exact"] == 0.5 and r["onset_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["onset_per_class_f1"]["hihat_closed"] == 1.0
    assert r["onset_per_class_f1"]["snare"] == 0.0


def test_process_with_a_multi_head_model_writes_both_drums_of_a_shared_beat(store, tmp_path
                                                                            ) -> None:
    s, wav = store
    ckpt = tmp_path / "multi.pth"
    save_checkpoint(ckpt, Checkpoint(_train(s, "multi").state_dict(), head="multi",
                                     model_version="test-multi"))
    out = tmp_path / "map.bsm"
    res = process_file(wav, out, ProcessOptions(confidence=0.0, band_checks=False,
                                                quantization="none", precision="fp32"),
                       model_path=ckpt)
    assert "test-multi" in res.classifier and read_bsm(out)
    times: dict[int, set[str]] = {}
    for h in res.hits:
        times.setdefault(round(h.time_ms / 20), set()).add(h.component)
    shared = sum(1 for comps in times.values() if {"kick", "hihat_closed"} <= comps)
    assert shared >= 9  # of the 12 shared beats


def test_a_federation_trains_and_records_the_head_and_pooling_it_was_given(store, tmp_path
                                                                           ) -> None:
    """Real strategy and ClientApp in this process (simulation/inprocess.py), two contributors."""
    from flwr.app import MessageType

    from beatsight.server.settings import RunSettings
    from beatsight.simulation.inprocess import simulate_in_process

    s, _ = store
    settings = RunSettings(num_rounds=1, min_nodes=2, head="multi", pooling="avgmax",
                           fraction_evaluate=0.0,
                           heldout=str(s.root), out_dir=str(tmp_path / "run"), augment="")
    kinds = []

    def seen(msg, context, call_next):
        kinds.append(msg.metadata.message_type)
        return call_next(msg, context)

    final = simulate_in_process(settings, [s.root, s.root], client_mods=[seen])
    assert final["num-examples"] == len(s.usable())
    assert kinds == [MessageType.TRAIN] * 2  # fraction-evaluate 0: no local evaluation asked
    ckpt = read_checkpoint(tmp_path / "run" / "global_model.pth")
    assert (ckpt.head, ckpt.pooling) == ("multi", "avgmax")
    with pytest.raises(BeatSightError, match="has pooling 'avgmax', this run asks for 'avg'"):
        simulate_in_process(RunSettings(**{**settings.__dict__, "pooling": "avg", "resume": True,
                                           "num_rounds": 2}), [s.root, s.root])
