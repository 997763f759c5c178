"""`beatsight`: the tools anyone runs offline (model info; process and evaluate-map live beside)."""

from __future__ import annotations

from pathlib import Path

import typer

from .checkpoint import load_model
from .classes import CLASSES
from .cliutil import run_app
from .model import DrumClassifierCNN, count_parameters

app = typer.Typer(help="BeatSight offline tools: inspect models, turn songs into .bsm drum maps.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """BeatSight offline tools."""


@app.command("model-info")
def model_info(model: Path | None = typer.Argument(None, help="Checkpoint to inspect; "
               "omitted: describe the architecture.")) -> None:
    """Print the architecture's parameter count, or a checkpoint's classes, version and metrics."""
    if model is None:
        net = DrumClassifierCNN()
        typer.echo(f"DrumClassifierCNN: {count_parameters(net):,} parameters, "
                   f"input 1x128x128, {len(CLASSES)} classes: {', '.join(CLASSES)}")
        return
    net, ckpt = load_model(model, expect_features=None)
    typer.echo(f"{model}: {count_parameters(net):,} parameters, version {ckpt.model_version}"
               f"{' (bare state_dict)' if ckpt.legacy else ''}")
    typer.echo(f"classes: {', '.join(ckpt.classes)}")
    for k, v in ckpt.metrics.items():
        typer.echo(f"{k}: {v}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
