"""Audio decoding and writing: every read goes through here so errors are one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import BeatSightError

SAMPLE_RATE = 44_100


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to mono float32 at `sr`; raise BeatSightError naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise BeatSightError(f"{path}: no such audio file")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # soundfile cannot read it: let librosa/audioread try (mp3 etc.)
        try:
            import librosa

            data, file_sr = librosa.load(str(path), sr=None, mono=False)
            data = np.atleast_2d(data).T.astype(np.float32)
        except Exception as exc:
            raise BeatSightError(f"{path}: cannot decode audio ({type(exc).__name__})") from None
    if data.size == 0:
        raise BeatSightError(f"{path}: audio file is empty")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)  # no copy for mono files
    if file_sr != sr:
        import librosa

        mono = librosa.resample(mono, orig_sr=file_sr, target_sr=sr, res_type="soxr_hq")
    if not np.all(np.isfinite(mono)):
        raise BeatSightError(f"{path}: audio contains non-finite samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM WAV (the store's snippet format)."""
    sf.write(str(path), np.asarray(audio, dtype=np.float32), sr, subtype="PCM_16")
