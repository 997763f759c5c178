"""The federation against its centralised reference, round by round, on the held-out kits.

Runs the main job's federation (real ServerApp logic and ClientApp, in one process:
simulation/inprocess.py) for ROUNDS rounds, then trains the centralised reference on the same
pooled samples for the same number of epochs, with the contributors' recipe (batch size, lr,
augmentations), and evaluates both on the held-out kits after every round / epoch. Prints both
curves, the mean of the last three rounds / epochs (held-out accuracy swings by ±0.05 from one
round to the next at this scale, so one final number says little) and their ratio.

    .venv/bin/python bench/fed_vs_central.py --rounds 16 --seed 0
    .venv/bin/python bench/fed_vs_central.py --rounds 10 --split iid --out runs/fvc-iid
    .venv/bin/python bench/fed_vs_central.py --rounds 10 --mu 0.01 --no-central   # FedProx
    .venv/bin/python bench/fed_vs_central.py --rounds 10 --class-weight-power 0  # both unweighted

Data: the main job's (5 contributors, 2 songs of 20 s each), built under --data if missing
(default runs/data for seed 0, runs/data-s<seed> otherwise). Writes OUT/results.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import typer

from beatsight.client.training import TrainConfig
from beatsight.common.augment import DEFAULT_AUGMENT, parse_augment
from beatsight.server.heldout import HeldOut
from beatsight.server.settings import RunSettings
from beatsight.simulation import contributors as sim
from beatsight.simulation.baseline import train_baseline
from beatsight.simulation.cli import RUN_SONGS
from beatsight.simulation.inprocess import simulate_in_process

LAST = 3  # rounds / epochs averaged for the comparison


def federated(stores: list[Path], heldout: Path, rounds: int, seed: int, batch_size: int,
              augment: str, out: Path, mu: float = 0.0, recalibrate_bn: bool = True,
              lr: float = RunSettings.lr,
              class_weight_power: float = RunSettings.class_weight_power) -> list[dict]:
    # the contributors' evaluate phase runs only to re-estimate the BatchNorm statistics
    settings = RunSettings(num_rounds=rounds, heldout=str(heldout), out_dir=str(out), seed=seed,
                           threads=1, min_nodes=len(stores),
                           fraction_evaluate=1.0 if recalibrate_bn else 0.0,
                           recalibrate_bn=recalibrate_bn,
                           batch_size=batch_size, augment=augment, lr=lr,
                           class_weight_power=class_weight_power,
                           strategy="fedprox" if mu > 0 else "fedavg", proximal_mu=mu)
    simulate_in_process(settings, stores)
    rounds_ = json.loads((out / "history.json").read_text())["rounds"]
    return [r["heldout"] for r in rounds_ if r.get("round", 1) >= 1]


def central(stores: list[Path], heldout: Path, epochs: int, seed: int, batch_size: int,
            augment: str, class_weight_power: float = RunSettings.class_weight_power) -> list[dict]:
    ho, curve = HeldOut.from_store(str(heldout)), []

    def on_epoch(rec: dict, model: torch.nn.Module, hist: object) -> None:
        curve.append(ho.evaluate({k: v.detach().cpu() for k, v in model.state_dict().items()}))

    cfg = TrainConfig(batch_size=batch_size, lr=RunSettings.lr, seed=seed,
                      augment=augment.split(","), num_threads=1,
                      class_weight_power=class_weight_power)
    train_baseline(stores, heldout, epochs, cfg, on_epoch=on_epoch)
    return curve


def main(rounds: int = typer.Option(16, min=LAST), seed: int = typer.Option(0),
         split: str = typer.Option("per-kit", help="per-kit (non-IID, the main job) or iid."),
         batch_size: int = typer.Option(RunSettings.batch_size, help="Both sides' batch size."),
         augment: str = typer.Option(",".join(DEFAULT_AUGMENT)),
         mu: float = typer.Option(0.0, min=0.0, help="FedProx proximal weight (0: FedAvg)."),
         fed_lr: float = typer.Option(RunSettings.lr, min=0.0, help="The contributors' learning "
                                      "rate (the centralised reference keeps the default)."),
         recalibrate_bn: bool = typer.Option(True, "--recalibrate-bn/--no-recalibrate-bn",
                                             help="The federation's BatchNorm statistics "
                                             "re-estimated by the contributors each round."),
         class_weight_power: float = typer.Option(
             RunSettings.class_weight_power, min=0.0, help="Both sides weight the loss by "
             "(inverse class frequency) ** POWER (0: unweighted)."),
         with_central: bool = typer.Option(True, "--central/--no-central",
                                           help="Also train the centralised reference."),
         font_kits: bool = typer.Option(False, "--font-kits/--no-font-kits",
                                        help="The SoundFont kits join the contributors' kits."),
         data: Path | None = typer.Option(None, help="Default: runs/data[-s<seed>][-<split>]"
                                          "[-fonts]."),
         out: Path = typer.Option(Path("runs/fed-vs-central"))) -> None:
    if data is None:
        data = Path("runs/data" + (f"-s{seed}" if seed else "") + ("" if split == "per-kit"
                                                                    else f"-{split}")
                    + ("-fonts" if font_kits else ""))
    augment = ",".join(parse_augment(augment))
    stores = sim.build_federation(data, sim.DEFAULT_CONTRIBUTORS, seed, RUN_SONGS, sim.DEFAULT_SECONDS,
                                  split=split, font_kits=font_kits)
    heldout = sim.build_heldout(data / "heldout", seed)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    fed = federated(stores, heldout, rounds, seed, batch_size, augment, out / "federation", mu,
                    recalibrate_bn, fed_lr, class_weight_power)
    t_fed = time.perf_counter() - t0
    cen = (central(stores, heldout, rounds, seed, batch_size, augment, class_weight_power)
           if with_central else [])
    t_cen = time.perf_counter() - t0 - t_fed
    print(f"{split} contributors{' + SoundFont kits' if font_kits else ''}, seed {seed}, "
          f"batch {batch_size}, augment {augment}, "
          f"{'FedProx mu ' + str(mu) if mu > 0 else 'FedAvg'}, contributors' lr {fed_lr:g}, "
          f"class weights (inverse frequency) ** {class_weight_power:g}")
    print("round/epoch   federated acc / F1   central acc / F1")
    for i, f in enumerate(fed, 1):
        c = f"{cen[i - 1]['accuracy']:.3f} / {cen[i - 1]['macro_f1']:.3f}" if cen else "-"
        print(f"{i:>11}   {f['accuracy']:.3f} / {f['macro_f1']:.3f}        {c}")
    res = {"split": split, "font_kits": font_kits, "seed": seed, "rounds": rounds, "batch_size": batch_size,
           "augment": augment, "mu": mu, "fed_lr": fed_lr,
           "class_weight_power": class_weight_power,
           "seconds": {"federated": round(t_fed), "central": round(t_cen)}}
    for key in ("accuracy", "macro_f1"):
        f_last = float(np.mean([r[key] for r in fed[-LAST:]]))
        res[key] = {"federated": [round(r[key], 4) for r in fed],
                    f"federated_last{LAST}": round(f_last, 4)}
        line = f"{key}, mean of the last {LAST}: federated {f_last:.3f}"
        if cen:
            c_last = float(np.mean([r[key] for r in cen[-LAST:]]))
            res[key].update({"central": [round(r[key], 4) for r in cen],
                             f"central_last{LAST}": round(c_last, 4),
                             "ratio": round(f_last / c_last, 3) if c_last else None})
            line += f", central {c_last:.3f}, ratio {res[key]['ratio']}"
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    typer.run(main)
