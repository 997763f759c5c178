"""A real simulated federation (Flower simulation engine, Ray) on rendered Hydrogen-kit audio."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
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

from beatsight.client.clientapp import make_client_app
from beatsight.client.evaluation import batchnorm_statistics
from beatsight.client.store import SampleStore
from beatsight.common.checkpoint import load_model
from beatsight.common.model import DrumClassifierCNN
from beatsight.common.templates import usable
from beatsight.server.settings import RunSettings
from beatsight.simulation.contributors import build_federation, build_heldout
from beatsight.simulation.federation import simulate

pytestmark = pytest.mark.needs_kits

LOG_ENV = "BEATSIGHT_TEST_MESSAGE_LOG"


def record_outgoing(msg: Message, context: Context, call_next) -> Message:
    """A Flower client mod that writes down what every reply carries (runs inside Ray actors)."""
    reply = call_next(msg, context)
    entry = {"type": msg.metadata.message_type, "records": {}}
    for name, rec in reply.content.items():
        if isinstance(rec, ArrayRecord):
            entry["records"][name] = {"kind": "arrays",
                                      "shapes": {k: list(a.shape) for k, a in rec.items()}}
        elif isinstance(rec, MetricRecord):
            entry["records"][name] = {"kind": "metrics", "values": dict(rec)}
        else:
            entry["records"][name] = {"kind": type(rec).__name__}
    with open(os.environ[LOG_ENV], "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return reply


@pytest.fixture(scope="module")
def small_federation(tmp_path_factory, kits_root):
    root = tmp_path_factory.mktemp("fed")
    stores = build_federation(root / "data", n_contributors=3, seed=1, songs_per_contributor=1,
                              song_seconds=8.0, progress=False)
    heldout = build_heldout(root / "data" / "heldout", seed=1, songs_per_kit=1, song_seconds=6.0,
                            isolated_per_class=2, progress=False)
    return root, stores, heldout


@pytest.mark.slow
def test_two_rounds_improve_heldout_accuracy_and_only_weights_leave(small_federation, monkeypatch):
    root, stores, heldout = small_federation
    log = root / "messages.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    out = root / "run"
    settings = RunSettings(num_rounds=2, local_epochs=2, min_nodes=3, heldout=str(heldout),
                           out_dir=str(out), seed=3, lr=2e-3)
    simulate(settings, stores, client_mods=[record_outgoing])

    rounds = json.loads((out / "history.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["heldout"]["accuracy"] > rounds[0]["heldout"]["accuracy"] + 0.05
    assert all(len(r["participants"]) == 3 for r in rounds[1:])
    model, ckpt = load_model(out / "global_model.pth")
    assert ckpt.extra["round"] == 2 and "accuracy" in ckpt.metrics
    # the contributors' drum-family templates reach the global model (FedAvg, like BatchNorm's
    # statistics), so `process` can use them: a weighted mean of rows that each sum to 1 (or
    # are 0 where a contributor lacks the family)
    assert usable(model.templates.numpy())
    sums = model.templates.sum(dim=(1, 2))
    assert bool(((sums > 0) & (sums <= 1 + 1e-4)).all()), sums
    # BatchNorm statistics: the contributors' re-estimate under the final weights, averaged by
    # sample count (server/strategy.py), not the average of their training-time statistics
    sets = [SampleStore(p).feature_set(progress=False).arrays()[0] for p in stores]
    per = [batchnorm_statistics(model, X) for X in sets]
    n = np.array([len(X) for X in sets], float)
    state = model.state_dict()
    assert per[0]
    for k in per[0]:
        want = sum(w * p[k] for w, p in zip(n, per, strict=True)) / n.sum()
        # float sums in other orders and thread counts: agreement to 0.1 % of the layer's scale
        # (the main job's averaged training-time statistics are 3-19 % of it away from these)
        np.testing.assert_allclose(state[k].numpy(), want, rtol=1e-3,
                                   atol=1e-3 * float(np.abs(want).max()), err_msg=k)
    assert (out / "heldout_accuracy.png").stat().st_size > 1000
    assert (out / "checkpoints" / "latest.pth").exists()

    # Privacy: every reply any contributor sent holds the model's own arrays and scalar metrics.
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len([e for e in entries if e["type"] == "train"]) == 6
    expected = {k: list(v.shape) for k, v in DrumClassifierCNN().state_dict().items()}
    bn = {k: v for k, v in expected.items() if k.endswith(("running_mean", "running_var"))}
    assert len([e for e in entries if "bn-stats" in e["records"]]) == 6   # evaluate, 2 rounds
    for e in entries:
        for name, rec in e["records"].items():
            assert rec["kind"] in ("arrays", "metrics")
            if rec["kind"] == "arrays":   # the model's arrays, or its BatchNorm statistics
                assert rec["shapes"] == (bn if name == "bn-stats" else expected)
            else:
                assert all(isinstance(v, (int, float)) for v in rec["values"].values())
                assert set(rec["values"]) <= {"num-examples", "train-loss", "train-accuracy",
                                              "accuracy", "loss"}


def _train_message(model: DrumClassifierCNN, config: dict) -> tuple[Message, Context]:
    """A train instruction for partition 0, as a SuperNode hands it to the ClientApp."""
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord(config)})
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600,
                    message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1},
                  state=RecordDict(), run_config={})
    return Message(content=content, metadata=meta), ctx


def test_client_reply_carries_weights_and_counts_only(small_federation):
    """The ClientApp called directly, as a SuperNode would: the reply has nothing but weights."""
    _, stores, _ = small_federation
    app = make_client_app([str(stores[0])])
    model = DrumClassifierCNN()
    reply = app(*_train_message(model, {"local-epochs": 1, "lr": 1e-3, "batch-size": 32,
                                        "augment": "", "server-round": 1}))
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    metrics = dict(reply.content["metrics"])
    n = metrics["num-examples"]
    assert n > 0 and set(metrics) == {"num-examples", "train-loss", "train-accuracy"}
    new = reply.content["arrays"].to_torch_state_dict()
    assert set(new) == set(model.state_dict())
    assert not np.allclose(new["fc.weight"].numpy(), model.state_dict()["fc.weight"].numpy())


def test_class_weight_power_reaches_the_contributors_training(small_federation, monkeypatch):
    """Run config `class-weight-power` goes from the server's train config into the contributor's
    TrainConfig (default 0.5; README, federation), and a bad value is refused up front."""
    import beatsight.client.clientapp as clientapp
    from beatsight.common.errors import BeatSightError
    from beatsight.server.serverapp import _train_config

    _, stores, _ = small_federation
    seen: list[float] = []
    real_fit = clientapp.fit

    def spy(model, data, cfg, **kw):
        seen.append(cfg.class_weight_power)
        cfg.epochs = 0   # the config is what is checked here; training is tested above
        return real_fit(model, data, cfg, **kw)

    monkeypatch.setattr(clientapp, "fit", spy)
    app = make_client_app([str(stores[0])])
    for settings in (RunSettings(), RunSettings(class_weight_power=0.0)):
        cfg = dict(_train_config(settings))
        assert cfg["class-weight-power"] == settings.class_weight_power
        msg, ctx = _train_message(DrumClassifierCNN(), {**cfg, "server-round": 1})
        assert not app(msg, ctx).has_error()
    assert seen == [0.5, 0.0]
    assert RunSettings.from_run_config({"class-weight-power": "1"}).class_weight_power == 1.0
    with pytest.raises(BeatSightError, match="class weight power -1"):
        RunSettings.from_run_config({"class-weight-power": -1})


def test_run_config_keys_are_checked():
    from beatsight.common.errors import BeatSightError

    s = RunSettings.from_run_config({"num-rounds": "3", "resume": "true", "sim-data-root": "x"})
    assert s.num_rounds == 3 and s.resume is True
    with pytest.raises(BeatSightError, match="unknown key"):
        RunSettings.from_run_config({"num-round": 3})
    with pytest.raises(BeatSightError, match="augment"):
        RunSettings.from_run_config({"augment": "pitchy"})
    for bad in ("-0.1", "1.5"):
        with pytest.raises(BeatSightError, match="fraction-evaluate"):
            RunSettings.from_run_config({"fraction-evaluate": bad})


def test_pyproject_app_config_matches_settings():
    import tomllib

    cfg = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    app_cfg = cfg["tool"]["flwr"]["app"]["config"]
    RunSettings.from_run_config(app_cfg)  # every key known, every value valid
    assert cfg["tool"]["flwr"]["app"]["components"]["serverapp"].endswith("serverapp:app")
