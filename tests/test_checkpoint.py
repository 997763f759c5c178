import pytest
import torch

from beatsight.common.checkpoint import (
    Checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from beatsight.common.classes import CLASSES
from beatsight.common.errors import BeatSightError
from beatsight.common.features import FeatureSettings
from beatsight.common.model import DrumClassifierCNN, count_parameters


def test_parameter_count_matches_spec():
    assert count_parameters(DrumClassifierCNN()) == 391_884
    assert DrumClassifierCNN()(torch.zeros(2, 1, 128, 128)).shape == (2, 12)


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    model = DrumClassifierCNN()
    path = tmp_path / "m.pth"
    save_checkpoint(path, Checkpoint(model.state_dict(), model_version="r3",
                                     metrics={"accuracy": 0.5}))
    loaded, ckpt = load_model(path)
    assert ckpt.model_version == "r3" and ckpt.metrics == {"accuracy": 0.5}
    assert ckpt.classes == CLASSES and not ckpt.legacy
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_bare_state_dict_from_original_script_loads(tmp_path):
    model = DrumClassifierCNN()
    torch.save(model.state_dict(), tmp_path / "best_drum_classifier.pth")
    loaded, ckpt = load_model(tmp_path / "best_drum_classifier.pth")
    assert ckpt.legacy and ckpt.classes == CLASSES
    assert torch.equal(loaded.fc.weight, model.fc.weight)


@pytest.mark.parametrize("case", ["shape", "classes", "features", "garbage", "pickle"])
def test_mismatches_are_one_line_errors(tmp_path, case):
    path = tmp_path / "bad.pth"
    sd = DrumClassifierCNN().state_dict()
    if case == "shape":
        sd["fc.weight"] = torch.zeros(5, 256)
        torch.save(sd, path)
    elif case == "classes":
        save_checkpoint(path, Checkpoint(sd, classes=tuple(reversed(CLASSES))))
    elif case == "features":
        save_checkpoint(path, Checkpoint(sd, features=FeatureSettings(n_mels=64)))
    elif case == "garbage":
        path.write_bytes(b"not a model at all")
    else:
        import pickle

        path.write_bytes(pickle.dumps(object))
    with pytest.raises(BeatSightError) as err:
        load_model(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_file_never_replaces_good_one(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    save_checkpoint(path, Checkpoint(DrumClassifierCNN().state_dict(), model_version="good"))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, Checkpoint(DrumClassifierCNN().state_dict(), model_version="new"))
    assert read_checkpoint(path).model_version == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


def test_avgmax_pooling_is_recorded_inferred_and_checked(tmp_path):
    model = DrumClassifierCNN(pooling="avgmax")
    assert model.fc.in_features == 512 and model(torch.zeros(2, 1, 128, 128)).shape == (2, 12)
    assert count_parameters(model) == 391_884 + 256 * 12  # only the classifier grows
    path = tmp_path / "am.pth"
    save_checkpoint(path, Checkpoint(model.state_dict()))
    assert torch.load(path, weights_only=True)["pooling"] == "avgmax"
    loaded, ckpt = load_model(path)
    assert ckpt.pooling == "avgmax" and isinstance(loaded.pool, type(model.pool))
    x = torch.randn(3, 1, 128, 128)
    assert torch.allclose(model.eval()(x), loaded.eval()(x))
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # a bare state_dict: read off fc
    assert load_model(tmp_path / "bare.pth")[1].pooling == "avgmax"
    payload = Checkpoint(DrumClassifierCNN().state_dict()).to_payload()
    payload["pooling"] = "avgmax"  # says avgmax, weights are avg
    torch.save(payload, tmp_path / "liar.pth")
    with pytest.raises(BeatSightError, match="liar.pth: checkpoint says pooling 'avgmax'"):
        read_checkpoint(tmp_path / "liar.pth")
    with pytest.raises(BeatSightError, match="pooling 'median'"):
        DrumClassifierCNN(pooling="median")


@pytest.mark.parametrize("pooling", ["avg", "avgmax"])
def test_fast_inference_matches_the_model_for_both_poolings(pooling):
    """The fused bf16 / int8 paths of `process` reproduce the plain model's probabilities."""
    import numpy as np

    from beatsight.common.features import DEFAULT_SETTINGS, patches
    from beatsight.common.inference import CnnPredictor

    torch.manual_seed(0)
    model = DrumClassifierCNN(pooling=pooling)
    with torch.no_grad():  # a trained-looking classifier: spread the logits
        model.fc.weight.mul_(20)
    model.eval()
    rng = np.random.default_rng(1)
    t = np.arange(44100 * 3)
    audio = (rng.standard_normal(len(t)) * np.exp(-(t % 11025) / 800)).astype(np.float32)
    onsets = np.arange(0.05, 2.9, 0.25)
    ref = torch.softmax(model(torch.from_numpy(patches(audio, onsets, DEFAULT_SETTINGS))), 1)
    fp32 = CnnPredictor(model, precision="fp32").predict(audio, onsets)
    assert np.allclose(fp32, ref.detach().numpy(), atol=1e-4)
    int8 = CnnPredictor(model, precision="int8").predict(audio, onsets)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.8
