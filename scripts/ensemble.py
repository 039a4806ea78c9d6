"""Fold ensembling and mirror test-time augmentation, as one network the inferers can call.

Both are averages of heatmaps, and the sliding-window and cascade inferers blend windows linearly, so
averaging per window equals averaging the full heatmaps: the ensemble is simply a network whose output is
the mean over members and mirrorings. Landmarks are then extracted once, from the mean.

Mirroring across the left/right axis turns a left structure into a right one: the network's "left"
channel then marks the right landmark. Flipping back therefore also swaps the paired channels — the
step whose absence makes nnLandmark switch mirroring off.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import torch

from scripts.heatmaps import pair_permutation
from scripts.model_files import check_member, load_member, loads_through_checkpoint_loader
from scripts.cli_args import parse_switch  # noqa: F401 - the switches' home; kept importable from here
from scripts.precision import ReducedPrecisionHeatmapNet, inference_dtype, with_precision

logger = logging.getLogger(__name__)

LEFT_RIGHT_AXIS = 0  # images are reoriented to RAS before the network


class HeatmapEnsemble(torch.nn.Module):
    """Mean heatmap over ``members`` and, for each, every non-empty combination of ``mirror_axes``."""

    def __init__(self, members: Sequence[torch.nn.Module], mirror_axes: Sequence[int] = (), left_right_pairs: Sequence[Sequence[int]] = ()):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        axes = sorted({int(a) for a in mirror_axes})
        self.mirrorings = [combo for k in range(1, len(axes) + 1) for combo in itertools.combinations(axes, k)]
        self.pairs = [tuple(p) for p in left_right_pairs]

    @property
    def n_passes(self) -> int:
        return len(self.members) * (1 + len(self.mirrorings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            for mirroring in [(), *self.mirrorings]:
                heatmaps = self._mirrored_prediction(member, x, mirroring)
                total = heatmaps if total is None else total + heatmaps
        return total / self.n_passes

    def _mirrored_prediction(self, member: torch.nn.Module, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        if not axes:
            return member(x)
        dims = [2 + a for a in axes]
        heatmaps = torch.flip(member(torch.flip(x, dims)), dims)
        if LEFT_RIGHT_AXIS in axes and self.pairs:
            heatmaps = heatmaps[:, pair_permutation(heatmaps.shape[1], self.pairs)]
        return heatmaps


def build_network(network_def: torch.nn.Module, model_files: Sequence[str], landmark_names: Sequence[str],
                  left_right_pairs: Sequence[Sequence[int]] = (), mirror_axes: Sequence[int] = (), device=None,
                  plans_hash: str = "", precision: str = "float32", tta=True, checkpoint_loader: bool = False) -> torch.nn.Module:
    """The inference network: one model file as is, several (folds) or mirror TTA as a HeatmapEnsemble;
    ``precision`` (auto | float32 | bfloat16, scripts.precision) sets the members' convolution dtype; ``tta``
    (a switch: bool or 'true'/'false' from the command line) mirrors on ``mirror_axes`` when on.

    ``checkpoint_loader``: when one weights file is used (see ``loads_through_checkpoint_loader``), its member is
    ``network_def`` itself with its identity checked but no weights loaded: the config's MONAI CheckpointLoader
    handler loads them into ``network_def`` when the engine starts. An ensemble loads its members here (each is a
    copy of ``network_def`` with its own file's weights, which one CheckpointLoader cannot express)."""
    dtype = inference_dtype(precision, device)
    mirror_axes = list(mirror_axes) if parse_switch(tta, "tta") else []
    if checkpoint_loader and loads_through_checkpoint_loader(model_files):
        check_member(model_files[0], landmark_names, plans_hash)
        members = [with_precision(network_def, dtype)]
    else:
        members = [with_precision(load_member(network_def, path, landmark_names, plans_hash), dtype) for path in model_files]
    if len(members) == 1 and not mirror_axes:
        network = members[0]
    else:
        network = HeatmapEnsemble(members, mirror_axes, left_right_pairs)
        logger.info("ensemble of %d model(s), mirror TTA on axes %s: %d passes per window (%s)", len(members), sorted(set(mirror_axes)),
                    network.n_passes, ", ".join(model_files))
    if any(isinstance(member, ReducedPrecisionHeatmapNet) for member in members):
        logger.info("%s convolutions, float32 output layer (--precision %s)", str(dtype).replace("torch.", ""), precision)
    return network.to(device).eval() if device is not None else network.eval()
