"""Every spatial step must carry the landmarks exactly: a marker drawn at the landmark in the image
ends up within 0.1 voxel of the transformed point."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, RandAffined, Spacingd, SpatialPadd

from scripts.heatmaps import extract_landmarks, render_heatmaps
from scripts.image_io import SimpleITKReader
from scripts.transforms import (
    ExtractLandmarksd,
    LandmarkHeatmapd,
    LandmarksToVoxeld,
    LoadLandmarksd,
    RandFlipLandmarksd,
    RandLandmarkCropd,
)

NAMES = ["Left", "Right", "Mid"]
PAIRS = [(0, 1)]
SHAPE = (40, 36, 32)


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip_and_swap = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # stored in a non-RAS axis order
    affine = np.eye(4)
    affine[:3, :3] = rotation @ flip_and_swap @ np.diag([1.3, 0.9, 1.6])
    affine[:3, 3] = [12.0, -30.0, 5.0]
    return affine


def marker_volume(voxels: np.ndarray, brightness) -> np.ndarray:
    channels = render_heatmaps(voxels, SHAPE, sigma=1.6) * np.asarray(brightness, dtype=np.float32)[:, None, None, None]
    return channels.sum(axis=0)


@pytest.fixture()
def case(tmp_path):
    """A NIfTI with three markers (Left bright, Right dim, Mid medium) and their world positions."""
    affine = oblique_affine()
    voxels = np.array([[30.8, 19.1, 14.7], [9.3, 20.6, 13.2], [20.4, 8.7, 22.9]])
    path = tmp_path / "markers.nii.gz"
    nib.save(nib.Nifti1Image(marker_volume(voxels, [1.0, 0.5, 0.75]), affine), str(path))
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    return {"image": str(path), "landmarks": {n: w.tolist() for n, w in zip(NAMES, world)}}


def load_steps():
    return [
        LoadImaged("image", reader=SimpleITKReader(), image_only=True),
        EnsureChannelFirstd("image"),
        LoadLandmarksd(NAMES),
    ]


def marker_centroid(image: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of the marker around a point (5% of the local maximum as floor)."""
    lo = np.maximum(np.round(near).astype(int) - radius, 0)
    hi = np.minimum(np.round(near).astype(int) + radius + 1, image.shape)
    window = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    weights = np.where(window > 0.05 * window.max(), window, 0.0)
    grid = np.indices(window.shape).reshape(3, -1)
    return (grid * weights.ravel()).sum(axis=1) / weights.sum() + lo


def assert_markers_follow(data: dict, names=NAMES, tolerance: float = 0.1):
    data = LandmarksToVoxeld()(data)
    image = data["image"][0].numpy()
    for name, voxel in zip(names, data["landmarks"]):
        assert np.all(np.isfinite(voxel)), name
        centroid = marker_centroid(image, voxel)
        assert np.linalg.norm(centroid - voxel) < tolerance, (name, centroid, voxel)


def run(steps, case, seed=0):
    pipeline = Compose(steps)
    pipeline.set_random_state(seed)
    return pipeline(dict(case))


def test_load_gives_world_to_voxel_exactly(case):
    data = run(load_steps(), case)
    assert_markers_follow(data, tolerance=0.05)


def test_orientation_and_spacing(case):
    data = run(load_steps() + [Orientationd("image", "RAS", labels=None), Spacingd("image", (1.1, 1.1, 1.1))], case)
    assert data["image"].shape[1:] != SHAPE
    assert_markers_follow(data)


def test_pad_and_landmark_crop(case):
    steps = load_steps() + [
        SpatialPadd("image", (48, 48, 48)),
        RandLandmarkCropd("image", roi_size=(24, 24, 24), landmark_ratio=1.0),
    ]
    for seed in range(4):
        data = run(steps, case, seed)
        assert data["image"].shape[1:] == (24, 24, 24)
        voxels = LandmarksToVoxeld()(data)["landmarks"]
        inside = [np.all((v >= 2) & (v <= 21)) for v in voxels]
        assert any(inside), "landmark_ratio=1 must centre the crop near a landmark"
        name = NAMES[int(np.argmax(inside))]
        index = NAMES.index(name)
        assert_markers_follow({**data, "landmarks_world": data["landmarks_world"][index : index + 1]}, names=[name])


def test_random_affine_rotation_and_scaling(case):
    steps = load_steps() + [
        RandAffined("image", prob=1.0, rotate_range=[0.35] * 3, scale_range=[0.15] * 3, spatial_size=(44, 44, 44), mode="bilinear"),
    ]
    for seed in range(3):
        assert_markers_follow(run(steps, case, seed), tolerance=0.12)


def test_left_right_flip_swaps_paired_channels(case):
    steps = load_steps() + [Orientationd("image", "RAS", labels=None), RandFlipLandmarksd("image", spatial_axis=0, prob=1.0, left_right_pairs=PAIRS)]
    data = LandmarksToVoxeld()(run(steps, case))
    image = data["image"][0].numpy()
    left, right, mid = data["landmarks"]
    value = lambda v: image[tuple(np.round(v).astype(int))]
    # after the mirror the "Left" channel points at the marker that now looks left: the former right (dim) one
    assert value(left) == pytest.approx(0.5, abs=0.1)
    assert value(right) == pytest.approx(1.0, abs=0.15)
    assert_markers_follow(data)


def test_flip_on_another_axis_keeps_channels(case):
    steps = load_steps() + [Orientationd("image", "RAS", labels=None), RandFlipLandmarksd("image", spatial_axis=2, prob=1.0, left_right_pairs=PAIRS)]
    data = LandmarksToVoxeld()(run(steps, case))
    image = data["image"][0].numpy()
    assert image[tuple(np.round(data["landmarks"][0]).astype(int))] == pytest.approx(1.0, abs=0.15)
    assert_markers_follow(data)


def test_heatmap_target_and_mask(case):
    entry = dict(case)
    entry["landmarks"] = {k: v for k, v in case["landmarks"].items() if k != "Mid"}
    data = LandmarksToVoxeld()(run(load_steps(), entry))
    data = LandmarkHeatmapd(sigma=2.0)(data)
    assert data["label"].shape == (3, *SHAPE)
    assert data["label_mask"].tolist() == [1.0, 1.0, 0.0]
    assert float(data["label"][2].max()) == 0.0
    voxel = data["landmarks"][0]
    nearest = np.round(voxel).astype(int)
    expected = np.exp(-np.sum((nearest - voxel) ** 2) / (2 * 2.0**2))
    assert float(data["label"][0][tuple(nearest)]) == pytest.approx(expected, rel=1e-5)


def test_extraction_maps_back_to_input_world_and_voxel(case):
    """Predict from an exact heatmap in the preprocessed grid; positions come back in the input's world and voxels."""
    data = run(load_steps() + [Orientationd("image", "RAS", labels=None), Spacingd("image", (1.2, 1.2, 1.2))], case)
    data = LandmarksToVoxeld()(data)
    data["pred"] = torch.from_numpy(render_heatmaps(data["landmarks"], data["image"].shape[1:], sigma=2.0))
    out = ExtractLandmarksd(left_right_pairs=PAIRS, found_threshold=0.5)(data)
    np.testing.assert_allclose(out["pred_landmarks_world"], data["landmarks_world"], atol=1e-3)
    original_voxels = np.array([[30.8, 19.1, 14.7], [9.3, 20.6, 13.2], [20.4, 8.7, 22.9]])
    np.testing.assert_allclose(out["pred_landmarks_input_voxel"], original_voxels, atol=1e-3)
    assert out["pred_found"].tolist() == [True, True, True]


def test_extraction_corrects_a_crossed_pair(case):
    data = run(load_steps() + [Orientationd("image", "RAS", labels=None)], case)
    data = LandmarksToVoxeld()(data)
    crossed = data["landmarks"][[1, 0, 2]]  # the network put "Left" on the right structure and vice versa
    scores = torch.tensor([0.9, 0.6, 0.8])[:, None, None, None]
    data["pred"] = torch.from_numpy(render_heatmaps(crossed, data["image"].shape[1:], sigma=2.0)) * scores
    out = ExtractLandmarksd(left_right_pairs=PAIRS)(data)
    np.testing.assert_allclose(out["pred_landmarks_world"], data["landmarks_world"], atol=1e-3)
    _, raw_scores = extract_landmarks(data["pred"])
    np.testing.assert_allclose(out["pred_scores"], raw_scores[[1, 0, 2]])  # scores travel with their positions
    assert raw_scores[0] > 0.8 and raw_scores[1] < 0.6


def test_landmark_crop_balances_clusters_against_isolated_landmarks():
    crop = RandLandmarkCropd("image", roi_size=(20, 20, 20), landmark_ratio=1.0)  # reach: 8 voxels per axis
    cluster = [[16, 16, 16], [17, 15, 16], [15, 17, 17], [16, 16, 18]]
    voxels = np.array(cluster + [[50, 50, 50]], dtype=float)
    # each cluster member has 4 landmarks within reach (itself included), the isolated one 1: 1/4 : 1 before normalising
    np.testing.assert_allclose(crop.balanced_weights(voxels), [0.125, 0.125, 0.125, 0.125, 0.5])
    crop.set_random_state(0)
    centres = np.array([crop.choose_center(np.array([64, 64, 64]), voxels) for _ in range(400)])
    holds_isolated = np.all(np.abs(centres - 50) <= 10, axis=1).mean()
    holds_cluster = np.all(np.abs(centres - 16) <= 10, axis=1).mean()
    # uniform choice would give 1/5 vs 4/5; balanced gives 1/2 each
    assert 0.4 < holds_isolated < 0.6 and 0.4 < holds_cluster < 0.6
