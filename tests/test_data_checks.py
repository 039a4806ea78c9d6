"""scripts.data's per-case checks are one rule for every caller: scripts.check's report, training's
check_cases and the planner's fingerprint see the same problems, with the same file named."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data import case_problems, check_cases, check_dataset, load_datalist, select_cases
from scripts.errors import LandmarkDataError
from scripts.planning.fingerprint import fingerprint_dataset

NAMES = ["AC", "PC"]


def write_image(path: Path, shape=(12, 12, 12), value=None) -> str:
    array = np.random.default_rng(0).random(shape) if value is None else np.full(shape, value)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))
    return str(path)


def write_datalist(folder: Path, training: list) -> str:
    path = folder / "datalist.json"
    path.write_text(json.dumps({"landmark_names": NAMES, "training": training}))
    return str(path)


INSIDE = {"AC": [3.0, 4.0, 5.0], "PC": [6.0, 6.0, 6.0]}


def test_two_channel_case_on_two_grids_is_refused_by_check_training_and_planner(tmp_path):
    write_image(tmp_path / "t1.nii.gz")
    t2 = write_image(tmp_path / "t2.nii.gz", shape=(12, 12, 10))
    datalist = write_datalist(tmp_path, [{"image": ["t1.nii.gz", "t2.nii.gz"], "landmarks": INSIDE}])
    fragment = "differs from"

    problems, _ = check_dataset(datalist)
    errors = [p for p in problems if p.severity == "error"]
    assert [(p.source, fragment in p.message) for p in errors] == [(t2, True)], problems
    assert "[12, 12, 10]" in errors[0].message and "co-registered inputs share one grid" in errors[0].message

    with pytest.raises(LandmarkDataError) as training:
        check_cases(select_cases(datalist, "training"), NAMES)
    assert str(training.value) == f"{t2}: {errors[0].message}"

    with pytest.raises(LandmarkDataError) as planner:
        fingerprint_dataset(load_datalist(datalist))
    assert str(planner.value) == str(training.value)


def test_outside_point_and_constant_image_are_fatal_in_check_and_training_alike(tmp_path):
    good = write_image(tmp_path / "good.nii.gz")
    flat = write_image(tmp_path / "flat.nii.gz", value=7.0)
    datalist = write_datalist(tmp_path, [
        {"image": "good.nii.gz", "landmarks": {"AC": [3.0, 4.0, 5.0], "PC": [6.0, 60.0, 6.0]}},  # PC: voxel y = 60 > 11.5
        {"image": "flat.nii.gz", "landmarks": INSIDE},
    ])
    problems, counts = check_dataset(datalist)
    errors = [(p.source, p.message) for p in problems if p.severity == "error"]
    source = f"{Path(datalist).resolve()} (training[0] landmarks)"  # inline landmarks: the datalist names them
    assert errors == [(source, f"landmark(s) outside the image {good}: PC"),
                      (flat, "every voxel is 7: nothing to find landmarks in")]
    assert counts["training"] == 2

    with pytest.raises(LandmarkDataError) as training:
        check_cases(select_cases(datalist, "training"), NAMES)
    message = str(training.value)
    assert "2 problems" in message and f"{good}: landmark(s) outside the image: PC" in message
    assert f"{flat}: every voxel is 7" in message


def test_case_problems_without_warnings_reports_only_what_is_fatal(tmp_path):
    huge = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((12, 12, 12)).astype(np.float32), np.diag([50.0, 1, 1, 1])), str(huge))
    entry = {"image": str(huge)}
    assert [p.message.split(":")[0] for p in case_problems(entry, None)] == ["voxel spacing [50.0, 1.0, 1.0] mm"]
    assert case_problems(entry, None, warnings=False) == []
    assert case_problems(entry, {})[-1].message.startswith("no landmarks in the file")
