"""scripts.geometry: voxel <-> world (RAS and LPS) through oblique affines, checked against hand-computed
values, nibabel and SimpleITK; the outside-image rule; ITK geometry -> RAS affine; covariances."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from scripts.geometry import (
    corner_distance_mm,
    covariance_to_voxel,
    covariance_to_world,
    is_rigid_and_scaled,
    lps_to_ras,
    outside_image,
    ras_affine,
    ras_axes,
    ras_to_lps,
    voxel_spacing,
    voxel_to_world,
    world_to_voxel,
)

# rotation about z by atan2(0.6, 0.8) (a 3-4-5 triangle: exact in binary to ~1e-16), spacing 2 x 1 x 1.5 mm
ROTATION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = ROTATION @ np.diag([2.0, 1.0, 1.5])
OBLIQUE[:3, 3] = [-10.0, 5.0, 0.0]
# voxel (5, 10, 2) -> 5 (1.6, 1.2, 0) + 10 (-0.6, 0.8, 0) + 2 (0, 0, 1.5) + (-10, 5, 0) = (-8, 19, 3) RAS
VOXEL = np.array([5.0, 10.0, 2.0])
RAS = np.array([-8.0, 19.0, 3.0])
LPS = np.array([8.0, -19.0, 3.0])


def test_oblique_affine_by_hand():
    np.testing.assert_allclose(voxel_to_world(OBLIQUE, VOXEL), RAS, atol=1e-12)
    np.testing.assert_allclose(voxel_to_world(OBLIQUE, VOXEL, world="LPS"), LPS, atol=1e-12)
    np.testing.assert_allclose(world_to_voxel(OBLIQUE, RAS), VOXEL, atol=1e-12)
    np.testing.assert_allclose(world_to_voxel(OBLIQUE, LPS, world="LPS"), VOXEL, atol=1e-12)
    np.testing.assert_allclose(voxel_spacing(OBLIQUE), [2.0, 1.0, 1.5], atol=1e-12)


def test_ras_lps_round_trip_keeps_shape_nan_and_accepts_tensors():
    points = np.array([[1.0, 2.0, 3.0], [np.nan, np.nan, np.nan], [-4.5, 0.0, 7.0]])
    np.testing.assert_array_equal(ras_to_lps(points)[0], [-1.0, -2.0, 3.0])
    np.testing.assert_array_equal(lps_to_ras(ras_to_lps(points)), points)  # the flip is exact, NaN stays NaN
    np.testing.assert_array_equal(lps_to_ras(torch.tensor([1.0, 2.0, 3.0])), [-1.0, -2.0, 3.0])
    voxels = world_to_voxel(OBLIQUE, ras_to_lps(points), world="LPS")
    assert voxels.shape == (3, 3) and np.isnan(voxels[1]).all()
    np.testing.assert_allclose(voxel_to_world(OBLIQUE, voxels), points, atol=1e-12)
    with pytest.raises(ValueError, match="world"):
        voxel_to_world(OBLIQUE, VOXEL, world="RAI")
    with pytest.raises(ValueError, match="4x4"):
        world_to_voxel(OBLIQUE[:3], RAS)


def test_matches_nibabel_and_simpleitk_on_a_random_oblique_grid():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    spacing, origin_lps = np.array([0.7, 1.3, 2.9]), np.array([12.0, -40.0, 8.5])
    image = sitk.Image(8, 9, 10, sitk.sitkFloat32)
    image.SetDirection(q.flatten().tolist())
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin_lps.tolist())
    affine = ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    voxels = rng.uniform(0, 8, size=(5, 3))
    itk_lps = np.array([image.TransformContinuousIndexToPhysicalPoint(v.tolist()) for v in voxels])
    np.testing.assert_allclose(voxel_to_world(affine, voxels, world="LPS"), itk_lps, atol=1e-9)
    np.testing.assert_allclose(voxel_to_world(affine, voxels), nib.affines.apply_affine(affine, voxels), atol=1e-9)
    np.testing.assert_allclose(world_to_voxel(affine, itk_lps, world="LPS"), voxels, atol=1e-9)
    np.testing.assert_allclose(voxel_spacing(affine), spacing, atol=1e-12)


def test_ras_affine_from_itk_geometry_by_hand():
    # ITK: LPS = origin + direction @ diag(spacing) @ index; RAS negates x and y
    affine = ras_affine(np.eye(3).flatten(), [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(affine, [[-1, 0, 0, -4], [0, -2, 0, -5], [0, 0, 3, 6], [0, 0, 0, 1]])
    np.testing.assert_array_equal(voxel_to_world(affine, [1.0, 1.0, 1.0], world="LPS"), [5.0, 7.0, 9.0])


def test_outside_image_on_an_oblique_grid():
    shape = (11, 21, 5)  # voxel centres 0..10, 0..20, 0..4: inside up to half a voxel beyond them
    voxels = np.array([[-0.49, 0, 0], [-0.51, 0, 0], [10.49, 20.49, 4.49], [5, 20.51, 2], [np.nan] * 3])
    world = voxel_to_world(OBLIQUE, voxels)
    np.testing.assert_array_equal(outside_image(OBLIQUE, shape, world), [False, True, False, True, False])


def test_axes_shear_and_corner_distance():
    assert ras_axes(OBLIQUE) == [0, 1, 2]  # 36.9 degrees: each axis still closest to its own
    quarter_turn = np.diag([1.0, 1.0, 1.0, 1.0])
    quarter_turn[:3, :3] = [[0.0, -3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 4.0]]  # i runs along y, j along -x
    assert ras_axes(quarter_turn) == [1, 0, 2]
    assert is_rigid_and_scaled(OBLIQUE) and is_rigid_and_scaled(quarter_turn)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    assert not is_rigid_and_scaled(sheared)
    moved = OBLIQUE.copy()
    moved[:3, 3] += [3.0, 4.0, 0.0]
    assert corner_distance_mm(OBLIQUE, moved, (4, 4, 4)) == pytest.approx(5.0)
    assert corner_distance_mm(np.eye(4), np.diag([2.0, 1.0, 1.0, 1.0]), (11, 5, 5)) == pytest.approx(10.0)  # i = 10: 10 vs 20 mm


def test_covariances_voxel_to_world_and_back():
    scaled = np.diag([2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(covariance_to_world(scaled, np.eye(3)), np.diag([4.0, 9.0, 16.0]))
    voxel = np.array([[[1.0, 0.2, 0.0], [0.2, 2.0, 0.1], [0.0, 0.1, 0.5]]] * 2)  # (2, 3, 3)
    world = covariance_to_world(OBLIQUE, voxel)
    # the variance along world direction u is u^T C u: along the first voxel axis (u = R e_x), 2^2 x 1.0 mm^2
    u = ROTATION[:, 0]
    assert u @ world[0] @ u == pytest.approx(4.0)
    np.testing.assert_allclose(covariance_to_voxel(OBLIQUE, world), voxel, atol=1e-12)
