"""Nothing lost: a training killed with SIGKILL mid-epoch resumes with the same command; a broken training
state is an error, not a silent restart; an inference rerun skips the cases already written."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.datasets.synthetic import make_synthetic_dataset

PROJECT = Path(__file__).resolve().parent.parent
SCHEDULE = ["--epochs", "6", "--iterations_per_epoch", "20", "--val_interval", "3", "--learning_rate", "0.003"]
EPOCH_LINE = re.compile(r"epoch (\d+)/6: loss ([0-9.e-]+)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    datalist = make_synthetic_dataset(str(root / "data"), n_training=4, n_validation=1, n_testing=2, seed=5)
    bundle = root / "bundle"
    subprocess.run([sys.executable, "-m", "scripts.plan", datalist, "--bundle_root", str(bundle), "--memory_gb", "0.33"], cwd=PROJECT,
                   check=True, capture_output=True)
    return bundle, datalist


def train_command():
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", *SCHEDULE]


def test_sigkill_mid_epoch_then_the_same_command_continues(bundle):
    root, _ = bundle
    log_path = root / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(train_command(), cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while time.time() < deadline and len(EPOCH_LINE.findall(log_path.read_text())) < 2:
            assert process.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2.0)  # into the third epoch
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = EPOCH_LINE.findall(log_path.read_text())
    assert 2 <= len(before) < 6, before
    result = subprocess.run(train_command(), cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    after = EPOCH_LINE.findall(result.stdout + result.stderr)
    resumed_at = int(re.search(r"resumed from .*checkpoint_epoch=(\d+)\.pt at epoch (\d+)", result.stdout + result.stderr).group(2))
    assert resumed_at == int(before[-1][0]), "at most the interrupted epoch is lost"
    assert [int(e) for e, _ in after] == list(range(resumed_at + 1, 7))
    assert float(after[0][1]) < 1.5 * float(before[-1][1]), "the loss curve continues where it stopped, not from scratch"
    assert sorted(p.name for p in (root / "models").glob("checkpoint_*.pt")) == ["checkpoint_epoch=6.pt"]
    check_training_curves(root / "models", resumed_at)


def check_training_curves(models: Path, resumed_at: int) -> None:
    """The curves beside the checkpoints hold every epoch across the kill: loss, the learning rate each epoch trained with
    (PolynomialLR, power 0.9 over 6 epochs, from 0.003: hand-computed), validation metrics at epochs 3 and 6; the PNG is
    a real image; with tensorboard installed, MONAI's TensorBoardStatsHandler wrote the same numbers as event files."""
    import json

    import numpy as np
    import torch

    history = json.loads((models / "training_curves.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(history["lr"], [0.003 * (1 - e / 6) ** 0.9 for e in range(6)], rtol=1e-6)
    assert all(np.isfinite(history["train_loss"])) and history["train_loss"][-1] < history["train_loss"][0]
    validation = history["validation"]
    assert validation["epoch"] == [3, 6] and all(0 < mre < 50 for mre in validation["val_mre"])
    assert all(0 <= sdr <= 1 for sdr in validation["val_sdr_4mm"])
    png = (models / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(str(models / "training_curves.png")).shape[:2] == (560, 800)  # 10 x 7 in at 80 dpi
    # the best weights: a plain state dict (model-zoo form) and their sidecar
    weights = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert json.loads((models / "model.json").read_text())["landmark_names"] == json.loads(
        (models.parent / "configs" / "plans.json").read_text())["configuration"]["landmark_names"]
    if importlib.util.find_spec("tensorboard") is None:
        return  # not in requirements.txt (start-up cost, scripts/curves.py); requirements-test.txt installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict = {}
    for events in sorted((models / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    assert set(range(resumed_at + 1, 7)) <= set(scalars["train_loss"]) and set(range(resumed_at + 1, 7)) <= set(scalars["lr"])
    assert scalars["lr"][6] == pytest.approx(history["lr"][5], rel=1e-6)
    assert sorted(scalars["val_mre"]) == [3, 6] and scalars["val_mre"][6] == pytest.approx(validation["val_mre"][1], rel=1e-6)


def test_a_corrupt_training_state_is_an_error_not_a_fresh_start(bundle, tmp_path):
    root, _ = bundle
    state = next((root / "models").glob("checkpoint_epoch=*.pt"))
    saved = state.read_bytes()
    try:
        state.write_bytes(saved[: len(saved) // 3])
        result = subprocess.run([*train_command()[:-8], "--epochs", "8"], cwd=root, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
        assert errors and "checkpoint_epoch=6.pt: cannot resume from this training state" in errors[-1]
        assert "Traceback" not in result.stderr
    finally:
        state.write_bytes(saved)


def test_inference_rerun_skips_finished_cases_unless_overwriting(bundle, tmp_path):
    root, datalist = bundle
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", datalist,
               "--output_dir", str(tmp_path / "out"), "--save_png", "False"]
    first = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and "landmarks written for 2 of 2" in first.stdout
    finished = tmp_path / "out" / "images" / "testing_000.json"
    stamp = finished.stat().st_mtime_ns
    (tmp_path / "out" / "images" / "testing_001.json").unlink()  # as if interrupted before its last file
    second = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert "skipping 1 case(s) already written" in second.stdout and "landmarks written for 1 of 1" in second.stdout
    assert finished.stat().st_mtime_ns == stamp and (tmp_path / "out" / "images" / "testing_001.json").exists()
    third = subprocess.run([*command, "--overwrite", "True"], cwd=root, capture_output=True, text=True, timeout=600)
    assert "landmarks written for 2 of 2" in third.stdout and finished.stat().st_mtime_ns != stamp
