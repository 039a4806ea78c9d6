"""The planner on three synthetic datasets written as real NIfTI + landmark files, plus its pure rules."""

import json

import nibabel as nib
import numpy as np
import pytest

from scripts.errors import LandmarkDataError
from scripts.data import load_datalist
from scripts.landmark_io import write_landmarks
from scripts.planning import estimate_training_memory_bytes, fingerprint_dataset, make_plans
from scripts.planning.decisions import (
    GIB,
    determine_cascade,
    determine_folds,
    determine_patch_and_network,
    determine_sigma,
    determine_target_spacing,
    network_topology,
)
from scripts.landmark_names import name_variants
from scripts.planning.fingerprint import left_right_candidates
from scripts.planning.memory import count_parameters, estimate_inference_memory_bytes

MIDLINE = {  # RAS mm around the image centre; x = 0 is the mid-sagittal plane
    "AC": (0, -7, 0), "PC": (0, -21, 0), "GENU": (0, 7, 0), "SPLE": (0, 21, 0), "ICS": (0, -7, 14), "PMJ": (0, 7, -14),
}
PAIRS = {  # left name, right name, (|x|, y, z): left at -|x|, right at +|x|
    ("LSLMS", "RSLMS"): (14, -21, -14),
    ("Orbitale_L", "Orbitale_R"): (14, -7, -14),
    ("L superior LMS", "R superior LMS"): (14, 7, 14),
    ("left_eye", "right_eye"): (14, 21, 14),
    ("LLVAC", "RLVAC"): (28, -7, 0),
    ("Porion_l", "Porion_r"): (28, 7, 0),
    ("LeftEar", "RightEar"): (28, 21, 0),
}
DECOY = {"L_decoy": (0, 21, -14), "R_decoy": (0, -21, 14)}  # named like a pair, but lies along y on the midline


def head_landmarks():
    points = {name: np.array(p, float) for name, p in MIDLINE.items()}
    for (left, right), (x, y, z) in PAIRS.items():
        points[left], points[right] = np.array([-x, y, z], float), np.array([x, y, z], float)
    points.update({name: np.array(p, float) for name, p in DECOY.items()})
    return points


def save_nifti(path, data, spacing, centre=(0.0, 0.0, 0.0)):
    """RAS-aligned NIfTI whose voxel centre of the volume sits at world ``centre``."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(centre) - (np.asarray(data.shape[:3]) - 1) / 2 * np.asarray(spacing)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def write_datalist(root, entries, **extra):
    (root / "datalist.json").write_text(json.dumps({**extra, "training": entries}))
    return load_datalist(root / "datalist.json")


def ellipsoid(shape, spacing, radii_mm):
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, radii_mm)) <= 1.0


def mr_head_dataset(root, n_cases=4):
    """1 mm MR-like heads 64x72x60: background 0, tissue ~100; landmarks mirror-symmetric about x = 0."""
    rng = np.random.default_rng(0)
    shape, spacing = (64, 72, 60), (1.0, 1.0, 1.0)
    head = ellipsoid(shape, spacing, (30, 34, 28))
    entries = []
    for case in range(n_cases):
        image = np.where(head, rng.normal(100, 10, shape), 0).astype(np.int16)
        shift = rng.uniform(-2, 2, 3)
        save_nifti(root / f"head{case}.nii.gz", image, spacing, centre=shift)
        points = {name: p + shift + rng.normal(0, 0.3, 3) for name, p in head_landmarks().items()}
        write_landmarks(root / f"head{case}.json", points)
        entries.append({"image": f"head{case}.nii.gz", "landmarks": f"head{case}.json"})
    return write_datalist(root, entries)


CT_Z_SPACINGS = (5.0, 5.0, 4.0, 6.0, 3.0)


def ct_dataset(root):
    """0.7 x 0.7 x {3..6} mm CT-like volumes in HU: air -1000, tissue 40, a bone ring 700."""
    rng = np.random.default_rng(1)
    entries = []
    for case, z_spacing in enumerate(CT_Z_SPACINGS):
        spacing = (0.7, 0.7, z_spacing)
        shape = (96, 96, int(round(60 / z_spacing)))
        body = ellipsoid(shape, spacing, (30, 28, 40))
        inner = ellipsoid(shape, spacing, (25, 23, 40))
        image = np.full(shape, -1000.0) + rng.normal(0, 20, shape)
        image[body] = 700 + rng.normal(0, 50, body.sum())
        image[inner] = 40 + rng.normal(0, 15, inner.sum())
        save_nifti(root / f"ct{case}.nii.gz", image.astype(np.int16), spacing)
        points = {"A": (-10, 0, 0), "B": (10, 0, 0), "C": (0, 12, -10), "D": (0, -12, 10)}
        entries.append({"image": f"ct{case}.nii.gz", "landmarks": {k: list(v) for k, v in points.items()}})
    return write_datalist(root, entries, left_right_pairs=[{"left": "A", "right": "B"}])


N_MANY = 60


def many_landmarks_dataset(root):
    """3 cases of 40^3 at 1.5 mm with 60 landmarks; case k leaves out every landmark i with i % 7 == k."""
    rng = np.random.default_rng(2)
    names = [f"P{i:02d}" for i in range(N_MANY)]
    base = rng.uniform(-25, 25, (N_MANY, 3))
    entries = []
    for case in range(3):
        image = (rng.normal(50, 5, (40, 40, 40)) * ellipsoid((40, 40, 40), (1.5,) * 3, (28, 28, 28))).astype(np.float32)
        save_nifti(root / f"m{case}.nii.gz", image, (1.5, 1.5, 1.5))
        points = {name: base[i] + rng.normal(0, 0.5, 3) for i, name in enumerate(names) if i % 7 != case}
        write_landmarks(root / f"m{case}.fcsv", points)
        entries.append({"image": f"m{case}.nii.gz", "landmarks": f"m{case}.fcsv"})
    return write_datalist(root, entries, landmark_names=names)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    datalist = mr_head_dataset(tmp_path_factory.mktemp("heads"))
    fingerprint = fingerprint_dataset(datalist)
    return datalist, fingerprint, make_plans(fingerprint, "cpu")


@pytest.fixture(scope="module")
def cts(tmp_path_factory):
    fingerprint = fingerprint_dataset(ct_dataset(tmp_path_factory.mktemp("ct")))
    return fingerprint, make_plans(fingerprint, "cpu")


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    fingerprint = fingerprint_dataset(many_landmarks_dataset(tmp_path_factory.mktemp("many")))
    return fingerprint, make_plans(fingerprint, "cpu", memory_gb=2.0)


# ----------------------------------------------------------------------------- (a) MR heads


def test_heads_pairs_found_by_name_and_position(heads):
    _, fingerprint, plans = heads
    expected = [{"left": left, "right": right} for left, right in PAIRS]
    assert plans["configuration"]["left_right_pairs"] == expected
    rejected = fingerprint["left_right_check"]["rejected"]
    assert [(r["left"], r["right"]) for r in rejected] == [("L_decoy", "R_decoy")]
    assert "not mostly along x" in rejected[0]["reason"]
    orbitale = next(p for p in fingerprint["left_right_check"]["accepted"] if p["left"] == "Orbitale_L")
    assert orbitale["offset_mm"][0] == pytest.approx(28, abs=1.5)
    assert abs(orbitale["midline_deviation_mm"]) < 1.0


def test_heads_mr_spacing_sigma(heads):
    _, fingerprint, plans = heads
    config = plans["configuration"]
    assert fingerprint["modality"] == ["MR"] and config["modality"] == "MR"
    assert config["normalization"] == {"scheme": "zscore_per_image", "clip": None, "mean": None, "std": None}
    assert config["spacing"] == [1.0, 1.0, 1.0]
    assert config["sigma_voxels"] == [4.0, 4.0, 4.0] and config["sigma_mm"] == 4.0
    assert config["in_channels"] == 1 and len(config["landmark_names"]) == 22
    assert config["cascade"] is None  # the whole 64x72x60 head is < 8 patches
    assert config["augmentation"]["tier"] == "heavy"  # 4 cases
    assert config["augmentation"]["lr_flip_prob"] == 0.5  # pairs + every unpaired landmark on the midline
    assert fingerprint["images"][0]["shape_ras"] == [64, 72, 60]
    assert fingerprint["images"][0]["extent_mm"] == [64.0, 72.0, 60.0]


def test_heads_foreground_statistics(heads):
    _, fingerprint, _ = heads
    stats = fingerprint["images"][0]["intensity"][0]
    # background is exactly 0, tissue N(100, 10): threshold p1 + 10% of (p99 - p1) ~ 12, so only tissue counts
    assert stats["whole_min"] == 0 and stats["modality_hint"] == "MR"
    assert stats["foreground"]["mean"] == pytest.approx(100, abs=1.0)
    assert stats["foreground"]["std"] == pytest.approx(10, abs=1.0)
    assert stats["foreground_fraction"] == pytest.approx(ellipsoid((64, 72, 60), (1, 1, 1), (30, 34, 28)).mean(), abs=0.01)


def test_heads_landmark_statistics(heads):
    _, fingerprint, _ = heads
    ac = fingerprint["landmarks"]["AC"]
    assert ac["n_cases"] == 4
    assert ac["nearest_neighbour_mm"] == pytest.approx(14, abs=1.5)
    assert np.all(np.asarray(ac["std_mm"]) < 2.5)  # shifts up to 2 mm + 0.3 mm noise
    assert fingerprint["landmarks"]["Orbitale_L"]["midline_offset_mm"] == pytest.approx(14, abs=1.0)


def test_plans_are_deterministic_and_json(heads):
    datalist, fingerprint, plans = heads
    again = make_plans(fingerprint_dataset(datalist), "cpu")
    assert json.dumps(again, sort_keys=True) == json.dumps(plans, sort_keys=True)
    assert json.loads(json.dumps(plans)) == plans


def test_configuration_keys(heads):
    config = heads[2]["configuration"]
    assert list(config) == [
        "landmark_names", "left_right_pairs", "in_channels", "modality", "spacing", "normalization", "sigma_mm", "sigma_voxels",
        "patch_size", "batch_size", "kernel_size", "strides", "filters", "sw_overlap", "sw_batch_size", "tta_mirror_axes",
        "iterations_per_epoch", "epochs", "training_hours", "val_interval", "validation_cases", "learning_rate", "loss_foreground_weight", "landmark_sampling_ratio", "augmentation",
        "folds", "cascade",
    ]
    assert config["strides"][0] == [1, 1, 1] and len(config["strides"]) == len(config["kernel_size"]) == len(config["filters"])
    divisor = np.prod(config["strides"], axis=0)
    assert np.all(np.asarray(config["patch_size"]) % divisor == 0)
    assert config["filters"][0] == 16 and max(config["filters"]) <= 128  # cpu profile
    assert config["sw_overlap"] == 0.25
    assert all(isinstance(v, dict) and set(v) == {"value", "reason"} for v in heads[2]["decisions"].values())


# ----------------------------------------------------------------------------- (b) CT, anisotropic


def test_ct_detected_and_clipped_with_dataset_statistics(cts):
    fingerprint, plans = cts
    assert fingerprint["modality"] == ["CT"]
    assert all(image["intensity"][0]["modality_hint"] == "CT" for image in fingerprint["images"])
    norm = plans["configuration"]["normalization"]
    assert norm["scheme"] == "ct_clip_zscore"
    fg = fingerprint["channels"][0]["foreground"]
    assert norm["clip"] == [fg["p0_5"], fg["p99_5"]] and (norm["mean"], norm["std"]) == (fg["mean"], fg["std"])
    # foreground > -500 HU: tissue (40) and bone (700), never air
    assert -20 < norm["clip"][0] < 20 and 750 < norm["clip"][1] < 900
    assert 40 < norm["mean"] < 700
    # pairs given by the datalist are kept as given
    assert plans["configuration"]["left_right_pairs"] == [{"left": "A", "right": "B"}]
    assert fingerprint["left_right_pairs_source"] == "datalist"


def test_ct_anisotropic_spacing_and_strides(cts):
    fingerprint, plans = cts
    config = plans["configuration"]
    # z: median 5 mm / 0.7 > 3 and few slices -> 10th percentile of (3, 4, 5, 5, 6) = 3.4
    assert config["spacing"] == [0.7, 0.7, 3.4]
    assert config["kernel_size"][0] == [3, 3, 1]
    assert config["strides"][1] == [2, 2, 1]  # the fine axes are downsampled first
    assert [2, 2, 2] in config["strides"]
    assert config["augmentation"]["rotation_deg"] == [0.0, 0.0, 20.0]  # in-plane only
    assert config["augmentation"]["tier"] == "medium"  # 5 cases


def test_ct_folds(cts):
    folds = cts[1]["configuration"]["folds"]
    assert len(folds) == 5
    assert sorted(i for f in folds for i in f["val"]) == [0, 1, 2, 3, 4]
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"]) and sorted(fold["train"] + fold["val"]) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- (c) 60 landmarks


def test_many_landmark_counts(many):
    fingerprint, _ = many
    counts = [fingerprint["landmarks"][f"P{i:02d}"]["n_cases"] for i in range(N_MANY)]
    assert counts == [3 - (i % 7 < 3) for i in range(N_MANY)]
    assert fingerprint["images"][0]["n_landmarks"] == N_MANY - len(range(0, N_MANY, 7))


def test_many_landmarks_fit_budget(many):
    fingerprint, plans = many
    config = plans["configuration"]
    args = (config["in_channels"], N_MANY, config["kernel_size"], config["strides"], config["filters"])
    need = estimate_training_memory_bytes(config["patch_size"], config["batch_size"], *args)
    assert need <= 2.0 * GIB
    assert estimate_training_memory_bytes(config["patch_size"], config["batch_size"], config["in_channels"], 5, *args[2:]) < need
    assert plans["decisions"]["patch_and_network"]["value"]["estimated_training_memory_gb"] <= 2.0


def test_tighter_budget_shrinks_patch(many):
    fingerprint, plans = many
    tight = make_plans(fingerprint, "cpu", memory_gb=0.25)
    patch, tight_patch = plans["configuration"]["patch_size"], tight["configuration"]["patch_size"]
    assert np.prod(tight_patch) < np.prod(patch)
    c = tight["configuration"]
    need = estimate_training_memory_bytes(c["patch_size"], c["batch_size"], 1, N_MANY, c["kernel_size"], c["strides"], c["filters"])
    assert need <= 0.25 * GIB


# ----------------------------------------------------------------------------- errors


def test_error_no_training_cases(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.zeros((8, 8, 8), np.float32), (1, 1, 1))
    (tmp_path / "d.json").write_text(json.dumps({"testing": [{"image": "a.nii.gz"}]}))
    with pytest.raises(LandmarkDataError, match="no training cases"):
        fingerprint_dataset(load_datalist(tmp_path / "d.json"))


def test_error_image_not_3d(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.zeros((16, 16, 16), np.float32), (1, 1, 1))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    entries = [{"image": name, "landmarks": {"A": [0, 0, 0]}} for name in ("a.nii.gz", "flat.nii.gz")]
    with pytest.raises(LandmarkDataError, match=r"flat\.nii\.gz: 2D image"):
        fingerprint_dataset(write_datalist(tmp_path, entries))


def test_error_all_landmarks_outside(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.ones((16, 16, 16), np.float32), (1, 1, 1))
    entries = [{"image": "a.nii.gz", "landmarks": {"A": [100, 0, 0], "B": [0, -100, 0]}}]
    with pytest.raises(LandmarkDataError, match=r"a\.nii\.gz: all 2 landmarks lie outside the image") as error:
        fingerprint_dataset(write_datalist(tmp_path, entries))
    assert "\n" not in str(error.value)


def test_some_landmarks_outside_is_a_warning(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.ones((16, 16, 16), np.float32), (1, 1, 1))
    entries = [{"image": "a.nii.gz", "landmarks": {"A": [100, 0, 0], "B": [0, 0, 0]}}]
    fingerprint = fingerprint_dataset(write_datalist(tmp_path, entries))
    assert fingerprint["images"][0]["n_landmarks_outside"] == 1
    assert fingerprint["warnings"] == [f"{tmp_path / 'a.nii.gz'}: landmark(s) outside the image: A"]


def test_two_channel_input(tmp_path):
    rng = np.random.default_rng(3)
    save_nifti(tmp_path / "t1.nii.gz", rng.normal(100, 5, (24, 24, 24)).astype(np.float32), (1, 1, 1))
    ct = np.full((24, 24, 24), -1000.0)
    ct[4:20, 4:20, 4:20] = 40
    save_nifti(tmp_path / "ct.nii.gz", ct.astype(np.int16), (1, 1, 1))
    entries = [{"image": ["t1.nii.gz", "ct.nii.gz"], "landmarks": {"A": [0, 0, 0], "B": [5, 0, 0]}}]
    fingerprint = fingerprint_dataset(write_datalist(tmp_path, entries))
    assert fingerprint["in_channels"] == 2 and fingerprint["modality"] == ["MR", "CT"]
    assert fingerprint["images"][0]["image"] == ["t1.nii.gz", "ct.nii.gz"]
    config = make_plans(fingerprint, "cpu")["configuration"]
    assert config["in_channels"] == 2 and config["modality"] == "MR+CT"
    assert config["normalization"]["scheme"] == "zscore_per_image"
    assert config["folds"] == []  # one case


def test_error_channels_on_different_grids(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.ones((16, 16, 16), np.float32), (1, 1, 1))
    save_nifti(tmp_path / "b.nii.gz", np.ones((16, 16, 12), np.float32), (1, 1, 1))
    entries = [{"image": ["a.nii.gz", "b.nii.gz"], "landmarks": {"A": [0, 0, 0]}}]
    with pytest.raises(LandmarkDataError, match=r"b\.nii\.gz: shape \[16, 16, 12\] differs"):
        fingerprint_dataset(write_datalist(tmp_path, entries))


# ----------------------------------------------------------------------------- pure rules


def test_name_variants():
    assert name_variants(["AC", "ac", "P C", "PC", "LSLMS"]) == [["AC", "ac"], ["P C", "PC"]]



def test_side_names():
    names = ["LSLMS", "RSLMS", "Orbitale_L", "Orbitale_R", "L superior LMS", "R superior LMS", "left_eye", "right_eye",
             "eye_Left", "eye_Right", "CUL", "CUR", "Lateral", "Rateral", "L1", "R1", "l_x", "r_x"]
    assert left_right_candidates(names) == [
        ("LSLMS", "RSLMS"), ("Orbitale_L", "Orbitale_R"), ("L superior LMS", "R superior LMS"),
        ("left_eye", "right_eye"), ("eye_Left", "eye_Right"), ("l_x", "r_x"),
    ]


def synthetic_fingerprint(shape, spacing, n_landmarks=10, neighbour_mm=14.0, n_cases=4, in_channels=1):
    names = [f"L{i}" for i in range(n_landmarks)]
    return {
        "n_training": n_cases,
        "in_channels": in_channels,
        "modality": ["MR"] * in_channels,
        "images": [
            {"image": f"c{i}.nii.gz", "section": "training", "index": i, "shape_ras": list(shape), "spacing_ras": list(spacing)}
            for i in range(n_cases)
        ],
        "landmark_names": names,
        "landmarks": {n: {"nearest_neighbour_offset_mm": [neighbour_mm, 0.0, 0.0], "midline_offset_mm": 0.0} for n in names},
        "left_right_pairs": [],
    }


def test_sigma_rule():
    def sigma(mm, spacing=(1.0, 1.0, 1.0)):
        value = determine_sigma(synthetic_fingerprint((64,) * 3, spacing, neighbour_mm=mm), spacing)[0]
        assert value["voxels"] == [value["voxels"][0]] * 3 and value["mm"] == value["voxels"][0] * spacing[0]
        return value["voxels"][0]

    assert sigma(14) == 4.0  # default
    assert sigma(48) == 6.0  # far apart: d / 8
    assert sigma(200) == 8.0  # capped
    assert sigma(9) == 3.0  # close: d / 3
    assert sigma(3) == 2.0  # floor
    assert sigma(48, (2.0, 2.0, 2.0)) == 4.0  # the same landmarks in coarser voxels


def test_isotropic_spacing_is_the_median():
    fp = synthetic_fingerprint((64,) * 3, (1.0, 1.0, 1.0))
    fp["images"][0]["spacing_ras"] = [0.8, 0.8, 1.2]
    assert determine_target_spacing(fp)[0] == [1.0, 1.0, 1.0]


def test_topology_follows_nnunet():
    kernels, strides = network_topology([128, 128, 128], [1.0, 1.0, 1.0])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5 and kernels == [[3, 3, 3]] * 6
    kernels, strides = network_topology([160, 160, 32], [0.7, 0.7, 3.5])
    assert kernels[:3] == [[3, 3, 1], [3, 3, 1], [3, 3, 3]]
    assert strides[:4] == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2]]


def test_cascade_for_large_images():
    fp = synthetic_fingerprint((176, 240, 256), (1.0, 1.0, 1.0), neighbour_mm=14)
    network, _ = determine_patch_and_network(fp, [1.0, 1.0, 1.0], "cpu")
    cascade, reason = determine_cascade(fp, [1.0, 1.0, 1.0], network, "cpu")
    assert cascade is not None and "x the patch volume" in reason
    coverage = np.asarray(cascade["coarse_patch_size"]) * np.asarray(cascade["coarse_spacing"])
    assert np.all(coverage >= [176, 240, 256])  # the coarse patch sees the whole median head
    assert np.prod(cascade["coarse_patch_size"]) <= 1.5 * np.prod(network["patch_size"])
    assert cascade["coarse_strides"][0] == [1, 1, 1] and len(cascade["coarse_filters"]) == len(cascade["coarse_strides"])
    small = synthetic_fingerprint((64, 64, 64), (1.0, 1.0, 1.0))
    assert determine_cascade(small, [1.0, 1.0, 1.0], determine_patch_and_network(small, [1.0] * 3, "cpu")[0], "cpu")[0] is None


def test_gpu_profile_is_bigger_than_cpu():
    fp = synthetic_fingerprint((176, 240, 256), (1.0, 1.0, 1.0))
    cpu, gpu = make_plans(fp, "cpu")["configuration"], make_plans(fp, "gpu")["configuration"]
    assert np.prod(gpu["patch_size"]) > np.prod(cpu["patch_size"])
    assert gpu["filters"][0] == 32 and max(gpu["filters"]) == 320
    assert (gpu["iterations_per_epoch"], gpu["epochs"], gpu["sw_overlap"]) == (250, 1000, 0.5)
    need = estimate_training_memory_bytes(gpu["patch_size"], gpu["batch_size"], 1, 10, gpu["kernel_size"], gpu["strides"], gpu["filters"])
    assert need <= 10 * GIB


def test_folds_by_case_count():
    def folds(n):
        return determine_folds(synthetic_fingerprint((32,) * 3, (1.0,) * 3, n_cases=n))[0]

    assert folds(1) == []
    assert len(folds(2)) == 2 and len(folds(3)) == 3 and len(folds(7)) == 5
    for n in (2, 3, 7, 12):
        result = folds(n)
        assert sorted(i for f in result for i in f["val"]) == list(range(n))
        assert all(sorted(f["train"] + f["val"]) == list(range(n)) for f in result)
    # reordering the datalist moves indices, not cases
    fp = synthetic_fingerprint((32,) * 3, (1.0,) * 3, n_cases=7)
    by_name = {f"c{i}.nii.gz": i for i in range(7)}
    reordered = dict(fp, images=[dict(image, index=6 - image["index"]) for image in fp["images"]])
    original = [{fp["images"][i]["image"] for i in f["val"]} for f in determine_folds(fp)[0]]
    moved = [{f"c{6 - i}.nii.gz" for i in f["val"]} for f in determine_folds(reordered)[0]]
    assert original == moved and len(by_name) == 7


def test_memory_model_counts_parameters_and_channels():
    from monai.networks.nets import DynUNet

    kernels, strides, filters = [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]], [16, 32, 64, 128]
    net = DynUNet(3, 2, 7, kernels, strides, strides[1:], filters=filters, norm_name="instance", res_block=True)
    assert count_parameters(2, 7, kernels, strides, filters) == sum(p.numel() for p in net.parameters())
    small = estimate_inference_memory_bytes([32, 32, 16], 1, 1, 5, kernels, strides, filters, image_shape=[100, 100, 50])
    large = estimate_inference_memory_bytes([32, 32, 16], 1, 1, 60, kernels, strides, filters, image_shape=[100, 100, 50])
    assert large - small >= 55 * 100 * 100 * 50 * 4  # one aggregated heatmap per landmark
    with pytest.raises(ValueError, match="not divisible"):
        estimate_training_memory_bytes([30, 32, 16], 1, 1, 5, kernels, strides, filters)
