"""Shared fixtures: real drum kits and a real rendered groove.

- `kits_root` (session): Path of the Hydrogen kits (env BEATSIGHT_KITS_DIR, else
  /usr/share/hydrogen/data/drumkits). Missing kits FAIL the test when env CI=true (CI installs
  them, so silence would hide a broken set-up) and skip it otherwise, saying how to install.
- `soundfonts` (session): fluidsynth and the SoundFont packages of `simulation.soundfonts`;
  missing ones fail under CI=true and skip otherwise, like the kits.
- `font_kits_dir` (session): the SoundFont kits, built once (link it in as DATA/font-kits).
- `sample_kits_dir` (session): the one-shot sample kits of four Debian packages, built once.
- `small_kit` (session): `simulation.kits.Kit` of SMALL_KIT (Millo_MultiLayered3: 1 MB,
  multi-layer, kick/snare/hi-hats/toms/ride/crash), fast to render.
- `rendered_song` (session): `RenderedSong(wav, bsm, kit, seed)`: a ~4 s groove from
  `small_kit` written by `simulation.render.write_song` with its ground-truth `.bsm`.
  Treat the files as read-only; copy them to a tmp_path if a test modifies anything.

Tests that use these fixtures should be marked `@pytest.mark.needs_kits`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# Computed-once data (common.features.cache_dir) goes to a directory of this test session, so
# tests neither read nor write the user's cache; processes they start (and pytest-xdist workers)
# inherit it. The process that made it removes it on exit.
if "BEATSIGHT_CACHE_DIR" not in os.environ:
    os.environ["BEATSIGHT_CACHE_DIR"] = tempfile.mkdtemp(prefix="beatsight-cache-")
    atexit.register(shutil.rmtree, os.environ["BEATSIGHT_CACHE_DIR"], ignore_errors=True)

SMALL_KIT = "Millo_MultiLayered3"
SONG_SECONDS = 4.0
SONG_SEED = 7


@dataclass(frozen=True)
class RenderedSong:
    wav: Path
    bsm: Path
    kit: object  # beatsight.simulation.kits.Kit
    seed: int


@pytest.fixture(scope="session")
def kits_root() -> Path:
    from beatsight.simulation.kits import INSTALL_HINT, kits_dir

    root = kits_dir()
    if not any(root.glob("*/drumkit.xml")):
        msg = f"Hydrogen drum kits not found at {root}; {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def soundfonts() -> None:
    """The SoundFont kits' packages (fluidsynth + fonts): fail in CI, skip elsewhere, if absent."""
    import shutil

    from beatsight.simulation.soundfonts import FONT_KITS, INSTALL_HINT, SF2_DIR

    missing = sorted({k.font for k in FONT_KITS if not (SF2_DIR / k.font).is_file()})
    if missing or shutil.which("fluidsynth") is None:
        msg = f"SoundFont kits unavailable ({', '.join(missing) or 'no fluidsynth'}); {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def font_kits_dir(tmp_path_factory: pytest.TempPathFactory, soundfonts: None) -> Path:
    """The SoundFont kits built once for the session (`simulation.soundfonts.build_font_kits`,
    ~12 s). A test that builds data with font kits links it in as DATA/font-kits, where the
    build finds it finished and reuses it. Read-only."""
    from beatsight.simulation.soundfonts import build_font_kits

    out = tmp_path_factory.mktemp("font-kits") / "kits"
    build_font_kits(out)
    return out


@pytest.fixture(scope="session")
def sample_kits_dir(tmp_path_factory: pytest.TempPathFactory, kits_root: Path) -> Path:
    """The one-shot sample kits (`simulation.samplekits`) built once for the session (~7 s);
    their packages missing fail in CI and skip elsewhere. Link it in as DATA/sample-kits."""
    from beatsight.simulation.samplekits import INSTALL_HINT, PACKAGES, SHARE, sample_files

    missing = [f for f in sample_files() if not (SHARE / f).is_file()]
    if missing:
        msg = f"one-shot drum samples missing ({missing[0]}, of {', '.join(PACKAGES)}); {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    from beatsight.simulation.samplekits import build_sample_kits

    out = tmp_path_factory.mktemp("sample-kits") / "kits"
    build_sample_kits(out, kits_root=kits_root)
    return out


@pytest.fixture(scope="session")
def small_kit(kits_root: Path):
    from beatsight.simulation.kits import parse_kit

    path = kits_root / SMALL_KIT
    if not (path / "drumkit.xml").is_file():
        pytest.fail(f"{path}: expected kit missing (hydrogen-drumkits is incomplete)")
    return parse_kit(path)


@pytest.fixture(scope="session")
def rendered_song(tmp_path_factory: pytest.TempPathFactory, small_kit) -> RenderedSong:
    from beatsight.simulation.render import write_song

    out = tmp_path_factory.mktemp("rendered_song")
    wav, bsm = write_song(out, "groove", small_kit, SONG_SEED, duration_s=SONG_SECONDS)
    return RenderedSong(wav, bsm, small_kit, SONG_SEED)
