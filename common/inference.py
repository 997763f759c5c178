"""Batched CNN inference on CPU or GPU: every onset of a song classified in a few large batches.

Batch-norm is folded into the convolutions and tensors are channels-last. Precision:
- "fp32": plain float32.
- "bf16": bfloat16 weights and activations (CPUs with native bf16, e.g. AVX512-BF16/AMX).
- "int8": static int8 quantisation (per-channel weights, activation ranges calibrated on the
  song's own patches, 48 spread over the song), x86 backend. Opt-in only: its labels agreed
  with fp32 on just 91-93 % of onsets in our measurement (bf16: 98-99 %).
- "auto": bf16 on CPUs with native bf16, fp32 otherwise (and on GPUs).
Features of the next batch are computed while the CNN runs on the current one; on a CPU the
CNN takes each batch 8 patches at a time through a traced oneDNN graph (cache-sized calls).
Speed and agreement with fp32 are measured in docs/sections/40-process.md.
"""

from __future__ import annotations

import copy
import platform
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import BeatSightError
from .features import DEFAULT_SETTINGS, FeatureSettings, patches
from .heuristic import song_slice
from .model import DrumClassifierCNN, check_head, head_probs

BATCH = 128             # onsets whose features are computed together
CNN_BATCH = 8           # patches per CNN call on a CPU (cache-sized; see CnnPredictor._forward)
CALIBRATION = 48        # int8: patches (spread over the song) that set the activation ranges


def _fused(model: DrumClassifierCNN) -> nn.Module:
    """A copy with each Conv2d+BatchNorm2d pair folded into one Conv2d (eval semantics)."""
    net = copy.deepcopy(model).eval()
    for name in ("conv1", "conv2", "conv3", "conv4"):
        block = getattr(net, name)
        layers = list(block)
        if len(layers) >= 2 and isinstance(layers[0], nn.Conv2d) and isinstance(
                layers[1], nn.BatchNorm2d):
            setattr(net, name, nn.Sequential(fuse_conv_bn_eval(layers[0], layers[1]),
                                              *layers[2:]))
    return net


def _pool_before_relu(net: nn.Module) -> nn.Module:
    """Swap ReLU and 2x2 max-pool in each block: max commutes with ReLU, so the output is
    identical, and the ReLU then touches a quarter of the values."""
    for name in ("conv1", "conv2", "conv3"):
        layers = list(getattr(net, name))
        if (len(layers) == 3 and isinstance(layers[1], nn.ReLU)
                and isinstance(layers[2], nn.MaxPool2d)):
            setattr(net, name, nn.Sequential(layers[0], layers[2], layers[1]))
    return net


class _GraphNet(nn.Module):
    """A frozen TorchScript trace run with oneDNN Graph fusion on (conv + bias + ReLU + pool
    fused into fewer kernels); the switch is global in torch, so it is set only around calls."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            return self.traced(x)
        finally:
            torch.jit.enable_onednn_fusion(was)


def _onednn_graph(net: nn.Module, dtype: torch.dtype, settings: FeatureSettings) -> nn.Module:
    """`net` traced on two blank patches and frozen (a few ms); the eager net if that fails."""
    x = torch.zeros(2, 1, settings.n_mels, settings.frames, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")          # TorchScript announces its deprecation
            return _GraphNet(torch.jit.freeze(torch.jit.trace(net.eval(), x, check_trace=False)))
    except (RuntimeError, AttributeError):
        return net


def bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


class _Int8Net(nn.Module):
    """The fused network between a quantise and a dequantise stub (eager-mode static int8)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.net, self.dequant = QuantStub(), net, DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = self.dequant(n.conv4(n.conv3(n.conv2(n.conv1(self.quant(x))))))
        return n.fc(torch.flatten(n.pool(x), 1))  # pooling and the small linear layer in float


def _quantize(net: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """Static int8 copy of a fused float network, activation ranges taken from `calibration`."""
    import torch.ao.quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # eager-mode quantisation warns it is legacy
        torch.backends.quantized.engine = "x86"
        wrapped = _Int8Net(copy.deepcopy(net).float().eval()).eval()
        for name in ("conv1", "conv2", "conv3", "conv4"):
            tq.fuse_modules(getattr(wrapped.net, name), [["0", "1"]], inplace=True)
        wrapped.qconfig = tq.QConfig(
            activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
            weight=tq.default_per_channel_weight_observer)
        wrapped.net.fc.qconfig = None
        prepared = tq.prepare(wrapped)
        with torch.inference_mode():
            prepared(calibration.float().contiguous())
        return tq.convert(prepared)


class CnnPredictor:
    """Class probabilities (N, classes) for onsets of one decoded song (softmax or, for a
    multi-label head, sigmoids)."""

    def __init__(self, model: DrumClassifierCNN, settings: FeatureSettings = DEFAULT_SETTINGS,
                 device: torch.device | None = None, precision: str = "auto",
                 batch_size: int = BATCH, head: str = "single", graph: bool = True) -> None:
        self.device = device or torch.device("cpu")
        self.head = check_head(head)
        self.templates = model.templates.detach().cpu().numpy().copy()   # common.templates
        self.settings = settings
        self.batch_size = batch_size
        cpu = self.device.type == "cpu"
        if precision == "auto":
            precision = "bf16" if cpu and bf16_supported() else "fp32"
        if precision not in ("fp32", "bf16", "int8"):
            raise BeatSightError(f"precision {precision!r}: choose auto, fp32, bf16 or int8")
        if precision == "int8" and not (cpu and _x86()):
            raise BeatSightError("precision int8 needs an x86 CPU device")
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.float_net = _fused(model).to(self.device, dtype=self.dtype,
                                          memory_format=torch.channels_last)
        # int8: quantised per song in predict(); its conv+ReLU fusion needs the original order
        self.net = None if precision == "int8" else _pool_before_relu(self.float_net)
        if self.net is not None and cpu and graph:
            self.net = _onednn_graph(self.net, self.dtype, settings)

    def _forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of a feature batch, run through the CNN CNN_BATCH patches at a time on a CPU:
        a small batch's activations stay in cache (measured 1,750 vs 750 patches/s for 8 vs
        128, bf16). The last piece is zero-padded to the same shape, so the fused graph is
        specialised once."""
        if self.device.type != "cpu":
            return net(x).float()
        parts = []
        for j in range(0, len(x), CNN_BATCH):
            piece = x[j:j + CNN_BATCH]
            k = len(piece)
            if k < CNN_BATCH:
                pad = piece.new_zeros((CNN_BATCH - k, *piece.shape[1:]))
                piece = torch.cat([piece, pad]).contiguous(memory_format=torch.channels_last)
            parts.append(net(piece).float()[:k])
        return torch.cat(parts)

    def _features(self, audio: np.ndarray, onsets_s: np.ndarray, i: int) -> torch.Tensor:
        part, shifted = song_slice(audio, onsets_s[i:i + self.batch_size], self.settings)
        return torch.from_numpy(patches(part, shifted, self.settings))

    def predict(self, audio: np.ndarray, onsets_s: np.ndarray,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Features and inference a batch at a time, so memory stays at two batches of patches."""
        n = len(onsets_s)
        out = np.zeros((n, self.float_net.fc.out_features), np.float32)
        net = self.net
        if net is None and n:                       # int8: calibrate on this song's patches
            pick = np.unique(np.linspace(0, n - 1, min(n, CALIBRATION)).round().astype(int))
            net = _quantize(self.float_net, torch.from_numpy(
                patches(audio, onsets_s[pick], self.settings)))
        starts = list(range(0, n, self.batch_size))
        # features of batch k+1 are computed (numpy, mostly single-threaded) while the CNN
        # runs on batch k (torch, all cores): the two overlap instead of taking turns
        with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
            pending = pool.submit(self._features, audio, onsets_s, starts[0]) if starts else None
            for k, i in enumerate(starts):
                x = pending.result()
                if k + 1 < len(starts):
                    pending = pool.submit(self._features, audio, onsets_s, starts[k + 1])
                x = x.to(self.device, dtype=self.dtype).contiguous(
                    memory_format=torch.channels_last)
                logits = self._forward(net, x)
                out[i:i + len(x)] = head_probs(logits, self.head).cpu().numpy()
                if progress is not None:
                    progress(len(x))
        return out
