"""The coarse-then-fine inferer places fine patches around coarse positions and assembles exact heatmaps.

The "networks" are identity maps over images whose channel i already holds landmark i's Gaussian, so
every number the inferer produces can be predicted by hand.
"""

import numpy as np
import pytest
import torch

from scripts.cascade import CascadeInferer, coarse_shape, coarse_to_fine, cover_with_patches
from scripts.errors import LandmarkConfigError
from scripts.heatmaps import extract_landmarks, render_heatmaps
from scripts.geometry import voxel_to_world
from scripts.plans import stage_configuration
from scripts.transforms import affine_of

SHAPE = (90, 100, 80)
class Copy(torch.nn.Module):
    """An identity "network" that, like a real one, returns a new tensor (MONAI's sliding window
    weights its window outputs in place, which would corrupt a view of the input)."""

    def forward(self, x):
        return x.clone()


def image_voxels(heatmaps) -> np.ndarray:
    """Peaks of one item's cascade heatmaps, mapped from the patches' box to the image through their affine
    (the inputs here are plain tensors, so the image's affine is the identity)."""
    voxels, _ = extract_landmarks(heatmaps)
    return voxel_to_world(affine_of(heatmaps), voxels)


POINTS = np.array([[20.3, 30.6, 40.2], [24.8, 33.1, 38.7], [70.2, 80.4, 20.9], [45.5, 50.5, 60.1]])


def test_coarse_grid_maps_back_linearly():
    small = coarse_shape(SHAPE, [1, 1, 1], [4, 4, 4])
    assert small == [23, 26, 21]
    np.testing.assert_allclose(coarse_to_fine([[0, 0, 0], [22, 25, 20]], SHAPE, small), [[0, 0, 0], [89, 99, 79]])


def test_patches_cover_every_landmark_with_margin():
    patches = cover_with_patches(POINTS, [32, 32, 32], SHAPE, [6, 6, 6])
    covered = sorted(i for _, members in patches for i in members)
    assert covered == [0, 1, 2, 3]
    assert len(patches) == 3, "the two nearby landmarks share one patch"
    for start, members in patches:
        for i in members:
            assert np.all(POINTS[i] >= start + 6) and np.all(POINTS[i] <= start + 31 - 6)


def test_cascade_recovers_positions_from_fine_patches():
    image = torch.from_numpy(render_heatmaps(POINTS, SHAPE, sigma=3.0))[None]
    inferer = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [32, 32, 32], sigma=3.0)
    heatmaps = inferer(image, Copy())
    np.testing.assert_allclose(image_voxels(heatmaps[0]), POINTS, atol=1e-3)
    # the heatmaps span only the box of the patches the cover chose (margin min(3 sigma, 32 / 4) = 8)
    starts = np.array([start for start, _ in cover_with_patches(POINTS, [32] * 3, SHAPE, [8] * 3)])
    assert list(heatmaps.shape) == [1, 4, *(starts.max(0) + 32 - starts.min(0))]
    np.testing.assert_array_equal(affine_of(heatmaps[0])[:3, 3], starts.min(0))
    assert heatmaps[0].numel() < 0.7 * 4 * np.prod(SHAPE), "landmark-local: less than the image"


def test_without_a_coarse_model_it_is_a_sliding_window():
    point = np.array([[20.3, 18.6, 22.2]])
    image = torch.from_numpy(render_heatmaps(point, (40, 40, 40), sigma=3.0))[None]
    inferer = CascadeInferer(None, [1, 1, 1], [3, 3, 3], [16, 16, 16], [24, 24, 24], sigma=3.0)
    found, _ = extract_landmarks(inferer(image, Copy())[0])
    np.testing.assert_allclose(found, point, atol=1e-3)


def test_stage_configuration_swaps_in_the_coarse_numbers():
    configuration = {"spacing": [1, 1, 1], "patch_size": [96] * 3, "kernel_size": [[3] * 3] * 5, "strides": [[1] * 3] + [[2] * 3] * 4,
                     "filters": [16, 32, 64, 128, 128], "batch_size": 2, "sigma_voxels": 4.0,
                     "cascade": {"coarse_spacing": [4, 4, 4], "coarse_patch_size": [64] * 3, "coarse_kernel_size": [[3] * 3] * 4,
                                 "coarse_strides": [[1] * 3] + [[2] * 3] * 3, "coarse_filters": [16, 32, 64, 128],
                                 "coarse_batch_size": 2, "coarse_sigma_voxels": 2.0}}
    coarse = stage_configuration(configuration, "coarse")
    assert coarse["spacing"] == [4, 4, 4] and coarse["patch_size"] == [64] * 3 and coarse["sigma_voxels"] == 2.0
    assert stage_configuration(configuration, "fine") is configuration
    with pytest.raises(LandmarkConfigError, match="no cascade"):
        stage_configuration({**configuration, "cascade": None}, "coarse")


class AddDecoy(torch.nn.Module):
    """A fine "network" that also fires, brighter, 10 voxels away along x: a look-alike structure in the patch."""

    def forward(self, x):
        return x.clone() + 1.5 * torch.roll(x, shifts=10, dims=2)


def test_fine_peak_is_searched_near_the_coarse_position():
    point = np.array([[30.2, 40.6, 35.4]])
    image = torch.from_numpy(render_heatmaps(point, (80, 80, 80), sigma=3.0))[None]
    near = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [48, 48, 48], sigma=3.0, search_radius=6.0)
    np.testing.assert_allclose(image_voxels(near(image, AddDecoy())[0]), point, atol=0.05)
    anywhere = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [48, 48, 48], sigma=3.0, search_radius=0)
    decoy = image_voxels(anywhere(image, AddDecoy())[0])
    assert abs(decoy[0][0] - (point[0][0] + 10)) < 0.5, "without the search ball the brighter look-alike wins"


def test_patch_cover_takes_the_most_landmarks_per_patch():
    """x = 20, 35, 50 with 32-voxel patches and margin 6 (a landmark must sit in [start+6, start+25]): a patch
    starting at x 10..14 holds both 20 and 35, so two patches suffice; centring on each landmark takes three."""
    points = np.array([[20.0, 40.0, 40.0], [35.0, 40.0, 40.0], [50.0, 40.0, 40.0]])
    patches = cover_with_patches(points, [32, 32, 32], (80, 80, 80), [6, 6, 6])
    assert [members for _, members in patches] == [[0, 1], [2]]
    first, second = patches[0][0], patches[1][0]
    assert 10 <= first[0] <= 14 and list(first[1:]) == [24, 24], "y and z centred on the landmarks"
    assert list(second) == [34, 24, 24], "a lone landmark gets a centred patch"


def test_batched_fine_windows_give_the_same_heatmaps():
    image = torch.from_numpy(render_heatmaps(POINTS, SHAPE, sigma=3.0))[None]
    one = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [32, 32, 32], sigma=3.0)(image, Copy())
    batched = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [32, 32, 32], sigma=3.0, sw_batch_size=4)(image, Copy())
    assert torch.equal(one, batched)


def test_a_batch_shares_one_box_and_each_item_keeps_its_landmarks():
    other = POINTS + np.array([5.0, -8.0, 6.0])
    images = torch.from_numpy(np.stack([render_heatmaps(p, SHAPE, sigma=3.0) for p in (POINTS, other)]))
    heatmaps = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [32, 32, 32], sigma=3.0)(images, Copy())
    for item, points in enumerate((POINTS, other)):
        voxels, _ = extract_landmarks(heatmaps[item])
        np.testing.assert_allclose(voxel_to_world(affine_of(heatmaps), voxels), points, atol=1e-3)


def test_extraction_reads_the_heatmaps_own_grid():
    """Cascade heatmaps on a box at (10, 20, 30) of an image with 2 mm voxels: the world position comes from the
    heatmaps' affine; pred_landmarks are in the image's grid."""
    from monai.data import MetaTensor

    from scripts.transforms import ExtractLandmarksd

    image_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image_affine[:3, 3] = [-50, -60, -40]
    box_affine = image_affine.copy()
    box_affine[:3, 3] += 2.0 * np.array([10, 20, 30])
    in_box = np.array([[12.25, 7.5, 9.0]])
    heatmaps = MetaTensor(torch.from_numpy(render_heatmaps(in_box, (32, 32, 32), sigma=3.0)), affine=torch.as_tensor(box_affine))
    image = MetaTensor(torch.zeros(1, 60, 70, 80), affine=torch.as_tensor(image_affine))
    out = ExtractLandmarksd()({"image": image, "pred": heatmaps})
    np.testing.assert_allclose(out["pred_landmarks"], in_box + [10, 20, 30], atol=1e-3)
    np.testing.assert_allclose(out["pred_landmarks_world"], [[-50 + 2 * 22.25, -60 + 2 * 27.5, -40 + 2 * 39.0]], atol=2e-3)


def test_coarse_positions_travel_with_the_heatmaps_to_the_world():
    """The coarse stage's positions ride in the heatmaps' meta data through MONAI's decollation, and ExtractLandmarksd
    maps them through the image's affine (2 mm voxels, shifted origin) for the coarse-stage check."""
    from monai.data import MetaTensor, decollate_batch, list_data_collate

    from scripts.transforms import ExtractLandmarksd

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-50, -60, -40]
    image = MetaTensor(torch.from_numpy(render_heatmaps(POINTS, SHAPE, sigma=3.0)), affine=torch.as_tensor(affine))
    batch = list_data_collate([image])  # as the evaluator's DataLoader hands it over
    heatmaps = CascadeInferer(Copy(), [1, 1, 1], [3, 3, 3], [32, 32, 32], [32, 32, 32], sigma=3.0)(batch, Copy())
    coarse = heatmaps.meta["coarse_landmarks"]
    assert tuple(coarse.shape) == (1, 4, 3)
    np.testing.assert_allclose(coarse[0].numpy(), POINTS, atol=1.0)  # a 3-voxel coarse grid places each within a voxel
    pred = decollate_batch(heatmaps)[0]
    out = ExtractLandmarksd()({"image": decollate_batch(batch)[0], "pred": pred})
    np.testing.assert_allclose(out["pred_coarse_landmarks_world"], coarse[0].numpy() * 2.0 + [-50, -60, -40], atol=1e-9)
    np.testing.assert_allclose(out["pred_landmarks_world"], POINTS * 2.0 + [-50, -60, -40], atol=2e-3)
