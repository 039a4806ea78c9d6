"""Coordinate geometry: the one place every voxel <-> world mapping goes through.

Conventions (DESIGN §2):

- A voxel index (i, j, k) is 0-based and names the centre of a voxel, in the array order of the image
  as read (scripts.image_io).
- An ``affine`` is a 4x4 matrix mapping a voxel index to **RAS** world millimetres (+x towards the
  subject's Right, +y Anterior, +z Superior), as nibabel and MONAI use it. In memory every landmark
  is RAS world mm.
- **LPS** world (+x towards the subject's Left, +y Posterior, +z Superior) is ITK's, DICOM's and
  Slicer's .mrk.json convention: the same point with x and y negated. ``lps_to_ras`` and
  ``ras_to_lps`` are that flip.

Points are numpy-like ``(..., 3)`` arrays (torch tensors and MetaTensors are accepted and come back as
numpy float64); NaN rows (unannotated landmarks) stay NaN through every mapping.

Also here, for the dataset builders (scripts.datasets): rotations, the least-squares affine fit and the 3D
thin-plate spline that maps landmarks exactly (a template given a real person's landmark configuration).
"""

from __future__ import annotations

import numpy as np
from monai.data.utils import orientation_ras_lps

from scripts.errors import GeometryError

WORLDS = ("RAS", "LPS")
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # the flip, per world axis; the same both ways


def as_float64(values) -> np.ndarray:
    """A numpy float64 array of ``values`` (numpy, list, torch tensor or MetaTensor, on any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def lps_to_ras(points) -> np.ndarray:
    """LPS world (..., 3) mm -> RAS world (..., 3) mm: x and y negated."""
    return as_float64(points) * LPS_TO_RAS


def ras_to_lps(points) -> np.ndarray:
    """RAS world (..., 3) mm -> LPS world (..., 3) mm: x and y negated (the flip is its own inverse)."""
    return as_float64(points) * LPS_TO_RAS


def _check_world(world: str) -> str:
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    return world


def _checked(affine, points) -> tuple[np.ndarray, np.ndarray]:
    affine, points = as_float64(affine), as_float64(points)
    if affine.shape != (4, 4) or points.shape[-1:] != (3,):
        raise ValueError(f"expected a 4x4 affine and (..., 3) points, got {affine.shape} and {points.shape}")
    return affine, points


def apply_affine(affine, points) -> np.ndarray:
    """``affine`` (4, 4) applied to points (..., 3): ``points @ A[:3, :3].T + A[:3, 3]``, float64.
    Raises ValueError on other shapes."""
    affine, points = _checked(affine, points)
    return points @ affine[:3, :3].T + affine[:3, 3]


def voxel_to_world(affine, voxels, world: str = "RAS") -> np.ndarray:
    """Voxel indices (..., 3) -> world mm (..., 3) through ``affine`` (voxel -> RAS); ``world="LPS"``
    returns LPS coordinates of the same points."""
    points = apply_affine(affine, voxels)
    return ras_to_lps(points) if _check_world(world) == "LPS" else points


def world_to_voxel(affine, points, world: str = "RAS") -> np.ndarray:
    """World mm (..., 3) -> voxel indices (..., 3) through the inverse of ``affine`` (voxel -> RAS);
    ``world="LPS"`` reads ``points`` as LPS coordinates."""
    affine, points = _checked(affine, points)
    points = lps_to_ras(points) if _check_world(world) == "LPS" else points
    return apply_affine(np.linalg.inv(affine), points)


def voxel_spacing(affine) -> np.ndarray:
    """Voxel size (mm) along each array axis: the lengths of the affine's first three columns, (3,)."""
    return np.linalg.norm(as_float64(affine)[:3, :3], axis=0)


def ras_affine(direction, spacing, origin) -> np.ndarray:
    """(n+1)x(n+1) voxel -> RAS affine from ITK's LPS geometry: ``direction`` (row-major n x n direction
    cosines, as SimpleITK's GetDirection()), ``spacing`` (mm, n) and ``origin`` (LPS mm, n)."""
    rank = len(spacing)
    affine = np.eye(rank + 1)
    affine[:rank, :rank] = np.asarray(direction, dtype=np.float64).reshape(rank, rank) * np.asarray(spacing, dtype=np.float64)
    affine[:rank, rank] = origin
    return orientation_ras_lps(affine)


def ras_axes(affine) -> list[int]:
    """For each voxel axis, the RAS world axis (0 = x, 1 = y, 2 = z) it runs along most, i.e. what
    orienting to RAS permutes it to; [0, 1, 2] when two axes are oblique beyond 45 degrees onto one."""
    linear = as_float64(affine)[:3, :3]
    direction = linear / np.linalg.norm(linear, axis=0)
    axes = [int(np.argmax(np.abs(direction[:, i]))) for i in range(3)]
    if sorted(axes) != [0, 1, 2]:
        return [0, 1, 2]
    return axes


def is_rigid_and_scaled(affine, tolerance: float = 1e-4) -> bool:
    """True when the 3x3 part is a rotation (or reflection) times per-axis scaling: orthogonal columns,
    i.e. no shear."""
    columns = as_float64(affine)[:3, :3]
    columns = columns / np.linalg.norm(columns, axis=0)
    return bool(np.abs(columns.T @ columns - np.eye(3)).max() < tolerance)


def corner_distance_mm(affine_a, affine_b, shape) -> float:
    """The largest distance (mm) between where two affines put the same voxel, over the corner voxel
    centres of a grid of ``shape`` (the largest over the whole grid, the mapping difference being affine)."""
    extent = np.asarray(shape[:3], dtype=np.float64) - 1
    corners = np.array([[i, j, k] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])])
    return float(np.linalg.norm(apply_affine(affine_a, corners) - apply_affine(affine_b, corners), axis=1).max())


def outside_image(affine, shape, points) -> np.ndarray:
    """Boolean per row of ``points`` (N, 3) RAS world mm: the point lies outside the image of ``shape``
    (its first three entries) and ``affine``, i.e. beyond half a voxel past the first or last voxel centre
    along some array axis. NaN rows (unannotated) are never outside. The one rule for "annotation outside
    its image" (scripts.data's checks, used by scripts.check, training and the planner)."""
    voxels = world_to_voxel(affine, as_float64(points).reshape(-1, 3))
    upper = np.asarray(shape[:3], dtype=np.float64) - 0.5
    with np.errstate(invalid="ignore"):
        beyond = (voxels < -0.5) | (voxels > upper)
    return np.any(beyond, axis=1) & np.all(np.isfinite(voxels), axis=1)


def covariance_to_world(affine, covariances) -> np.ndarray:
    """Covariances (..., 3, 3) in voxel^2 -> world mm^2: ``L C L^T`` with L the affine's 3x3 part."""
    linear = as_float64(affine)[:3, :3]
    return linear @ as_float64(covariances) @ linear.T


def covariance_to_voxel(affine, covariances) -> np.ndarray:
    """Covariances (..., 3, 3) in world mm^2 -> voxel^2 of the grid of ``affine``: ``L^-1 C L^-T``."""
    inverse = np.linalg.inv(as_float64(affine)[:3, :3])
    return inverse @ as_float64(covariances) @ inverse.T


# ----------------------------------------------------------------------------- fits and warps (the dataset builders)


def rotation_xyz(angles_rad) -> np.ndarray:
    """Rotation about x, then y, then z (radians), as a 3x3 matrix."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def fit_affine(source, target) -> np.ndarray:
    """The 4x4 affine A minimising sum |A(source_i) - target_i|^2 (ordinary least squares, 12 parameters).

    source, target: (N, 3) points in mm, N >= 4 and not all in one plane. Raises GeometryError otherwise.
    """
    source, target = _points(source, "source"), _points(target, "target")
    if source.shape != target.shape:
        raise GeometryError("fit_affine", f"source has {len(source)} points, target {len(target)}")
    design = np.hstack([source, np.ones((len(source), 1))])
    if len(source) < 4 or np.linalg.matrix_rank(design) < 4:
        raise GeometryError("fit_affine", f"{len(source)} points do not span 3D space: an affine fit needs 4 not coplanar")
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)  # (4, 3): target = [source, 1] @ solution
    affine = np.eye(4)
    affine[:3, :] = solution.T
    return affine


class ThinPlateSpline:
    """The 3D thin-plate spline that maps each source point exactly onto its target point.

    f(x) = sum_i w_i |x - c_i| + A [x, 1], with kernel U(r) = r (the biharmonic kernel in 3D, as ITK's
    ThinPlateSplineKernelTransform), centres c_i = the source points, and sum_i w_i = sum_i w_i c_i^T = 0.
    It interpolates: f(source_i) = target_i to rounding (about 1e-10 mm), and among all such maps it bends
    least; far from the points it becomes the least-squares affine map. Points in mm, (N, 3) arrays.
    Raises GeometryError for fewer than 4 points, coplanar points or repeated source points.
    """

    def __init__(self, source, target):
        source, target = _points(source, "source"), _points(target, "target")
        if source.shape != target.shape:
            raise GeometryError("ThinPlateSpline", f"source has {len(source)} points, target {len(target)}")
        count = len(source)
        distances = np.linalg.norm(source[:, None] - source[None], axis=-1)
        if count < 4 or np.linalg.matrix_rank(np.hstack([source, np.ones((count, 1))])) < 4:
            raise GeometryError("ThinPlateSpline", f"{count} points do not span 3D space (need 4 not coplanar)")
        if (distances + np.eye(count) * 1e9).min() < 1e-6:
            raise GeometryError("ThinPlateSpline", "two source points coincide")
        system = np.zeros((count + 4, count + 4))
        system[:count, :count] = distances
        system[:count, count:] = np.hstack([source, np.ones((count, 1))])
        system[count:, :count] = system[:count, count:].T
        right = np.zeros((count + 4, 3))
        right[:count] = target
        solution = np.linalg.solve(system, right)
        self.centres = source
        self.weights = solution[:count]  # (N, 3)
        self.linear = solution[count:]  # (4, 3): [x, 1] @ linear

    def __call__(self, points, chunk: int = 1 << 18) -> np.ndarray:
        """(M, 3) points mapped by the spline, float64, evaluated chunk points at a time."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(points)
        for start in range(0, len(points), chunk):
            part = points[start : start + chunk]
            kernel = np.sqrt(((part[:, None, :] - self.centres[None]) ** 2).sum(-1))
            out[start : start + chunk] = kernel @ self.weights + part @ self.linear[:3] + self.linear[3]
        return out

    def jacobian_determinants(self, points) -> np.ndarray:
        """det of the spline's 3x3 Jacobian at each of (M, 3) points (<= 0 where the map folds).

        d/dx |x - c| = (x - c) / |x - c|, undefined at a centre itself, where the value returned is that of
        the linear part plus the other centres' terms."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        difference = points[:, None, :] - self.centres[None]  # (M, N, 3)
        length = np.linalg.norm(difference, axis=-1, keepdims=True)
        unit = np.divide(difference, length, out=np.zeros_like(difference), where=length > 0)
        jacobian = np.einsum("mnj,nk->mkj", unit, self.weights) + self.linear[:3].T[None]
        return np.linalg.det(jacobian)


def _points(values, what: str) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise GeometryError(what, f"expected finite (N, 3) points in mm, got shape {points.shape}")
    return points
