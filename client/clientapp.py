"""The contributor's Flower ClientApp: trains the global model on the local sample store.

Only model weights and scalar metrics leave this process; audio and features stay on disk here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN, pooling_of
from beatsight.common.runpaths import resolve_run_path

from .dataset import FeatureSet
from .evaluation import batchnorm_statistics, evaluate
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
        if root:  # `flwr run .`: as many SuperNodes as the federation says, stores reused
            root = resolve_run_path(str(root))  # the project's, not the SuperLink's cwd
            stores = sorted(p for p in Path(root).glob("contributor-*") if p.is_dir())
            if not stores:
                raise BeatSightError(f"sim-data-root {root}: no contributor-* sample stores; "
                                     f"build them with `beatsight-sim contributors --out {root}`")
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
    state = msg.content["arrays"].to_torch_state_dict()
    model = DrumClassifierCNN(pooling=pooling_of(state))
    model.load_state_dict(state)
    return model


# The config key Flower's DifferentialPrivacyClientSideFixedClipping sends and fixedclipping_mod
# reads (flwr.supercore.differential_privacy.KEY_CLIPPING_NORM).
KEY_CLIPPING_NORM = "clipping_norm"


def dp_clip_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's `fixedclipping_mod` when the server runs with differential privacy, else nothing.

    The server's DP wrapper puts `clipping_norm` in the train config; without it (no DP) the reply
    passes untouched (fixedclipping_mod itself would answer with an error). Around Flower's mod:
    integer buffers (BatchNorm's num_batches_tracked, unused by the model) are sent back as
    received, so they neither count in the clipped norm nor leak how many batches were trained,
    and the reply keeps the model's dtypes (Flower's clipping would turn them into the global
    model's, which the server's screen refuses).
    """
    config = msg.content.config_records
    if len(config) != 1 or KEY_CLIPPING_NORM not in next(iter(config.values())):
        return call_next(msg, context)
    dtypes: dict[str, object] = {}

    def train_keeping_counters(m: Message, ctx: Context) -> Message:
        reply = call_next(m, ctx)
        if reply.has_error() or len(reply.content.array_records) != 1:
            return reply
        key, rec = next(iter(reply.content.array_records.items()))
        sent = next(iter(m.content.array_records.values())).to_torch_state_dict()
        mine = rec.to_torch_state_dict()
        for k, v in mine.items():
            dtypes[k] = v.dtype
            if not v.is_floating_point() and k in sent:
                mine[k] = sent[k].round().to(v.dtype) if sent[k].is_floating_point() \
                    else sent[k].to(v.dtype)
        reply.content[key] = ArrayRecord(mine)
        return reply

    reply = fixedclipping_mod(msg, context, train_keeping_counters)
    if reply.has_error() or not dtypes:
        return reply
    key, rec = next(iter(reply.content.array_records.items()))
    state = rec.to_torch_state_dict()
    reply.content[key] = ArrayRecord({k: v.to(dtypes.get(k, v.dtype)) for k, v in state.items()})
    return reply


def make_client_app(data_dirs: list[str] | None = None, progress: bool = False,
                    mods: list | None = None) -> ClientApp:
    """`data_dirs`: one store per simulated partition; `mods`: Flower client mods around every
    message (the simulation's attackers, test recorders). Training always runs inside
    `dp_clip_mod`, which clips the update only when the server asks for it (DP runs)."""
    app = ClientApp(mods=mods or [])

    @app.train(mods=[dp_clip_mod])
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
            head=str(cfg.get("head", "single")),
            class_weight_power=float(cfg.get("class-weight-power", TrainConfig.class_weight_power)),
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
        model = _model(msg)
        X, y = data.arrays()
        res = evaluate(model, X, y)
        metrics = MetricRecord({"num-examples": len(data), "accuracy": float(res["accuracy"]),
                                "loss": float(res["loss"])})
        content = RecordDict({"metrics": metrics})
        if "config" in msg.content and msg.content["config"].get("bn-stats"):
            # BatchNorm statistics of the global model on these samples: per-channel means and
            # variances, like those the weights already carry (server/strategy.py averages them)
            content["bn-stats"] = ArrayRecord({k: torch.from_numpy(v) for k, v in
                                               batchnorm_statistics(model, X).items()})
        return Message(content=content, reply_to=msg)

    return app


app = make_client_app()
