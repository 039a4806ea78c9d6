"""Random elastic deformation of images whose landmarks follow exactly.

The displacement field is a cubic B-spline over a coarse control grid, computed on the image grid it is
applied to: crop before deforming (a training patch is ~10x cheaper than the whole volume).
"""

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep

from scripts.geometry import voxel_spacing, voxel_to_world, world_to_voxel

# Control displacements are clipped to this fraction of the control spacing, which keeps a cubic B-spline
# deformation free of folding (Rueckert et al. 2006) and the point inversion's fixed-point iteration convergent.
MAX_DISPLACEMENT_FRACTION = 0.4
INVERSION_ITERATIONS = 50
INVERSION_TOLERANCE_VOXEL = 1e-6


def cubic_bspline(x: torch.Tensor) -> torch.Tensor:
    """Centred cubic B-spline basis (support [-2, 2], partition of unity over integer shifts)."""
    a = x.abs()
    inner = 2.0 / 3.0 - a**2 + 0.5 * a**3
    outer = (2.0 - a).clamp_min(0.0) ** 3 / 6.0
    return torch.where(a < 1.0, inner, outer)


class ControlGrid:
    """Cubic B-spline displacement field (in voxels) over an image grid of ``shape`` voxels.

    Along each axis the ``n_intervals + 1`` knots span the image from voxel 0 to the last voxel, with one extra knot
    beyond each end so the spline is complete up to the border. Outside the image the field is held constant
    (positions are clamped), so it stays continuous and invertible everywhere.
    """

    def __init__(self, shape: Sequence[int], n_intervals: Sequence[int], coefficients: torch.Tensor):
        self.shape = tuple(int(s) for s in shape)
        self.n_intervals = tuple(int(n) for n in n_intervals)
        self.coefficients = coefficients  # (3, n0 + 3, n1 + 3, n2 + 3) voxel displacements, float64

    def axis_weights(self, axis: int, positions: torch.Tensor) -> torch.Tensor:
        """B-spline weights (len(positions), n_intervals + 3) of the knots along ``axis`` at voxel ``positions``."""
        size, intervals = self.shape[axis], self.n_intervals[axis]
        knot_step = (size - 1) / intervals if size > 1 else 1.0
        t = positions.to(torch.float64).clamp(0.0, size - 1) / knot_step + 1.0
        knots = torch.arange(intervals + 3, dtype=torch.float64, device=positions.device)
        return cubic_bspline(t[:, None] - knots[None, :])

    def dense(self, dtype=torch.float32) -> torch.Tensor:
        """The field at every voxel: (3, X, Y, Z)."""
        device = self.coefficients.device
        weights = [self.axis_weights(a, torch.arange(self.shape[a], device=device)) for a in range(3)]
        field = torch.einsum("cijk,xi->cxjk", self.coefficients, weights[0])
        field = torch.einsum("cxjk,yj->cxyk", field, weights[1])
        field = torch.einsum("cxyk,zk->cxyz", field, weights[2])
        return field.to(dtype)

    def at(self, points: torch.Tensor) -> torch.Tensor:
        """The field at (N, 3) float voxel positions: (N, 3)."""
        w0, w1, w2 = (self.axis_weights(a, points[:, a]) for a in range(3))
        return torch.einsum("cijk,ni,nj,nk->nc", self.coefficients, w0, w1, w2)

    def invert_points(self, targets: torch.Tensor) -> torch.Tensor:
        """Solve ``x + u(x) = v`` for each (N, 3) voxel target ``v`` by the fixed-point iteration ``x <- v - u(x)``."""
        x = targets.clone()
        for _ in range(INVERSION_ITERATIONS):
            updated = targets - self.at(x)
            step = (updated - x).abs().max() if len(x) else torch.tensor(0.0)
            x = updated
            if step < INVERSION_TOLERANCE_VOXEL:
                return x
        warnings.warn(f"elastic point inversion stopped {float(step):.2g} voxel short of convergence", stacklevel=2)
        return x


def control_intervals(shape: Sequence[int], spacing: np.ndarray, control_spacing_mm: float) -> list[int]:
    """Knot intervals per axis: at least 1 (2 knots), otherwise about one per ``control_spacing_mm``."""
    extents = (np.asarray(shape) - 1) * spacing
    return [max(1, math.ceil(extent / control_spacing_mm - 1e-9)) for extent in extents]


def sampling_grid(field: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid (1, X, Y, Z, 3) reading the input at ``x + u(x)`` for a (3, X, Y, Z) voxel field.

    The (C, X, Y, Z) input is read by grid_sample as (C, D, H, W), whose grid's last axis is ordered (W, H, D),
    i.e. (z, y, x); with align_corners=True index i maps to 2 i / (size - 1) - 1.
    """
    shape = field.shape[1:]
    axes = [torch.arange(s, dtype=field.dtype, device=field.device) for s in shape]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    positions = identity + field
    normalised = [2.0 * positions[a] / (shape[a] - 1) - 1.0 if shape[a] > 1 else 0.0 * positions[a] for a in range(3)]
    return torch.stack(normalised[::-1], dim=-1)[None]


class RandElasticDeformd(RandomizableTransform, MapTransform):
    """Random smooth elastic deformation of ``keys`` with the world landmarks in ``landmarks_key`` following exactly.

    Images are (C, X, Y, Z) MetaTensors; the grid and affine stay as they are, the content moves:
    ``out(x) = in(x + u(x))``. ``u`` is a cubic B-spline over control points about ``control_spacing_mm``
    apart whose displacements are drawn ~ N(0, magnitude) mm per axis, with ``magnitude`` drawn uniformly
    from ``magnitude_mm``, and clipped to 0.4 control spacings (no folding). A landmark at input voxel ``v``
    moves to the ``x`` solving ``x + u(x) = v``. ``mode`` and ``padding_mode`` are grid_sample's, one or one
    per key. ``landmarks_key=None`` deforms images only. Crop before deforming: the field is computed on the
    image grid, and a patch is ~10x cheaper than a whole volume.
    """

    def __init__(
        self,
        keys: KeysCollection,
        landmarks_key: str | None = "landmarks_world",
        prob: float = 0.2,
        magnitude_mm: float | Sequence[float] = (2.0, 4.0),
        control_spacing_mm: float = 24.0,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str | Sequence[str] = "zeros",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = ensure_tuple_rep(magnitude_mm, 2)
        if not 0 <= low <= high:
            raise ValueError(f"magnitude_mm must be 0 <= low <= high, got {magnitude_mm!r}")
        if control_spacing_mm <= 0:
            raise ValueError(f"control_spacing_mm must be positive, got {control_spacing_mm!r}")
        self.landmarks_key = landmarks_key
        self.magnitude_mm = (float(low), float(high))
        self.control_spacing_mm = float(control_spacing_mm)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        self._coefficients_mm: np.ndarray | None = None

    def randomize(self, control_shape: Sequence[int] | None = None) -> None:
        """Decide whether to deform and, if so, draw the control displacements (3, *control_shape) in mm."""
        super().randomize(None)
        self._coefficients_mm = None
        if not self._do_transform or control_shape is None:
            return
        magnitude = self.R.uniform(*self.magnitude_mm)
        self._coefficients_mm = self.R.normal(0.0, magnitude, size=(3, *control_shape))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            self.randomize(None)
            return d
        reference = d[keys[0]]
        if not isinstance(reference, MetaTensor):
            raise TypeError(f"RandElasticDeformd needs a MetaTensor with an affine under {keys[0]!r}")
        shape = tuple(reference.shape[1:])
        affine = reference.affine.detach().cpu().numpy().astype(np.float64)
        spacing = voxel_spacing(affine)
        intervals = control_intervals(shape, spacing, self.control_spacing_mm)
        self.randomize([n + 3 for n in intervals])
        if not self._do_transform:
            return d

        grid = self._control_grid(shape, spacing, intervals, reference.device)
        sample_at = sampling_grid(grid.dense())
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            if tuple(d[key].shape[1:]) != shape:
                raise ValueError(f"{key!r} has spatial shape {tuple(d[key].shape[1:])}, {keys[0]!r} has {shape}")
            d[key] = self._resample(d[key], sample_at, mode, padding_mode)
        if self.landmarks_key is not None:
            d[self.landmarks_key] = self._move_points(d[self.landmarks_key], grid, affine)
        return d

    def _control_grid(self, shape, spacing, intervals, device) -> ControlGrid:
        knot_step_mm = np.array(
            [(s - 1) * sp / n if s > 1 else sp for s, sp, n in zip(shape, spacing, intervals)], dtype=np.float64
        )
        limit_mm = MAX_DISPLACEMENT_FRACTION * knot_step_mm[:, None, None, None]
        coefficients_voxel = np.clip(self._coefficients_mm, -limit_mm, limit_mm) / spacing[:, None, None, None]
        return ControlGrid(shape, intervals, torch.as_tensor(coefficients_voxel, dtype=torch.float64, device=device))

    @staticmethod
    def _resample(image, sample_at: torch.Tensor, mode: str, padding_mode: str):
        values = torch.as_tensor(image)
        values = values.as_tensor() if isinstance(values, MetaTensor) else values
        source = values.to(device=sample_at.device, dtype=torch.float32)[None]
        warped = F.grid_sample(source, sample_at, mode=mode, padding_mode=padding_mode, align_corners=True)[0]
        if not values.dtype.is_floating_point:
            warped = warped.round()
        return convert_to_dst_type(warped, image)[0]

    @staticmethod
    def _move_points(points, grid: ControlGrid, affine: np.ndarray):
        world = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
        world = world.reshape(-1, 3)
        moved = world.copy()
        present = np.all(np.isfinite(world), axis=1)
        targets = torch.as_tensor(world_to_voxel(affine, world[present]), device=grid.coefficients.device)
        solved = grid.invert_points(targets).cpu().numpy()
        moved[present] = voxel_to_world(affine, solved)
        if isinstance(points, (np.ndarray, torch.Tensor)):
            return convert_to_dst_type(moved.reshape(points.shape), points)[0]
        return moved
