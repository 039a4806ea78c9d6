import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import map_coordinates

from scripts.elastic import RandElasticDeformd

SHAPE = (40, 40, 40)


def anisotropic_affine() -> np.ndarray:
    affine = np.diag([1.2, 0.8, 1.0, 1.0])
    affine[:3, 3] = [-20.0, 13.5, 4.0]
    return affine


def oblique_affine() -> np.ndarray:
    angle = math.radians(25)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])  # 25 degrees about x
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 0.8, 1.0])
    affine[:3, 3] = [-20.0, 13.5, 4.0]
    return affine


def to_world(affine, voxels):
    return np.asarray(voxels, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def to_voxel(affine, world):
    return np.linalg.solve(affine[:3, :3], (np.asarray(world, dtype=np.float64) - affine[:3, 3]).T).T


def gaussian_marker(centre, sigma=1.2) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1)
    return np.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma**2)).astype(np.float32)


def marker_centroid(volume: np.ndarray, threshold=0.05, half_window=6) -> np.ndarray:
    """Intensity-weighted centroid of the voxels above ``threshold * max`` in a window around the maximum."""
    peak = np.unravel_index(volume.argmax(), volume.shape)
    window = tuple(slice(max(p - half_window, 0), p + half_window + 1) for p in peak)
    weights = volume[window].astype(np.float64)
    weights[weights < threshold * volume.max()] = 0
    axes = [np.arange(w.start, w.start + n) for w, n in zip(window, weights.shape)]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return (index * weights[..., None]).sum((0, 1, 2)) / weights.sum()


def deform(data, seed, magnitude=3.0, **kwargs):
    keys = kwargs.pop("keys", ["image"])
    transform = RandElasticDeformd(keys, prob=1.0, magnitude_mm=(magnitude, magnitude), **kwargs)
    return transform.set_random_state(seed)(data)


@pytest.mark.parametrize("seed", range(6))
def test_marker_moves_with_its_landmark(seed):
    affine = anisotropic_affine()
    centre = np.array([19.3, 21.7, 18.45])
    image = MetaTensor(torch.from_numpy(gaussian_marker(centre))[None], affine=torch.as_tensor(affine))
    out = deform({"image": image, "landmarks_world": to_world(affine, centre[None])}, seed)
    moved = to_voxel(affine, out["landmarks_world"])[0]
    assert np.abs(moved - centre).max() > 0.2  # it did move
    # The centroid of a non-linearly warped blob is not exactly the warped centre: ~0.05 voxel here.
    np.testing.assert_allclose(marker_centroid(out["image"][0].numpy()), moved, atol=0.1)


@pytest.mark.parametrize("seed", range(4))
def test_landmarks_match_the_warp_exactly_on_a_coordinate_image(seed):
    # Each channel holds its voxel index along one axis; trilinear sampling reproduces it exactly, so the output
    # reads, at a moved landmark, the input voxel the landmark came from.
    affine = oblique_affine()
    coordinates = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij"))
    image = MetaTensor(torch.from_numpy(coordinates), affine=torch.as_tensor(affine))
    voxels = np.random.default_rng(seed).uniform(10, 30, size=(12, 3))
    out = deform({"image": image, "landmarks_world": to_world(affine, voxels)}, seed)
    moved = to_voxel(affine, out["landmarks_world"])
    assert np.abs(moved - voxels).max() > 0.5
    warped = out["image"].numpy()
    read_back = np.stack([map_coordinates(warped[axis], moved.T, order=1) for axis in range(3)], axis=1)
    np.testing.assert_allclose(read_back, voxels, atol=0.01)


def test_zero_magnitude_leaves_image_and_points_in_place():
    affine = anisotropic_affine()
    centre = np.array([10.0, 20.0, 30.0])
    image = MetaTensor(torch.from_numpy(gaussian_marker(centre))[None], affine=torch.as_tensor(affine))
    world = to_world(affine, centre[None])
    out = deform({"image": image, "landmarks_world": world}, seed=0, magnitude=0.0)
    np.testing.assert_allclose(out["landmarks_world"], world, atol=1e-9)
    np.testing.assert_allclose(out["image"].numpy(), image.numpy(), atol=1e-5)


def test_nan_rows_stay_nan_and_types_are_kept():
    affine = anisotropic_affine()
    image = MetaTensor(torch.zeros(1, *SHAPE), affine=torch.as_tensor(affine))
    world = to_world(affine, [[20.0, 20.0, 20.0], [np.nan, np.nan, np.nan]]).astype(np.float32)
    out = deform({"image": image, "landmarks_world": world}, seed=1)
    assert isinstance(out["landmarks_world"], np.ndarray) and out["landmarks_world"].dtype == np.float32
    assert np.all(np.isfinite(out["landmarks_world"][0])) and np.all(np.isnan(out["landmarks_world"][1]))

    out = deform({"image": image, "landmarks_world": torch.as_tensor(world, dtype=torch.float64)}, seed=1)
    assert isinstance(out["landmarks_world"], torch.Tensor) and out["landmarks_world"].dtype == torch.float64
    assert torch.isnan(out["landmarks_world"][1]).all()
    assert isinstance(out["image"], MetaTensor)
    np.testing.assert_array_equal(out["image"].affine.numpy(), affine)


def test_all_keys_share_the_field_and_nearest_keeps_labels():
    affine = anisotropic_affine()
    centre = np.array([18.0, 22.0, 20.0])
    marker = gaussian_marker(centre, sigma=2.0)
    label = (marker > np.exp(-0.5 * 4)).astype(np.int64)  # ball of radius 2 sigma = 4 voxels
    data = {
        "image": MetaTensor(torch.from_numpy(marker)[None], affine=torch.as_tensor(affine)),
        "copy": MetaTensor(torch.from_numpy(marker)[None], affine=torch.as_tensor(affine)),
        "label": MetaTensor(torch.from_numpy(label)[None], affine=torch.as_tensor(affine)),
        "landmarks_world": to_world(affine, centre[None]),
    }
    out = deform(data, seed=3, keys=["image", "copy", "label"], mode=("bilinear", "bilinear", "nearest"))
    torch.testing.assert_close(out["image"], out["copy"])
    assert out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) == {0, 1}
    moved = np.round(to_voxel(affine, out["landmarks_world"])[0]).astype(int)
    assert out["label"][0][tuple(moved)] == 1


def test_not_applied_returns_data_unchanged():
    image = MetaTensor(torch.rand(1, 8, 8, 8), affine=torch.eye(4))
    points = np.array([[1.0, 2.0, 3.0]])
    out = RandElasticDeformd(["image"], prob=0.0)({"image": image, "landmarks_world": points})
    assert out["image"] is image and out["landmarks_world"] is points


def test_set_random_state_is_reproducible():
    affine = anisotropic_affine()
    values = torch.rand(1, 24, 20, 16, generator=torch.Generator().manual_seed(0))
    data = {
        "image": MetaTensor(values, affine=torch.as_tensor(affine)),
        "landmarks_world": to_world(affine, [[10.0, 10.0, 8.0]]),
    }
    first, second, other = (deform(data, seed) for seed in (7, 7, 8))
    torch.testing.assert_close(first["image"], second["image"], rtol=0, atol=0)
    np.testing.assert_array_equal(first["landmarks_world"], second["landmarks_world"])
    assert not np.allclose(first["landmarks_world"], other["landmarks_world"])
