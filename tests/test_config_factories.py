"""What the configs compute is built by `_target_`s with named arguments reading ids (no positional `$scripts...(...)`
calls), so an override on the command line reaches it; the cascade checks the coarse model's sidecar the way the
fine model's is checked (scripts.model_files)."""

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.errors import LandmarkConfigError, bundle_error_in, exit_line
from scripts.landmark_io import write_landmarks

PROJECT = Path(__file__).resolve().parent.parent
CONFIGS = PROJECT / "configs"
STEPS = ("imports", "initialize", "run", "finalize")  # statements, as in model-zoo bundles (set_determinism, the hook)
CPU = {"device": "$torch.device('cpu')"}


def _parser(files, **ids) -> ConfigParser:
    """The configs as ``python -m monai.bundle run --config_file FILES --id value ...`` parses them."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(PROJECT), **ids})
    return parser


def _expressions(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _expressions(value, f"{path}#{key}" if path else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _expressions(value, f"{path}#{index}")
    elif isinstance(node, str) and node.startswith("$"):
        yield path, node


def test_components_are_targets_not_calls_of_our_functions():
    """Every value the configs build with our code is a `_target_` with named arguments; `$` stays for derived values
    and paths (`$@bundle_root + '/models'`, crop_size = 1.25 x patch_size) and a function reference (prepare_batch)."""
    calls = []
    for config in sorted(CONFIGS.glob("*.json")):
        for path, expression in _expressions(json.loads(config.read_text())):
            if path.split("#")[0] not in STEPS and re.search(r"\bscripts\.[\w.]+\s*\(", expression):
                calls.append(f"{config.name}: {path} = {expression}")
    assert not calls, calls
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["val_interval"] == {"_target_": "scripts.training_budget.validation_interval", "epochs": "@epochs"}
    assert train["train"]["cases"]["_target_"] == train["validate"]["cases"]["_target_"] == "scripts.data.dataset_cases"


def _tiny_dataset(root: Path, cases: int = 3) -> Path:
    """``cases`` 8^3 1 mm volumes, each with landmarks A and B inside, and a datalist of training cases only."""
    entries, rng = [], np.random.default_rng(0)
    for case in range(cases):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 8), np.float32), np.eye(4)), str(root / f"case{case}.nii.gz"))
        write_landmarks(root / f"case{case}.json", {"A": np.array([2.0, 3.0, 4.0]), "B": np.array([5.0, 4.0, 3.0])})
        entries.append({"image": f"case{case}.nii.gz", "landmarks": f"case{case}.json"})
    (root / "datalist.json").write_text(json.dumps({"training": entries}))
    return root / "datalist.json"


def test_overrides_reach_the_cases_the_validation_interval_and_the_grad_scaler(tmp_path):
    """--fold / --folds / --datalist pick the cases, --eval_section evaluate's; --epochs sets val_interval's input."""
    datalist = _tiny_dataset(tmp_path)
    folds = [{"train": [0, 1], "val": [2]}, {"train": [1, 2], "val": [0]}]
    ids = {"datalist": str(datalist), "folds": folds, "landmark_names": ["A", "B"], "landmark_descriptions": {}, **CPU}
    train = _parser([CONFIGS / "train.json"], fold=1, epochs=100, precision="float32", **ids)
    assert [case["stem"] for case in train.get_parsed_content("train#cases")] == ["case1", "case2"]
    assert [case["stem"] for case in train.get_parsed_content("validate#cases")] == ["case0"]
    assert train.get_parsed_content("val_interval") == 5  # about 20 validations in 100 epochs
    assert train.get_parsed_content("train#trainer#amp") is False  # float32 on a CPU: no GradScaler
    assert _parser([CONFIGS / "train.json"], epochs=3, **ids).get_parsed_content("val_interval") == 1

    evaluate = _parser([CONFIGS / "train.json", CONFIGS / "evaluate.json"], fold=0, eval_section="training", **ids)
    assert [case["stem"] for case in evaluate.get_parsed_content("validate#cases")] == ["case0", "case1"]
    with pytest.raises(Exception) as raised:  # a fold the plans do not have: the one line names --fold
        _parser([CONFIGS / "train.json"], fold=2, **ids).get_parsed_content("train#cases")
    assert exit_line(bundle_error_in(raised.value)).startswith("error: --fold: fold 2 requested but the plans have 2 folds")


def test_calibration_follows_ckpt_dir(tmp_path):
    calibration = {"found_threshold": 0.42, "normalized_quantile": 1.5, "coverage": 0.9}
    (tmp_path / "calibration.json").write_text(json.dumps(calibration))
    inference = _parser([CONFIGS / "inference.json"], ckpt_dir=str(tmp_path))
    assert inference.get_parsed_content("found_threshold") == 0.42
    assert inference.get_parsed_content("calibration") == calibration
    empty = _parser([CONFIGS / "inference.json"], ckpt_dir=str(tmp_path / "none"))
    assert empty.get_parsed_content("calibration") is None and empty.get_parsed_content("found_threshold") == 0.25


# ----------------------------------------------------------------------------- the coarse model's sidecar


def _said(caplog) -> list[str]:
    """What the bundle's own loggers said (MONAI's import-time notes left out)."""
    return [record.getMessage() for record in caplog.records if record.name.startswith("scripts")]


def _coarse_bundle(ckpt_dir: Path, sidecar: dict | None, **ids) -> ConfigParser:
    """inference.json reading ``ckpt_dir``, which holds a coarse_model.pt of the config's coarse network (random
    weights, a plain state dict) and, unless None, ``sidecar`` as coarse_model.json."""
    parser = _parser([CONFIGS / "inference.json"], ckpt_dir=str(ckpt_dir), tta=False, **CPU, **ids)
    torch.manual_seed(0)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("coarse_network_def").state_dict(), ckpt_dir / "coarse_model.pt")
    if sidecar is not None:
        (ckpt_dir / "coarse_model.json").write_text(json.dumps(sidecar))
    return parser


def test_shipped_coarse_sidecar_matches_the_configs():
    """models/coarse_model.json's hash is what train.json (while training the fine stage) and inference.json compute."""
    shipped = json.loads((PROJECT / "models" / "coarse_model.json").read_text())
    inference = _parser([CONFIGS / "inference.json"])
    train = _parser([CONFIGS / "train.json"])
    assert shipped["landmark_names"] == inference.get_parsed_content("landmark_names")
    assert shipped["plans_hash"] == inference.get_parsed_content("coarse_weights_hash") == train.get_parsed_content("coarse_weights_hash")
    assert shipped["plans_hash"] != inference.get_parsed_content("weights_hash")  # the coarse stage's own hash, not the fine one's


def test_coarse_sidecar_is_checked_like_the_fine_one(tmp_path, caplog):
    names = _parser([CONFIGS / "inference.json"]).get_parsed_content("landmark_names")
    plans_hash = _parser([CONFIGS / "inference.json"]).get_parsed_content("coarse_weights_hash")

    # matching sidecar: the coarse network is built, nothing said
    with caplog.at_level(logging.WARNING):
        inferer = _coarse_bundle(tmp_path / "ok", {"landmark_names": names, "plans_hash": plans_hash}).get_parsed_content("inferer")
    assert inferer.coarse_network is not None and not _said(caplog)

    # other landmarks: one line naming the coarse file (what the bundle hook prints), exit before any inference
    swapped = [names[1], names[0], *names[2:]]
    parser = _coarse_bundle(tmp_path / "names", {"landmark_names": swapped, "plans_hash": plans_hash})
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("inferer")
    error = bundle_error_in(raised.value)
    assert isinstance(error, LandmarkConfigError)
    assert exit_line(error) == (f"error: {tmp_path / 'names' / 'coarse_model.pt'}: checkpoint landmarks do not match the config "
                                "(same names in another order)")

    # other plans: the sidecar's hash, or an override that changes what the coarse weights mean, warns once, naming the file
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _coarse_bundle(tmp_path / "hash", {"landmark_names": names, "plans_hash": "0123456789abcdef"}).get_parsed_content("inferer")
        _coarse_bundle(tmp_path / "sigma", {"landmark_names": names, "plans_hash": plans_hash},
                       coarse_sigma=[3.0, 3.0, 3.0]).get_parsed_content("inferer")
    warned = [line for line in _said(caplog) if "trained with other plans" in line]
    assert len(warned) == 2 and str(tmp_path / "hash" / "coarse_model.pt") in warned[0] and "0123456789abcdef" in warned[0]
    assert str(tmp_path / "sigma" / "coarse_model.pt") in warned[1] and plans_hash in warned[1]

    # no sidecar: loads when the channels number the landmarks, with one warning naming the missing file
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        inferer = _coarse_bundle(tmp_path / "bare", None).get_parsed_content("inferer")
    assert inferer.coarse_network is not None
    assert _said(caplog) == [
        f"{tmp_path / 'bare' / 'coarse_model.pt'}: no sidecar coarse_model.json: landmark names unchecked (its {len(names)} "
        "channels taken as the config's landmarks, in order)"]


def test_training_time_validation_takes_at_most_validation_cases_spread_over_groups(tmp_path):
    """train.json's ``validation_cases`` (planned: 12 on a CPU budget) limits validate#cases, round-robin over the
    entries' ``group``; evaluate.json keeps every case."""
    from scripts.data import spread_over_groups

    groups = ["a", "a", "a", "b", "c"]
    entries = [{"image": f"{i}", "group": g} for i, g in enumerate(groups)]
    assert [e["image"] for e in spread_over_groups(entries, 4)] == ["0", "1", "3", "4"]  # rounds: a b c, then a
    assert [e["image"] for e in spread_over_groups(entries, 2)] == ["0", "3"]
    assert spread_over_groups(entries, None) == entries and spread_over_groups(entries, 9) == entries
    plain = [{"image": f"{i}"} for i in range(10)]
    assert [e["image"] for e in spread_over_groups(plain, 4)] == ["0", "2", "5", "7"]  # evenly spaced: int(k * 10 / 4)

    _tiny_dataset(tmp_path, cases=5)
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    datalist["validation"] = [{**entry, "group": g} for entry, g in zip(datalist["training"], groups)]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    ids = {"datalist": str(tmp_path / "datalist.json"), "folds": [], "landmark_names": ["A", "B"], "landmark_descriptions": {}, **CPU}
    assert json.loads((CONFIGS / "train.json").read_text())["validation_cases"] == 12
    train = _parser([CONFIGS / "train.json"], validation_cases=4, **ids)
    assert [case["stem"] for case in train.get_parsed_content("validate#cases")] == ["case0", "case1", "case3", "case4"]
    evaluate = _parser([CONFIGS / "train.json", CONFIGS / "evaluate.json"], validation_cases=4, **ids)
    assert len(evaluate.get_parsed_content("validate#cases")) == 5
