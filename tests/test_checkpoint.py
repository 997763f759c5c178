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
