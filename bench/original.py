"""The original tools' per-hit feature computation, kept only as the benchmarks' baseline.

The original code called librosa on every 125 ms window separately (in the training
Dataset's `__getitem__` every epoch, and per onset in the processor): `melspectrogram`
(which builds its mel filter bank on every call), `power_to_db(ref=np.max)`, then scaling to
[0, 1]. Its `np.resize` bug is not reproduced: the hop gives 128 honest frames, so the
baseline computes the same numbers as `beatsight.common.features` (checked by
`tests/test_features.py::test_librosa_per_window_matches`), only the way the original did.
"""

from __future__ import annotations

import librosa
import numpy as np

from beatsight.common.features import DEFAULT_SETTINGS, FeatureSettings


def original_patch(window: np.ndarray, s: FeatureSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """One (1, mels, frames) float32 patch from one window, librosa call by call."""
    mel = librosa.feature.melspectrogram(y=np.asarray(window, np.float32), sr=s.sample_rate,
                                         n_fft=s.n_fft, hop_length=s.hop, n_mels=s.n_mels,
                                         fmax=s.fmax, pad_mode="constant")
    if not mel.max() > 0:
        return np.zeros((1, s.n_mels, s.frames), np.float32)
    db = librosa.power_to_db(mel, ref=np.max, top_db=s.top_db)[:, : s.frames]
    return ((db + s.top_db) / s.top_db).astype(np.float32)[None]
