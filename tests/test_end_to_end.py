"""The whole pipeline through its real command lines, on synthetic 3D volumes.

plan -> train (python -m monai.bundle run, ~3 min on 2 cores) -> inference on held-out volumes ->
evaluate. Seeded; the accuracy bars leave room for what differs between machine kinds (see the held-out
test). The planner gets a small memory budget (it then plans 32^3 patches) and the schedule is shortened on the
command line; every other number comes from the planner.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.datasets.synthetic import LANDMARK_NAMES, make_synthetic_dataset
from scripts.data import load_datalist
from scripts.landmark_io import read_landmarks

SCHEDULE = ["--epochs", "40", "--iterations_per_epoch", "25", "--val_interval", "10", "--learning_rate", "0.003"]


def run(args, cwd, check=True):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def bundle_run(bundle, *args, check=True):
    return run(["-m", "monai.bundle", "run", *args], cwd=bundle, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    datalist = make_synthetic_dataset(str(root / "data"), n_training=20, n_validation=2, n_testing=6, seed=1)
    bundle = root / "bundle"
    run(["-m", "scripts.plan", datalist, "--bundle_root", bundle, "--memory_gb", "0.33"], cwd=Path(__file__).parent.parent)
    training = bundle_run(bundle, "--config_file", "configs/train.json", *SCHEDULE)
    return {"root": root, "bundle": bundle, "datalist": datalist, "train_log": training.stdout + training.stderr}


@pytest.fixture(scope="module")
def predictions(trained):
    out = trained["root"] / "predictions"
    result = bundle_run(trained["bundle"], "--config_file", "configs/inference.json", "--input", trained["datalist"], "--output_dir", out)
    return out, result


def errors_in_voxels(trained, out) -> np.ndarray:
    """Radial errors of the inference outputs against the synthetic truth, in voxels of the planned spacing."""
    spacing = np.mean(json.loads((trained["bundle"] / "configs" / "plans.json").read_text())["configuration"]["spacing"])
    datalist = load_datalist(trained["datalist"])
    errors = []
    for entry in datalist.section("testing"):
        stem = Path(entry["image"]).name.replace(".nii.gz", "")
        predicted = json.loads((out / "images" / f"{stem}.json").read_text())["landmarks"]
        for name, truth in entry["landmarks"].items():
            errors.append(np.linalg.norm(np.subtract(predicted[name]["position"], truth)) / spacing)
    return np.array(errors)


def test_planned_configs_pass_bundle_property_checks(trained):
    from monai.bundle import ConfigWorkflow

    cwd = os.getcwd()
    os.chdir(trained["bundle"])
    try:
        for config, kind in (("configs/train.json", "train"), ("configs/inference.json", "infer")):
            workflow = ConfigWorkflow(config_file=config, workflow_type=kind, input=trained["datalist"])
            workflow.initialize()
            assert not workflow.check_properties(), config
    finally:
        os.chdir(cwd)


def test_training_learns_and_saves_checkpoints(trained):
    models = trained["bundle"] / "models"
    best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)  # a plain state dict (model-zoo form)
    assert best and all(k.startswith("net.") and isinstance(v, torch.Tensor) for k, v in best.items())
    sidecar = json.loads((models / "model.json").read_text())  # its identity, beside it
    assert sidecar["landmark_names"] == LANDMARK_NAMES and len(sidecar["plans_hash"]) == 16
    curves = json.loads((models / "training_curves.json").read_text())  # beside the checkpoints, with the PNG
    assert curves["epoch"] == list(range(1, 41)) and curves["validation"]["epoch"] == [10, 20, 30, 40]
    assert np.mean(curves["train_loss"][-5:]) < np.mean(curves["train_loss"][:5]) and curves["lr"][0] == pytest.approx(0.003)
    assert (models / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in models.glob("checkpoint_*.pt")] == ["checkpoint_epoch=40.pt"]
    assert "epoch 40/40" in trained["train_log"] and "val_mre" in trained["train_log"]
    # run-time choices are logged: the precision auto picked on this machine, the workers, the data-wait share
    assert "training precision: " in trained["train_log"] and "worker process(es) for" in trained["train_log"]
    assert "% of it waiting for data" in trained["train_log"]


def test_inference_finds_held_out_landmarks(trained, predictions):
    out, result = predictions
    errors = errors_in_voxels(trained, out)
    assert len(errors) == 6 * len(LANDMARK_NAMES)
    assert np.median(errors) < 2.0, errors
    # Seeded, but each kind of CPU kernel, precision and thread count trains its own trajectory, and a few of these 30
    # landmarks (up to 4 in the runs measured) go to a wrong structure, e.g. Ring onto LKnob's knob: within 4 voxels >= 90%
    # here (bfloat16, 2 threads, the bar this test had), 86.7% at 40 and 90.0% at 50 epochs in float32 with AVX2 kernels
    # (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2); with 1 thread 3 misses of more than 17 mm in both precisions
    # (bench/precision_training.py). An untrained or broken model finds almost none.
    assert np.mean(errors <= 4.0) >= 0.8, errors
    assert "landmarks written for 6 of 6" in result.stdout


def test_inference_writes_every_format_consistently(trained, predictions):
    out, _ = predictions
    record = json.loads((out / "images" / "testing_000.json").read_text())
    assert record["coordinate_system"] == "RAS" and record["units"] == "mm"
    positions = {name: value["position"] for name, value in record["landmarks"].items()}
    assert set(positions) == set(LANDMARK_NAMES)
    for suffix in (".fcsv", ".mrk.json"):
        other = read_landmarks(out / "images" / f"testing_000{suffix}")
        for name in LANDMARK_NAMES:
            np.testing.assert_allclose(other[name], positions[name], atol=1e-3)
    summary = (out / "summary.csv").read_text().strip().splitlines()
    assert summary[0] == "case,landmark,x,y,z,score,found,radius_mm" and len(summary) == 1 + 6 * len(LANDMARK_NAMES)
    assert not list(out.rglob("*.tmp*")), "no temporary files left behind"


def test_evaluate_reproduces_inference_numbers(trained, predictions):
    out, _ = predictions
    report = trained["root"] / "evaluation"
    bundle_run(trained["bundle"], "--config_file", "['configs/train.json','configs/evaluate.json']",
               "--eval_section", "testing", "--output_dir", report, "--tta", "true")
    metrics = json.loads((report / "metrics.json").read_text())
    spacing = np.mean(json.loads((trained["bundle"] / "configs" / "plans.json").read_text())["configuration"]["spacing"])
    errors_mm = errors_in_voxels(trained, out) * spacing
    assert metrics["overall"]["n"] == len(errors_mm)
    assert metrics["overall"]["mre"] == pytest.approx(errors_mm.mean(), abs=1e-3)
    assert metrics["overall"]["sdr_4mm"] == pytest.approx(np.mean(errors_mm <= 4.0), abs=1e-9)
    assert set(metrics["per_landmark"]) == set(LANDMARK_NAMES)
    rows = (report / "per_case.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6 * len(LANDMARK_NAMES)


def test_training_resumes_from_its_last_checkpoint(trained):
    result = bundle_run(trained["bundle"], "--config_file", "configs/train.json", "--epochs", "41", "--iterations_per_epoch", "25",
                        "--val_interval", "100", "--learning_rate", "0.003")
    log = result.stdout + result.stderr
    assert "resumed from" in log and "epoch 41/41" in log and "epoch 1/41" not in log


def test_inference_over_a_folder_reports_a_bad_file_and_keeps_the_rest(trained, tmp_path):
    folder = tmp_path / "scans"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    images = trained["root"] / "data" / "images"
    shutil.copy(images / "testing_000.nii.gz", folder / "a" / "scan.nii.gz")
    shutil.copy(images / "testing_001.nii.gz", folder / "b" / "scan.nii.gz")
    (folder / "b" / "broken.nii.gz").write_bytes((images / "testing_002.nii.gz").read_bytes()[:4000])
    out = tmp_path / "out"
    result = bundle_run(trained["bundle"], "--config_file", "configs/inference.json", "--input", folder, "--output_dir", out, check=False)
    assert result.returncode != 0
    assert (out / "a" / "scan.json").exists() and (out / "b" / "scan.json").exists(), "same names in two folders never collide"
    assert not list(out.rglob("broken*")), "no output for the unreadable file"
    assert "failed:" in result.stdout and "broken.nii.gz" in result.stdout
    assert "landmarks written for 2 of 3" in result.stdout
    summary = (out / "summary.csv").read_text()
    assert "a/scan" in summary and "b/scan" in summary


def test_calibration_gives_every_landmark_a_radius_and_a_qa_page(trained, tmp_path):
    log = run(["-m", "scripts.calibrate", "--bundle_root", trained["bundle"], "--datalist", trained["datalist"], "--section", "testing",
               "--calibration_cases", "4"], cwd=trained["bundle"]).stdout
    calibration = json.loads((trained["bundle"] / "models" / "calibration.json").read_text())
    assert calibration["coverage"] == 0.9 and np.isfinite(calibration["normalized_quantile"]) and "held out" in log
    assert calibration["holdout_coverage"]["testing"]["landmarks"] == 2 * len(LANDMARK_NAMES)
    out = tmp_path / "calibrated"
    bundle_run(trained["bundle"], "--config_file", "configs/inference.json", "--input", trained["datalist"], "--output_dir", out)
    record = json.loads((out / "images" / "testing_000.json").read_text())
    for entry in record["landmarks"].values():
        assert entry["uncertainty"]["radius_mm"] > 0 and entry["uncertainty"]["coverage"] == 0.9
        assert np.allclose(entry["uncertainty"]["covariance_mm2"], np.transpose(entry["uncertainty"]["covariance_mm2"]))
    assert "images/testing_000_landmarks.png" in (out / "qa.html").read_text()


def test_calibration_by_group_checks_held_out_groups_and_writes_where_told(trained, tmp_path):
    """--groups calibrate, --check_groups only check (coverage and found: false vs > 4 mm off, per group), --output leaves
    models/calibration.json alone, and saved predictions of one run join another's calibration cases."""
    source = Path(trained["datalist"])
    document = json.loads(source.read_text())

    def absolute(entry, group=None):
        paths = {k: str(source.parent / v) for k, v in entry.items() if k in ("image", "landmarks") and isinstance(v, str)}
        return {**entry, **paths, **({"group": group} if group else {})}

    document["training"] = [absolute(e) for e in document["training"]]
    document["validation"] = [absolute(e) for e in document["validation"]]
    document["testing"] = [absolute(e, "scanner_a" if i < 3 else "scanner_b") for i, e in enumerate(document["testing"])]
    grouped = tmp_path / "grouped.json"
    grouped.write_text(json.dumps(document))
    shipped = trained["bundle"] / "models" / "calibration.json"
    before = shipped.read_bytes() if shipped.exists() else None
    common = ["-m", "scripts.calibrate", "--bundle_root", trained["bundle"], "--datalist", grouped, "--section", "testing"]

    # without --groups every group but the --check_groups calibrates: scanner_a only
    log = run([*common, "--check_groups", "scanner_b", "--cases_per_group", "2",
               "--output", tmp_path / "a.json", "--save_predictions", tmp_path / "a.npz"], cwd=trained["bundle"]).stdout
    calibration = json.loads((tmp_path / "a.json").read_text())
    assert (shipped.read_bytes() if shipped.exists() else None) == before, "--output leaves the bundle's calibration alone"
    assert calibration["n_cases"] == 2 and "groups scanner_a" in calibration["calibration_data"]
    assert list(calibration["calibration_coverage"]) == ["scanner_a"] and list(calibration["holdout_coverage"]) == ["scanner_b"]
    held_out = calibration["holdout_coverage"]["scanner_b"]
    assert held_out["cases"] == 2 and held_out["landmarks"] == 2 * len(LANDMARK_NAMES) and 0.0 <= held_out["coverage"] <= 1.0
    assert held_out["over_4mm_found_false"] + held_out["over_4mm_found_true"] == held_out["over_4mm"] <= held_out["landmarks"]
    assert "scanner_b" in log and "found:false" in log

    run([*common, "--groups", "scanner_b", "--cases_per_group", "1", "--add_predictions", tmp_path / "a.npz",
         "--output", tmp_path / "b.json"], cwd=trained["bundle"])
    combined = json.loads((tmp_path / "b.json").read_text())
    assert combined["n_cases"] == 1 + 4 and "a.npz" in combined["calibration_data"], "every case the first run predicted joins"
    assert {g: row["cases"] for g, row in combined["calibration_coverage"].items()} == {"scanner_a (a)": 2, "scanner_b (a)": 2, "scanner_b": 1}

    wrong = run([*common, "--groups", "scanner_c", "--output", tmp_path / "c.json"], cwd=trained["bundle"], check=False)
    assert wrong.returncode == 1 and "scanner_c" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "c.json").exists()
    both = run([*common, "--groups", "scanner_a", "--check_groups", "scanner_a", "--output", tmp_path / "d.json"], cwd=trained["bundle"], check=False)
    assert both.returncode == 1 and "not both" in both.stderr and "Traceback" not in both.stderr
