"""Who may join: our own record of contributors (name, key fingerprint, Flower node id).

Flower's SuperLink keeps registered keys in its database but knows contributors only by node
id; this file keeps the human side (who is node 5279..., when they were added) and lets
`register` work while the SuperLink is down (`start` registers what is still pending).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from beatsight.client.keys import check_name, fingerprint, read_public_key
from beatsight.common.atomic import atomic_write_text
from beatsight.common.errors import BeatSightError

REGISTRY_VERSION = 1


@dataclass
class Contributor:
    name: str
    fingerprint: str
    public_key: str  # the OpenSSH line, without comment
    added: str
    node_id: int | None = None  # set once the SuperLink has accepted the key


class Registry:
    """`contributors.json` in the server state directory; every change is an atomic rewrite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.contributors: list[Contributor] = []
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.contributors = [Contributor(**c) for c in data["contributors"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BeatSightError(f"{path}: not a readable contributor registry "
                                     f"({exc.__class__.__name__}); restore it from a backup") from None

    def save(self) -> None:
        data = {"version": REGISTRY_VERSION, "contributors": [asdict(c) for c in self.contributors]}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")

    def get(self, name: str) -> Contributor:
        for c in self.contributors:
            if c.name == name:
                return c
        raise BeatSightError(f"no contributor named {name!r} in {self.path}")

    def name_of(self, node_id: int | str) -> str | None:
        for c in self.contributors:
            if c.node_id is not None and str(c.node_id) == str(node_id):
                return c.name
        return None

    def add(self, public_key_path: Path, name: str | None = None) -> Contributor:
        """Record a contributor's key; the name defaults to the key's comment (set by keygen)."""
        line, comment = read_public_key(public_key_path)
        name = check_name(name or comment or public_key_path.stem)
        fp = fingerprint(line)
        for c in self.contributors:
            if c.fingerprint == fp:
                raise BeatSightError(f"{public_key_path}: this key is already registered as {c.name!r}")
            if c.name == name:
                raise BeatSightError(f"a contributor named {name!r} already exists (fingerprint "
                                     f"{c.fingerprint}); pass --name to choose another")
        entry = Contributor(name=name, fingerprint=fp, public_key=line,
                            added=datetime.now(UTC).isoformat(timespec="seconds"))
        self.contributors.append(entry)
        self.save()
        return entry

    def set_node_id(self, name: str, node_id: int | None) -> None:
        self.get(name).node_id = node_id
        self.save()

    def remove(self, name: str) -> Contributor:
        entry = self.get(name)
        self.contributors.remove(entry)
        self.save()
        return entry

    def pending(self) -> list[Contributor]:
        """Recorded here but not (yet) accepted by the SuperLink."""
        return [c for c in self.contributors if c.node_id is None]
