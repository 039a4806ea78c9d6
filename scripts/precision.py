"""Reduced-precision inference: bfloat16 convolutions where the processor computes them natively.

On CPUs with AVX512-BF16 or AMX (oneDNN reports ``mkldnn_bf16`` support) a bfloat16 3D convolution of
the fine network runs about twice as fast as float32 (0.052 vs 0.107 s per 48^3 window on 2 cores);
elsewhere oneDNN would emulate it, so ``auto`` keeps float32 there (not measured: every CPU this
project ran on has it). The output layer and the sigmoid stay float32: bfloat16 keeps 8 bits of
mantissa, so heatmap values near the peak (0.97 one voxel off at sigma 4) would be rounded in steps of
0.004 and the sub-voxel refinement would follow the rounding (the 1 mm AFIDs sample, mirror TTA, both
stages in bfloat16: 0.40 voxel mean shift from float32; with a float32 output layer 0.06).

Only the fine network (the one build_network makes from ``precision``) runs in bfloat16; the cascade's
coarse network stays float32. Its positions place the fine patches, and the fine network's output depends
a little on where in its patch a landmark falls, so a bfloat16 coarse pass moved the sample's landmarks
more (0.62 voxel mean without TTA) than bfloat16 itself does (0.12), for a saving of ~0.1 s.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (CPU: AVX512-BF16/AMX through oneDNN)."""
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without the query
            return False
    return False  # GPUs: float32 until measured on one (nothing here to measure with)


def inference_dtype(precision: str, device) -> torch.dtype:
    """``precision`` (auto | float32 | bfloat16) -> the dtype of the network's convolutions on ``device``."""
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise SystemExit(f"error: --precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    device = torch.device(device if device is not None else "cpu")
    if text == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return torch.bfloat16 if text == "bfloat16" else torch.float32


class ReducedPrecisionHeatmapNet(torch.nn.Module):
    """A LandmarkHeatmapNet whose body runs under autocast to ``dtype`` and whose output layer stays float32.

    Holds the network rather than copying it, so its weights (float32) and state-dict keys are unchanged."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            features = self.network.features(x)
        return self.network.heatmaps(features.float())


def with_precision(network: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``network`` itself for float32 (or a network without a features/heatmaps split, e.g. TorchScript), else wrapped."""
    if dtype == torch.float32:
        return network
    if not (hasattr(network, "features") and hasattr(network, "heatmaps")):
        logger.warning("%s cannot run its output layer apart: kept in float32", type(network).__name__)
        return network
    return ReducedPrecisionHeatmapNet(network, dtype)
