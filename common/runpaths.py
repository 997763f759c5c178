"""Relative paths in Flower's run config (`flwr run .`): resolved against the project checkout.

`flwr run .` ships the app to a SuperLink, whose ServerApp and ClientApps run in other processes
with the SuperLink's working directory (wherever it was first started), so `runs/data` in
`[tool.flwr.app.config]` must not depend on it. Relative paths are taken from the source checkout
that holds the installed `beatsight` packages (the directory with pyproject.toml, the one given to
`flwr run`); without one (a non-editable install) from the working directory. Absolute paths and
empty values pass unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def project_root() -> Path | None:
    """The source checkout of the installed packages, if it is the Flower app; else None."""
    import beatsight.common as pkg

    root = Path(pkg.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    try:
        if "[tool.flwr.app]" in pyproject.read_text(encoding="utf-8"):
            return root
    except OSError:
        pass
    return None


def resolve_run_path(value: str) -> str:
    """An absolute path for a run-config path value ("" stays "")."""
    if not value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (project_root() or Path.cwd()) / path
    return str(path.resolve())
