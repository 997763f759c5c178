"""File helpers: atomic replacement (a kill mid-write leaves the old file), private files, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """Keep an existing file's mode; a new file gets the usual 0666 & ~umask (mkstemp uses 0600)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def build_dir_once(out: str | Path, marker: str, stamp: dict,
                   build: Callable[[Path], dict | None]) -> None:
    """Make the directory `out` with `build(work)` unless `out/marker` already records `stamp`.
    It is built in a sibling directory and renamed into place, so a failed or killed build
    leaves nothing that looks finished. What `build` returns is recorded beside the stamp."""
    out = Path(out)
    done = out / marker
    if done.is_file():
        kept = json.loads(done.read_text())
        if {k: v for k, v in kept.items() if k in stamp} == stamp:
            return
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        info = build(work) or {}
        atomic_write_text(work / marker, json.dumps({**info, **stamp}))
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_private(path: str | Path, data: bytes) -> None:
    """Atomically write a secret, created 0600 (never briefly world-readable)."""
    path = Path(path)
    old = os.umask(0o077)
    try:
        atomic_write(path, lambda fh: fh.write(data))
    finally:
        os.umask(old)
    path.chmod(0o600)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks (audio files and models can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
