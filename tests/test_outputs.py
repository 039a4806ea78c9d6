"""Per-case files, the printed table and the landmark PNG."""

import pytest
import json

import numpy as np
import torch
from monai.data import MetaTensor

from scripts.errors import LandmarkConfigError
from scripts.figures import WriteLandmarkFigured
from scripts.landmark_io import read_landmark_descriptions, read_landmarks
from scripts.outputs import InferenceSummary, WriteLandmarksd

NAMES = ["AC", "PC"]


def prediction(tmp_path):
    image = MetaTensor(torch.rand(1, 20, 22, 24), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    image.meta["filename_or_obj"] = str(tmp_path / "in" / "scan.nii.gz")
    return {
        "image": image,
        "stem": "site/scan",
        "pred_landmarks": np.array([[5.0, 6.0, 7.0], [10.5, 11.0, 12.0]]),
        "pred_landmarks_world": np.array([[10.0, 12.0, 14.0], [21.0, 22.0, 24.0]]),
        "pred_landmarks_input_voxel": np.array([[5.0, 6.0, 7.0], [10.5, 11.0, 12.0]]),
        "pred_scores": np.array([0.91, 0.12]),
        "pred_found": np.array([True, False]),
    }


def test_landmark_files_round_trip_with_descriptions(tmp_path):
    out = tmp_path / "out"
    WriteLandmarksd(str(out), NAMES, {"AC": "anterior commissure"})(prediction(tmp_path))
    record = json.loads((out / "site" / "scan.json").read_text())
    assert record["landmarks"]["PC"] == {"position": [21.0, 22.0, 24.0], "voxel": [10.5, 11.0, 12.0], "score": 0.12, "found": False}
    assert record["landmarks"]["AC"]["description"] == "anterior commissure"
    for suffix in (".fcsv", ".mrk.json"):
        positions = read_landmarks(out / "site" / f"scan{suffix}")
        np.testing.assert_allclose(positions["AC"], [10.0, 12.0, 14.0])
    assert read_landmark_descriptions(out / "site" / "scan.fcsv")["AC"] == "anterior commissure"


def test_summary_prints_a_table_per_case(tmp_path, capsys):
    summary = InferenceSummary(str(tmp_path), NAMES)
    summary.rows = [["site/scan", "AC", 10.0, 12.0, 14.0, 0.91, True, 1.75], ["site/scan", "PC", 21.0, 22.0, 24.0, 0.12, False, ""]]
    summary.cases = 1
    summary.write()
    printed = capsys.readouterr().out
    assert "site/scan" in printed and "  AC             10.00     12.00     14.00  0.910  yes          1.8" in printed and "0.120  NO" in printed
    assert (tmp_path / "summary.csv").read_text().splitlines()[1:] == ["site/scan,AC,10.0,12.0,14.0,0.91,True,1.75",
                                                                     "site/scan,PC,21.0,22.0,24.0,0.12,False,"]


def test_landmark_png_is_written(tmp_path):
    out = tmp_path / "out"
    WriteLandmarkFigured(str(out), NAMES)(prediction(tmp_path))
    png = (out / "site" / "scan_landmarks.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    WriteLandmarkFigured(str(tmp_path / "none"), NAMES, enabled=False)(prediction(tmp_path))
    assert not (tmp_path / "none").exists()


def test_an_unwritable_output_folder_is_a_one_line_error_before_any_work(tmp_path):
    from scripts.data import resolve_inputs

    (tmp_path / "scan.nii.gz").write_bytes(b"")
    (tmp_path / "taken").write_text("a file where the output folder should be")
    with pytest.raises(LandmarkConfigError, match=r"^.*taken/out: cannot write the outputs here"):
        resolve_inputs(str(tmp_path / "scan.nii.gz"), str(tmp_path / "taken" / "out"))


def test_a_failing_write_names_the_file_and_leaves_no_partial_output(tmp_path):
    data = prediction(tmp_path)
    (tmp_path / "blocked").write_text("not a folder")
    with pytest.raises(LandmarkConfigError, match=r"^.*blocked/site/scan\.fcsv: cannot write"):
        WriteLandmarksd(str(tmp_path / "blocked"), NAMES)(data)
    assert (tmp_path / "blocked").read_text() == "not a folder"


def test_a_case_is_written_whole_or_not_at_all(tmp_path):
    """The PNG goes first and <stem>.json (the mark of a finished case) last; when the .json cannot be
    written, the case's PNG, .fcsv and .mrk.json from this run are removed again."""
    out = tmp_path / "out"
    (out / "site" / "scan.json").mkdir(parents=True)  # a folder where the .json must go: os.replace fails
    data = WriteLandmarkFigured(str(out), NAMES)(prediction(tmp_path))
    assert data["output_files"] == [str(out / "site" / "scan_landmarks.png")] and (out / "site" / "scan_landmarks.png").exists()
    with pytest.raises(LandmarkConfigError, match=r"^.*out/site/scan\.json: cannot write \(Is a directory\)"):
        WriteLandmarksd(str(out), NAMES)(data)
    assert sorted(p.name for p in (out / "site").iterdir()) == ["scan.json"], "only the blocking folder is left"
