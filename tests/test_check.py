"""python -m scripts.check: every problem of a messy dataset in one report, each naming its file."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data import check_dataset

PROJECT = Path(__file__).resolve().parent.parent


def image(path: Path, array=None, affine=None) -> Path:
    array = np.random.default_rng(0).random((12, 12, 12)) if array is None else array
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def messy(tmp_path):
    """One good case and one of each problem the checker must name."""
    image(tmp_path / "good.nii.gz")
    data = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "text.nii.gz").write_text("not an image")
    image(tmp_path / "flat2d.nii.gz", np.ones((12, 12)))
    image(tmp_path / "four_d.nii.gz", np.ones((6, 6, 6, 2)))
    nan = np.random.default_rng(1).random((12, 12, 12))
    nan[3, 3, 3] = np.nan
    image(tmp_path / "nan.nii.gz", nan)
    image(tmp_path / "zeros.nii.gz", np.zeros((12, 12, 12)))
    image(tmp_path / "huge spacing é.nii.gz", affine=np.diag([50.0, 1.0, 1.0, 1.0]))
    (tmp_path / "no_columns.fcsv").write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n1,2\n")
    (tmp_path / "no_points.mrk.json").write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS"}]}))
    (tmp_path / "unstated.csv").write_text("name,x,y,z\nAC,1,2,3\nPC,2,3,4\n")
    (tmp_path / "twice.csv").write_text("name,x,y,z\nAC,1,2,3\nAC,2,3,4\n")
    for name in ("fcsv", "mrk", "outside", "unknown", "csv", "twice"):
        image(tmp_path / f"{name}.nii.gz")
    inside = {"AC": [3.0, 4.0, 5.0], "PC": [6.0, 6.0, 6.0]}
    training = [
        {"image": "good.nii.gz", "landmarks": inside},
        {"image": "truncated.nii.gz", "landmarks": inside},
        {"image": "empty.nii.gz", "landmarks": inside},
        {"image": "text.nii.gz", "landmarks": inside},
        {"image": "flat2d.nii.gz", "landmarks": inside},
        {"image": "four_d.nii.gz", "landmarks": inside},
        {"image": "nan.nii.gz", "landmarks": inside},
        {"image": "zeros.nii.gz", "landmarks": inside},
        {"image": "huge spacing é.nii.gz", "landmarks": inside},
        {"image": "fcsv.nii.gz", "landmarks": "no_columns.fcsv"},
        {"image": "mrk.nii.gz", "landmarks": "no_points.mrk.json"},
        {"image": "outside.nii.gz", "landmarks": {"AC": [3.0, 40.0, 5.0], "PC": [6.0, 6.0, 6.0]}},
        {"image": "unknown.nii.gz", "landmarks": {"AC": [1, 2, 3], "XYZ": [1, 2, 3]}},
        {"image": "csv.nii.gz", "landmarks": "unstated.csv"},
        {"image": "twice.nii.gz", "landmarks": "twice.csv"},
        {"image": "missing.nii.gz", "landmarks": inside},
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"landmark_names": ["AC", "PC"], "training": training,
                                    "validation": [{"image": "good.nii.gz", "landmarks": {"AC": [3, 4, 5], "ac ": [6, 6, 6]}}]}))
    return datalist


EXPECTED = [  # (severity, file, message fragment), one per problem
    ("error", "truncated.nii.gz", "truncated or corrupt"),
    ("error", "empty.nii.gz", "cannot read image"),
    ("error", "text.nii.gz", "cannot read image"),
    ("error", "flat2d.nii.gz", "2D image of size [12, 12]: expected a 3D image"),
    ("error", "four_d.nii.gz", "4D image of size [6, 6, 6, 2]: expected a 3D image"),
    ("error", "nan.nii.gz", "NaN"),
    ("error", "zeros.nii.gz", "every voxel is 0"),
    ("warning", "huge spacing é.nii.gz", "spacing"),
    ("error", "no_columns.fcsv", "expected 14 fields, got 2"),
    ("error", "no_points.mrk.json", "no landmarks in the file"),
    ("error", "twice.csv", "duplicate landmark name 'AC'"),
    ("error", "datalist.json", "landmark(s) outside the image"),
    ("error", "datalist.json", "XYZ"),
    ("warning", "unstated.csv", "coordinate system not stated"),
    ("error", "missing.nii.gz", "not found"),
    ("error", "datalist.json", "differs only in case/whitespace"),
    ("error", "good.nii.gz", "listed 2 times (training, validation)"),
]


def test_every_problem_is_reported_once_with_its_file(messy):
    problems, counts = check_dataset(messy)
    lines = [p.line() for p in problems]
    assert len(problems) == len(EXPECTED), "\n".join(lines)  # "AC" and "ac " in one entry: one channel twice, one line
    for severity, file, fragment in EXPECTED:
        matching = [p for p in problems if p.severity == severity and file in p.source + p.message and fragment in p.message]
        assert matching, f"no {severity} for {file} ({fragment!r}) in:\n" + "\n".join(lines)
    assert all("Traceback" not in line and "\n" not in line for line in lines)
    assert counts["training"] + counts["validation"] >= 10


def test_cli_prints_all_problems_and_exits_non_zero(messy):
    result = subprocess.run([sys.executable, "-m", "scripts.check", str(messy)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) >= sum(1 for s, _, _ in EXPECTED if s == "error") and "Traceback" not in result.stderr
    assert "warning: " in result.stdout and "error(s)" in result.stdout


def test_clean_dataset_passes_with_exit_zero(tmp_path):
    image(tmp_path / "a.nii.gz")
    (tmp_path / "a.mrk.json").write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
        {"label": "AC", "position": [-3.0, -4.0, 5.0]}, {"label": "PC", "position": [-6.0, -6.0, 6.0]}]}]}))
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.nii.gz", "landmarks": "a.mrk.json"}]}))
    result = subprocess.run([sys.executable, "-m", "scripts.check", str(datalist)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 training, 0 validation, 0 testing cases, 2 landmark names: 0 error(s), 0 warning(s)" in result.stdout


def test_unreadable_or_empty_datalist(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    problems, _ = check_dataset(tmp_path / "broken.json")
    assert len(problems) == 1 and "broken.json" in problems[0].source
    (tmp_path / "empty.json").write_text(json.dumps({"training": []}))
    problems, _ = check_dataset(tmp_path / "empty.json")
    assert [p.message for p in problems] == ["datalist has no entries in training, validation or testing"]
    problems, _ = check_dataset(tmp_path)
    assert "folder" in problems[0].message
