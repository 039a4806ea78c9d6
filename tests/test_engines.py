"""Loss, checkpoint identity and the ignite metric, against hand-computed values and real engines."""

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from scripts.errors import LandmarkConfigError
from scripts.engines import LandmarkCheckpointInfo, found_threshold, prepare_landmark_batch
from scripts.losses import MaskedHeatmapMSELoss
from scripts.metrics import LandmarkErrorMetric


def test_masked_mse_ignores_unannotated_channels():
    pred = torch.zeros(1, 2, 2, 1, 1)
    label = torch.zeros(1, 2, 2, 1, 1)
    label[0, 0, 0] = 1.0  # channel 0: squared errors [1, 0] -> mean 0.5
    label[0, 1] = 3.0  # channel 1 is wildly wrong but unannotated
    mask = torch.tensor([[1.0, 0.0]])
    loss = MaskedHeatmapMSELoss()(pred, {"label": label, "mask": mask})
    assert loss.item() == pytest.approx(0.5)
    assert MaskedHeatmapMSELoss()(pred, label).item() == pytest.approx((0.5 + 9.0) / 2)


def test_foreground_weight_scales_errors_on_the_heatmap():
    pred = torch.zeros(1, 1, 2, 1, 1)
    label = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    # voxel weights 1 + 9 * target = [10, 1]; squared errors [1, 0] -> mean 5
    loss = MaskedHeatmapMSELoss(foreground_weight=9.0)(pred, {"label": label, "mask": torch.ones(1, 1)})
    assert loss.item() == pytest.approx(5.0)


def test_masked_mse_gradient_is_the_hand_computed_one():
    """The loss's backward is written out (one pass over the heatmaps): 2 (1 + w t) (p - t) m / (N * sum m), here
    N = 2 voxels, w = 9, one of two channels annotated; and it matches autograd's on random heatmaps."""
    pred = torch.tensor([0.5, 0.25, 0.75, 0.0]).reshape(1, 2, 2, 1, 1).requires_grad_()
    label = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1, 1)
    loss = MaskedHeatmapMSELoss(foreground_weight=9.0)(pred, {"label": label, "mask": torch.tensor([[1.0, 0.0]])})
    assert loss.item() == pytest.approx((10 * 0.25 + 0.0625) / 2)
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([2 * 10 * -0.5 / 2, 2 * 0.25 / 2, 0.0, 0.0])

    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 6, 5, 4, requires_grad=True), torch.rand(2, 3, 6, 5, 4) ** 4
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    ours = MaskedHeatmapMSELoss(9.5)(torch.sigmoid(logits), {"label": target, "mask": mask})
    (grad,) = torch.autograd.grad(ours, logits)
    pred = torch.sigmoid(logits)
    per_channel = ((pred - target) ** 2 * (1 + 9.5 * target)).flatten(2).mean(2)
    reference = (per_channel * mask).sum() / mask.sum()
    (expected,) = torch.autograd.grad(reference, logits)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-9)


def test_planned_foreground_weight():
    from scripts.planning.decisions import loss_foreground_weight

    # a sigma-4 Gaussian holds (2 pi)^1.5 * 64 = 1007.9 voxels; sqrt(48^3 / 1007.9) - 1 = 9.46
    assert loss_foreground_weight([48, 48, 48], 4.0) == pytest.approx(9.5)
    assert loss_foreground_weight([8, 8, 8], 4.0) == 0.0


def test_prepare_batch_hands_the_mask_to_the_loss():
    batch = {"image": torch.ones(1, 1, 2, 2, 2), "label": torch.zeros(1, 3, 2, 2, 2), "label_mask": torch.tensor([[1.0, 0.0, 1.0]])}
    image, target = prepare_landmark_batch(batch, device="cpu")
    assert image.shape == (1, 1, 2, 2, 2) and target["mask"].tolist() == [[1.0, 0.0, 1.0]]


def test_checkpoint_with_other_landmarks_fails_clearly():
    info = LandmarkCheckpointInfo(["AC", "PC"], source="models/model.pt")
    info.load_state_dict({"landmark_names": ["AC", "PC"]})
    with pytest.raises(LandmarkConfigError, match=r"models/model.pt: checkpoint landmarks do not match the config \(missing \['PC'\], unexpected \['ICS'\]\)"):
        info.load_state_dict({"landmark_names": ["AC", "ICS"]})
    with pytest.raises(LandmarkConfigError, match="same names in another order"):
        info.load_state_dict({"landmark_names": ["PC", "AC"]})


def test_found_threshold_comes_from_calibration(tmp_path):
    assert found_threshold(str(tmp_path / "missing.json")) == 0.25
    (tmp_path / "calibration.json").write_text(json.dumps({"found_threshold": 0.42}))
    assert found_threshold(str(tmp_path / "calibration.json")) == 0.42


def test_metric_on_a_real_engine_counts_every_annotated_landmark():
    """Two cases through an ignite engine: errors 3, 4 (case 1) and 0, 5, unannotated (case 2)."""
    cases = [
        ({"landmarks_world": torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 1, 1]])}, {"pred_landmarks_world": np.array([[3.0, 0, 0], [0, 4, 0], [1, 1, 1]])}),
        ({"landmarks_world": torch.tensor([[1.0, 2, 3], [0, 0, 0], [np.nan] * 3])}, {"pred_landmarks_world": np.array([[1.0, 2, 3], [3, 4, 0], [9, 9, 9]])}),
    ]

    def step(engine, batch):
        engine.state.batch = [batch[0]]
        return [batch[1]]

    engine = Engine(step)
    LandmarkErrorMetric("mre").attach(engine, "mre")
    LandmarkErrorMetric("median").attach(engine, "median")
    LandmarkErrorMetric("sdr", radius=4.0).attach(engine, "sdr_4mm")
    state = engine.run(cases, max_epochs=1)
    # the third landmark of case 1 has error 0: errors are [3, 4, 0, 0, 5]
    assert state.metrics["mre"] == pytest.approx(12 / 5)
    assert state.metrics["median"] == pytest.approx(3.0)
    assert state.metrics["sdr_4mm"] == pytest.approx(4 / 5)


def test_exit_garbage_collection_is_skipped_only_in_a_bundle_command(tmp_path):
    """`python -m monai.bundle run` freezes the heap before exiting (the final collection is skipped);
    called anywhere else (here: pytest, as a server would) it changes nothing."""
    import gc
    import subprocess
    import sys
    from pathlib import Path

    from scripts.engines import skip_exit_garbage_collection

    before = gc.get_freeze_count()
    skip_exit_garbage_collection()
    assert gc.get_freeze_count() == before
    config = tmp_path / "exit.json"
    config.write_text(json.dumps({"imports": ["$import gc", "$import scripts", "$import scripts.engines"], "run": ["$print('ran')"],
                                  "finalize": ["$scripts.engines.skip_exit_garbage_collection()",
                                               "$print('frozen objects:', gc.get_freeze_count())"]}))
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)],
                            cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    frozen = int(result.stdout.split("frozen objects:")[1].split()[0])
    assert "ran" in result.stdout and frozen > 10000
