"""Two-stage inference for images much larger than the patch (nnU-Net's lowres -> cascade idea, for points).

The coarse network sees the whole image at the planned coarse spacing and places every landmark
roughly; the fine network then runs only on a few patches around those positions at full resolution.
Patches are chosen greedily so that each landmark sits well inside one of them (landmarks close
together share a patch). The result is a heatmap tensor over the box the patches span, zero outside
them, whose affine says where the box lies, so the usual extraction (peak + sub-voxel refinement,
exact mapping back through the heatmaps' affine) applies unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

from scripts.heatmaps import extract_landmarks

logger = logging.getLogger(__name__)


def coarse_shape(shape: Sequence[int], spacing: Sequence[float], coarse_spacing: Sequence[float]) -> list[int]:
    return [max(2, int(round((n - 1) * s / c)) + 1) for n, s, c in zip(shape, spacing, coarse_spacing)]


def coarse_to_fine(points: np.ndarray, fine_shape: Sequence[int], small_shape: Sequence[int]) -> np.ndarray:
    """Voxel coordinates on the coarse grid -> the fine grid (``align_corners=True`` resampling is linear)."""
    scale = (np.asarray(fine_shape, dtype=np.float64) - 1) / (np.asarray(small_shape, dtype=np.float64) - 1)
    return np.asarray(points, dtype=np.float64) * scale


MAX_SEEDS_PER_PATCH = 16  # candidate patches per step are built around at most this many uncovered landmarks


def cover_with_patches(points: np.ndarray, patch: Sequence[int], shape: Sequence[int], margin: Sequence[float],
                       candidates_per_axis: int = 5) -> list[tuple[np.ndarray, list[int]]]:
    """Greedy cover: patch starts (clipped to the image) and the landmarks each patch is responsible for.

    A landmark belongs to a patch when it lies at least ``margin`` voxels inside it, so its heatmap
    peak and refinement neighbourhood are never cut by the patch border. Each step places the patch
    that takes the most uncovered landmarks (set-cover greedy) among a few starts per uncovered
    landmark that keep it inside; ties go to the patch whose landmarks sit closest to its centre.
    Centring a patch on one landmark at a time needs ~1.5x the patches on the 32 AFIDs.
    """
    points = np.asarray(points, dtype=np.float64)
    extent = np.minimum(np.asarray(patch), np.asarray(shape))
    highest = np.maximum(np.asarray(shape) - np.asarray(patch), 0)
    margin = np.asarray(margin, dtype=np.float64)
    remaining = np.arange(len(points))
    patches = []
    while len(remaining):
        best = None
        uncovered = points[remaining][None]
        for seed in remaining[:MAX_SEEDS_PER_PATCH]:
            starts = _starts_keeping_inside(points[seed], extent, highest, margin, candidates_per_axis)
            lo, hi = starts[:, None, :] + margin, starts[:, None, :] + extent - 1 - margin
            inside = np.all((uncovered >= lo) & (uncovered <= hi), axis=2)
            inside[:, remaining == seed] = True  # an image smaller than patch + margins still assigns its seed
            offsets = uncovered - (starts[:, None, :] + (extent - 1) / 2)
            spread = np.where(inside, np.sum(offsets**2, axis=2), 0.0).sum(axis=1)
            counts = inside.sum(axis=1)
            choice = int(np.lexsort((spread, -counts))[0])
            if best is None or (counts[choice], -spread[choice]) > (best[0], -best[1]):
                best = (counts[choice], spread[choice], starts[choice], remaining[inside[choice]])
        _, _, start, members = best
        patches.append((start, members.tolist()))
        remaining = remaining[~np.isin(remaining, members)]
    return patches


def _starts_keeping_inside(point, extent, highest, margin, per_axis: int) -> np.ndarray:
    """Candidate patch starts (n, 3): a grid over the starts that keep ``point`` ``margin`` inside, plus the centred one."""
    lo = np.clip(np.ceil(point + margin - (extent - 1)), 0, highest)
    hi = np.maximum(np.clip(np.floor(point - margin), 0, highest), lo)
    axes = [np.unique(np.round(np.linspace(a, b, per_axis))) for a, b in zip(lo, hi)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    centred = np.clip(np.round(point - extent / 2), 0, highest)
    return np.vstack([centred, grid]).astype(int)


COARSE_LANDMARKS_KEY = "coarse_landmarks"  # heatmaps.meta: (batch, landmarks, 3) coarse positions, voxels of the input grid


class CascadeInferer(Inferer):
    """Coarse whole-image pass, then fine patches around each coarse landmark.

    Without a coarse network (no models/coarse_model.pt yet) it falls back to a full sliding window.
    """

    def __init__(
        self,
        coarse_network: torch.nn.Module | None,
        spacing: Sequence[float],
        coarse_spacing: Sequence[float],
        coarse_patch_size: Sequence[int],
        patch_size: Sequence[int],
        sigma: float | Sequence[float],
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        search_radius: float | Sequence[float] | None = None,
    ):
        """``sigma``: the fine target's, in voxels (one value or one per axis); a landmark must lie 3 sigma (at most a
        quarter patch) inside its patch. ``search_radius``: voxels (one value or per axis: an ellipsoid in voxels is a
        ball in mm on anisotropic grids) around the coarse position where the fine peak is searched; default the
        margin, <= 0 anywhere in the patch."""
        super().__init__()
        self.coarse_network = coarse_network
        self.spacing = list(spacing)
        self.coarse_spacing = list(coarse_spacing)
        self.patch_size = list(patch_size)
        self.sw_batch_size = max(1, int(sw_batch_size))
        sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,))
        self.margin = [min(3 * s, p / 4) for s, p in zip(sigmas, patch_size)]
        if search_radius is None:
            self.search_radius = np.asarray(self.margin, dtype=np.float64)
        else:
            radius = np.broadcast_to(np.asarray(search_radius, dtype=np.float64), (3,))
            self.search_radius = None if np.any(radius <= 0) else radius.copy()
        self.coarse_inferer = SlidingWindowInferer(coarse_patch_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
        self.full_inferer = SlidingWindowInferer(patch_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")

    def coarse_landmarks(self, image: torch.Tensor) -> np.ndarray:
        fine_shape = image.shape[2:]
        small = coarse_shape(fine_shape, self.spacing, self.coarse_spacing)
        resampled = F.interpolate(image, size=small, mode="trilinear", align_corners=True)
        heatmaps = self.coarse_inferer(resampled, self.coarse_network)[0]
        voxels, _ = extract_landmarks(heatmaps)
        return coarse_to_fine(voxels, fine_shape, small)

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """Heatmaps over the smallest box that holds every fine patch (of every batch item), zero outside the
        patches, as a MetaTensor whose affine places the box in the image (the input's affine, shifted); its
        ``meta["coarse_landmarks"]`` holds the coarse stage's positions, (batch, landmarks, 3) float64 voxel
        indices of the input grid.

        Landmark-local: on a 1 mm head the box is a quarter of the image, and the extraction after it reads
        a quarter of the voxels. Without a coarse network, a full-image sliding window."""
        if self.coarse_network is None:
            return self.full_inferer(inputs, network, *args, **kwargs)
        # plain tensors through the networks: MetaTensor bookkeeping on every layer costs ~10% here
        image = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        shape = list(image.shape[2:])
        patch = [min(p, s) for p, s in zip(self.patch_size, shape)]
        windows = []  # (batch item, patch start, landmarks it is responsible for, their coarse positions)
        coarse = []  # per batch item, (landmarks, 3) coarse positions in voxels of the input grid
        for item in range(image.shape[0]):
            points = self.coarse_landmarks(image[item : item + 1])
            coarse.append(points)
            windows += [(item, start, members, points[members]) for start, members in cover_with_patches(points, patch, shape, self.margin)]
        box_start = np.min([start for _, start, _, _ in windows], axis=0)
        box_size = np.max([start for _, start, _, _ in windows], axis=0) + patch - box_start
        output = None
        # planned windows per forward pass (sw_batch_size): on 2 CPU cores pairs of 48^3 windows cost ~1/3 less each
        for first in range(0, len(windows), self.sw_batch_size):
            batch = windows[first : first + self.sw_batch_size]
            crops = [_pad_to(image[(item, slice(None), *_region(start, patch))][None], self.patch_size) for item, start, _, _ in batch]
            predicted = network(torch.cat(crops))[(slice(None), slice(None), *[slice(0, p) for p in patch])]
            if output is None:
                output = torch.zeros((image.shape[0], predicted.shape[1], *box_size.tolist()), dtype=predicted.dtype, device=predicted.device)
            for (item, start, members, centres), window_heatmaps in zip(batch, predicted):
                balls = self._search_balls(centres - start, patch).to(window_heatmaps)
                output[(item, members, *_region(start - box_start, patch))] = window_heatmaps[members] * balls
        shift = torch.eye(4, dtype=torch.float64)
        shift[:3, 3] = torch.as_tensor(box_start, dtype=torch.float64)
        if isinstance(inputs, MetaTensor):
            heatmaps = convert_to_dst_type(output, inputs)[0]
            heatmaps.affine = heatmaps.affine.to(torch.float64) @ shift
        else:
            heatmaps = MetaTensor(output, affine=shift)
        # the coarse stage's positions travel with the heatmaps (decollated per case with the meta data) for the
        # coarse-stage check: ExtractLandmarksd maps them to the world as pred_coarse_landmarks_world
        heatmaps.meta[COARSE_LANDMARKS_KEY] = torch.as_tensor(np.stack(coarse), dtype=torch.float64)
        return heatmaps

    def _search_balls(self, centres: np.ndarray, patch: Sequence[int]) -> torch.Tensor:
        """(members, *patch) masks: 1 within the ``search_radius`` ellipsoid (voxels per axis) of each coarse position, else 0.

        The fine network sees a 48-voxel patch in which similar structures recur (the other horn, the
        neighbouring sulcus); it refines the coarse position, so its peak is searched near it."""
        if self.search_radius is None:
            return torch.ones((len(centres), *patch))
        centres = torch.as_tensor(np.asarray(centres), dtype=torch.float32)
        squared = 0
        for axis, size in enumerate(patch):  # separable: three broadcast squares instead of a (members, *patch, 3) grid
            along = ((torch.arange(size, dtype=torch.float32)[None] - centres[:, axis : axis + 1]) / float(self.search_radius[axis])) ** 2
            squared = squared + along.reshape(len(centres), *[size if a == axis else 1 for a in range(len(patch))])
        return (squared <= 1.0).to(torch.float32)


def _region(start, patch: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(a) + p) for a, p in zip(start, patch))


def _pad_to(window: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    missing = [max(0, s - n) for s, n in zip(size, window.shape[2:])]
    if not any(missing):
        return window
    pad = []
    for m in reversed(missing):
        pad += [0, m]
    return F.pad(window, pad)


def make_inferer(patch_size: Sequence[int], sigma, spacing: Sequence[float], sw_batch_size: int = 1, overlap: float = 0.25,
                 coarse_network_def: torch.nn.Module | None = None, coarse_model_files: Sequence[str] = (),
                 coarse_spacing: Sequence[float] | None = None, coarse_patch_size: Sequence[int] | None = None,
                 search_radius_mm: float | None = None, landmark_names: Sequence[str] = (), left_right_pairs: Sequence[Sequence[int]] = (),
                 mirror_axes: Sequence[int] = (), tta=False, device=None, coarse_plans_hash: str = "") -> Inferer:
    """The cascade inferer (configs' ``validate#inferer`` / ``inferer`` when the plans have a cascade): every number
    is a config id, so ``--patch_size``, ``--spacing``, ``--sigma`` reach it as they reach training.

    ``patch_size`` (voxels), ``spacing`` (mm) and ``sigma`` (voxels, one value or per axis) are the fine stage's;
    ``coarse_*`` the coarse stage's. The coarse network is built from ``coarse_network_def`` with the weights of
    ``coarse_model_files`` (several: folds, averaged); missing files fall back to a full sliding window at fine
    resolution (logged). ``tta`` (a switch: bool or 'true'/'false') mirrors the coarse pass on ``mirror_axes``
    too. ``search_radius_mm``: where the fine peak is searched around the coarse position (mm; None: the margin).
    The coarse network always runs in float32 (scripts.precision says why).

    The coarse weights are checked as the fine model's are (scripts.model_files): their sidecar
    (models/coarse_model.json) must name ``landmark_names`` (LandmarkConfigError naming the file otherwise); a plans
    hash other than ``coarse_plans_hash`` (the configs' ``@coarse_weights_hash``) warns in one line naming the file;
    without a sidecar the output channels must number the landmarks (one warning).
    """
    from scripts.cli_args import parse_switch

    present = [path for path in coarse_model_files if os.path.exists(path)]
    coarse = None
    if coarse_network_def is not None and present:
        from scripts.ensemble import build_network

        axes = list(mirror_axes) if parse_switch(tta, "tta") else []
        coarse = build_network(coarse_network_def, present, landmark_names, left_right_pairs, axes, device, plans_hash=coarse_plans_hash)
    else:
        logger.warning("cascade planned but %s is missing: full sliding window at fine resolution (slow)", ", ".join(coarse_model_files))
    search_radius = None if not search_radius_mm else [float(search_radius_mm) / s for s in spacing]
    return CascadeInferer(coarse, spacing, coarse_spacing, coarse_patch_size, patch_size, sigma, sw_batch_size=sw_batch_size,
                          overlap=overlap, search_radius=search_radius)
