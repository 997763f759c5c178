"""Per-round history of a federation: a JSON file rewritten atomically each round, and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from beatsight.common.atomic import atomic_write_text


class History:
    """Rounds keyed by number; survives a server restart because it is re-read on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds: list[dict] = []
        if path.exists():
            self.rounds = json.loads(path.read_text()).get("rounds", [])

    def truncate(self, last_round: int) -> None:
        self.rounds = [r for r in self.rounds if r["round"] <= last_round]

    def record(self, entry: dict) -> None:
        self.rounds = [r for r in self.rounds if r["round"] != entry["round"]] + [entry]
        self.rounds.sort(key=lambda r: r["round"])
        atomic_write_text(self.path, json.dumps({"rounds": self.rounds}, indent=2) + "\n")

    def plot(self, png: Path, metric: str = "accuracy") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [(r["round"], r["heldout"][metric]) for r in self.rounds
               if metric in r.get("heldout", {})]
        if not pts:
            return
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel(f"held-out {metric}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title("Global model on held-out kits")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
