"""client.evaluation: BatchNorm statistics re-estimated under a model's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from beatsight.client.evaluation import batchnorm_statistics
from beatsight.common.model import DrumClassifierCNN
from beatsight.server.settings import RunSettings
from beatsight.server.strategy import make_strategy
from beatsight.server.validation import UpdateRejected


def _data(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 128, 128), dtype=np.float32)


def test_statistics_are_the_data_s_moments_under_the_model_s_weights() -> None:
    torch.manual_seed(0)
    model = DrumClassifierCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = _data()
    stats = batchnorm_statistics(model, X)
    assert set(stats) == {k for k in before if k.endswith(("running_mean", "running_var"))}
    # the first BatchNorm sees the first convolution's output: its per-channel moments
    conv, bn = model.conv1[0], model.conv1[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        h = conv(torch.from_numpy(X))
    np.testing.assert_allclose(stats["conv1.1.running_mean"], h.mean(dim=(0, 2, 3)).numpy(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["conv1.1.running_var"],
                               h.var(dim=(0, 2, 3), unbiased=True).numpy(), rtol=1e-3, atol=1e-6)
    # ... and the model handed in is left as it was
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_strategy_keeps_only_statistics_that_fit_the_model() -> None:
    strategy = make_strategy(RunSettings())
    good = batchnorm_statistics(DrumClassifierCNN(), _data(4))
    strategy._check(good, 4)
    k = next(k for k in good if k.endswith("running_var"))
    for bad, n in (({**good, k: -good[k] - 1}, 4),                      # negative variance
                   ({**good, k: np.full_like(good[k], np.nan)}, 4),
                   ({**good, k: good[k][:-1]}, 4),                       # other shape
                   ({kk: v for kk, v in good.items() if kk != k}, 4),
                   ({**good, k: good[k].astype(np.float64)}, 4),         # other dtype
                   (good, 1e12), (good, 0), (good, None)):               # counts weigh the mean
        with pytest.raises(UpdateRejected):
            strategy._check(bad, n)
    assert RunSettings().recalibrates_bn
    assert not RunSettings(dp_noise_multiplier=1.0).recalibrates_bn
    assert not RunSettings(fraction_evaluate=0.0).recalibrates_bn
    assert not RunSettings(aggregation="median").recalibrates_bn
