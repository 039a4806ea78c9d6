"""scripts.plan writes a complete bundle: configs that parse and validate, reproducibly, safely."""

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from scripts.datasets.synthetic import LANDMARK_NAMES, make_synthetic_dataset
from scripts.plan import main as plan_main

PROJECT = Path(__file__).resolve().parent.parent
SCHEMA = PROJECT.parent / "shared" / "monai" / "meta_schema_20240725.json"
CONFIGS = ("plans.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json", "logging.conf")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return root, make_synthetic_dataset(str(root / "data"), n_training=4, n_validation=1, n_testing=1, seed=3)


@pytest.fixture(scope="module")
def bundle(dataset):
    root, datalist = dataset
    assert plan_main([datalist, "--bundle_root", str(root / "bundle")]) == 0
    return root / "bundle"


def test_bundle_layout(bundle):
    for name in CONFIGS:
        assert (bundle / "configs" / name).is_file(), name
    assert (bundle / "metadata.json").is_symlink() and (bundle / "metadata.json").resolve() == (bundle / "configs" / "metadata.json").resolve()
    assert (bundle / "scripts" / "transforms.py").is_file() and not list((bundle / "scripts").rglob("__pycache__"))
    assert (bundle / "LICENSE").read_text().startswith(" " * 5) and "Apache License" in (bundle / "LICENSE").read_text()
    assert (bundle / "models").is_dir() and (bundle / "docs" / "README.md").is_file()


def test_configs_parse_and_read_the_plans(bundle, dataset):
    _, datalist = dataset
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(bundle)
    assert parser.get_parsed_content("landmark_names") == LANDMARK_NAMES
    assert parser.get_parsed_content("datalist") == str(Path(datalist).resolve())
    plans = json.loads((bundle / "configs" / "plans.json").read_text())
    assert parser.get_parsed_content("patch_size") == plans["configuration"]["patch_size"]
    net = parser.get_parsed_content("network_def")
    patch = plans["configuration"]["patch_size"]
    assert net(torch.zeros(1, 1, *patch)).shape == (1, len(LANDMARK_NAMES), *patch)


def test_metadata_is_valid_and_names_every_channel(bundle):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == len(LANDMARK_NAMES)
    assert list(metadata["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == LANDMARK_NAMES
    if SCHEMA.exists():
        result = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"),
             "--filepath", str(SCHEMA)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "metadata is verified with no error" in (result.stdout + result.stderr), result.stderr[-2000:]


def test_planning_twice_is_byte_identical(bundle, dataset, tmp_path):
    _, datalist = dataset
    again = tmp_path / "again"
    assert plan_main([datalist, "--bundle_root", str(again)]) == 0
    assert plan_main([datalist, "--bundle_root", str(again)]) == 0  # over its own output, too
    for name in CONFIGS:
        assert filecmp.cmp(bundle / "configs" / name, again / "configs" / name, shallow=False), name


def test_refuses_to_overwrite_a_trained_bundle_and_keeps_release_fields(dataset, tmp_path, capsys):
    _, datalist = dataset
    target = tmp_path / "trained"
    assert plan_main([datalist, "--bundle_root", str(target)]) == 0
    metadata_file = target / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata.update(version="1.2.0", changelog={"1.2.0": "retrained"}, eval_metrics={"mre_mm": 1.1})
    metadata_file.write_text(json.dumps(metadata))
    torch.save({"model": {}}, target / "models" / "model.pt")
    with pytest.raises(SystemExit) as refused:  # the command line: one line on stderr, exit status 1
        plan_main([datalist, "--bundle_root", str(target)])
    assert refused.value.code == 1 and "refusing to overwrite its configs (use --force)" in capsys.readouterr().err
    assert plan_main([datalist, "--bundle_root", str(target), "--force"]) == 0
    kept = json.loads(metadata_file.read_text())
    assert kept["version"] == "1.2.0" and kept["changelog"] == {"1.2.0": "retrained"} and kept["eval_metrics"] == {"mre_mm": 1.1}


def test_datalist_inside_the_bundle_is_relative_to_bundle_root(tmp_path):
    bundle = tmp_path / "bundle"
    datalist = make_synthetic_dataset(str(bundle / "data"), n_training=2, n_validation=1, n_testing=0, seed=5)
    assert plan_main([datalist, "--bundle_root", str(bundle)]) == 0
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["datalist"] == "$@bundle_root + '/data/datalist.json'"
