"""Small geometry helpers shared by the dataset builders."""

import numpy as np


def rotation_xyz(angles_rad) -> np.ndarray:
    """Rotation about x, then y, then z (radians), as a 3x3 matrix."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx
