"""Small geometry helpers shared by the dataset builders: rotations, least-squares affine fits and the 3D
thin-plate spline that maps landmarks exactly (used to give a template a real person's landmark configuration)."""

import numpy as np

from scripts.errors import GeometryError


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


def apply_affine(affine, points) -> np.ndarray:
    """(N, 3) points mapped by a 4x4 affine."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


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
