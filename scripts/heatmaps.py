"""Gaussian heatmaps from landmark coordinates, landmark coordinates from heatmaps, and left/right pair fixes.

Coordinates here are voxel indices (voxel centres at integers) unless a name says ``world``.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch


def _per_axis_sigma(sigma) -> np.ndarray:
    values = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    return values


def _gaussian_window(centre: float, sigma: float, radius: int, size: int):
    """1D Gaussian over the voxels within ``radius`` of ``centre``, clipped to [0, size); None when empty."""
    start = max(math.ceil(centre - radius), 0)
    stop = min(math.floor(centre + radius), size - 1) + 1
    if stop <= start:
        return None
    offsets = np.arange(start, stop, dtype=np.float64) - centre
    return start, stop, np.exp(-(offsets**2) / (2.0 * sigma**2))


def render_heatmaps(points, shape, sigma, truncate: float = 3.0) -> np.ndarray:
    """Render one Gaussian channel per point: ``exp(-|x - p|^2 / (2 sigma^2))``, peak 1 at the exact point.

    ``points`` is (N, 3) voxel coordinates; a row with any non-finite value gives an all-zero channel.
    Each Gaussian is evaluated only at voxels within ``ceil(truncate * sigma)`` of the point along every axis
    (a box window, clipped to the array), as the outer product of three 1D Gaussians; all else is 0.
    ``sigma`` is in voxels, one value or one per axis. Returns (N, *shape) float32.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, got {shape}")
    sigmas = _per_axis_sigma(sigma)
    radii = [math.ceil(truncate * s) for s in sigmas]
    heatmaps = np.zeros((len(points), *shape), dtype=np.float32)
    for channel, point in enumerate(points):
        if not np.all(np.isfinite(point)):
            continue
        windows = [_gaussian_window(point[a], sigmas[a], radii[a], shape[a]) for a in range(3)]
        if any(w is None for w in windows):
            continue
        (x0, x1, gx), (y0, y1, gy), (z0, z1, gz) = windows
        heatmaps[channel, x0:x1, y0:y1, z0:z1] = gx[:, None, None] * gy[None, :, None] * gz[None, None, :]
    return heatmaps


def _parabola_offset(below: torch.Tensor, centre: torch.Tensor, above: torch.Tensor, usable: torch.Tensor):
    """Sub-voxel offset of the maximum of a parabola through log values at -1, 0, +1 (0 where unusable)."""
    usable = usable & (below > 0) & (centre > 0) & (above > 0)
    tiny = torch.finfo(torch.float64).tiny
    log_below, log_centre, log_above = (torch.log(v.clamp_min(tiny)) for v in (below, centre, above))
    curvature = log_below - 2.0 * log_centre + log_above
    usable = usable & (curvature < 0)
    offset = 0.5 * (log_below - log_above) / torch.where(usable, curvature, torch.ones_like(curvature))
    return torch.where(usable, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


def extract_landmarks(heatmaps) -> tuple[np.ndarray, np.ndarray]:
    """Per channel of (N, X, Y, Z) heatmaps: argmax, refined per axis by a parabola fitted to the log values.

    The fit is exact for a Gaussian. On an axis where the argmax sits on the border, a neighbour is <= 0, or the
    fit has no maximum, that axis keeps the integer position; offsets are clamped to [-0.5, 0.5].
    Returns (coords (N, 3) float64 voxel, scores (N,) float64 = heatmap value at the argmax).
    An all-zero channel gives coordinate (0, 0, 0) with score 0.
    """
    volume = heatmaps if isinstance(heatmaps, torch.Tensor) else torch.as_tensor(np.asarray(heatmaps))
    volume = volume.detach().as_subclass(torch.Tensor)  # plain tensor: no MetaTensor bookkeeping per index
    if volume.ndim != 4:
        raise ValueError(f"heatmaps must be (N, X, Y, Z), got shape {tuple(volume.shape)}")
    n_channels, *spatial = volume.shape
    flat_index = volume.reshape(n_channels, -1).argmax(dim=1)
    index = torch.stack(torch.unravel_index(flat_index, tuple(spatial)), dim=1)  # (N, 3)
    channels = torch.arange(n_channels, device=volume.device)

    def values_at(idx: torch.Tensor) -> torch.Tensor:
        return volume[channels, idx[:, 0], idx[:, 1], idx[:, 2]].to(torch.float64)

    centre = values_at(index)
    upper = torch.tensor(spatial, dtype=index.dtype, device=index.device) - 1
    offsets = []
    for axis in range(3):
        step = torch.zeros(3, dtype=index.dtype, device=index.device)
        step[axis] = 1
        inside = (index[:, axis] > 0) & (index[:, axis] < upper[axis])
        below = values_at(torch.clamp(index - step, min=0))
        above = values_at(torch.minimum(index + step, upper))
        offsets.append(_parabola_offset(below, centre, above, inside))
    coords = index.to(torch.float64) + torch.stack(offsets, dim=1)
    return coords.cpu().numpy(), centre.cpu().numpy()


def pair_permutation(n_channels: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Channel order that swaps each (left, right) pair and keeps every other channel: ``flipped = x[perm]``."""
    permutation = list(range(n_channels))
    for left, right in pairs:
        if not (0 <= left < n_channels and 0 <= right < n_channels) or left == right:
            raise ValueError(f"bad left/right pair ({left}, {right}) for {n_channels} channels")
        permutation[left], permutation[right] = right, left
    return permutation


def correct_left_right(world_points, pairs: Sequence[tuple[int, int]], right_direction=(1.0, 0.0, 0.0)):
    """Swap the positions of each (left, right) pair whose left landmark lies further right than its right one.

    World coordinates are RAS, so "right" defaults to +x. A pair is crossed when
    ``dot(p_left - p_right, right_direction) > 0``; pairs with a NaN are left alone.
    Returns (corrected (N, 3) float64, permutation list[int]) with ``corrected = points[permutation]``;
    apply the same permutation to the scores (``scores[permutation]``).
    """
    points = np.asarray(world_points, dtype=np.float64).reshape(-1, 3)
    direction = np.asarray(right_direction, dtype=np.float64)
    crossed = []
    for left, right in pairs:
        difference = points[left] - points[right]
        if np.all(np.isfinite(difference)) and float(difference @ direction) > 0:
            crossed.append((left, right))
    permutation = pair_permutation(len(points), crossed)
    return points[permutation], permutation
