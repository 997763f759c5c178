"""Leave-kits-out cross-validation: how well the classifier does on drum kits it never heard.

A contributor's model is used on songs recorded with other drums, so the number that matters is
accuracy on kits no contributor trained on. `crossval` splits every usable Hydrogen kit into K
folds (each kit is held out exactly once), trains centrally on the other kits' samples and tests
on the held-out kits' isolated hits and groove hits, reported separately and together, on the 12
classes and on the merged 10-class view (`common.classes.MERGED_VIEW`).

Data: one sample store per kit under `DATA/<kit>` (songs in `DATA/songs/<kit>`), rendered and
collected once with the simulated contributors' machinery (the real `extract-beatmap` path) and
cached with the same manifests; each store's features are cached by the client's feature cache.
A kit's store serves as training data in the folds that keep it and as test data in its own.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from beatsight.client.dataset import FeatureSet
from beatsight.client.evaluation import predict_logits
from beatsight.client.store import SampleStore, record_groups
from beatsight.client.training import TrainConfig, fit, new_model
from beatsight.common.children import die_with_parent
from beatsight.common.classes import CLASSES, MERGED_CLASSES, NUM_CLASSES, merge_labels
from beatsight.common.errors import BeatSightError
from beatsight.common.model import SECONDARY_THRESHOLD, head_probs
from beatsight.common.process import onset_classes

from .contributors import (
    SongJob,
    _collect,
    _finish,
    _prepare,
    _render_all,
    _slug,
    _song_seed,
    songs_dir,
)
from .kits import Kit, find_kits, parse_kit
from .samplekits import SAMPLE_KITS_DIR, build_sample_kits
from .soundfonts import FONT_KITS_DIR, build_font_kits

DEFAULT_DATA = Path("runs/crossval-data")
DEFAULT_FOLDS = 4
KIT_SONGS = 2                 # grooves per kit
KIT_SECONDS = 20.0            # their length
KIT_ISOLATED_PER_CLASS = 6    # isolated hits per class per kit (velocities spread over layers)
SUBSETS = ("all", "isolated", "groove")
METRICS = ("accuracy", "macro_f1", "accuracy_merged", "macro_f1_merged")


# ---------------------------------------------------------------- kits and folds
def usable_kits(kits: list[Kit]) -> tuple[list[Kit], list[Kit]]:
    """(kits with at least one mapped kit piece, kits with none: hand percussion)."""
    return [k for k in kits if k.classes], [k for k in kits if not k.classes]


def assign_folds(keys_by_family: dict[str, list[str]] | list[str], k: int,
                 seed: int = 0) -> list[list[str]]:
    """Deal kits into `k` folds: every kit in exactly one fold, fold sizes differ by at most one,
    and each family (acoustic, electronic) is spread over the folds. Seeded and independent of
    the order the kits are given in."""
    groups = keys_by_family if isinstance(keys_by_family, dict) else {"": list(keys_by_family)}
    total = sum(len(v) for v in groups.values())
    if not 2 <= k <= total:
        raise BeatSightError(f"--folds {k}: need 2 to {total} folds for {total} usable kits")
    rng = np.random.default_rng([seed, 0xC405])
    order = []
    for fam in sorted(groups):
        keys = sorted(groups[fam])
        order += [keys[i] for i in rng.permutation(len(keys))]
    folds: list[list[str]] = [[] for _ in range(k)]
    for i, key in enumerate(order):
        folds[i % k].append(key)
    return [sorted(f) for f in folds]


# ---------------------------------------------------------------- data (rendered once, cached)
def build_kit_store(data: str | Path, kit: Kit, seed: int = 0, songs: int = KIT_SONGS,
                    seconds: float = KIT_SECONDS, isolated_per_class: int = KIT_ISOLATED_PER_CLASS,
                    progress: bool = True) -> Path:
    """Build (or reuse) `DATA/<kit>`: isolated hits of every class the kit has plus `songs`
    grooves, collected through the client's collector. Seeds depend on the kit's name, not on
    which other kits exist, so a kit's data is the same in every fold and every run."""
    store = Path(data) / _slug(kit.key)
    params = {"crossval": True, "kit": kit.key, "seed": seed, "songs": songs,
              "song_seconds": seconds, "isolated_per_class": isolated_per_class}
    if _prepare(store, params):
        return store
    t0 = time.perf_counter()
    kid = zlib.crc32(kit.key.encode())
    jobs = []
    if isolated_per_class:
        jobs.append(SongJob(f"isolated-{_slug(kit.key)}", kit, _song_seed(seed, 70_000, kid),
                            isolated_per_class=isolated_per_class))
    jobs += [SongJob(f"song-{j:02d}-{_slug(kit.key)}", kit, _song_seed(seed, 70_001, kid, j),
                     seconds=seconds) for j in range(songs)]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{kit.key}: rendering and collecting", total=len(jobs))
        pairs = _render_all(jobs, songs_dir(store), lambda: bar.advance(task))
    got = _collect(store, [(b, w) for w, b in pairs])
    _finish(store, params, [j.describe() for j in jobs], got, time.perf_counter() - t0)
    return store


@dataclass
class KitData:
    key: str
    family: str
    fs: FeatureSet
    isolated: np.ndarray  # bool per sample: from the isolated-hits file (else a groove)
    group: np.ndarray  # int per sample: hits of one file within SIMULTANEOUS_S share a group


def load_kit(store: Path, key: str, family: str, progress: bool = False) -> KitData:
    s = SampleStore(store)
    records = s.usable()
    fs = s.feature_set(progress=progress, records=records)
    sources = [str(r.get("source_audio", "")) for r in records]
    iso = np.array([src.startswith("isolated-") for src in sources], dtype=bool)
    return KitData(key, family, fs, iso, record_groups(records))


def _group_counts(y: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-sample group index 0..G-1, class counts per group (G, NUM_CLASSES))."""
    _, g = np.unique(group, return_inverse=True)
    counts = np.zeros((g.max() + 1, NUM_CLASSES), np.int64)
    np.add.at(counts, (g, y), 1)
    return g, counts


def ceiling(y: np.ndarray, group: np.ndarray) -> float:
    """The best accuracy any classifier of single windows can reach: one answer per group of
    simultaneous hits, so each group counts at most its most common class."""
    if not len(y):
        return float("nan")
    _, counts = _group_counts(y, group)
    return float(counts.max(axis=1).sum() / len(y))


def accuracy_any(y: np.ndarray, pred: np.ndarray, group: np.ndarray) -> float:
    """Share of hits whose prediction is one of the classes struck at that onset (a kick + hi-hat
    window called "kick" counts for the hi-hat too): what a multi-label view would accept."""
    if not len(y):
        return float("nan")
    g, counts = _group_counts(y, group)
    return float((counts[g, pred] > 0).mean())


def cap_per_class(y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping at most `cap` random samples of each class (0: keep all), sorted."""
    if cap <= 0:
        return np.arange(len(y))
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        keep.append(rows if len(rows) <= cap else rng.choice(rows, cap, replace=False))
    return np.sort(np.concatenate(keep))


# ---------------------------------------------------------------- scores
def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def _f1s(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class F1 from a confusion matrix, and masks: class present in y, in y or pred."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(cm)), where=denom > 0)
    return f1, support > 0, denom > 0


def scores(y: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, macro-F1 (over classes present in y or predicted, as `client.evaluation`),
    per-class F1 (classes present in y) and the confusion matrix (rows: true class), on the 12
    classes and on the merged 10-class view."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    if len(y) == 0:
        return {"n": 0}
    out: dict = {"n": int(len(y))}
    for suffix, yy, pp, names in (("", y, pred, CLASSES),
                                  ("_merged", np.array(merge_labels(y)),
                                   np.array(merge_labels(pred)), MERGED_CLASSES)):
        out.update(_confusion_scores(_confusion(yy, pp, len(names)), names, suffix))
    return out


def _confusion_scores(cm: np.ndarray, names: tuple[str, ...], suffix: str = "") -> dict:
    """Everything `scores` reports is a function of the confusion matrix, so folds that ran
    apart pool exactly by adding theirs (`merge`)."""
    f1, present, seen = _f1s(cm)
    return {"accuracy" + suffix: float(np.trace(cm) / cm.sum()),
            "macro_f1" + suffix: float(f1[seen].mean()),
            "per_class_f1" + suffix: {names[i]: round(float(f1[i]), 4)
                                      for i in range(len(names)) if present[i]},
            "confusion" + suffix: cm.tolist()}


def onset_scores(y: np.ndarray, group: np.ndarray, probs: np.ndarray, secondary: float) -> dict:
    """Per onset (a group of hits struck together) the set of classes the model reports
    (`process`'s rule: top class + other families' classes >= `secondary`, on the members' mean
    probabilities) against the set struck: per-class and micro F1, and the share of onsets
    whose set is exactly right. A kick + hi-hat beat found as both is two true positives."""
    if not len(y):
        return {}
    g, truth = _group_counts(y, group)
    mean = np.zeros((len(truth), probs.shape[1]))
    np.add.at(mean, g, probs)
    mean /= np.bincount(g)[:, None]
    guess = np.zeros(truth.shape, bool)
    for i, classes in enumerate(onset_classes(mean, secondary)):
        guess[i, classes] = True
    truth = truth > 0
    tp, fp, fn = ((truth & guess).sum(0), (~truth & guess).sum(0), (truth & ~guess).sum(0))
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    return {"onset_f1_micro": round(float(2 * tp.sum() / max(1, denom.sum())), 4),
            "onset_exact": round(float((truth == guess).all(1).mean()), 4),
            "onset_recall": round(float(tp.sum() / max(1, (tp + fn).sum())), 4),
            "onset_per_class_f1": {CLASSES[c]: round(float(f1[c]), 4)
                                   for c in range(len(tp)) if truth[:, c].any()}}


def _subsets(y: np.ndarray, pred: np.ndarray, iso: np.ndarray, group: np.ndarray,
             probs: np.ndarray | None = None, secondary: float = 0.25) -> dict:
    out = {}
    for name, mask in (("all", np.ones(len(y), bool)), ("isolated", iso), ("groove", ~iso)):
        out[name] = scores(y[mask], pred[mask])
        if mask.any() and probs is not None:
            out[name].update(onset_scores(y[mask], group[mask], probs[mask], secondary))
        if mask.any():
            shared = np.bincount(group[mask])[group[mask]] > 1
            out[name]["ceiling"] = round(ceiling(y[mask], group[mask]), 4)
            out[name]["accuracy_any"] = round(accuracy_any(y[mask], pred[mask], group[mask]), 4)
            out[name]["shared_onset"] = round(float(shared.mean()), 4)
    return out


def summarise(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"),
                "max": float("nan"), "folds": 0}
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4),
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4),
            "folds": int(len(v))}


# ---------------------------------------------------------------- the protocol
@dataclass
class CrossvalConfig:
    folds: int = DEFAULT_FOLDS
    seed: int = 0                     # of the rendered data and the folds (training: TrainConfig)
    data: str = str(DEFAULT_DATA)
    songs: int = KIT_SONGS
    seconds: float = KIT_SECONDS
    isolated_per_class: int = KIT_ISOLATED_PER_CLASS
    max_per_class: int = 15           # training samples per class per kit (0: all)
    drop_shared: bool = False         # train only on hits that do not share their onset
    pooling: str = "avg"              # the CNN's global pooling (common.model.POOLINGS)
    kits: list[str] = field(default_factory=list)   # restrict to these kits (tests, quick runs)
    font_kits: bool = False           # SoundFont kits (DATA/font-kits) train in every fold
    sample_kits: bool = False         # Debian's one-shot sample kits (DATA/sample-kits), too
    only_folds: list[int] = field(default_factory=list)  # run only these folds (1-based)
    jobs: int = 1                     # folds trained at once, each in its own process

    def to_dict(self) -> dict:
        return asdict(self)


def prepare(cfg: CrossvalConfig, kits_root: str | Path | None = None, progress: bool = True
            ) -> tuple[dict[str, KitData], list[list[str]], list[str]]:
    """(data per usable kit, folds of kit keys, excluded kit keys): builds what is missing."""
    kits = find_kits(kits_root)
    if cfg.kits:
        unknown = sorted(set(cfg.kits) - {k.key for k in kits})
        if unknown:
            raise BeatSightError(f"no drum kit named {', '.join(unknown)}")
        kits = [k for k in kits if k.key in cfg.kits]
    usable, excluded = usable_kits(kits)
    by_family: dict[str, list[str]] = {}
    for k in usable:
        by_family.setdefault(k.family, []).append(k.key)
    folds = assign_folds(by_family, cfg.folds, cfg.seed)
    extra = []                        # in no fold: they train in every fold and never test
    if cfg.font_kits:
        extra += build_font_kits(Path(cfg.data) / FONT_KITS_DIR)
    if cfg.sample_kits:
        extra += build_sample_kits(Path(cfg.data) / SAMPLE_KITS_DIR, kits_root=kits_root)
    usable = usable + usable_kits([parse_kit(d) for d in extra])[0]
    data = {}
    for k in usable:
        store = build_kit_store(cfg.data, k, cfg.seed, cfg.songs, cfg.seconds,
                                cfg.isolated_per_class, progress)
        data[k.key] = load_kit(store, k.key, k.family, progress)
    return data, folds, [k.key for k in excluded]


def run_fold(index: int, heldout: list[str], data: dict[str, KitData], train_cfg: TrainConfig,
             max_per_class: int = 0, progress: bool = True, drop_shared: bool = False,
             pooling: str = "avg") -> tuple[dict, dict]:
    """Train on every kit but `heldout`, test on `heldout`. Returns (fold record, predictions
    {y, pred, isolated, group} for pooling). `drop_shared`: leave out training hits struck
    together with another class (their windows are identical, their labels contradict)."""
    t0 = time.perf_counter()
    train_keys = sorted(k for k in data if k not in heldout)
    rng = np.random.default_rng([train_cfg.seed, index, 0xCA9])
    parts = []
    for key in train_keys:
        d = data[key]
        rows = np.arange(len(d.fs.y))
        if drop_shared:
            rows = rows[np.bincount(d.group)[d.group] == 1]
        parts.append(d.fs.subset(rows[cap_per_class(d.fs.y[rows], max_per_class, rng)]))
    train = FeatureSet.concat(parts)
    model = new_model(train_cfg.seed, pooling)
    hist = fit(model, train, train_cfg, progress=progress)
    t_train = time.perf_counter() - t0
    test = [data[k] for k in heldout]
    X = np.concatenate([d.fs.X for d in test])
    y = np.concatenate([d.fs.y for d in test])
    iso = np.concatenate([d.isolated for d in test])
    kit = np.concatenate([[i] * len(d.fs.y) for i, d in enumerate(test)]).astype(np.int64)
    group = np.concatenate([d.group + i * 1_000_000 for i, d in enumerate(test)])
    probs = head_probs(torch.from_numpy(predict_logits(model, X.astype(np.float32))),
                       train_cfg.head).numpy()
    pred = probs.argmax(axis=1)
    secondary = SECONDARY_THRESHOLD[train_cfg.head]
    rec = {"fold": index, "heldout": list(heldout), "train_kits": train_keys,
           "n_train": int(len(train.y)),
           "train_class_counts": dict(zip(CLASSES, np.bincount(train.y, minlength=NUM_CLASSES)
                                          .tolist(), strict=True)),
           "final_train_loss": round(float(hist[-1]["train_loss"]), 4) if hist else None,
           "train_loss_per_epoch": [round(float(h["train_loss"]), 4) for h in hist],
           "train_accuracy_per_epoch": [round(float(h["train_accuracy"]), 4) for h in hist],
           "train_seconds": round(t_train, 1),
           "metrics": _subsets(y, pred, iso, group, probs, secondary),
           "per_kit": {k: scores(y[kit == i], pred[kit == i]) for i, k in enumerate(heldout)}}
    return rec, {"y": y, "pred": pred, "isolated": iso, "group": group + index * 100_000_000,
                 "probs": probs}


_WORKER: dict = {}


def _init_worker(cfg: CrossvalConfig, kits_root: str | Path | None, parent: int) -> None:
    """A fold worker loads the kits itself from the caches `prepare` filled in the parent:
    cheaper than pickling every kit's patches into each process. Ctrl-C is the parent's to
    handle (it stops the pool); a worker dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    _WORKER["data"], _WORKER["folds"], _ = prepare(cfg, kits_root, progress=False)


def _worker_fold(index: int, cfg: CrossvalConfig, train_cfg: TrainConfig) -> tuple[dict, dict]:
    return run_fold(index, _WORKER["folds"][index - 1], _WORKER["data"], train_cfg,
                    cfg.max_per_class, False, cfg.drop_shared, cfg.pooling)


def _fold_results(cfg: CrossvalConfig, train_cfg: TrainConfig, data: dict[str, KitData],
                  folds: list[list[str]], wanted: list[int], kits_root: str | Path | None,
                  progress: bool) -> Iterator[tuple[dict, dict]]:
    """(record, predictions) of each wanted fold as it finishes. With `cfg.jobs` > 1 the folds
    train in that many spawned processes, each with cores / jobs torch threads unless
    `train_cfg.num_threads` says otherwise; a fold's result depends on its threads, not on
    which process or in which order it ran."""
    jobs = min(cfg.jobs, len(wanted))
    if jobs <= 1:
        for i in wanted:
            yield run_fold(i, folds[i - 1], data, train_cfg, cfg.max_per_class, progress,
                           cfg.drop_shared, cfg.pooling)
        return
    threads = train_cfg.num_threads or max(1, (os.cpu_count() or 1) // jobs)
    run = partial(_worker_fold, cfg=cfg, train_cfg=replace(train_cfg, num_threads=threads))
    # Pool, not ProcessPoolExecutor: leaving the block (done, error, Ctrl-C) terminates the
    # workers instead of waiting for their folds to finish.
    spawn = multiprocessing.get_context("spawn")
    with (spawn.Pool(jobs, _init_worker, (cfg, kits_root, os.getpid())) as pool,
          Progress(disable=not progress, transient=True) as bar):
        task = bar.add_task(f"folds ({jobs} at a time, {threads} torch thread"
                            f"{'s' if threads > 1 else ''} each)", total=len(wanted))
        for result in pool.imap_unordered(run, wanted):
            yield result
            bar.advance(task)


def crossval(cfg: CrossvalConfig, train_cfg: TrainConfig, kits_root: str | Path | None = None,
             progress: bool = True, on_fold: Callable[[dict, dict], None] | None = None) -> dict:
    """The whole protocol; returns the JSON-ready result (see `beatsight-sim crossval`).
    `on_fold(record, result so far)` after each fold: a long run that is stopped keeps the
    folds it finished (`complete` is false until the last one)."""
    t0 = time.perf_counter()
    if cfg.jobs < 1:
        raise BeatSightError(f"--jobs {cfg.jobs}: need at least 1")
    data, folds, excluded = prepare(cfg, kits_root, progress)
    t_data = time.perf_counter() - t0
    wanted = cfg.only_folds or list(range(1, len(folds) + 1))
    bad = [i for i in wanted if not 1 <= i <= len(folds)]
    if bad:
        raise BeatSightError(f"fold {bad[0]}: folds are 1-{len(folds)}")
    header = {
        "protocol": "leave-kits-out",
        "config": cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "kits": {"used": {k: d.family for k, d in sorted(data.items())},
                 "excluded": excluded,
                 "samples": {k: {"all": int(len(d.fs.y)), "isolated": int(d.isolated.sum())}
                             for k, d in sorted(data.items())}},
        "folds_assigned": folds,
    }
    done: dict[int, tuple[dict, dict]] = {}
    result: dict = {}
    for rec, preds in _fold_results(cfg, train_cfg, data, folds, wanted, kits_root, progress):
        done[rec["fold"]] = (rec, preds)
        result = {**header, **_results([done[i] for i in wanted if i in done], train_cfg.head),
                  "complete": len(done) == len(wanted),
                  "seconds": {"data": round(t_data, 1),
                              "total": round(time.perf_counter() - t0, 1)}}
        if on_fold is not None:
            on_fold(rec, result)
    return result


def _results(done: list[tuple[dict, dict]], head: str) -> dict:
    """Fold records (in fold order, whichever finished first), mean ± spread, pooled scores."""
    records = [rec for rec, _ in done]
    y, pred, iso, group, probs = (np.concatenate([preds[k] for _, preds in done])
                                  for k in ("y", "pred", "isolated", "group", "probs"))
    return {"folds": records, **_over_folds(records),
            "pooled": _subsets(y, pred, iso, group, probs, SECONDARY_THRESHOLD[head])}


def _over_folds(records: list[dict]) -> dict:
    """Mean ± spread of each fold's scores, and of each class's F1 over the folds testing it."""
    summary = {s: {m: summarise([r["metrics"][s].get(m, float("nan")) for r in records])
                   for m in METRICS} for s in SUBSETS}
    per_class = {}
    for c in CLASSES:
        vals = [r["metrics"]["all"]["per_class_f1"].get(c) for r in records]
        per_class[c] = summarise([v for v in vals if v is not None])
    return {"summary": summary, "per_class_f1": per_class}


# ---------------------------------------------------------------- merging runs
# Settings that may differ between runs whose folds are merged: which folds ran and how.
RUN_ONLY = ("only_folds", "jobs")
HIT_SHARES = ("ceiling", "accuracy_any", "shared_onset")   # shares of hits: pool by counting


def _pooled_from_folds(records: list[dict]) -> dict:
    """Pooled scores from the folds' confusion matrices and per-hit shares; the onset scores
    (counted per onset, not kept per fold) are left out."""
    out = {}
    for sub in SUBSETS:
        ms = [r["metrics"][sub] for r in records if r["metrics"][sub].get("n")]
        n = sum(m["n"] for m in ms)
        out[sub] = {"n": n}
        if not n:
            continue
        for suffix, names in (("", CLASSES), ("_merged", MERGED_CLASSES)):
            cm = np.sum([np.array(m["confusion" + suffix], np.int64) for m in ms], axis=0)
            out[sub].update(_confusion_scores(cm, names, suffix))
        for key in HIT_SHARES:   # a fold's share times its hits is a whole count (rounded to 1e-4)
            out[sub][key] = round(sum(round(m[key] * m["n"]) for m in ms) / n, 4)
    return out


def merge(results: list[dict], names: list[str] | None = None) -> dict:
    """One result from runs of the same protocol that each ran some folds (`--fold`, on other
    days or machines): every fold record as it was, mean ± spread and pooled scores over all."""
    names = names or [f"run {i + 1}" for i in range(len(results))]
    if not results:
        raise BeatSightError("nothing to merge")
    first = results[0]
    def setting(r: dict) -> tuple:
        return ({k: v for k, v in r["config"].items() if k not in RUN_ONLY}, r["train"],
                r["folds_assigned"])
    records: dict[int, dict] = {}
    for name, r in zip(names, results, strict=True):
        if not isinstance(r, dict) or r.get("protocol") != "leave-kits-out" or "folds" not in r:
            raise BeatSightError(f"{name}: not a `beatsight-sim crossval` result")
        if setting(r) != setting(first):
            what = [k for k, a, b in zip(("config", "train", "folds"), setting(r), setting(first),
                                         strict=True) if a != b]
            raise BeatSightError(f"{name}: ran with other settings than {names[0]} "
                                 f"({', '.join(what)} differ); only folds that ran alike merge")
        for rec in r["folds"]:
            if rec["fold"] in records:
                raise BeatSightError(f"{name}: fold {rec['fold']} is in two of the runs")
            records[rec["fold"]] = rec
    folds = [records[i] for i in sorted(records)]
    ran = sorted(records)
    return {**{k: first[k] for k in ("protocol", "train", "kits", "folds_assigned")},
            "config": {**first["config"], "only_folds": ran,
                       "jobs": sorted({r["config"].get("jobs", 1) for r in results})},
            "merged_from": names, "folds": folds, **_over_folds(folds),
            "pooled": _pooled_from_folds(folds),
            "complete": ran == list(range(1, len(first["folds_assigned"]) + 1)),
            "seconds": {"total": round(sum(r.get("seconds", {}).get("total", 0.0)
                                           for r in results), 1)}}


# ---------------------------------------------------------------- reporting
def fold_line(rec: dict) -> str:
    m = rec["metrics"]
    return (f"fold {rec['fold']} (held out: {', '.join(rec['heldout'])}; {rec['n_train']} "
            f"training samples, {rec['train_seconds']:.0f} s): accuracy "
            f"{m['all']['accuracy']:.3f}, merged {m['all']['accuracy_merged']:.3f}, macro-F1 "
            f"{m['all']['macro_f1']:.3f}")


def _pm(s: dict) -> str:
    return "-" if not s.get("folds") else f"{s['mean']:.3f} ± {s['std']:.3f}"


def tables(result: dict) -> list:
    """Rich tables: per fold, mean ± std over folds (and pooled), per-class F1."""
    from rich.table import Table

    heads = ("acc 12", "F1 12", "acc 10", "F1 10")
    t = Table(title="Leave-kits-out folds (all test hits; isolated / groove accuracy)")
    for col in ("fold", "held-out kits", "train", "test", *heads, "iso acc", "groove acc"):
        t.add_column(col, justify="left" if col == "held-out kits" else "right")
    def f(m: dict, sub: str, key: str) -> str:
        v = m[sub].get(key)
        return "-" if v is None else f"{v:.3f}"

    for r in result["folds"]:
        m = r["metrics"]
        t.add_row(str(r["fold"]), ", ".join(r["heldout"]), str(r["n_train"]),
                  str(m["all"]["n"]), *(f(m, "all", k) for k in METRICS),
                  f(m, "isolated", "accuracy"), f(m, "groove", "accuracy"))
    s = Table(title=f"Mean ± std over {len(result['folds'])} folds (pooled: every kit's hits "
                    "predicted by the model that never heard it)")
    s.add_column("test hits")
    for h in heads:
        s.add_column(h, justify="right")
    s.add_column("acc 12 ceiling¹", justify="right")
    s.add_column("acc any²", justify="right")
    s.add_column("onset F1³", justify="right")
    for sub in SUBSETS:
        s.add_row(sub, *(_pm(result["summary"][sub][k]) for k in METRICS), "", "", "")
    for sub in SUBSETS:
        p = result["pooled"][sub]
        s.add_row(f"{sub}, pooled", *("-" if k not in p else f"{p[k]:.3f}" for k in METRICS),
                  *("-" if k not in p else f"{p[k]:.3f}"
                    for k in ("ceiling", "accuracy_any", "onset_f1_micro")))
    s.caption = ("¹ hits less than 10 ms apart share one window (kick + hi-hat on a beat): no "
                 "single-label classifier beats this accuracy. ² the prediction is one of the "
                 "classes struck at that onset. ³ micro-F1 of the classes reported per onset "
                 "(`process`'s rule) against the classes struck there")
    c = Table(title="Per-class F1 (pooled over folds; mean ± std over the folds that test it)")
    c.add_column("class")
    c.add_column("pooled", justify="right")
    c.add_column("pooled isolated", justify="right")
    c.add_column("pooled groove", justify="right")
    c.add_column("over folds", justify="right")
    for cls in CLASSES:
        pooled = [result["pooled"][sub].get("per_class_f1", {}).get(cls) for sub in SUBSETS]
        if all(v is None for v in pooled):
            continue
        c.add_row(cls, *("-" if v is None else f"{v:.3f}" for v in pooled),
                  _pm(result["per_class_f1"][cls]))
    tabs = [t, s, c]
    if result["kits"]["excluded"]:
        x = Table(title="Kits excluded (no mapped kit pieces)")
        x.add_column("kit")
        for k in result["kits"]["excluded"]:
            x.add_row(k)
        tabs.append(x)
    return tabs
