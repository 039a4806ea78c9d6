"""Contrast randomisation (scripts.intensity_randomization): per-label intensities against hand-computed
values, replayable draws, points and geometry untouched, brain masks, label maps read and resampled onto the
preprocessed grid through the image reader, and the planner's decision to turn it on."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from scripts.bundle_configs import TISSUE_LABELS, augmentation
from scripts.errors import LandmarkDataError
from scripts.image_io import SimpleITKReader
from scripts.intensity_randomization import (
    BRAIN_MASK_META,
    LoadTissueLabelsd,
    RandSkullStripd,
    RandTissueContrastd,
    intensity_classes,
    present_labels,
)
from scripts.data import load_datalist
from scripts.planning.decisions import CONTRAST_SUBJECTS, determine_contrast_randomization
from scripts.planning.fingerprint import count_subjects


def patch(brain_mask: bool = True):
    """A 2x2x2 patch: label 3 holds 0, 2, 0, 2 (mean 1, std 1), label -1 holds 10, 10, 10 (flat), label 0 one voxel 5."""
    image = torch.tensor([0.0, 2.0, 0.0, 2.0, 10.0, 10.0, 10.0, 5.0]).reshape(1, 2, 2, 2)
    labels = torch.tensor([3, 3, 3, 3, -1, -1, -1, 0], dtype=torch.int16).reshape(1, 2, 2, 2)
    affine = torch.tensor([[2.0, 0, 0, -10], [0, 2.0, 0, 4], [0, 0, 2.0, 1], [0, 0, 0, 1]], dtype=torch.float64)
    world = np.array([[1.0, 2.0, 3.0], [np.nan, np.nan, np.nan]])
    return {"image": MetaTensor(image, affine=affine), TISSUE_LABELS: MetaTensor(labels, meta={BRAIN_MASK_META: brain_mask}),
            "landmarks_world": world}


def test_intensity_classes_are_equal_count_bands_of_the_nonzero_voxels():
    image = np.concatenate([np.zeros(4), np.arange(1.0, 13.0)])  # bands edges at 4.67 and 8.33
    expected = np.array([0] * 4 + [-1] * 4 + [-2] * 4 + [-3] * 4)
    np.testing.assert_array_equal(intensity_classes(image, 3), expected)
    assert intensity_classes(np.zeros(5), 3).tolist() == [0] * 5


def test_per_label_intensities_follow_the_fixed_draw():
    transform = RandTissueContrastd(prob=1.0, std_range=(0.05, 0.2)).set_random_state(11)
    out = transform(patch())["image"].numpy().ravel()
    rng = np.random.RandomState(11)
    assert rng.rand() < 1.0  # the prob draw
    means, stds = rng.uniform(0, 1, 3), rng.uniform(0.05, 0.2, 3)  # for the sorted labels -1, 0, 3
    np.testing.assert_allclose(transform.means, means)
    # by hand: label 3 -> mean + std * (x - 1) / 1; label -1 is flat -> its mean; label 0 (one voxel) -> its mean
    new = np.array([means[2] - stds[2], means[2] + stds[2]] * 2 + [means[0]] * 3 + [means[1]])
    original = np.array([0, 2, 0, 2, 10, 10, 10, 5.0])
    expected = (new - new.mean()) / new.std() * original.std() + original.mean()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.mean() == pytest.approx(original.mean(), abs=1e-5) and out.std() == pytest.approx(original.std(), abs=1e-4)
    label_means = [out[4:7].mean(), out[7], out[:4].mean()]
    assert np.argsort(label_means).tolist() == np.argsort(means).tolist(), "the tissues take the drawn order of brightness"


def test_a_draw_replays_and_points_and_geometry_stay():
    data = patch()
    transform = RandTissueContrastd(prob=1.0)
    first = transform.set_random_state(3)(data)
    np.testing.assert_array_equal(transform.apply(data)["image"].numpy(), first["image"].numpy())  # the stored draw
    again = transform.set_random_state(3)(data)
    np.testing.assert_array_equal(again["image"].numpy(), first["image"].numpy())
    other = transform.set_random_state(4)(data)
    assert not np.allclose(other["image"].numpy(), first["image"].numpy())
    assert first["image"].shape == data["image"].shape and first["image"].dtype == torch.float32
    np.testing.assert_array_equal(first["image"].affine.numpy(), data["image"].affine.numpy())
    assert first["landmarks_world"] is data["landmarks_world"]
    np.testing.assert_array_equal(first[TISSUE_LABELS].numpy(), data[TISSUE_LABELS].numpy())


def test_prob_zero_and_missing_labels_leave_the_image():
    data = patch()
    np.testing.assert_array_equal(RandTissueContrastd(prob=0.0)(data)["image"].numpy(), data["image"].numpy())
    without = {"image": data["image"]}
    transform = RandTissueContrastd(prob=1.0).set_random_state(0)
    assert transform(without)["image"] is data["image"]
    with pytest.raises(ValueError, match="call randomize"):
        transform.randomize([3]), transform.apply(data)


def test_present_labels_counts_without_sorting_voxels():
    assert present_labels(torch.tensor([[5, -2, 5, 0, -2]])) == [-2, 0, 5]


def test_skull_strip_zeroes_outside_the_brain_only_where_a_map_gave_one():
    stripped = RandSkullStripd(prob=1.0).set_random_state(0)(patch())
    assert stripped["image"].numpy().ravel().tolist() == [0, 2, 0, 2, 0, 0, 0, 0]
    np.testing.assert_array_equal(stripped["image"].affine.numpy(), patch()["image"].affine.numpy())
    transform = RandSkullStripd(prob=1.0).set_random_state(0)
    state = transform.R.get_state()[2]
    untouched = transform(patch(brain_mask=False))
    assert untouched["image"].numpy().ravel().tolist() == [0, 2, 0, 2, 10, 10, 10, 5]
    assert transform.R.get_state()[2] == state, "no brain mask: no draw"


def _write(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def test_label_map_is_read_and_resampled_onto_the_preprocessed_grid(tmp_path):
    # image: 12^3 at 2 mm, stored LAS; label map: 24^3 at 1 mm, RAS, labels by world x (2 left of x = 0, 7 right)
    image_affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    image_affine[:3, 3] = [11.0, -11.0, -11.0]
    rng = np.random.default_rng(0)
    image = _write(tmp_path / "image.nii.gz", rng.uniform(1, 100, (12, 12, 12)).astype(np.float32), image_affine)
    label_affine = np.eye(4)
    label_affine[:3, 3] = [-11.5, -11.5, -11.5]
    world_x = -11.5 + np.arange(24)
    labels = np.broadcast_to(np.where(world_x > 0, 7, 2)[:, None, None], (24, 24, 24)).astype(np.int16)
    labels = labels.copy()
    labels[:, :, :3] = 0  # the map leaves the bottom slices unlabelled
    label = _write(tmp_path / "label.nii.gz", labels, label_affine)
    load = Compose([
        LoadImaged("image", reader=SimpleITKReader(), image_only=True), EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS", labels=None), Spacingd("image", pixdim=(3.0, 3.0, 3.0)),
        LoadTissueLabelsd(intensity_classes=4),
    ])
    d = load({"image": image, "label": label})
    assert "label" not in d, "the path is consumed: the batch key 'label' is the heatmap target"
    tissue = d[TISSUE_LABELS]
    assert tissue.shape == d["image"].shape and tissue.dtype == torch.int16 and tissue.meta[BRAIN_MASK_META]
    affine = d["image"].affine.numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in tissue.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    codes = tissue.numpy().reshape(-1)
    inside = (np.abs(world) < 10).all(axis=1) & (np.abs(world[:, 0]) > 1) & (world[:, 2] > -8)
    np.testing.assert_array_equal(codes[inside], np.where(world[inside, 0] > 0, 7, 2))
    below = world[:, 2] < -10  # the label map's slices 0-2 (z <= -9.5 mm) are 0
    assert below.any() and (codes[below] < 0).all(), "unlabelled voxels get intensity-band codes"
    without = load({"image": image})
    assert not without[TISSUE_LABELS].meta[BRAIN_MASK_META] and set(np.unique(without[TISSUE_LABELS].numpy())) <= {0, -1, -2, -3, -4}


@pytest.mark.parametrize("array, problem", [
    (np.full((4, 4, 4), -1, dtype=np.int16), "integer labels"),
    (np.full((4, 4, 4), 1.5, dtype=np.float32), "integer labels"),
    (np.zeros((4, 4, 4, 2), dtype=np.int16), "one 3D image"),
])
def test_a_bad_label_map_is_one_line_naming_it(tmp_path, array, problem):
    image = _write(tmp_path / "image.nii.gz", np.ones((4, 4, 4), dtype=np.float32), np.eye(4))
    label = _write(tmp_path / "bad_label.nii.gz", array, np.eye(4))
    loaded = Compose([LoadImaged("image", reader=SimpleITKReader(), image_only=True), EnsureChannelFirstd("image")])({"image": image})
    with pytest.raises(LandmarkDataError, match=problem) as error:
        LoadTissueLabelsd()({**loaded, "label": label})
    assert "bad_label.nii.gz" in str(error.value) and "\n" not in str(error.value)


def test_datalist_label_paths_resolve_like_images(tmp_path):
    _write(tmp_path / "image.nii.gz", np.ones((4, 4, 4), dtype=np.float32), np.eye(4))
    _write(tmp_path / "aseg.nii.gz", np.ones((4, 4, 4), dtype=np.int16), np.eye(4))
    entry = {"image": "image.nii.gz", "landmarks": {"A": [1, 1, 1]}}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{**entry, "label": "aseg.nii.gz"}, entry]}))
    training = load_datalist(tmp_path / "datalist.json").section("training")
    assert training[0]["label"] == str(tmp_path / "aseg.nii.gz") and "label" not in training[1]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{**entry, "label": "missing.nii.gz"}]}))
    with pytest.raises(LandmarkDataError, match="missing.nii.gz: label map not found"):
        load_datalist(tmp_path / "datalist.json")


def test_training_list_pads_crops_randomizes_and_drops_the_labels():
    augment = {"tissue_contrast_prob": 0.5, "skull_strip_prob": 0.2, "tissue_contrast_std": [0.01, 0.1], "intensity_classes": 6}
    targets = [t["_target_"].rsplit(".", 1)[-1] for t in augmentation(_configuration(augment))]
    assert targets[:6] == ["LoadTissueLabelsd", "SpatialPadd", "RandLandmarkCropd", "RandTissueContrastd", "RandSkullStripd", "DeleteItemsd"]
    assert targets[6] == "RandAffined", "intensity only, before the spatial steps: the labels need only the pad and the crop"
    off = augmentation(_configuration({"tissue_contrast_prob": 0.0, "skull_strip_prob": 0.0}))
    assert not any("intensity_randomization" in t["_target_"] for t in off) and off[0]["keys"] == "image"


def _configuration(contrast: dict) -> dict:
    augment = {"rotation_prob": 0.5, "scale_prob": 0.5, "rotation_deg": [20.0] * 3, "scale_range": [0.85, 1.15], "lr_flip_prob": 0.5,
               "elastic_prob": 0.3, "elastic_magnitude_mm": [2.0, 4.0], "elastic_control_spacing_mm": 24.0, "low_resolution_prob": 0.25,
               "low_resolution_zoom": [1.0, 2.0], "bias_field_prob": 0.3, "bias_field_coeff": 0.3, "blur_prob": 0.2, "blur_sigma": [0.5, 1.0],
               "brightness_prob": 0.3, "brightness_range": [0.75, 1.25], "contrast_prob": 0.3, "contrast_range": [0.75, 1.25],
               "gamma_prob": 0.3, "gamma_range": [0.7, 1.5], "noise_prob": 0.2, "noise_std": 0.1, **contrast}
    return {"augmentation": augment, "landmark_sampling_ratio": 0.67}


def _fingerprint(modality="MR", subjects=1, channels=1):
    return {"n_training": subjects, "n_training_subjects": subjects, "modality": [modality] * channels, "in_channels": channels}


def test_planner_turns_contrast_randomisation_on_for_few_mr_subjects():
    on, reason = determine_contrast_randomization(_fingerprint("MR", 3))
    assert on["tissue_contrast_prob"] > 0 and on["skull_strip_prob"] > 0 and "on: MR with 3 distinct" in reason
    off, reason = determine_contrast_randomization(_fingerprint("MR", CONTRAST_SUBJECTS))
    assert off["tissue_contrast_prob"] == off["skull_strip_prob"] == 0 and f"{CONTRAST_SUBJECTS} distinct" in reason
    assert determine_contrast_randomization(_fingerprint("CT", 1))[0]["tissue_contrast_prob"] == 0
    assert determine_contrast_randomization(_fingerprint("MR", 1, channels=2))[0]["tissue_contrast_prob"] == 0
    assert determine_contrast_randomization(_fingerprint("CT", 100), "on")[0]["tissue_contrast_prob"] > 0
    assert determine_contrast_randomization(_fingerprint("MR", 1), "off")[0]["tissue_contrast_prob"] == 0
    with pytest.raises(ValueError):
        determine_contrast_randomization(_fingerprint(), "sometimes")


def test_subjects_count_by_subject_then_anatomy_then_image():
    entries = [{"image": "a", "subject": "s1"}, {"image": "b", "subject": "s1"}, {"image": "c", "anatomy": "fsaverage"},
               {"image": "d", "anatomy": "fsaverage"}, {"image": "e"}, {"image": "f"}]
    assert count_subjects(entries) == 4
