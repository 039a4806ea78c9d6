"""Landmark files and tables as users really have them (issue 18's cases, on small files built here).

- AFIDs-protocol .fcsv (Slicer 4.6: the AFID number in ``label``, the long name in ``desc``): every point
  matched to the shipped model's 32 channels through the plans' descriptions, as evaluation loads it.
- Bare-number labels: never a channel index unless the datalist declares ``landmark_numbering``.
- Names no channel has: a stop naming the file and every such name (check, training/evaluation loading,
  the landmark transform, import).
- Slicer's Markups > Export to table (label,l,p,s / label,r,a,s), Excel's CSV UTF-8 (byte-order mark) and
  semicolon + decimal-comma CSV, read by one table reader, in landmark files and ``import_data --format table``.
- nnU-Net v1 dataset.json (id -> name) imported like v2; malformed metadata is one line naming the file.
- The datalist JSON Schema: every structural problem at once; extra keys and training-only datalists pass.
"""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data import check_cases, check_dataset, load_datalist, select_cases
from scripts.errors import LandmarkDataError
from scripts.import_data import import_nnlandmark, import_table
from scripts.geometry import outside_image
from scripts.landmark_io import read_landmarks, read_points
from scripts.landmark_names import LandmarkNames, Point, plans_landmark_names
from scripts.transforms import LoadLandmarksd

PROJECT = Path(__file__).resolve().parent.parent
PLANS = PROJECT / "configs" / "plans.json"
AFFINE = np.array([[2.0, 0, 0, -20.0], [0, 2.0, 0, -24.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
SHAPE = (24, 24, 24)
# long names of AFID 1..32 as the AFIDs protocol's Slicer template files spell them (lower-case culmen, genu...)
AFIDS_DESCRIPTIONS = [
    "AC", "PC", "infracollicular sulcus", "PMJ", "superior interpeduncular fossa", "R superior LMS",
    "L superior LMS", "R inferior LMS", "L inferior LMS", "culmen", "intermammillary sulcus", "R MB", "L MB",
    "pineal gland", "R LV at AC", "L LV at AC", "R LV at PC", "L LV at PC", "genu of CC", "splenium of CC",
    "R AL temporal horn", "L AL temporal horn", "R superior AM temporal horn", "L superior AM temporal horn",
    "R inferior AM temporal horn", "L inferior AM temporal horn", "R indusium griseum origin",
    "L indusium griseum origin", "R ventral occipital horn", "L ventral occipital horn",
    "R olfactory sulcal fundus", "L olfactory sulcal fundus",
]


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(SHAPE).astype(np.float32), AFFINE), str(path))
    return path


def world(voxels) -> np.ndarray:
    voxels = np.asarray(voxels, dtype=np.float64)
    return voxels @ AFFINE[:3, :3].T + AFFINE[:3, 3]


def points_inside(n: int) -> np.ndarray:
    """n distinct RAS points inside the 24^3 image (voxel centres 2..21 along a diagonal-ish walk)."""
    voxels = np.stack([2 + np.arange(n) % 20, 3 + (2 * np.arange(n)) % 18, 4 + (3 * np.arange(n)) % 17], axis=1)
    return world(voxels)


def afids_fcsv(path: Path, positions, descriptions=AFIDS_DESCRIPTIONS) -> Path:
    """A Slicer 4.6 AFIDs-protocol file: id vtkMRMLMarkupsFiducialNode_N, label = N, desc = long name, RAS (0)."""
    lines = ["# Markups fiducial file version = 4.6", "# CoordinateSystem = 0",
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
    for number, (position, description) in enumerate(zip(positions, descriptions), start=1):
        x, y, z = (repr(float(v)) for v in position)
        lines.append(f"vtkMRMLMarkupsFiducialNode_{number},{x},{y},{z},"
                     f"0,0,0,1,1,1,0,{number},{description},vtkMRMLScalarVolumeNode1")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_json(path: Path, document) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def message_of(call) -> str:
    """The one-line message of a stop (a typed error, or the transitional one-line SystemExit)."""
    with pytest.raises((LandmarkDataError, SystemExit)) as raised:
        call()
    text = str(raised.value.code if isinstance(raised.value, SystemExit) else raised.value)
    assert "\n" not in text.strip() or text.count("error: ") > 1, text
    return text


# ----------------------------------------------------------------------------- AFIDs-protocol .fcsv


def test_afids_protocol_fcsv_matches_all_32_channels_of_the_shipped_model(tmp_path):
    model = plans_landmark_names(PLANS)
    assert len(model.channels) == 32
    truth = points_inside(32)
    image(tmp_path / "sub-01_T1w.nii.gz")
    afids_fcsv(tmp_path / "sub-01_afids.fcsv", truth)
    datalist = write_json(tmp_path / "datalist.json", {"validation": [{"image": "sub-01_T1w.nii.gz", "landmarks": "sub-01_afids.fcsv"}]})
    # exactly what evaluate.json calls
    cases = check_cases(select_cases(datalist, "validation", None, None, model.channels, model.descriptions), model.channels, "validation")
    landmarks = cases[0]["landmarks"]
    assert list(landmarks) == model.channels  # AFID N is channel N: the descriptions say so, not the numbers
    np.testing.assert_allclose([landmarks[name] for name in model.channels], truth, atol=1e-12)
    loaded = LoadLandmarksd(model.channels)({"image": cases[0]["image"], "landmarks": landmarks})
    assert np.isfinite(loaded["landmarks_world"]).all(), "all 32 annotated: none dropped"
    problems, counts = check_dataset(datalist, PLANS)
    assert [p for p in problems if p.severity == "error"] == [] and counts["landmarks"] == 32


def test_unknown_names_stop_every_command_and_are_all_named(tmp_path):
    model = plans_landmark_names(PLANS)
    descriptions = list(AFIDS_DESCRIPTIONS)
    descriptions[2], descriptions[9] = "infracolicular sulcus", "kulmen"  # two typos
    image(tmp_path / "t1.nii.gz")
    fcsv = afids_fcsv(tmp_path / "typos.fcsv", points_inside(32), descriptions)
    datalist = write_json(tmp_path / "datalist.json", {"validation": [{"image": "t1.nii.gz", "landmarks": "typos.fcsv"}]})
    expected = "'infracolicular sulcus' (label 3), 'kulmen' (label 10)"
    # training / evaluation loading
    text = message_of(lambda: select_cases(datalist, "validation", None, None, model.channels, model.descriptions))
    assert str(fcsv) in text and "2 landmarks are not in the model's landmarks" in text and expected in text
    # scripts.check against the trained bundle
    problems, _ = check_dataset(datalist, PLANS)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1 and errors[0].source == str(fcsv) and expected in errors[0].message
    # entries that reach the configs' check or the transform any other way: still a stop, never a drop
    entry = {"image": str(tmp_path / "t1.nii.gz"), "landmarks": {"AC": [0.0, 0.0, 0.0], "kulmen": [1.0, 1.0, 1.0]}}
    assert "'kulmen'" in message_of(lambda: check_cases([entry], model.channels, "validation"))
    text = message_of(lambda: LoadLandmarksd(model.channels)(entry))
    assert text.startswith(str(tmp_path / "t1.nii.gz")) and "'kulmen'" in text


def test_bare_numbers_are_channel_numbers_only_when_the_datalist_says_so(tmp_path):
    image(tmp_path / "t1.nii.gz")
    truth = points_inside(3)
    numbered = tmp_path / "numbered.fcsv"
    afids_fcsv(numbered, truth, ["", "", ""])  # labels 1, 2, 3; no desc
    entries = [{"image": "t1.nii.gz", "landmarks": "numbered.fcsv"}]
    names = {"landmark_names": ["Nasion", "Sella", "Porion"]}
    path = write_json(tmp_path / "d.json", {**names, "training": entries})
    with pytest.raises(LandmarkDataError, match=r"numbered\.fcsv: 3 landmarks are not in landmark_names: '1', '2', '3'"):
        load_datalist(path)
    path = write_json(tmp_path / "d.json", {**names, "landmark_numbering": 1, "training": entries})
    loaded = load_datalist(path).section("training")[0]["landmarks"]
    assert list(loaded) == ["Nasion", "Sella", "Porion"]
    np.testing.assert_allclose(loaded["Porion"], truth[2])
    path = write_json(tmp_path / "d.json", {**names, "landmark_numbering": 0, "training": entries})
    with pytest.raises(LandmarkDataError, match=r"landmark '3' is not in landmark_names"):  # 0-based: 3 is past the end
        load_datalist(path)
    # numbering needs the order it counts in
    path = write_json(tmp_path / "d.json", {"landmark_numbering": 1, "training": entries})
    with pytest.raises(LandmarkDataError, match="'landmark_numbering' needs 'landmark_names'"):
        load_datalist(path)


def test_aliases_join_names_with_or_without_landmark_names(tmp_path):
    image(tmp_path / "a.nii.gz")
    image(tmp_path / "b.nii.gz")
    p = [float(v) for v in points_inside(1)[0]]
    entries = [{"image": "a.nii.gz", "landmarks": {"anterior commissure": p, "PC": p}},
               {"image": "b.nii.gz", "landmarks": {"ac": p, "Posterior  Commissure": p}}]
    aliases = {"AC": ["anterior commissure"], "PC": ["posterior commissure"]}
    for declared in ({}, {"landmark_names": ["AC", "PC"]}):
        datalist = load_datalist(write_json(tmp_path / "d.json", {**declared, "landmark_aliases": aliases, "training": entries}))
        assert datalist.landmark_names == ["AC", "PC"]
        assert [list(e["landmarks"]) for e in datalist.section("training")] == [["AC", "PC"], ["AC", "PC"]]
    # a text two channels claim names neither: never a guess
    names = LandmarkNames(["LMB", "RMB"], aliases={"LMB": ["MB"], "RMB": ["mb"]})
    assert names.channel("MB") is None and names.channel("lmb") == "LMB"


def test_label_and_description_naming_different_landmarks_is_an_error(tmp_path):
    names = LandmarkNames(["A", "B"], {"B": "second point"}, numbering=1)
    assert names.match("1", "a ") == ("A", None)
    assert names.match("F-1", "Second  Point") == ("B", None)  # an unknown label, a description that names a channel
    channel, conflict = names.match("1", "second point")
    assert channel is None and "label '1' is A but description 'second point' is B" in conflict
    with pytest.raises(LandmarkDataError, match="f.fcsv: line 4: label '1' is A"):
        names.resolve([Point("1", "second point", np.zeros(3), "line 4")], "f.fcsv")


def test_without_names_files_are_compared_and_mismatches_reported(tmp_path):
    position = [float(v) for v in points_inside(1)[0]]
    entries = []
    for index, landmarks in enumerate([("AC", "PC", "CUL"), ("AC", "PC", "CUL"), ("ac", "PC", "Culmn")]):
        image(tmp_path / f"{index}.nii.gz")
        (tmp_path / f"{index}.csv").write_text("name,x,y,z\n" + "".join(f"{n},{position[0]},{position[1]},{position[2]}\n" for n in landmarks))
        entries.append({"image": f"{index}.nii.gz", "landmarks": f"{index}.csv"})
    path = write_json(tmp_path / "d.json", {"training": entries})
    problems, counts = check_dataset(path)
    assert counts["landmarks"] == 4  # AC (ac is AC), PC, CUL, Culmn
    warnings = {(Path(p.source).name, p.message) for p in problems if p.severity == "warning"}
    assert ("2.csv", "lacks 1 landmark(s) most files have: CUL") in warnings
    assert any(source == "2.csv" and "most other files do not have: Culmn" in message for source, message in warnings)
    assert not [p for p in problems if p.severity == "error"]


# ----------------------------------------------------------------------------- tables


def test_slicer_markups_table_export_is_read_by_its_header(tmp_path):
    truth = points_inside(2)
    header = "label,{},defined,selected,visible,locked,description\n"
    for system, flip in (("l,p,s", np.array([-1.0, -1.0, 1.0])), ("r,a,s", np.ones(3))):
        path = tmp_path / f"{system[0]}.csv"
        rows = [f"AC,{','.join(f'{v:.6g}' for v in truth[0] * flip)},1,1,1,0,anterior commissure",
                f"PC,{','.join(f'{v:.6g}' for v in truth[1] * flip)},1,1,1,0,",
                "GONE,0,0,0,0,1,1,0,an unplaced point"]  # defined = 0: Slicer's unplaced point, skipped
        path.write_text(header.format(system) + "\n".join(rows) + "\n")
        landmarks = read_landmarks(path)
        assert list(landmarks) == ["AC", "PC"]
        np.testing.assert_allclose(landmarks["AC"], truth[0], atol=1e-4)
        np.testing.assert_allclose(landmarks["PC"], truth[1], atol=1e-4)
        assert read_points(path)[0].description == "anterior commissure"
    image(tmp_path / "t1.nii.gz")
    path = write_json(tmp_path / "d.json", {"training": [{"image": "t1.nii.gz", "landmarks": "l.csv"}]})
    problems, counts = check_dataset(path)
    assert problems == [] and counts["landmarks"] == 2  # LPS stated by the header: no "not stated" warning


@pytest.mark.parametrize("encoding, text", [
    ("utf-8-sig", "name,x,y,z\r\nAC,1.5,-2,3\r\nPC,4,5,6.25\r\n"),  # Excel "CSV UTF-8"
    ("cp1252", "name;x;y;z\r\nAC;1,5;-2;3\r\nPC;4;5;6,25\r\n"),  # Excel "CSV" in a German locale
    ("utf-8", "name\tx\ty\tz\nAC\t1.5\t-2\t3\nPC\t4\t5\t6.25\n"),  # tab-separated
])
def test_excel_and_tab_landmark_tables(tmp_path, encoding, text):
    path = tmp_path / "points.csv"
    path.write_bytes(text.encode(encoding))
    landmarks = read_landmarks(path)
    assert list(landmarks) == ["AC", "PC"]
    np.testing.assert_allclose(landmarks["AC"], [1.5, -2, 3])
    np.testing.assert_allclose(landmarks["PC"], [4, 5, 6.25])


def test_import_table_from_excel_bom_and_semicolon_files(tmp_path):
    image(tmp_path / "images" / "sub-01.nii.gz")
    truth = points_inside(3)
    rows = [("sub-01", name, *(f"{v:.4f}" for v in p)) for name, p in zip(("AC", "PC", "Sella turcica (Türkensattel)"), truth)]
    comma = "case,landmark,x,y,z\r\n" + "".join(",".join(row) + "\r\n" for row in rows)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + comma.encode("utf-8"))
    semicolon = "case;landmark;x;y;z\r\n" + "".join(";".join([c, n, *(v.replace(".", ",") for v in xyz)]) + "\r\n" for c, n, *xyz in rows)
    (tmp_path / "semicolon.csv").write_bytes(semicolon.encode("cp1252"))
    for table in ("bom.csv", "semicolon.csv"):
        datalist = import_table(tmp_path / table, tmp_path / "d.json", tmp_path / "images")
        assert datalist["landmark_names"] == ["AC", "PC", "Sella turcica (Türkensattel)"]
        np.testing.assert_allclose(list(datalist["training"][0]["landmarks"].values()), truth, atol=1e-4)
    # the real CLI on the BOM file (the case's command), and a one-line refusal for a delimiter it cannot sniff
    result = subprocess.run([sys.executable, "-m", "scripts.import_data", str(tmp_path / "bom.csv"), "--format", "table", "--images",
                             str(tmp_path / "images"), "--output", str(tmp_path / "out.json")],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "1 annotated case(s), 0 unannotated" in result.stdout
    (tmp_path / "pipes.csv").write_text("case|landmark|x|y|z\nsub-01|AC|1|2|3\n")
    with pytest.raises(LandmarkDataError, match=r"pipes\.csv: needs the columns case, landmark, x, y, z.*delimiter") as raised:
        import_table(tmp_path / "pipes.csv", tmp_path / "d.json", tmp_path / "images")
    assert "\n" not in str(raised.value)


# ----------------------------------------------------------------------------- nnU-Net v1 / v2 dataset.json


@pytest.fixture()
def nnunet(tmp_path):
    """A raw dataset: one 24^3 training scan with two 3x3x3 blobs (values 1, 2), one test scan."""
    root = tmp_path / "Task001_Points"
    image(root / "imagesTr" / "case_001_0000.nii.gz")
    image(root / "imagesTs" / "case_900_0000.nii.gz")
    labels = np.zeros(SHAPE, np.uint8)
    centres = np.array([[5, 6, 7], [15, 12, 9]])
    for value, (i, j, k) in enumerate(centres, start=1):
        labels[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = value
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(labels, AFFINE), str(root / "labelsTr" / "case_001.nii.gz"))
    return root, world(centres)


@pytest.mark.parametrize("labels", [
    {"0": "background", "1": "Nasion", "2": "Sella"},  # nnU-Net v1 / Decathlon: id -> name
    {"background": 0, "Nasion": 1, "Sella": 2},  # nnU-Net v2: name -> id
])
def test_nnunet_v1_and_v2_dataset_json_import_alike(nnunet, tmp_path, labels):
    root, truth = nnunet
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "modality": {"0": "MRI"}}))
    datalist = import_nnlandmark(root, tmp_path / "d.json")
    assert datalist["landmark_names"] == ["Nasion", "Sella"] and len(datalist["testing"]) == 1
    np.testing.assert_allclose(list(datalist["training"][0]["landmarks"].values()), truth, atol=1e-4)


@pytest.mark.parametrize("file, text, problem", [
    ("dataset.json", '{"labels": {"0": "background", "1": ', "dataset.json: invalid JSON"),
    ("dataset.json", '{"labels": {"background": 0, "Nasion": "first"}}', "dataset.json: 'labels' must map names to whole numbers"),
    ("dataset.json", '{"labels": ["Nasion"]}', "dataset.json: 'labels' must be an object"),
    ("dataset.json", '{"labels": {"background": 0, "Nasion": 1, "Sella": 1}}', "two landmarks the same label value"),
    ("all_landmarks_voxel.json", '{"case_001": {"Nasion": [5, 6, 7], "Porion": [1, 2, 3]}}',
     "all_landmarks_voxel.json (case_001): landmark 'Porion' is not in dataset.json's labels"),
    ("all_landmarks_voxel.json", '{"case_001": {"Nasion": [5, 6]}}', "case_001/Nasion: expected a voxel index"),
])
def test_malformed_nnunet_metadata_is_one_line_naming_the_file(nnunet, tmp_path, file, text, problem):
    root, _ = nnunet
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Nasion": 1, "Sella": 2}}))
    (root / file).write_text(text)
    with pytest.raises(LandmarkDataError, match=problem.replace("(", r"\(").replace(")", r"\)")) as raised:
        import_nnlandmark(root, tmp_path / "d.json")
    assert "\n" not in str(raised.value) and str(raised.value).startswith(str(root / file))


# ----------------------------------------------------------------------------- datalist schema, outside rule


def test_datalist_schema_reports_every_problem_at_once(tmp_path):
    image(tmp_path / "t1.nii.gz")
    document = {"landmark_names": "AC", "left_right_pairs": [{"left": "L"}], "training": [{"image": 3}, {"landmarks": {}}],
                "validation": {"image": "t1.nii.gz"}}
    path = write_json(tmp_path / "d.json", document)
    expected = ["'landmark_names' must be a list of non-empty strings", "left_right_pairs[0] must be",
                "training[0]: 'image' must be a path or a list of paths, got 3", "training[1] must be an object with an 'image'",
                "'validation' must be a list of entries"]
    with pytest.raises(LandmarkDataError) as raised:
        load_datalist(path)
    assert str(raised.value).startswith(f"{path}: 5 problems: ") and all(e in str(raised.value) for e in expected)
    problems, _ = check_dataset(path)
    assert len(problems) == 5 and all(any(e in p.message for p in problems) for e in expected)


def test_extra_keys_and_a_training_only_datalist_pass(tmp_path):
    image(tmp_path / "t1.nii.gz")
    point = [float(v) for v in points_inside(1)[0]]
    path = write_json(tmp_path / "d.json", {"name": "nnU-Net style", "numTraining": 1, "training": [
        {"image": "t1.nii.gz", "landmarks": {"AC": point}, "subject": "s1", "group": 2, "session": {"date": "2024-01-01"}}]})
    problems, counts = check_dataset(path)
    assert problems == [] and counts["training"] == 1 and counts["validation"] == 0
    entry = load_datalist(path).section("training")[0]
    assert entry["subject"] == "s1" and entry["group"] == 2


def test_outside_image_is_one_rule_by_hand():
    # voxel centres 0..23: inside up to half a voxel beyond the first and last centre; NaN rows never outside
    voxels = np.array([[-0.5, 0, 0], [-0.51, 0, 0], [23.5, 23.5, 23.5], [0, 23.51, 0], [np.nan] * 3])
    np.testing.assert_array_equal(outside_image(AFFINE, SHAPE, world(voxels)), [False, True, False, True, False])
