"""The training loop: learns, is reproducible, resumes exactly, freezes, FedProx, evaluation.

Data: a store extracted from synthesised drum-like hits (see test_store.synth_beat) so the
tests need no kits and stay small (24 samples, a few tiny epochs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_store import synth_store

from beatsight.client.dataset import FeatureSet
from beatsight.client.training import TrainConfig, class_weights, evaluate, fit, new_model
from beatsight.common.bsm import Hit
from beatsight.common.errors import BeatSightError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[FeatureSet, FeatureSet]:
    d = tmp_path_factory.mktemp("train")
    hl = []
    for i in range(10):
        hl += [Hit(200 + 1200 * i, "kick", 0.9), Hit(600 + 1200 * i, "snare", 0.8),
               Hit(1000 + 1200 * i, "hihat_closed", 0.6)]
    store, _ = synth_store(hl, d, 12.5, seed=3, bpm=100)
    return store.train_val(seed=0, val_fraction=0.2)  # 24 train, 6 val


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, seed=5, augment=["time_shift", "gain", "noise"],
                num_threads=1)
    return TrainConfig(**{**base, **kw})


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_training_learns_the_training_set(data) -> None:
    train, val = data
    model = new_model(0)
    # batch 4: enough steps for BatchNorm's running statistics to settle on 24 samples. The
    # store's sample ids are random UUIDs, so the split and the order differ from run to run:
    # bounds with room (chance is 1/3). Six fresh stores: train accuracy 0.958 every time,
    # eval-mode accuracy 1.0 five times and 0.667 once.
    hist = fit(model, train, _cfg(epochs=10, batch_size=4, augment=[]), val_data=val,
               progress=False)
    assert len(hist) == 10 and hist[-1]["train_accuracy"] >= 0.8
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    res = evaluate(model, train.X, train.y)
    assert res["accuracy"] >= 0.6  # eval mode (BatchNorm running statistics)
    assert set(res) >= {"loss", "accuracy", "macro_f1", "per_class", "confusion"}
    assert sum(map(sum, res["confusion"])) == len(train)
    assert hist.best_state is not None and 1 <= hist.best_epoch <= 10


def test_same_seed_same_weights_other_seed_other_weights(data) -> None:
    train, val = data
    runs = []
    for seed in (5, 5, 6):
        model = new_model(0)
        fit(model, train, _cfg(seed=seed), val_data=val, progress=False)
        runs.append(model.state_dict())
    assert _same(runs[0], runs[1])
    assert not _same(runs[0], runs[2])


def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path: Path) -> None:
    train, val = data
    straight = new_model(0)
    h_straight = fit(straight, train, _cfg(epochs=2), val_data=val, progress=False)
    state = tmp_path / "last_state.pt"
    first = new_model(0)
    fit(first, train, _cfg(epochs=1), val_data=val, progress=False, state_path=state)
    resumed = new_model(123)  # different weights: everything must come from the state file
    h = fit(resumed, train, _cfg(epochs=2), val_data=val, progress=False, state_path=state,
            resume=True)
    assert h.resumed_from == 1 and [r["epoch"] for r in h] == [1, 2]
    assert _same(straight.state_dict(), resumed.state_dict())
    assert h[-1]["val_loss"] == pytest.approx(h_straight[-1]["val_loss"])
    with pytest.raises(BeatSightError, match="training samples"):
        fit(new_model(0), train.subset(np.arange(10)), _cfg(epochs=3), progress=False,
            state_path=state, resume=True)


def test_frozen_layers_and_their_batchnorm_stats_do_not_move(data) -> None:
    train, _ = data
    model = new_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, train, _cfg(freeze=["conv1", "conv2"]), progress=False)
    after = model.state_dict()
    for k in before:
        if k.startswith(("conv1.", "conv2.")):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["conv3.0.weight"], after["conv3.0.weight"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert all(p.requires_grad for p in model.parameters())  # restored for the caller
    with pytest.raises(BeatSightError, match="cannot freeze conv9"):
        fit(new_model(0), train, _cfg(freeze=["conv9"]), progress=False)


def test_fedprox_term_keeps_weights_near_the_global_model(data) -> None:
    train, _ = data

    def drift(mu: float) -> float:
        model = new_model(0)
        anchor = [p.detach().clone() for p in model.parameters()]
        fit(model, train, _cfg(epochs=1, fedprox_mu=mu, augment=[]), progress=False,
            global_params=anchor)
        return float(sum(((p.detach() - a) ** 2).sum() for p, a in
                         zip(model.parameters(), anchor, strict=True)))

    assert drift(50.0) < 0.7 * drift(0.0)


def test_early_stopping_stops_when_validation_loss_stalls(data) -> None:
    train, val = data
    cfg = _cfg(epochs=6, lr=1e-12, early_stopping_patience=2, augment=[],
               freeze=["conv1", "conv2", "conv3", "conv4"])
    hist = fit(new_model(0), train, cfg, val_data=val, progress=False)
    assert hist.stopped_early and len(hist) == 3


def test_plain_arrays_work_and_augmenting_them_is_a_clear_error(data) -> None:
    train, _ = data
    X, y = train.arrays()
    hist = fit(new_model(0), (X, y), _cfg(augment=[]), progress=False)
    assert len(hist) == 1 and "train_accuracy" in hist[-1]
    with pytest.raises(BeatSightError, match="raw windows"):
        fit(new_model(0), (X, y), _cfg(), progress=False)
    with pytest.raises(BeatSightError, match="no training samples"):
        fit(new_model(0), (X[:0], y[:0]), _cfg(augment=[]), progress=False)


def test_precision_is_recorded_and_validated(data) -> None:
    train, _ = data
    hist = fit(new_model(0), train, _cfg(precision="fp32", augment=[]), progress=False)
    assert hist[-1]["precision"] == "fp32"
    hist = fit(new_model(0), train, _cfg(precision="bf16", augment=[]), progress=False)
    assert hist[-1]["precision"] == "bf16" and np.isfinite(hist[-1]["train_loss"])
    with pytest.raises(BeatSightError, match="choose fp32, bf16 or auto"):
        fit(new_model(0), train, _cfg(precision="fp8"), progress=False)


def test_class_weights_are_inverse_frequency() -> None:
    w = class_weights(np.array([0] * 6 + [1] * 2 + [2] * 4))
    assert w[0] * 6 == pytest.approx(w[1] * 2) == pytest.approx(w[2] * 4)
    assert float((w[:3] * torch.tensor([6, 2, 4])).sum()) == pytest.approx(12)
    assert torch.all(w[3:] == 1)


def test_class_weight_power_tempers_the_weights(data) -> None:
    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    assert torch.allclose(class_weights(y, 0.5), class_weights(y).sqrt())
    assert torch.all(class_weights(y, 0.0) == 1)
    with pytest.raises(BeatSightError, match="class weight power"):
        fit(new_model(0), data[0], _cfg(class_weight_power=float("nan")), progress=False)


def test_cosine_schedule_anneals_to_zero_and_resumes_exactly(data, tmp_path: Path) -> None:
    train, _ = data
    straight = new_model(0)
    h = fit(straight, train, _cfg(epochs=2, lr_schedule="cosine"), progress=False)
    assert h[0]["lr"] == pytest.approx(1e-3 * 0.5) and h[1]["lr"] == pytest.approx(0.0, abs=1e-9)
    state = tmp_path / "cos_state.pt"

    class Interrupted(Exception):
        pass

    def stop_after_first(rec, model, hist):
        raise Interrupted

    with pytest.raises(Interrupted):  # killed after epoch 1 of 2 (the state is already saved)
        fit(new_model(0), train, _cfg(epochs=2, lr_schedule="cosine"), progress=False,
            state_path=state, on_epoch=stop_after_first)
    resumed = new_model(1)
    fit(resumed, train, _cfg(epochs=2, lr_schedule="cosine"), progress=False, state_path=state,
        resume=True)
    assert _same(straight.state_dict(), resumed.state_dict())
    with pytest.raises(BeatSightError, match="choose plateau or cosine"):
        fit(new_model(0), train, _cfg(lr_schedule="step"), progress=False)


def test_label_smoothing_and_balanced_sampling_change_training(data) -> None:
    from beatsight.client.training import _balanced_probs

    train, _ = data
    plain = new_model(0)
    fit(plain, train, _cfg(augment=[]), progress=False)
    smooth = new_model(0)
    h = fit(smooth, train, _cfg(augment=[], label_smoothing=0.2), progress=False)
    assert np.isfinite(h[-1]["train_loss"]) and not _same(plain.state_dict(), smooth.state_dict())
    balanced = new_model(0)
    h = fit(balanced, train, _cfg(augment=[], sampling="balanced", class_weight_power=0.0),
            progress=False)
    assert np.isfinite(h[-1]["train_loss"])
    assert not _same(plain.state_dict(), balanced.state_dict())
    y = np.array([0] * 6 + [1] * 2 + [5] * 4)
    p = _balanced_probs(y)
    assert p.sum() == pytest.approx(1.0)
    for c in (0, 1, 5):
        assert p[y == c].sum() == pytest.approx(1 / 3)
    with pytest.raises(BeatSightError, match="shuffle or balanced"):
        fit(new_model(0), train, _cfg(sampling="oversample"), progress=False)


@pytest.mark.parametrize("channels_last", [False, True])
def test_predict_logits_matches_a_plain_forward_and_leaves_the_model_as_it_was(channels_last
                                                                               ) -> None:
    """Evaluation runs channels_last in small pieces on a CPU (fast); the logits are those of a
    plain forward pass, and the model keeps its layout and train/eval mode."""
    from beatsight.client.evaluation import _uses_channels_last, predict_logits

    model = new_model(3)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    X = np.random.default_rng(0).random((21, 1, 128, 128)).astype(np.float16)  # not a multiple of 8
    assert _uses_channels_last(model) is channels_last
    got = predict_logits(model, X)
    assert model.training and _uses_channels_last(model) is channels_last
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(X.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_training_stores_the_datas_drum_family_templates(data) -> None:
    """fit() keeps each family's mean attack pattern in the model (common.templates), which
    FedAvg averages and `process` uses; (X, y) arrays carry no windows, so none are learnt."""
    from beatsight.common.classes import FAMILIES
    from beatsight.common.templates import family_templates, usable

    train, _ = data
    model = new_model(0)
    fit(model, train, _cfg(epochs=1, augment=[]), progress=False)
    want = family_templates(train.windows, train.y, train.settings.pre_samples, train.targets)
    np.testing.assert_allclose(model.templates.numpy(), want, rtol=1e-6)
    assert usable(model.templates.numpy())
    sums = model.templates.sum(dim=(1, 2)).numpy()
    for f, name in enumerate(FAMILIES):
        assert sums[f] == pytest.approx(1.0 if name in ("kick", "snare", "hihat") else 0.0,
                                        abs=1e-5)
    arrays_only = new_model(0)
    fit(arrays_only, train.arrays(), _cfg(epochs=1, augment=[]), progress=False)
    assert not arrays_only.templates.any()
