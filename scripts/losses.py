"""The training loss, apart from the engines so that code without ignite (bench/gpu_check.py) can use it.

scripts.engines re-exports it; configs name it ``scripts.engines.MaskedHeatmapMSELoss``.
"""

from __future__ import annotations

import torch


class MaskedHeatmapMSELoss(torch.nn.Module):
    """Mean squared error over the channels annotated in each case (mask 1); unannotated ones add nothing.

    ``foreground_weight`` w weighs each voxel by ``1 + w * target``: a Gaussian covers well under 1% of a
    patch, and plain MSE (w = 0, nnLandmark's loss) spends a short CPU schedule learning the background.
    """

    def __init__(self, foreground_weight: float = 0.0):
        super().__init__()
        self.foreground_weight = float(foreground_weight)

    def forward(self, pred: torch.Tensor, target) -> torch.Tensor:
        if isinstance(target, dict):
            label, mask = target["label"], target["mask"]
        else:
            label, mask = target, torch.ones(pred.shape[:2], device=pred.device)
        squared = (pred - label) ** 2
        if self.foreground_weight:
            squared = squared * (1.0 + self.foreground_weight * label)
        per_channel = squared.flatten(2).mean(dim=2)
        mask = mask.to(per_channel)
        return (per_channel * mask).sum() / mask.sum().clamp(min=1.0)
