"""Bad input ends in one line naming the file and the problem: no traceback, nothing half-written.

The checks run exactly as the configs call them (``select_cases`` -> ``check_cases`` for train.json,
the planner's CLI for scripts.plan); two cases also go through ``python -m monai.bundle run``.
"""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data import check_cases, select_cases
from scripts.errors import LandmarkDataError

NAMES = ["AC", "PC"]
PROJECT = Path(__file__).resolve().parent.parent


def write_image(path: Path, array: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return str(path)


def write_datalist(folder: Path, training: list, **extra) -> str:
    path = folder / "datalist.json"
    path.write_text(json.dumps({"landmark_names": NAMES, "training": training, **extra}))
    return str(path)


@pytest.fixture()
def good(tmp_path):
    image = write_image(tmp_path / "good.nii.gz", np.random.default_rng(0).random((12, 12, 12)))
    return {"image": "good.nii.gz", "landmarks": {"AC": [3.0, 4.0, 5.0], "PC": [6.0, 6.0, 6.0]}}, image


def training_cases(datalist: str) -> list:
    return check_cases(select_cases(datalist, "training"), NAMES)


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_case_passes(tmp_path, good):
    entry, _ = good
    assert len(training_cases(write_datalist(tmp_path, [entry]))) == 1


def test_truncated_image(tmp_path, good):
    entry, image = good
    data = Path(image).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [entry, {**entry, "image": "cut.nii.gz"}]))
    assert_one_line_error(excinfo, "cut.nii.gz", "cannot read image")


def test_corrupt_file(tmp_path, good):
    entry, _ = good
    (tmp_path / "noise.nii.gz").write_bytes(gzip.compress(b"this is not an image" * 50))
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "image": "noise.nii.gz"}]))
    assert_one_line_error(excinfo, "noise.nii.gz", "cannot read image")


def test_2d_image(tmp_path, good):
    entry, _ = good
    write_image(tmp_path / "flat.nii.gz", np.zeros((12, 12)))
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "image": "flat.nii.gz"}]))
    assert_one_line_error(excinfo, "flat.nii.gz", "2D image", "expected a 3D image")


def test_4d_image(tmp_path, good):
    entry, _ = good
    write_image(tmp_path / "series.nii.gz", np.zeros((12, 12, 12, 3)))
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "image": "series.nii.gz"}]))
    assert_one_line_error(excinfo, "series.nii.gz", "4D image")


def test_nan_intensities(tmp_path, good):
    entry, _ = good
    array = np.ones((12, 12, 12))
    array[3, 4, 5] = np.nan
    write_image(tmp_path / "nan.nii.gz", array)
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "image": "nan.nii.gz"}]))
    assert_one_line_error(excinfo, "nan.nii.gz", "NaN")


def test_annotation_outside_its_image(tmp_path, good):
    entry, _ = good
    outside = {**entry, "landmarks": {"AC": [3.0, 4.0, 5.0], "PC": [6.0, 60.0, 6.0]}}
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [outside]))
    assert_one_line_error(excinfo, "good.nii.gz", "outside the image", "PC")


def test_every_problem_is_reported_at_once(tmp_path, good):
    entry, _ = good
    write_image(tmp_path / "flat.nii.gz", np.zeros((12, 12)))
    outside = {**entry, "landmarks": {"AC": [-40.0, 4.0, 5.0]}}
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "image": "flat.nii.gz"}, outside]))
    message = str(excinfo.value)  # one line: "training cases: 2 problems: <flat.nii.gz: ...>; <good.nii.gz: ... AC>"
    assert "\n" not in message and "2 problems" in message
    assert message.index("flat.nii.gz") < message.index("outside the image: AC")


def test_unknown_landmark_name(tmp_path, good):
    entry, _ = good
    (tmp_path / "case.json").write_text(json.dumps({"AC": [1, 2, 3], "XYZ": [1, 2, 3]}))
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "landmarks": "case.json"}]))
    assert_one_line_error(excinfo, "case.json", "XYZ")


def test_duplicate_landmark_name(tmp_path, good):
    entry, _ = good
    (tmp_path / "case.csv").write_text("name,x,y,z\nAC,1,2,3\nAC,2,3,4\n")
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "landmarks": "case.csv"}]))
    assert_one_line_error(excinfo, "case.csv", "duplicate landmark name 'AC'")


def test_empty_datalist(tmp_path):
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, []))
    assert_one_line_error(excinfo, "datalist.json")


def test_missing_image_file(tmp_path, good):
    entry, _ = good
    with pytest.raises(LandmarkDataError) as excinfo:
        training_cases(write_datalist(tmp_path, [{**entry, "image": "nowhere.nii.gz"}]))
    assert_one_line_error(excinfo, "nowhere.nii.gz", "not found")


def run_cli(*args, cwd=PROJECT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_planner_cli_one_line_error_and_no_files(tmp_path, good):
    entry, _ = good
    datalist = write_datalist(tmp_path, [{**entry, "landmarks": {"AC": [1, 2, 3], "ac ": [2, 3, 4]}}], landmark_names=None)
    Path(datalist).write_text(json.dumps({"training": [{**entry, "landmarks": {"AC": [1, 2, 3], "ac ": [2, 3, 4]}}]}))
    bundle = tmp_path / "bundle"
    result = run_cli("-m", "scripts.plan", datalist, "--bundle_root", bundle)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "differs only in case" in error_lines[0], result.stderr
    assert not (bundle / "configs").exists(), "nothing written on a bad datalist"


def test_train_cli_one_line_error(tmp_path, good):
    """Through monai.bundle's own CLI: the bad image is named, no traceback, no checkpoint written."""
    entry, _ = good
    write_image(tmp_path / "flat.nii.gz", np.zeros((12, 12)))
    good_list = write_datalist(tmp_path, [entry, {**entry, "image": "good.nii.gz"}])
    bundle = tmp_path / "bundle"
    planned = run_cli("-m", "scripts.plan", good_list, "--bundle_root", bundle)
    assert planned.returncode == 0, planned.stderr
    bad_list = tmp_path / "bad.json"
    bad_list.write_text(json.dumps({"landmark_names": NAMES, "training": [{**entry, "image": "flat.nii.gz"}], "validation": [entry]}))
    result = run_cli("-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--datalist", bad_list, cwd=bundle)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "flat.nii.gz" in result.stderr
    assert not list((bundle / "models").glob("*.pt"))


def test_thousands_of_points_are_refused_by_the_planner_with_one_line(tmp_path, good):
    entry, _ = good
    rows = "".join(f"P{i:04d},{i % 10},{(i // 10) % 10},{i % 7}\n" for i in range(2000))
    (tmp_path / "cloud.csv").write_text("name,x,y,z\n" + rows)
    datalist = tmp_path / "cloud.json"
    datalist.write_text(json.dumps({"training": [{**entry, "landmarks": "cloud.csv"}]}))
    result = run_cli("-m", "scripts.plan", datalist, "--bundle_root", tmp_path / "bundle")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "2000 landmark names: over 512" in result.stderr and not (tmp_path / "bundle" / "configs").exists()


def test_non_ascii_names_and_paths_with_spaces(tmp_path, good):
    entry, image = good
    folder = tmp_path / "Patientin Müller"
    folder.mkdir()
    (folder / "T1 scan.nii.gz").write_bytes(Path(image).read_bytes())
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"landmark_names": ["Nasion", "Sella turcica (Türkensattel)"], "training": [
        {"image": "T1 scan.nii.gz", "landmarks": {"Nasion": [3.0, 4.0, 5.0], "Sella turcica (Türkensattel)": [6.0, 6.0, 6.0]}}]}),
        encoding="utf-8")
    cases = check_cases(select_cases(str(datalist), "training"), ["Nasion", "Sella turcica (Türkensattel)"])
    assert len(cases) == 1 and cases[0]["image"].endswith("Patientin Müller/T1 scan.nii.gz")


def test_too_big_for_memory_is_caught_before_resampling():
    from scripts.errors import LandmarkDataError
    from scripts.image_io import check_fits_in_memory

    # 100 x 100 x 50 voxels of 2 mm at 1 mm: 200 x 200 x 100 = 4e6 voxels; 3 float32 channels = 48e6 bytes
    check_fits_in_memory("scan.nii.gz", (100, 100, 50), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), 3, available=48_000_000)
    with pytest.raises(LandmarkDataError) as excinfo:
        check_fits_in_memory("scan.nii.gz", (100, 100, 50), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), 3, available=47_999_999)
    assert "scan.nii.gz: too big for memory: 200x200x100 voxels at the planned 1x1x1 mm spacing" in str(excinfo.value)


def test_inference_refuses_an_image_too_big_for_memory_and_keeps_the_others(tmp_path, afids_bundle_dir):
    """A header promising 1280^3 voxels at the shipped model's 1 mm (x 34 channels: ~300 GB) is refused up front."""
    folder = tmp_path / "scans"
    folder.mkdir()
    write_image(folder / "giant.nii.gz", np.random.default_rng(1).random((64, 64, 64)), affine=np.diag([20.0, 20.0, 20.0, 1.0]))
    (folder / "small.nii.gz").write_bytes((afids_bundle_dir / "data" / "afids" / "sample" / "sample_T1w.nii.gz").read_bytes())
    out = tmp_path / "out"
    result = run_cli("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", folder,
                     "--output_dir", out, "--tta", "False")
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert "giant.nii.gz: too big for memory: 1280x1280x1280 voxels" in result.stdout
    assert (out / "small.json").exists() and not list(out.glob("giant*"))


def test_disk_full_during_inference_leaves_no_partial_case(tmp_path, afids_bundle_dir):
    """A real 48 kB tmpfs as the output folder: the 1 MB PNG cannot be written, the run stops with one line
    naming the file and the reason, and no file of the case (and no temp file) is left behind."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(tiny)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        sample = afids_bundle_dir / "data" / "afids" / "sample" / "sample_T1w.nii.gz"
        result = run_cli("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", sample,
                         "--output_dir", tiny, "--tta", "False")
        assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "sample_T1w_landmarks.png: cannot write (No space left on device)" in last, last
        assert sorted(p.name for p in tiny.iterdir()) == [], "nothing of the case, no temp files"
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_a_misspelled_option_names_the_closest_id():
    """monai.bundle run would add ``--inputs`` as a new id and run on the default input: refused, with the id meant."""
    from scripts.cli_args import typed_ids, unknown_command_line_id

    assert typed_ids(["--input", "a", "--save-png=false", "x", "--train#trainer#max_epochs", "2", "-fold", "-1", "--", "--verbose"]) == [
        "input", "save_png", "train#trainer#max_epochs", "fold"], "as python-fire reads keywords; after a bare -- its own flags"
    error = unknown_command_line_id(["run", "--config_file", str(PROJECT / "configs" / "inference.json"), "--inputs", "scan.nii.gz"])
    assert str(error) == f"--inputs: no such option: no id 'inputs' in {PROJECT / 'configs' / 'inference.json'} (did you mean --input?)"
    train = [str(PROJECT / "configs" / name) for name in ("train.json", "multi_gpu_train.json")]
    known = ["--epochs", "8", "--fold=0", "--bundle-root", ".", "--train#trainer#max_epochs", "2", "--train::trainer::x", "1",
             "--meta_file", "m.json", "--workflow_type", "train", "--_meta_#version", "2", "--tracking", "mlflow", "--run_name", "r"]
    assert unknown_command_line_id(["run", "--config_file", str(train), *known]) is None, "ids, nested ids, MONAI's keywords"
    assert "no id 'run_name'" in str(unknown_command_line_id(["run", "--config_file", str(train), "--run_name", "r"])), "tracking's only with it"
    assert "did you mean --epochs?" in str(unknown_command_line_id(["run", "--config_file", str(train), "--epoch", "8"]))
    assert unknown_command_line_id(["run", "--config_file", "missing.json", "--inputs", "x"]) is None, "MONAI names a missing file"
    assert unknown_command_line_id(["verify_metadata", "--inputs", "x"]) is None, "only run's overrides are ids"


def test_bundle_command_refuses_a_misspelled_option_before_running(tmp_path):
    result = run_cli("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--inputs", tmp_path / "scan.nii.gz",
                     "--output_dir", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --inputs: no such option: no id 'inputs' in configs/inference.json (did you mean --input?)")
    assert not (tmp_path / "out").exists(), "nothing ran"
