"""The configs are recipes: planned numbers are literal ids, every component reads them, so an override given
on the command line reaches every consumer; weights load through MONAI's CheckpointLoader; sigma is planned in
millimetres (round in the world on anisotropic scans); the fingerprint is cached beside the datalist."""

import copy
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader
from monai.inferers import SlidingWindowInferer

from scripts.bundle_configs import evaluate_config, inference_config, train_coarse_config, train_config
from scripts.cascade import CascadeInferer
from scripts.heatmaps import render_heatmaps
from scripts.data import load_datalist
from scripts.landmark_io import write_landmarks
from scripts.planning.decisions import SIGMA_MIN, determine_target_spacing, gaussian_mass, make_plans
from scripts.planning.fingerprint import cached_fingerprint, fingerprint_cache_path, fingerprint_key
from scripts.transforms import ExtractLandmarksd, LandmarkHeatmapd, RandLandmarkCropd

PROJECT = Path(__file__).resolve().parent.parent
SHIPPED = json.loads((PROJECT / "configs" / "plans.json").read_text())["configuration"]
OVERRIDE = {"patch_size": [32, 40, 24], "spacing": [1.5, 1.5, 2.0], "sigma": [3.0, 3.0, 2.5]}


def _parser(files, **ids) -> ConfigParser:
    """The configs as ``python -m monai.bundle run --config_file FILES --id value ...`` parses them."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(PROJECT), **ids})
    return parser


def _one(items, kind):
    found = [item for item in items if isinstance(item, kind)]
    assert len(found) == 1, (kind, items)
    return found[0]


def _named(transforms, target: str):
    """The one instantiated transform whose class is named ``target`` (MONAI's dictionary transforms by name)."""
    found = [t for t in transforms if type(t).__name__ == target]
    assert len(found) == 1, (target, transforms)
    return found[0]


def test_shipped_configs_carry_the_planned_numbers_literally():
    train = json.loads((PROJECT / "configs" / "train.json").read_text())
    inference = json.loads((PROJECT / "configs" / "inference.json").read_text())
    for config in (train, inference):
        assert config["patch_size"] == SHIPPED["patch_size"] and config["spacing"] == SHIPPED["spacing"]
        assert config["sigma"] == SHIPPED["sigma_voxels"] == [4.0, 4.0, 4.0]  # nnLandmark's 4 voxels on the 1 mm AFIDs
        assert config["network_def"]["strides"] == SHIPPED["strides"]
        assert "@plans[" not in json.dumps(config) and "parse_switch" not in json.dumps(config)
    assert (train["learning_rate"], train["batch_size"]) == (SHIPPED["learning_rate"], SHIPPED["batch_size"])
    norm = next(t for t in train["load_preprocessing"] if "Normalize" in t.get("_target_", "") or "ScaleIntensityRange" in t.get("_target_", ""))
    assert norm == {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}  # MR
    affine = next(t for t in train["train"]["augmentation"] if t["_target_"] == "RandAffined")
    assert affine["prob"] == max(SHIPPED["augmentation"]["rotation_prob"], SHIPPED["augmentation"]["scale_prob"])


def test_an_override_reaches_every_consumer():
    """--patch_size, --spacing, --sigma: training crops and target, the validation cascade, inference and extraction."""
    configs = PROJECT / "configs"
    train = _parser([configs / "train.json"], **OVERRIDE)
    augmentation = train.get_parsed_content("train#augmentation")
    crop = _one(augmentation, RandLandmarkCropd)
    assert list(crop.roi_size) == [40, 50, 30]  # 1.25 x the patch
    assert list(_named(augmentation, "RandAffined").rand_affine.spatial_size) == OVERRIDE["patch_size"]
    assert list(_one(augmentation, LandmarkHeatmapd).sigma) == OVERRIDE["sigma"]
    preprocessing = train.get_parsed_content("load_preprocessing")
    assert np.allclose(_named(preprocessing, "Spacingd").spacing_transform.pixdim, OVERRIDE["spacing"])
    cascade = train.get_parsed_content("validate#inferer")
    assert isinstance(cascade, CascadeInferer)
    assert cascade.patch_size == OVERRIDE["patch_size"] and cascade.spacing == OVERRIDE["spacing"]
    assert list(cascade.full_inferer.roi_size) == OVERRIDE["patch_size"]
    assert cascade.margin == [min(3 * s, p / 4) for s, p in zip(OVERRIDE["sigma"], OVERRIDE["patch_size"])]
    assert np.allclose(cascade.search_radius, [SHIPPED["cascade"]["fine_search_radius_mm"] / s for s in OVERRIDE["spacing"]])

    inference = _parser([configs / "inference.json"], **OVERRIDE)
    inferer = inference.get_parsed_content("inferer")
    assert inferer.patch_size == OVERRIDE["patch_size"] and inferer.spacing == OVERRIDE["spacing"]
    extract = _one(inference.get_parsed_content("postprocessing").transforms, ExtractLandmarksd)
    assert list(extract.sigma) == OVERRIDE["sigma"]
    assert np.allclose(_named(inference.get_parsed_content("preprocessing").transforms, "Spacingd").spacing_transform.pixdim,
                       OVERRIDE["spacing"])


def test_single_stage_window_and_coarse_stage_follow_the_ids(tmp_path):
    single = {**SHIPPED, "cascade": None}
    (tmp_path / "train.json").write_text(json.dumps(train_config("unused.json", single)))
    (tmp_path / "evaluate.json").write_text(json.dumps(evaluate_config(single)))
    window = _parser([tmp_path / "train.json", tmp_path / "evaluate.json"], patch_size=[32, 32, 32]).get_parsed_content("validate#inferer")
    assert isinstance(window, SlidingWindowInferer) and list(window.roi_size) == [32, 32, 32]
    assert window.sw_batch_size == SHIPPED["sw_batch_size"] and window.overlap == SHIPPED["sw_overlap"]

    (tmp_path / "train_coarse.json").write_text(json.dumps(train_coarse_config(SHIPPED)))
    coarse = _parser([PROJECT / "configs" / "train.json", tmp_path / "train_coarse.json"])
    cascade = SHIPPED["cascade"]
    assert coarse.get_parsed_content("patch_size") == cascade["coarse_patch_size"]
    assert coarse.get_parsed_content("sigma") == cascade["coarse_sigma_voxels"]
    assert list(_one(coarse.get_parsed_content("train#augmentation"), RandLandmarkCropd).roi_size) == [
        int(round(p * 1.25)) for p in cascade["coarse_patch_size"]]
    assert coarse.get_parsed_content("model_file") == "coarse_model.pt"
    assert list(coarse.get_parsed_content("validate#inferer").roi_size) == cascade["coarse_patch_size"]
    assert coarse.get_parsed_content("loss").foreground_weight == cascade["coarse_loss_foreground_weight"]


def _save_member(network_def, path: Path, names, seed: int) -> dict:
    """A model file of ``network_def``'s shape with random weights (DynUNet lists shared layers under two keys)."""
    torch.manual_seed(seed)
    network = copy.deepcopy(network_def)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_()
    state = network.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "landmark_info": {"landmark_names": list(names), "plans_hash": ""}}, path)
    return state


def test_single_model_weights_load_through_monai_checkpoint_loader(tmp_path):
    """One model file: MONAI's CheckpointLoader (inference handlers) loads it into network_def when the engine starts.
    Several folds: the ensemble loads its members itself and no CheckpointLoader is configured."""
    ids = {"ckpt_dir": str(tmp_path), "tta": False, "precision": "float32", "device": "$torch.device('cpu')"}
    parser = _parser([PROJECT / "configs" / "inference.json"], **ids)
    names = parser.get_parsed_content("landmark_names")
    state = _save_member(parser.get_parsed_content("network_def"), tmp_path / "model.pt", names, seed=1)
    network = parser.get_parsed_content("network")
    loader = _one(parser.get_parsed_content("handlers"), CheckpointLoader)
    assert loader.load_path == str(tmp_path / "model.pt")
    assert not torch.equal(next(iter(network.state_dict().values())), next(iter(state.values())))  # not loaded at parse time
    loader(Engine(lambda engine, batch: None))
    assert all(torch.equal(network.state_dict()[k], state[k]) for k in state)

    for fold in (0, 1):
        _save_member(parser.get_parsed_content("network_def"), tmp_path / f"fold_{fold}" / "model.pt", names, seed=10 + fold)
    folds = _parser([PROJECT / "configs" / "inference.json"], **ids)
    assert [os.path.basename(os.path.dirname(f)) for f in folds.get_parsed_content("model_files")] == ["fold_0", "fold_1"]
    assert not [h for h in folds.get_parsed_content("handlers") if isinstance(h, CheckpointLoader)]
    assert len(folds.get_parsed_content("network").members) == 2


# ----------------------------------------------------------------------------- anisotropic planning

SPACING = (0.5, 0.5, 5.0)
SHAPE = (64, 64, 8)  # 32 x 32 x 40 mm
POINTS = {"A": (-6.0, 0.0, 0.0), "B": (6.0, 0.0, 0.0), "C": (0.0, 6.0, 10.0), "D": (0.0, -6.0, -10.0)}  # nearest neighbour 8.5 mm


def anisotropic_dataset(root: Path) -> Path:
    """Two 0.5 x 0.5 x 5 mm CT-like volumes (HU, air around a body) with four landmarks each."""
    rng = np.random.default_rng(0)
    entries = []
    for case in range(2):
        grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
        body = sum((g / r) ** 2 for g, r in zip(grid, (14, 14, 30))) <= 1
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, SHAPE)
        affine = np.diag([*SPACING, 1.0])
        affine[:3, 3] = -(np.asarray(SHAPE) - 1) / 2 * np.asarray(SPACING)
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(root / f"ct{case}.nii.gz"))
        write_landmarks(root / f"ct{case}.json", {n: np.asarray(p) + case * 0.2 for n, p in POINTS.items()})
        entries.append({"image": f"ct{case}.nii.gz", "landmarks": f"ct{case}.json"})
    (root / "datalist.json").write_text(json.dumps({"training": entries}))
    return root / "datalist.json"


def test_thin_slices_plan_a_heatmap_round_in_millimetres(tmp_path):
    datalist = load_datalist(anisotropic_dataset(tmp_path))
    plans = make_plans(cached_fingerprint(datalist), "cpu")
    config = plans["configuration"]
    assert config["spacing"] == [0.5, 0.5, 5.0]
    # d = 8.49 mm = 17 voxels of 0.5 mm: the voxel rule gives 4 voxels = 2 mm; the z axis needs 2 voxels of 5 mm,
    # so sigma widens to 10 mm in every direction: 20, 20 and 2 voxels (the old rule: 4 voxels everywhere, 2 x 2 x 20 mm)
    assert config["sigma_mm"] == 10.0 and config["sigma_voxels"] == [20.0, 20.0, 2.0]
    assert min(config["sigma_voxels"]) >= SIGMA_MIN
    patch = config["patch_size"]
    mass = (2 * np.pi) ** 1.5 * 20 * 20 * 2
    assert gaussian_mass(config["sigma_voxels"]) == pytest.approx(mass)
    assert config["loss_foreground_weight"] == round(float(np.clip(np.sqrt(np.prod(patch) / mass) - 1, 0, 100)), 1)
    heatmap = render_heatmaps([[70, 70, 7]], (141, 141, 15), config["sigma_voxels"])[0]  # the whole 3-sigma window
    grid = np.meshgrid(*[np.arange(n) for n in heatmap.shape], indexing="ij")
    spread_mm = [np.sqrt((heatmap * (g - c) ** 2).sum() / heatmap.sum()) * s for g, c, s in zip(grid, (70, 70, 7), SPACING)]
    assert spread_mm == pytest.approx([spread_mm[0]] * 3, rel=0.03)  # round in the world: the same spread (mm) on every axis


def test_anisotropy_ratio_uses_the_largest_other_spacing():
    """nnU-Net: the coarse axis is resampled finer only when its spacing is > 3 x the LARGEST other one."""
    def fingerprint(y_spacing):
        images = [{"section": "training", "spacing_ras": [1.0, y_spacing, z], "shape_ras": [200, 100, 10]} for z in (3.0, 4.0, 4.0, 5.0, 6.0)]
        return {"images": images}

    assert determine_target_spacing(fingerprint(2.0))[0] == [1.0, 2.0, 4.0]  # 4 / 2 = 2: not anisotropic (4 / 1 would be)
    assert determine_target_spacing(fingerprint(1.0))[0] == [1.0, 1.0, 3.4]  # 4 / 1 > 3: the 10th percentile of z


def test_fingerprint_is_cached_beside_the_datalist_until_an_image_changes(tmp_path):
    datalist = load_datalist(anisotropic_dataset(tmp_path))
    first = cached_fingerprint(datalist)
    cache = fingerprint_cache_path(datalist)
    assert cache == tmp_path / "datalist.fingerprint.json" and cache.is_file()
    stored = json.loads(cache.read_text())
    stored["fingerprint"]["n_training"] = 99  # a marker: a cache hit returns it
    cache.write_text(json.dumps(stored))
    assert cached_fingerprint(datalist)["n_training"] == 99
    key = fingerprint_key(datalist)
    os.utime(tmp_path / "ct1.nii.gz", ns=(1, 1))
    assert fingerprint_key(datalist) != key
    assert cached_fingerprint(datalist) == first
