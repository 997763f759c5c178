"""The contributor's Flower ClientApp: trains the global model on the local sample store.

Only model weights and scalar metrics leave this process; audio and features stay on disk here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN

from .dataset import FeatureSet
from .evaluation import evaluate
from .store import SampleStore
from .training import TrainConfig, fit

log = logging.getLogger(__name__)


def store_path(context: Context, data_dirs: list[str] | None = None) -> Path:
    """`data-path` from the SuperNode's node config; in simulation, a store per partition."""
    node = context.node_config
    if "data-path" in node:
        return Path(str(node["data-path"]))
    if "partition-id" in node:
        if data_dirs:
            return Path(data_dirs[int(node["partition-id"]) % len(data_dirs)])
        root = context.run_config.get("sim-data-root")
        stores = sorted(Path(str(root)).resolve().glob("contributor-*")) if root else []
        if stores:  # `flwr run .`: as many SuperNodes as the federation says, stores reused
            return stores[int(node["partition-id"]) % len(stores)]
    raise BeatSightError("no data-path in the node config: start the SuperNode with "
                         "--node-config \"data-path='training_data'\"")


@lru_cache(maxsize=2)
def _features(path: str) -> FeatureSet:
    """The store's samples, decoded once per process (the on-disk cache makes later runs fast)."""
    fs = SampleStore(path).feature_set()
    if len(fs) == 0:
        raise BeatSightError(f"{path}: the sample store is empty")
    return fs


def _model(msg: Message) -> DrumClassifierCNN:
    model = DrumClassifierCNN()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def make_client_app(data_dirs: list[str] | None = None, progress: bool = False,
                    mods: list | None = None) -> ClientApp:
    """`data_dirs`: one store per simulated partition; `mods`: Flower client mods (e.g. DP)."""
    app = ClientApp(mods=mods or [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content["config"]
        data = _features(str(store_path(context, data_dirs)))
        model = _model(msg)
        global_params = [p.detach().clone() for p in model.parameters()]
        server_round = int(cfg.get("server-round", 0))
        node = int(context.node_config.get("partition-id", context.node_id % 10_000))
        tc = TrainConfig(
            epochs=int(cfg.get("local-epochs", 1)),
            batch_size=int(cfg.get("batch-size", 32)),
            lr=float(cfg.get("lr", 1e-3)),
            seed=int(cfg.get("seed", 0)) * 100_003 + server_round * 1_009 + node,
            fedprox_mu=float(cfg.get("proximal-mu", 0.0)),
            augment=[a for a in str(cfg.get("augment", "")).split(",") if a],
            num_threads=int(cfg.get("threads", 0)) or None,
            early_stopping_patience=0,
        )
        hist = fit(model, data, tc, progress=progress, global_params=global_params)
        last = hist[-1] if hist else {}
        metrics = MetricRecord({
            "num-examples": len(data),
            "train-loss": float(last.get("train_loss", 0.0)),
            "train-accuracy": float(last.get("train_accuracy", 0.0)),
        })
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_local(msg: Message, context: Context) -> Message:
        data = _features(str(store_path(context, data_dirs)))
        res = evaluate(_model(msg), *data.arrays())
        metrics = MetricRecord({"num-examples": len(data), "accuracy": float(res["accuracy"]),
                                "loss": float(res["loss"])})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()
