import math

import numpy as np
import pytest

from scripts.metrics import per_landmark_summary, radial_errors, summarize_errors


def oblique_affine() -> np.ndarray:
    """30 degrees about z, spacing (0.5, 1, 2) mm, some origin."""
    angle = math.radians(30)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.5, 1.0, 2.0])
    affine[:3, 3] = [-12.0, 30.5, 7.25]
    return affine


def to_world(affine, voxels):
    voxels = np.asarray(voxels, dtype=np.float64)
    return (np.c_[voxels, np.ones(len(voxels))] @ affine.T)[:, :3]


def test_radial_errors_in_mm_through_oblique_affine():
    affine = oblique_affine()
    gt = to_world(affine, [[10, 20, 5], [10, 20, 5], [10, 20, 5]])
    pred = to_world(affine, [[10, 20, 7], [13, 20, 5], [12, 22, 6]])
    # 2 voxels * 2 mm; 3 * 0.5 mm; sqrt((2 * 0.5)^2 + (2 * 1)^2 + (1 * 2)^2) = 3
    np.testing.assert_allclose(radial_errors(pred, gt), [4.0, 1.5, 3.0], rtol=1e-12)


def test_radial_errors_nan_where_not_annotated():
    gt = np.array([[0.0, 0.0, 0.0], [np.nan, np.nan, np.nan]])
    pred = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    errors = radial_errors(pred, gt)
    assert errors[0] == 5.0 and np.isnan(errors[1])


def test_radial_errors_reject_missing_prediction_and_bad_shapes():
    with pytest.raises(ValueError):
        radial_errors([[np.nan, 0.0, 0.0]], [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError):
        radial_errors(np.zeros((2, 3)), np.zeros((3, 3)))


def test_summarize_errors_hand_computed():
    summary = summarize_errors([1.0, 2.0, 2.5, 3.5, 5.0, np.nan])
    assert set(summary) == {"mre", "median", "std", "max", "n", "sdr_2mm", "sdr_3mm", "sdr_4mm"}
    assert summary["n"] == 5
    assert summary["mre"] == pytest.approx(2.8)
    assert summary["median"] == 2.5
    assert summary["max"] == 5.0
    # squared deviations 3.24 + 0.64 + 0.09 + 0.49 + 4.84 = 9.3, population std
    assert summary["std"] == pytest.approx(math.sqrt(9.3 / 5))
    assert summary["sdr_2mm"] == pytest.approx(2 / 5)
    assert summary["sdr_3mm"] == pytest.approx(3 / 5)
    assert summary["sdr_4mm"] == pytest.approx(4 / 5)


def test_summarize_errors_custom_radii_and_any_shape():
    summary = summarize_errors(np.array([[0.5, 2.5], [np.nan, 3.0]]), radii=(2.5, 10))
    assert summary["n"] == 3
    assert summary["sdr_2.5mm"] == pytest.approx(2 / 3)
    assert summary["sdr_10mm"] == 1.0


def test_summarize_errors_empty():
    summary = summarize_errors([np.nan, np.nan])
    assert summary["n"] == 0
    assert all(math.isnan(summary[key]) for key in ("mre", "median", "std", "max", "sdr_2mm", "sdr_3mm", "sdr_4mm"))


def test_per_landmark_summary():
    errors = np.array([[1.0, np.nan], [3.0, 2.0]])
    summary = per_landmark_summary(errors, ["AC", "PC"])
    assert list(summary) == ["AC", "PC"]
    assert summary["AC"]["n"] == 2 and summary["AC"]["mre"] == 2.0 and summary["AC"]["sdr_2mm"] == 0.5
    assert summary["PC"]["n"] == 1 and summary["PC"]["mre"] == 2.0 and summary["PC"]["sdr_2mm"] == 1.0
    with pytest.raises(ValueError):
        per_landmark_summary(errors, ["AC"])
