"""A dev-fold model for `bench/process_quality.py --kit ...`: trained on some contributors'
stores only, so the other contributors' kits are unheard kits to choose `process` settings on,
without touching the held-out kits. Templates are set from the same hits, as a contributor's
`fit` does. The README's dev folds: A = contributors 0-2 (renders of 3-4's kits), B = 3-4.

    .venv/bin/python bench/dev_model.py runs/dev/A.pth runs/data/contributor-0{0,1,2}
    .venv/bin/python bench/process_quality.py --model runs/dev/A.pth --kit ElectricEmpireKit \\
        --kit Millo_MultiLayered2 --kit Audiophob --kit HardElectro1
"""

from __future__ import annotations

from pathlib import Path

import typer

from beatsight.client.dataset import FeatureSet
from beatsight.client.store import SampleStore
from beatsight.client.training import TrainConfig, fit, new_model, set_templates
from beatsight.common.augment import DEFAULT_AUGMENT
from beatsight.common.checkpoint import Checkpoint, save_checkpoint


def main(out: Path, stores: list[Path], epochs: int = 6, batch_size: int = 4, seed: int = 0,
         threads: int = 1) -> None:
    train = FeatureSet.concat([SampleStore(s).feature_set() for s in stores])
    model = new_model(seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed,
                      augment=DEFAULT_AUGMENT, num_threads=threads)
    fit(model, train, cfg, progress=False)
    set_templates(model, train)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, Checkpoint(state_dict=model.state_dict(), model_version="dev"))
    print(f"{out}: trained on {len(train.y)} hits of {len(stores)} stores, {epochs} epochs")


if __name__ == "__main__":
    typer.run(main)
