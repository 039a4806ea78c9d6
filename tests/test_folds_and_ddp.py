"""Cross-validation folds, fold-ensemble inference and DDP training under a real torchrun (gloo, CPU).

One small synthetic dataset is planned once (4 training cases: 4 folds); the schedules are a few
iterations, enough to check the wiring and that the loss falls, not accuracy (test_end_to_end does that).
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.datasets.synthetic import LANDMARK_NAMES, make_synthetic_dataset
from scripts.precision import native_bfloat16

PROJECT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "2", "--iterations_per_epoch", "3", "--val_interval", "2", "--learning_rate", "0.003"]


def run(args, cwd, timeout=900):
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def torchrun_launcher() -> list[str]:
    """This interpreter's torchrun (or its module form where the script is not beside it)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    datalist = make_synthetic_dataset(str(root / "data"), n_training=4, n_validation=2, n_testing=2, seed=3)
    bundle = root / "bundle"
    # contrast randomisation off: the synthetic landmarks differ by brightness alone, which it erases, and these
    # short runs check the wiring and a falling loss (tests/test_intensity_randomization.py covers the transforms)
    run([sys.executable, "-m", "scripts.plan", datalist, "--bundle_root", bundle, "--memory_gb", "0.33",
         "--contrast_randomization", "off"], cwd=PROJECT)
    return {"root": root, "bundle": bundle, "datalist": datalist}


@pytest.fixture(scope="module")
def two_folds(planned):
    log = run([sys.executable, "-m", "scripts.train_folds", "--bundle_root", planned["bundle"], "--folds", "0", "1", "--", *TINY],
              cwd=planned["bundle"])
    return {**planned, "log": log}


def test_planner_splits_four_cases_into_four_disjoint_folds(planned):
    folds = json.loads((planned["bundle"] / "configs" / "plans.json").read_text())["configuration"]["folds"]
    assert len(folds) == 4
    assert sorted(i for fold in folds for i in fold["val"]) == [0, 1, 2, 3]
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == [0, 1, 2, 3] and len(fold["val"]) == 1


def test_train_folds_writes_each_fold_into_its_own_folder(two_folds):
    models = two_folds["bundle"] / "models"
    for fold in (0, 1):
        assert (models / f"fold_{fold}" / "model.pt").is_file()
        assert (models / f"fold_{fold}" / "checkpoint_epoch=2.pt").is_file()
    assert not (models / "model.pt").exists(), "fold models never overwrite models/model.pt"
    assert re.search(r"\s0\s+fine\s+ok", two_folds["log"]) and re.search(r"\s1\s+fine\s+ok", two_folds["log"])


def test_train_folds_rerun_resumes_and_returns_at_once(two_folds):
    log = run([sys.executable, "-m", "scripts.train_folds", "--bundle_root", two_folds["bundle"], "--folds", "1", "--", *TINY],
              cwd=two_folds["bundle"])
    assert "resumed from" in log and "training already complete" in log


def test_a_fold_the_plans_do_not_have_is_refused(planned):
    result = subprocess.run([sys.executable, "-m", "scripts.train_folds", "--bundle_root", planned["bundle"], "--folds", "7"],
                            cwd=planned["bundle"], capture_output=True, text=True)
    assert result.returncode != 0 and "fold(s) [7] do not exist: the plans have 4 folds" in result.stderr


def test_ensemble_inference_averages_the_fold_heatmaps(two_folds):
    from monai.bundle import ConfigParser

    from scripts.ensemble import HeatmapEnsemble

    bundle = two_folds["bundle"]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "input": two_folds["datalist"], "tta": False})
    sys.path.insert(0, str(bundle))
    try:
        ensemble = parser.get_parsed_content("network")
        inferer = parser.get_parsed_content("inferer")
        case = parser.get_parsed_content("dataset")[0]
    finally:
        sys.path.remove(str(bundle))
    assert isinstance(ensemble, HeatmapEnsemble) and len(ensemble.members) == 2
    image = case["image"][None]
    with torch.no_grad():
        averaged = inferer(image, ensemble)
        singles = [inferer(image, member) for member in ensemble.members]
    torch.testing.assert_close(averaged, (singles[0] + singles[1]) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(singles[0], singles[1]), "two folds trained on different cases differ"

    out = two_folds["root"] / "ensemble_predictions"
    log = run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", two_folds["datalist"],
               "--output_dir", out, "--save_png", "False"], cwd=bundle)
    assert "ensemble of 2 model(s)" in log
    assert len(list(out.rglob("*.mrk.json"))) == 2


def test_torchrun_ddp_training_on_cpu_with_gloo(planned, tmp_path):
    bundle = tmp_path / "ddp_bundle"
    shutil.copytree(planned["bundle"], bundle, ignore=shutil.ignore_patterns("models"))
    launcher = torchrun_launcher()
    log = run([*launcher, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
               "['configs/train.json','configs/multi_gpu_train.json']", "--bundle_root", bundle,
               "--epochs", "8", "--iterations_per_epoch", "8", "--val_interval", "4", "--learning_rate", "0.003"], cwd=bundle)
    losses = [float(x) for x in re.findall(r"epoch \d+/8: loss ([0-9.e-]+)", log)]
    assert len(losses) == 8, "only rank 0 logs an epoch line"
    # DDP wraps the precision wrapper: each rank trains in the precision one process would (bfloat16 autocast where
    # the CPU has it natively), the output layer still float32 under DDP
    expected = "bfloat16 (autocast body" if native_bfloat16(torch.device("cpu")) else "float32 (float32 throughout"
    assert log.count(f"training precision: {expected}") == 2, re.findall(r"training precision: .*", log)
    assert "cannot run its output layer apart" not in log
    assert np.mean(losses[-2:]) < 0.75 * np.mean(losses[:2]), losses
    assert len(re.findall(r"Metrics -- .*val_mre: [0-9.]+", log)) == 2, "validation every 4 epochs, logged once"
    models = bundle / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["checkpoint_epoch=8.pt", "model.pt"]
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert all(k.startswith("net.") for k in state), "a plain state dict, saved without the DDP 'module.' prefix"
    assert json.loads((models / "model.json").read_text())["landmark_names"] == LANDMARK_NAMES, "its sidecar, from rank 0"
    assert json.loads((models / "training_curves.json").read_text())["epoch"] == list(range(1, 9)), "rank 0 alone records curves"

    out = tmp_path / "predictions"
    run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", planned["datalist"],
         "--output_dir", out, "--save_png", "False"], cwd=bundle)
    record = json.loads(next(out.rglob("testing_000.json")).read_text())
    assert set(record["landmarks"]) == set(LANDMARK_NAMES)
    assert all(np.isfinite(v["position"]).all() for v in record["landmarks"].values())


def test_torchrun_with_a_training_only_datalist_validates_one_case_on_two_ranks(planned, tmp_path):
    """nnU-Net-style datalist (training cases only): validation is fold 0 of the planned split, here ONE case
    for two ranks, which MONAI's DistributedSampler used to refuse with a traceback. About 40 s."""
    bundle = tmp_path / "ddp_bundle"
    shutil.copytree(planned["bundle"], bundle, ignore=shutil.ignore_patterns("models"))
    full = json.loads(Path(planned["datalist"]).read_text())
    training_only = Path(planned["datalist"]).with_name("training_only.json")
    training_only.write_text(json.dumps({k: v for k, v in full.items() if k not in ("validation", "testing")}))
    launcher = torchrun_launcher()
    log = run([*launcher, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
               "['configs/train.json','configs/multi_gpu_train.json']", "--bundle_root", bundle, "--datalist", training_only,
               "--epochs", "1", "--iterations_per_epoch", "2", "--val_interval", "1"], cwd=bundle)
    assert log.count("no validation cases: validating on fold 0 of the planned split (1 case(s)), training on its other 3") == 1
    assert len(re.findall(r"Metrics -- .*val_mre: [0-9.]+", log)) == 1
    assert (bundle / "models" / "model.pt").exists()


RANK_SCRIPT = """
import os, sys, time
import torch
sys.path.insert(0, {project!r})
from scripts.distributed import destroy_process_group, init_process_group

def threads():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{{task}}/comm").read().strip())
        except OSError:  # a thread that was just joined
            pass
    return sorted(names)

init_process_group()
network = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
network(torch.randn(2, 4)).sum().backward()
during = threads()
destroy_process_group(network=network)
for _ in range(40):  # a joined thread can stay listed in /proc for a moment on a busy machine
    after = threads()
    if not any("gloo" in name for name in after):
        break
    time.sleep(0.05)
print(f"rank {{os.environ['RANK']}} during {{during}} after {{after}}", flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_process_group_teardown_joins_the_gloo_threads(tmp_path):
    # with the bare dist calls, DDP leaves the group and its gloo threads alive into the interpreter's exit, where a
    # rank sometimes died (SIGABRT) after training had finished (scripts/distributed.py); ours must leave none
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(project=str(PROJECT)))
    launcher = torchrun_launcher()
    log = run([*launcher, "--standalone", "--nproc_per_node=2", script], cwd=tmp_path, timeout=300)
    lines = re.findall(r"rank (\d) during (\[.*?\]) after (\[.*?\])", log)
    assert sorted(rank for rank, _, _ in lines) == ["0", "1"], log[-2000:]
    for _, during, after in lines:
        assert "gloo" in during, "the probe sees gloo's threads while the group exists"
        assert "gloo" not in after, f"gloo threads left after the teardown: {after}"
