"""Importers (nnLandmark/nnU-Net raw, Slicer folders, tables), exporters, and fine-tuning from a trained model.

Datasets are built on the fly from the synthetic generator (oblique, axis-permuted affines), so the
true world coordinates are known exactly.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.datasets.synthetic import LANDMARK_NAMES, make_case
from scripts.export_predictions import export_labelmaps, export_nnlandmark
from scripts.image_io import read_image_header
from scripts.import_data import import_nnlandmark, import_slicer, import_table
from scripts.data import landmarks_to_array, load_datalist
from scripts.geometry import world_to_voxel
from scripts.landmark_io import write_landmarks
from scripts.outputs import landmark_record

PROJECT = Path(__file__).resolve().parent.parent
LABELS = {"background": 0, **{name: i + 1 for i, name in enumerate(LANDMARK_NAMES)}}
TINY = ["--epochs", "2", "--iterations_per_epoch", "3", "--val_interval", "2", "--learning_rate", "0.003"]


def run(args, cwd=PROJECT):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def nnlandmark_dataset(root: Path, n_training=4, n_testing=2, seed=7) -> dict:
    """imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz (a blob per landmark), imagesTs/, dataset.json and
    all_landmarks_voxel.json; case_001 lacks Ring (no blob, no JSON entry). Returns the truth (world RAS)."""
    rng = np.random.default_rng(seed)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "scratch"):
        (root / folder).mkdir(parents=True)
    truth, voxels = {}, {}
    for i in range(n_training + n_testing):
        case = f"case_{i:03d}"
        image, points = make_case(root / "scratch", case, rng)
        if i >= n_training:
            shutil.move(image, root / "imagesTs" / f"{case}_0000.nii.gz")
            continue
        if i == 1:
            points.pop("Ring")
        shutil.move(image, root / "imagesTr" / f"{case}_0000.nii.gz")
        loaded = nib.load(root / "imagesTr" / f"{case}_0000.nii.gz")
        affine = read_image_header(str(root / "imagesTr" / f"{case}_0000.nii.gz")).affine
        labels = np.zeros(loaded.shape, np.uint8)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in loaded.shape], indexing="ij"), axis=-1)
        voxels[case] = {}
        for name, world in points.items():
            centre = world_to_voxel(affine, np.asarray(world))
            labels[np.linalg.norm(grid - centre, axis=-1) <= 2.0] = LABELS[name]
            voxels[case][name] = centre.tolist()
        nib.save(nib.Nifti1Image(labels, loaded.affine), str(root / "labelsTr" / f"{case}.nii.gz"))
        truth[case] = {name: np.asarray(p) for name, p in points.items()}
    shutil.rmtree(root / "scratch")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": LABELS, "file_ending": ".nii.gz",
                                                    "numTraining": n_training}))
    (root / "all_landmarks_voxel.json").write_text(json.dumps(voxels))
    return truth


@pytest.fixture(scope="module")
def nnlandmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnl") / "Dataset501_Synthetic"
    return root, nnlandmark_dataset(root)


def imported_positions(datalist_file: Path) -> dict[str, dict[str, np.ndarray]]:
    datalist = load_datalist(datalist_file)
    return {Path(e["image"]).name.split("_0000")[0]: {n: np.asarray(p) for n, p in e["landmarks"].items()}
            for e in datalist.section("training")}


def assert_within_half_a_voxel(dataset: Path, truth: dict) -> None:
    """Import ``dataset`` from its blobs and compare with the truth, per axis in voxels of each image."""
    (dataset / "d.json").write_text(json.dumps(import_nnlandmark(dataset, dataset / "d.json")))
    positions = imported_positions(dataset / "d.json")
    for case, points in truth.items():
        affine = read_image_header(str(dataset / "imagesTr" / f"{case}_0000.nii.gz")).affine
        assert set(positions[case]) == set(points)
        for name, world in points.items():
            offset = world_to_voxel(affine, positions[case][name]) - world_to_voxel(affine, world)
            assert np.all(np.abs(offset) < 0.5), (case, name, offset)


def test_nnlandmark_import_uses_the_voxel_json_exactly(nnlandmark, tmp_path):
    root, truth = nnlandmark
    output = tmp_path / "datalist.json"
    run(["-m", "scripts.import_data", root, "--format", "nnlandmark", "--output", output])
    document = json.loads(output.read_text())
    assert document["landmark_names"] == LANDMARK_NAMES and len(document["testing"]) == 2
    assert not Path(document["training"][0]["image"]).is_absolute(), "paths relative to the datalist"
    positions = imported_positions(output)
    assert "Ring" not in positions["case_001"], "a missing landmark is unannotated, not an error"
    for case, points in truth.items():
        assert set(positions[case]) == set(points)
        for name, world in points.items():
            np.testing.assert_allclose(positions[case][name], world, atol=0.01)


def test_nnlandmark_import_falls_back_to_blob_centres(nnlandmark, tmp_path):
    root, truth = nnlandmark
    copy = tmp_path / "no_json"
    shutil.copytree(root, copy)
    (copy / "all_landmarks_voxel.json").unlink()
    assert_within_half_a_voxel(copy, truth)


def test_slicer_folder_and_separate_markups_folder(tmp_path):
    rng = np.random.default_rng(3)
    scans, markups = tmp_path / "scans", tmp_path / "markups"
    scans.mkdir()
    markups.mkdir()
    truth = {}
    for i, suffix in enumerate((".mrk.json", ".fcsv", None)):
        image, points = make_case(scans, f"sub-{i:02d}", rng, shape=(16, 16, 16))
        if suffix:
            write_landmarks(str(scans / f"sub-{i:02d}{suffix}"), points)
            write_landmarks(str(markups / f"sub-{i:02d}{suffix}"), points)
            truth[f"sub-{i:02d}"] = points
    for source, markup_folder in ((scans, None), (scans, markups)):
        datalist = import_slicer(source, tmp_path / "d.json", markup_folder)
        (tmp_path / "d.json").write_text(json.dumps(datalist))
        loaded = load_datalist(tmp_path / "d.json")
        assert len(loaded.section("training")) == 2 and len(loaded.section("testing")) == 1
        for entry in loaded.section("training"):
            expected = truth[Path(entry["image"]).name.replace(".nii.gz", "")]
            np.testing.assert_allclose(landmarks_to_array(entry["landmarks"], LANDMARK_NAMES),
                                       landmarks_to_array(expected, LANDMARK_NAMES), atol=1e-3)


def test_table_with_ras_lps_and_voxel_rows(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    image, points = make_case(tmp_path / "images", "p1", rng, shape=(16, 16, 16))
    affine = read_image_header(image).affine
    ac, pit, ring = (np.asarray(points[n]) for n in ("Apex", "Pit", "Ring"))
    voxel = world_to_voxel(affine, ring)
    (tmp_path / "table.csv").write_text(
        "case,landmark,x,y,z,coordinates\n"
        f"p1,Apex,{ac[0]},{ac[1]},{ac[2]},RAS\n"
        f"p1,Pit,{-pit[0]},{-pit[1]},{pit[2]},LPS\n"
        f"p1,Ring,{voxel[0]},{voxel[1]},{voxel[2]},voxel\n")
    datalist = import_table(tmp_path / "table.csv", tmp_path / "d.json", tmp_path / "images")
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    entry = load_datalist(tmp_path / "d.json").section("training")[0]
    for name, expected in (("Apex", ac), ("Pit", pit), ("Ring", ring)):
        np.testing.assert_allclose(entry["landmarks"][name], expected, atol=1e-3)
    (tmp_path / "bad.csv").write_text("case,landmark,x,y,z\np9,Apex,1,2,3\n")
    result = subprocess.run([sys.executable, "-m", "scripts.import_data", str(tmp_path / "bad.csv"), "--format", "table", "--images",
                             str(tmp_path / "images"), "--output", str(tmp_path / "x.json")], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode != 0 and "bad.csv: line 2: no image for case 'p9'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_export_to_nnlandmark_json_and_label_maps_round_trips(nnlandmark, tmp_path):
    root, truth = nnlandmark
    records = {}
    for case, points in truth.items():
        image = str(root / "imagesTr" / f"{case}_0000.nii.gz")
        affine = read_image_header(image).affine
        world = landmarks_to_array(points, LANDMARK_NAMES)
        found = np.all(np.isfinite(world), axis=1)
        world = np.where(found[:, None], world, 0.0)
        records[case] = landmark_record(image, LANDMARK_NAMES, {"pred_landmarks_world": world, "pred_landmarks_input_voxel":
                                        world_to_voxel(affine, world), "pred_scores": found * 0.9, "pred_found": found})
    export_nnlandmark(records, tmp_path / "nnl")
    table = json.loads((tmp_path / "nnl" / "all_landmarks_voxel.json").read_text())
    assert "Ring" not in table["case_001"] and json.loads((tmp_path / "nnl" / "case_000.json").read_text()) == table["case_000"]

    export_labelmaps(records, tmp_path / "maps", radius_mm=3.0)
    back = tmp_path / "back"
    shutil.copytree(root / "imagesTr", back / "imagesTr")
    shutil.copytree(tmp_path / "maps", back / "labelsTr", ignore=shutil.ignore_patterns("labels.json"))
    (back / "dataset.json").write_text(json.dumps({"labels": json.loads((tmp_path / "maps" / "labels.json").read_text())["labels"],
                                                   "file_ending": ".nii.gz"}))
    assert_within_half_a_voxel(back, truth)


def test_imported_dataset_plans_trains_infers_and_fine_tunes(nnlandmark, tmp_path):
    root, _ = nnlandmark
    datalist = tmp_path / "datalist.json"
    run(["-m", "scripts.import_data", root, "--format", "nnlandmark", "--output", datalist])
    document = json.loads(datalist.read_text())
    document["validation"] = [document["training"].pop()]
    datalist.write_text(json.dumps(document))
    run(["-m", "scripts.check", datalist])
    bundle = tmp_path / "bundle"
    run(["-m", "scripts.plan", datalist, "--bundle_root", bundle, "--memory_gb", "0.33"])
    run(["-m", "monai.bundle", "run", "--config_file", "configs/train.json", *TINY], cwd=bundle)
    run(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", datalist, "--output_dir",
         tmp_path / "out", "--save_png", "False"], cwd=bundle)
    assert len(list((tmp_path / "out").rglob("*.mrk.json"))) == 2, "both imagesTs cases predicted"

    # fine-tune on a dataset that renames Ring -> Ring2: four channels kept, Ring2 added, Ring dropped
    renamed = json.loads(json.dumps(document).replace('"Ring"', '"Ring2"'))
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    second = tmp_path / "bundle2"
    run(["-m", "scripts.plan", tmp_path / "renamed.json", "--bundle_root", second, "--memory_gb", "0.33"])
    log = run(["-m", "monai.bundle", "run", "--config_file", "configs/train.json", *TINY, "--pretrained", bundle / "models" / "model.pt"],
              cwd=second)
    assert "4 landmarks kept, added ['Ring2'], dropped ['Ring']" in log
    info = json.loads((second / "models" / "model.json").read_text())  # the weights' sidecar
    assert info["pretrained_from"] == str(bundle / "models" / "model.pt") and "Ring2" in info["landmark_names"]
