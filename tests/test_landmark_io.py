"""Landmark files (real Slicer fixtures, hand-written LPS/RAS files, round-trips), geometry helpers, datalist."""

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.atomic import atomic_write_text
from scripts.errors import LandmarkDataError
from scripts.data import landmarks_to_array, load_datalist
from scripts.geometry import voxel_to_world, world_to_voxel
from scripts.landmark_io import MARKUPS_SCHEMA, read_landmark_descriptions, read_landmarks, write_landmarks

FIXTURES = Path(__file__).parent / "fixtures"
AFIDS_CNN_FCSV = FIXTURES / "afids_cnn_tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv"
AFIDS_UTILS_FCSV = FIXTURES / "afids_utils_template.fcsv"
AFIDS_UTILS_MRK = FIXTURES / "afids_utils_template.mrk.json"
FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"


def fails(path, problem):
    """pytest.raises for a LandmarkDataError whose message names `path` and contains `problem`."""
    return pytest.raises(LandmarkDataError, match=re.escape(str(path)) + ".*" + re.escape(problem))


# ----------------------------------------------------------------------------- real Slicer files


def test_afids_cnn_fcsv_takes_names_from_desc():
    landmarks = read_landmarks(AFIDS_CNN_FCSV)
    names = list(landmarks)
    assert len(names) == 32
    assert names[:3] == ["AC", "PC", "infracollicular sulcus"]
    assert names[-1] == "L olfactory sulcal fundus"
    np.testing.assert_allclose(landmarks["AC"], [-0.231, 2.93275, -4.899], atol=1e-9)
    np.testing.assert_allclose(landmarks["L olfactory sulcal fundus"], [-13.34325, 17.0885, -13.35225], atol=1e-9)
    assert all(p.dtype == np.float64 and p.shape == (3,) for p in landmarks.values())
    # the description became the name, so nothing is left as a separate description
    assert set(read_landmark_descriptions(AFIDS_CNN_FCSV).values()) == {""}


def test_afids_utils_fcsv_and_mrk_json_give_the_same_points():
    from_fcsv = read_landmarks(AFIDS_UTILS_FCSV)
    from_json = read_landmarks(AFIDS_UTILS_MRK)
    assert len(from_fcsv) == 32
    assert list(from_fcsv) == list(from_json)
    assert list(from_fcsv)[9:11] == ["Culmen", "Intermammillary sulcus"]
    for name in from_fcsv:
        np.testing.assert_allclose(from_json[name], from_fcsv[name], atol=1e-9)
    # both files are RAS: no flip
    np.testing.assert_allclose(from_json["AC"], [-0.231, 2.93275, -4.899], atol=1e-9)
    np.testing.assert_allclose(from_json["PC"], [-0.24125, -25.07475, -2.169], atol=1e-9)


# ----------------------------------------------------------------------------- hand-written LPS / RAS files


def test_slicer5_lps_fcsv_flips_x_and_y(tmp_path):
    path = tmp_path / "lps.fcsv"
    path.write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n" + FCSV_COLUMNS
        + "1,10.5,-20.25,30,0,0,0,1,1,1,0,AC,anterior commissure,\n"
        + "2,-1,2,-3,0,0,0,1,1,1,0,PC,,\n"
    )
    landmarks = read_landmarks(path)
    np.testing.assert_allclose(landmarks["AC"], [-10.5, 20.25, 30.0])
    np.testing.assert_allclose(landmarks["PC"], [1.0, -2.0, -3.0])
    assert read_landmark_descriptions(path) == {"AC": "anterior commissure", "PC": ""}


@pytest.mark.parametrize("system, sign", [("0", 1.0), ("1", -1.0), ("RAS", 1.0)])
def test_slicer4_numeric_coordinate_system(tmp_path, system, sign):
    path = tmp_path / "points.fcsv"
    path.write_text(
        f"# Markups fiducial file version = 4.6\n# CoordinateSystem = {system}\n" + FCSV_COLUMNS
        + "vtkMRMLMarkupsFiducialNode_1,1,2,3,0,0,0,1,1,1,0,A,,vtkMRMLScalarVolumeNode1\n"
    )
    np.testing.assert_allclose(read_landmarks(path)["A"], [sign * 1, sign * 2, 3])


def test_fcsv_uses_the_columns_line_and_csv_quoting(tmp_path):
    path = tmp_path / "reordered.fcsv"
    path.write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
        '# columns = label,desc,z,y,x\n"Left, lateral",\"a \"\"quoted\"\" note\",3,2,1\n7,Named in desc,6,5,4\n'
    )
    landmarks = read_landmarks(path)
    assert list(landmarks) == ["Left, lateral", "Named in desc"]
    np.testing.assert_allclose(landmarks["Left, lateral"], [1, 2, 3])
    np.testing.assert_allclose(landmarks["Named in desc"], [4, 5, 6])
    assert read_landmark_descriptions(path)["Left, lateral"] == 'a "quoted" note'


def test_fcsv_number_label_without_desc_keeps_the_number(tmp_path):
    path = tmp_path / "numbers.fcsv"
    path.write_text("# CoordinateSystem = RAS\n" + FCSV_COLUMNS + "1,1,2,3,0,0,0,1,1,1,0,1,,\n")
    assert list(read_landmarks(path)) == ["1"]


def test_lps_mrk_json_flips_x_and_y_and_skips_undefined_points(tmp_path):
    path = tmp_path / "points.mrk.json"
    points = [
        {"label": "AC", "description": "anterior commissure", "position": [10.0, 20.0, 30.0]},
        {"label": "3", "description": "PC", "position": [-1.0, -2.0, 3.5], "positionStatus": "defined"},
        {"label": "GONE", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"},
        {"label": "LOST", "position": [0.0, 0.0, 0.0], "positionStatus": "missing"},
    ]
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": points}]}))
    landmarks = read_landmarks(path)
    assert list(landmarks) == ["AC", "PC"]
    np.testing.assert_allclose(landmarks["AC"], [-10.0, -20.0, 30.0])
    np.testing.assert_allclose(landmarks["PC"], [1.0, 2.0, 3.5])
    assert read_landmark_descriptions(path) == {"AC": "anterior commissure", "PC": ""}


def test_mrk_json_without_coordinate_system_is_lps_like_slicer(tmp_path):
    path = tmp_path / "points.mrk.json"
    path.write_text(json.dumps({"markups": [{"controlPoints": [{"label": "A", "position": [1, 2, 3]}]}]}))
    np.testing.assert_allclose(read_landmarks(path)["A"], [-1, -2, 3])


def test_our_json_lps_and_plain_object(tmp_path):
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"coordinate_system": "LPS", "landmarks": {"A": {"position": [1, 2, 3], "score": 0.5}}}))
    np.testing.assert_allclose(read_landmarks(ours)["A"], [-1, -2, 3])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"B": [4, 5, 6], "A": [1.5, 2, 3]}))
    landmarks = read_landmarks(plain)
    assert list(landmarks) == ["B", "A"]
    np.testing.assert_allclose(landmarks["A"], [1.5, 2, 3])


def test_slicer_markups_saved_as_plain_json_is_recognised(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(AFIDS_UTILS_MRK.read_text())
    assert list(read_landmarks(path)) == list(read_landmarks(AFIDS_UTILS_MRK))


def test_csv_with_and_without_header(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("name,x,y,z,description\nAC,1,2,3,anterior commissure\nPC, -1.5 , 0,1e2,\n")
    landmarks = read_landmarks(with_header)
    np.testing.assert_allclose(landmarks["PC"], [-1.5, 0, 100])
    assert read_landmark_descriptions(with_header) == {"AC": "anterior commissure", "PC": ""}
    without_header = tmp_path / "b.csv"
    without_header.write_text("AC,1,2,3\n\nPC,4,5,6\n")
    assert list(read_landmarks(without_header)) == ["AC", "PC"]
    np.testing.assert_allclose(read_landmarks(without_header)["PC"], [4, 5, 6])


# ----------------------------------------------------------------------------- writers and round-trips

POSITIONS = {"AC": [-0.231, 2.93275, -4.899], "L olfactory, fundus": [1e-7, -123.456789012, 98.7654321], "7": [0, 0, 0]}
DESCRIPTIONS = {"AC": "anterior commissure", "L olfactory, fundus": 'say "hi"'}


@pytest.mark.parametrize("suffix", [".fcsv", ".mrk.json", ".json", ".csv"])
def test_round_trip(tmp_path, suffix):
    path = tmp_path / f"points{suffix}"
    write_landmarks(path, POSITIONS, DESCRIPTIONS)
    landmarks = read_landmarks(path)
    assert list(landmarks) == list(POSITIONS)
    for name, position in POSITIONS.items():
        np.testing.assert_allclose(landmarks[name], position, atol=1e-6)
    assert read_landmark_descriptions(path) == {**DESCRIPTIONS, "7": ""}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("suffix", [".fcsv", ".mrk.json", ".json", ".csv"])
def test_round_trip_from_lps_input(tmp_path, suffix):
    source = tmp_path / "in.fcsv"
    source.write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n" + FCSV_COLUMNS
                      + "1,10,20,30,0,0,0,1,1,1,0,A,,\n")
    write_landmarks(tmp_path / f"out{suffix}", read_landmarks(source))
    np.testing.assert_allclose(read_landmarks(tmp_path / f"out{suffix}")["A"], [-10, -20, 30], atol=1e-6)


def test_written_mrk_json_follows_slicer_schema_in_lps(tmp_path):
    path = tmp_path / "out.mrk.json"
    write_landmarks(path, {"AC": np.array([1.0, 2.0, 3.0])}, {"AC": "anterior commissure"})
    document = json.loads(path.read_text())
    assert document["@schema"] == MARKUPS_SCHEMA and "markups-schema-v1.0.3.json" in MARKUPS_SCHEMA
    markup = document["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    point = markup["controlPoints"][0]
    assert point["id"] and point["label"] == "AC" and point["description"] == "anterior commissure"
    assert point["position"] == [-1.0, -2.0, 3.0] and point["positionStatus"] == "defined"


def test_written_fcsv_header_is_slicer_loadable_ras(tmp_path):
    path = tmp_path / "out.fcsv"
    write_landmarks(path, {"AC": torch.tensor([1.0, 2.0, 3.0])}, {"AC": "anterior commissure"})
    lines = path.read_text().splitlines()
    assert lines[:3] == ["# Markups fiducial file version = 4.11", "# CoordinateSystem = RAS", FCSV_COLUMNS.strip()]
    assert lines[3] == "1,1.0,2.0,3.0,0,0,0,1,1,1,0,AC,anterior commissure,"


def test_written_json_is_ras_mm(tmp_path):
    path = tmp_path / "out.json"
    write_landmarks(path, {"AC": (1, 2, 3)})
    assert json.loads(path.read_text()) == {
        "coordinate_system": "RAS", "units": "mm", "landmarks": {"AC": {"position": [1.0, 2.0, 3.0]}}
    }


def test_write_refuses_non_finite_and_leaves_nothing(tmp_path):
    with fails(tmp_path / "out.fcsv", "landmark 'AC': non-finite"):
        write_landmarks(tmp_path / "out.fcsv", {"AC": [np.nan, 0, 0]})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    assert path.read_text() == "old"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(TypeError):
        atomic_write_text(path, object())  # fails while writing the temp file
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# ----------------------------------------------------------------------------- bad landmark files


@pytest.mark.parametrize(
    "name, text",
    [
        ("dup.fcsv", FCSV_COLUMNS + "1,1,2,3,0,0,0,1,1,1,0,AC,,\n2,4,5,6,0,0,0,1,1,1,0,AC,,\n"),
        ("dup.csv", "AC,1,2,3\nAC,4,5,6\n"),
        ("dup.json", '{"landmarks": {"AC": [1, 2, 3], "AC": [4, 5, 6]}}'),
        ("dup_plain.json", '{"AC": [1, 2, 3], "AC": [4, 5, 6]}'),
        ("dup.mrk.json", json.dumps({"markups": [{"controlPoints": [
            {"label": "AC", "position": [1, 2, 3]}, {"label": "1", "description": "AC", "position": [4, 5, 6]}]}]})),
    ],
)
def test_duplicate_names_are_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with fails(path, "duplicate landmark name 'AC'"):
        read_landmarks(path)


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("bad.fcsv", FCSV_COLUMNS + "1,one,2,3,0,0,0,1,1,1,0,AC,,\n", "line 2: cannot parse coordinates"),
        ("short.fcsv", FCSV_COLUMNS + "1,1,2\n", "line 2: expected 14 fields, got 3"),
        ("inf.fcsv", FCSV_COLUMNS + "1,inf,2,3,0,0,0,1,1,1,0,AC,,\n", "line 2: non-finite coordinate"),
        ("noname.fcsv", FCSV_COLUMNS + "1,1,2,3,0,0,0,1,1,1,0,,,\n", "line 2: landmark has no name"),
        ("system.fcsv", "# CoordinateSystem = 2\n" + FCSV_COLUMNS, "unsupported coordinate system '2'"),
        ("nan.csv", "AC,nan,2,3\n", "row 1: non-finite coordinate"),
        ("short.csv", "AC,1,2\n", "row 1: expected name,x,y,z"),
        ("bad.json", '{"AC": [1, 2', "invalid JSON"),
        ("bad_position.json", '{"AC": [1, 2]}', "landmark 'AC': position must be 3 numbers"),
        ("null.json", '{"AC": [1, null, 3]}', "landmark 'AC': cannot parse coordinates"),
        ("curve.mrk.json", '{"markups": [{"type": "Curve", "controlPoints": []}]}', "is not a point list"),
        ("points.txt", "AC,1,2,3\n", "unsupported landmark file type"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with fails(path, problem) as raised:
        read_landmarks(path)
    assert "\n" not in str(raised.value)


def test_missing_landmark_file(tmp_path):
    with fails(tmp_path / "nope.fcsv", "landmark file not found"):
        read_landmarks(tmp_path / "nope.fcsv")


# ----------------------------------------------------------------------------- arrays and geometry


def test_landmarks_to_array_puts_nan_where_missing():
    array = landmarks_to_array({"B": [4, 5, 6], "A": np.array([1.0, 2.0, 3.0]), "extra": [0, 0, 0]}, ["A", "C", "B"])
    assert array.dtype == np.float64 and array.shape == (3, 3)
    np.testing.assert_array_equal(array[[0, 2]], [[1, 2, 3], [4, 5, 6]])
    assert np.isnan(array[1]).all()


AFFINE = np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


def test_voxel_world_mapping_by_hand_and_nan_safe():
    voxels = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [np.nan, np.nan, np.nan]])
    world = voxel_to_world(AFFINE, voxels)
    np.testing.assert_allclose(world[:2], [[10, -5, 1], [10 - 4, -5 + 1.5, 1 + 9]])
    assert np.isnan(world[2]).all()
    back = world_to_voxel(torch.tensor(AFFINE), torch.tensor(world))
    assert isinstance(back, np.ndarray) and back.dtype == np.float64
    np.testing.assert_allclose(back[:2], voxels[:2], atol=1e-12)
    assert np.isnan(back[2]).all()


# ----------------------------------------------------------------------------- datalist


def make_image(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), path)
    return str(path)


def write_json(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def data(tmp_path):
    """A dataset folder with two images and LPS/RAS landmark files."""
    root = tmp_path / "data"
    make_image(root / "images" / "a.nii.gz")
    make_image(root / "images" / "b.nii.gz")
    write_landmarks(root / "landmarks" / "a.fcsv", {"AC": [1, 2, 3], "PC": [4, 5, 6]}, {"AC": "anterior commissure"})
    write_json(root / "landmarks" / "b.mrk.json", {"markups": [{"coordinateSystem": "LPS", "controlPoints": [
        {"label": "PC", "position": [1, 1, 1]}, {"label": "LMB", "position": [2, 2, 2]}]}]})
    return root


def test_datalist_resolves_paths_and_converts_to_ras(data, tmp_path):
    elsewhere = make_image(tmp_path / "elsewhere" / "c.nii.gz")
    datalist = load_datalist(write_json(data / "datalist.json", {
        "training": [{"image": "images/a.nii.gz", "landmarks": "landmarks/a.fcsv", "subject": "s1", "group": 2}],
        "validation": [{"image": ["images/a.nii.gz", "./images/../images/b.nii.gz"], "landmarks": "landmarks/b.mrk.json"}],
        "testing": [{"image": elsewhere}],
    }))
    assert datalist.path == data / "datalist.json"
    train, = datalist.section("training")
    assert train == {"image": str(data / "images" / "a.nii.gz"), "landmarks": {"AC": [1, 2, 3], "PC": [4, 5, 6]},
                     "subject": "s1", "group": 2}
    valid, = datalist.section("validation")
    assert valid["image"] == [str(data / "images" / "a.nii.gz"), str(data / "images" / "b.nii.gz")]
    assert valid["landmarks"] == {"PC": [-1.0, -1.0, 1.0], "LMB": [-2.0, -2.0, 2.0]}
    assert datalist.section("testing") == [{"image": elsewhere}]
    assert datalist.landmark_names == ["AC", "PC", "LMB"]
    assert datalist.descriptions == {"AC": "anterior commissure", "PC": "", "LMB": ""}
    json.dumps(datalist.sections)  # JSON-able


def test_datalist_inline_landmarks_names_order_pairs_and_extra_keys(data):
    datalist = load_datalist(write_json(data / "datalist.json", {
        "name": "my dataset",
        "numTraining": 1,
        "landmark_names": ["RMB", "LMB", "AC"],
        "left_right_pairs": [{"left": "LMB", "right": "RMB"}],
        "landmark_descriptions": {"LMB": "left mammillary body"},
        "training": [{"image": "images/a.nii.gz", "landmarks": {"AC": [1, 2, 3], "LMB": [0.5, 0, 0]}, "fold": 3}],
        "validation": [{"image": "images/b.nii.gz", "landmarks": None}],
    }))
    assert datalist.landmark_names == ["RMB", "LMB", "AC"]
    assert datalist.left_right_pairs == [{"left": "LMB", "right": "RMB"}]
    assert datalist.pair_indices() == [(1, 0)]
    assert datalist.section("training")[0] == {
        "image": str(data / "images" / "a.nii.gz"), "landmarks": {"AC": [1.0, 2.0, 3.0], "LMB": [0.5, 0.0, 0.0]}, "fold": 3
    }
    assert "landmarks" not in datalist.section("validation")[0]
    assert datalist.section("testing") == []
    assert datalist.descriptions == {"RMB": "", "LMB": "left mammillary body", "AC": ""}
    assert datalist.extra == {"name": "my dataset", "numTraining": 1}


def test_datalist_collects_names_over_training_validation_testing(data):
    image = "images/a.nii.gz"
    datalist = load_datalist(write_json(data / "datalist.json", {
        "testing": [{"image": image, "landmarks": {"D": [0, 0, 0], "A": [0, 0, 0]}}],
        "validation": [{"image": image, "landmarks": {"C": [0, 0, 0], "A": [0, 0, 0]}}],
        "training": [{"image": image, "landmarks": {"B": [0, 0, 0]}}, {"image": image, "landmarks": {"A": [1, 1, 1]}}],
    }))
    assert datalist.landmark_names == ["B", "A", "C", "D"]


def test_datalist_descriptions_from_real_afids_file(tmp_path):
    make_image(tmp_path / "t1.nii.gz")
    (tmp_path / "afids.fcsv").write_text(AFIDS_CNN_FCSV.read_text())
    datalist = load_datalist(write_json(tmp_path / "d.json", {"training": [{"image": "t1.nii.gz", "landmarks": "afids.fcsv"}]}))
    assert datalist.landmark_names == list(read_landmarks(AFIDS_CNN_FCSV))
    assert set(datalist.descriptions.values()) == {""}  # AFIDs names are their descriptions


def entries(*landmarks):
    return [{"image": "images/a.nii.gz", "landmarks": value} for value in landmarks]


def test_landmark_not_in_landmark_names_names_the_file(data):
    path = write_json(data / "d.json", {"landmark_names": ["AC", "PC"], "training": entries("landmarks/b.mrk.json")})
    with fails(data / "landmarks" / "b.mrk.json", "landmark 'LMB' is not in landmark_names"):
        load_datalist(path)


def test_inline_landmark_not_in_landmark_names_names_the_entry(data):
    path = write_json(data / "d.json", {"landmark_names": ["AC"], "validation": entries({"AC": [0, 0, 0]}, {"X": [0, 0, 0]})})
    with fails(f"{path} (validation[1] landmarks)", "landmark 'X' is not in landmark_names"):
        load_datalist(path)


def test_duplicate_landmark_names(data):
    path = write_json(data / "d.json", {"landmark_names": ["AC", "PC", "AC"], "training": entries({"AC": [0, 0, 0]})})
    with fails(path, "duplicate name 'AC' in landmark_names"):
        load_datalist(path)


def test_names_differing_only_in_case_or_whitespace_are_one_name(data):
    # one resolver for every command (scripts.landmark_names): case and whitespace are ignored
    path = write_json(data / "d.json", {"landmark_names": ["AC", "PC"], "training": entries({"ac ": [0, 0, 0]})})
    assert load_datalist(path).section("training")[0]["landmarks"] == {"AC": [0.0, 0.0, 0.0]}
    path = write_json(data / "d.json", {"landmark_names": ["AC", "a c"], "training": entries({"AC": [0, 0, 0]})})
    with fails(path, "landmark_names 'AC' and 'a c' differ only in case/whitespace"):
        load_datalist(path)
    path = write_json(data / "d.json", {"training": entries({"AC": [0, 0, 0]}, {"ac ": [1, 1, 1]})})
    datalist = load_datalist(path)
    assert datalist.landmark_names == ["AC"]
    assert datalist.section("training")[1]["landmarks"] == {"AC": [1.0, 1.0, 1.0]}
    path = write_json(data / "d.json", {"training": entries({"AC": [0, 0, 0], "ac ": [1, 1, 1]})})
    with fails(f"{path} (training[0] landmarks)", "landmark 'ac ' differs only in case/whitespace from 'AC': both are 'AC'"):
        load_datalist(path)


def test_real_afids_files_that_differ_only_in_case(tmp_path):
    # afids-cnn writes "culmen", afids-utils "Culmen": the same landmark, one channel (the first spelling)
    make_image(tmp_path / "t1.nii.gz")
    path = write_json(tmp_path / "d.json", {"training": [
        {"image": "t1.nii.gz", "landmarks": str(AFIDS_CNN_FCSV)}, {"image": "t1.nii.gz", "landmarks": str(AFIDS_UTILS_FCSV)}]})
    datalist = load_datalist(path)
    assert datalist.landmark_names == list(read_landmarks(AFIDS_CNN_FCSV))
    first, second = datalist.section("training")
    assert list(second["landmarks"]) == list(first["landmarks"])  # every Culmen-style spelling mapped
    np.testing.assert_allclose(second["landmarks"]["culmen"], read_landmarks(AFIDS_UTILS_FCSV)["Culmen"])


@pytest.mark.parametrize(
    "pairs, problem",
    [
        ([{"left": "LMB", "right": "RMX"}], "landmark 'RMX' is not in landmark_names"),
        ([{"left": "LMB", "right": "LMB"}], "left_right_pairs[0]: 'LMB'/'LMB' repeats a landmark"),
        ([["LMB", "RMB"], {"left": "AC", "right": "RMB"}], "left_right_pairs[1]: 'AC'/'RMB' repeats a landmark"),
        ([{"left": "LMB"}], "left_right_pairs[0] must be"),
        ({"left": "LMB", "right": "RMB"}, "'left_right_pairs' must be a list"),
    ],
)
def test_bad_left_right_pairs(data, pairs, problem):
    path = write_json(data / "d.json", {"landmark_names": ["LMB", "RMB", "AC"], "left_right_pairs": pairs,
                                        "training": entries({"AC": [0, 0, 0]})})
    with fails(path, problem):
        load_datalist(path)


def test_pairs_as_lists_are_accepted(data):
    path = write_json(data / "d.json", {"left_right_pairs": [["LMB", "PC"]], "training": entries("landmarks/b.mrk.json")})
    assert load_datalist(path).left_right_pairs == [{"left": "LMB", "right": "PC"}]


@pytest.mark.parametrize("document", [{}, {"training": [], "validation": [], "testing": []}, {"name": "x"}])
def test_empty_datalist(data, document):
    path = write_json(data / "d.json", document)
    with fails(path, "datalist has no entries in training, validation or testing"):
        load_datalist(path)


def test_missing_image_is_named(data):
    path = write_json(data / "d.json", {"training": [{"image": "images/missing.nii.gz"}]})
    with fails(data / "images" / "missing.nii.gz", f"image not found (listed in {path}, training[0])"):
        load_datalist(path)


def test_missing_landmark_file_is_named(data):
    path = write_json(data / "d.json", {"training": entries("landmarks/missing.fcsv")})
    with fails(data / "landmarks" / "missing.fcsv", "landmark file not found"):
        load_datalist(path)


@pytest.mark.parametrize(
    "document, problem",
    [
        ({"training": {"image": "images/a.nii.gz"}}, "'training' must be a list of entries"),
        ({"training": [{"landmarks": {}}]}, "training[0] must be an object with an 'image'"),
        ({"training": [{"image": 3}]}, "training[0]: 'image' must be a path or a list of paths"),
        ({"training": [{"image": "images/a.nii.gz", "landmarks": 3}]}, "training[0]: 'landmarks' must be a path or"),
        ({"landmark_names": "AC", "training": entries({})}, "'landmark_names' must be a list of non-empty strings"),
        ({"landmark_descriptions": {"XX": "?"}, "training": entries({"AC": [0, 0, 0]})}, "landmark 'XX' is not in"),
        ([], "a datalist must be a JSON object"),
    ],
)
def test_malformed_datalists(data, document, problem):
    path = write_json(data / "d.json", document)
    with fails(path, problem):
        load_datalist(path)


def test_inline_duplicate_and_bad_coordinates(data):
    path = data / "d.json"
    path.write_text('{"training": [{"image": "images/a.nii.gz", "landmarks": {"AC": [0, 0, 0], "AC": [1, 1, 1]}}]}')
    with fails(f"{path} (training[0] landmarks)", "duplicate landmark name 'AC'"):
        load_datalist(path)
    path.write_text('{"training": [{"image": "images/a.nii.gz", "landmarks": {"AC": [0, "x", 0]}}]}')
    with fails(f"{path} (training[0] landmarks)", "landmark 'AC': cannot parse coordinates"):
        load_datalist(path)


def test_missing_datalist(tmp_path):
    with fails(tmp_path / "nope.json", "datalist not found"):
        load_datalist(tmp_path / "nope.json")
