"""scripts.calibrate's per-group report (coverage, found: false against landmarks more than 4 mm off), case selection
and saved predictions, on hand-computed numbers. The command line itself runs on a trained bundle in
tests/test_end_to_end.py (test_calibration_by_group_...)."""

import numpy as np
import pytest

from scripts.calibrate import concatenate, group_report, load_predictions, rows_of, save_predictions, annotated_cases
from scripts.errors import LandmarkDataError
from scripts.uncertainty import distance_statistics

NAMES = ["A", "B", "C", "D"]
LAYOUT = np.array([[0.0, 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 40.0, 0.0], [0.0, 0.0, 40.0]])


def predictions_by_hand() -> dict:
    """Two cases of the LAYOUT (truth) with known errors, scores and isotropic covariances (spread = sqrt(variance))."""
    first = LAYOUT + np.array([[0.5, 0, 0], [1.5, 0, 0], [3.0, 0, 0], [5.0, 0, 0]])  # errors 0.5, 1.5, 3, 5 mm along x
    second = LAYOUT + np.array([[0, 0, 0], [4.5, 0, 0], [0, -30.0, 25.0], [0, 0, 0]])  # B 4.5 mm off; C jumped to another structure
    variances = np.array([[1.0, 1.0, 1.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    positions = np.stack([first, second])
    return {
        "errors": np.linalg.norm(positions - LAYOUT, axis=-1),
        "spreads": np.sqrt(variances),
        "positions": positions,
        "scores": np.array([[0.9, 0.9, 0.1, 0.9], [0.9, 0.9, 0.9, 0.9]]),
        "covariances": variances[..., None, None] * np.eye(3),
        "groups": ["g1", "g2"],
        "cases": ["one.nii.gz", "two.nii.gz"],
    }


def test_group_report_counts_coverage_and_found_against_far_off_landmarks():
    calibration = {"normalized_quantile": 2.0, "max_radius_mm": 5.0,
                   "distances": distance_statistics([{n: p.tolist() for n, p in zip(NAMES, LAYOUT)}], NAMES)}
    report = group_report(predictions_by_hand(), calibration, NAMES, threshold=0.25)
    # g1: radii 2, 2, 2, 6 mm; errors 0.5, 1.5, 3, 5: covered A, B, D. C's score 0.1 < 0.25 and D's radius 6 > 5 mm:
    # found false; D is the one landmark more than 4 mm off.
    assert report["g1"] == {"cases": 1, "landmarks": 4, "coverage": 0.75, "mean_radius_mm": 3.0, "mre_mm": 2.5, "over_4mm": 1,
                            "over_4mm_found_false": 1, "over_4mm_found_true": 0, "found_false": 2}
    # g2: radii 2 mm; B (4.5 mm off) is plausible and sharp, so still found; C (39 mm off) fails the configuration check.
    assert report["g2"]["coverage"] == 0.5 and report["g2"]["mre_mm"] == pytest.approx((4.5 + np.hypot(30, 25)) / 4, abs=1e-3)
    assert (report["g2"]["over_4mm"], report["g2"]["over_4mm_found_false"], report["g2"]["over_4mm_found_true"], report["g2"]["found_false"]) \
        == (2, 1, 1, 1)


def test_selection_spreads_a_small_subset_over_the_brains_of_each_group():
    entries = [{"image": f"{a}_{g}_{i}", "group": g, "anatomy": a, "landmarks": {"A": [0, 0, 0]}}
               for g in ("warp", "t2w") for a in ("mni", "nlin6", "fsavg") for i in range(3)]
    entries.append({"image": "unannotated", "group": "warp", "anatomy": "mni"})
    chosen = annotated_cases(entries, None, 2, "validation")
    assert [e["image"] for e in chosen] == ["fsavg_t2w_0", "mni_t2w_0", "fsavg_warp_0", "mni_warp_0"], "sorted, one per brain first"
    assert [e["image"] for e in annotated_cases(entries, ["t2w"], 4, "validation")] == \
        ["fsavg_t2w_0", "mni_t2w_0", "nlin6_t2w_0", "fsavg_t2w_1"]
    assert len(annotated_cases(entries, None, None, "validation")) == 18, "every annotated entry without a limit"
    assert annotated_cases([{"image": "x", "landmarks": {"A": [0, 0, 0]}}], ["testing"], None, "testing")[0]["image"] == "x"


def test_saved_predictions_round_trip_and_a_wrong_file_is_one_error(tmp_path):
    predictions = predictions_by_hand()
    save_predictions(tmp_path / "p.npz", predictions)
    loaded = load_predictions(tmp_path / "p.npz", NAMES)
    np.testing.assert_array_equal(loaded["covariances"], predictions["covariances"])
    assert loaded["groups"] == ["g1", "g2"] and loaded["cases"] == ["one.nii.gz", "two.nii.gz"]
    both = concatenate(rows_of(predictions, [1]), loaded)
    assert both["groups"] == ["g2", "g1", "g2"] and both["errors"].shape == (3, 4)
    with pytest.raises(LandmarkDataError, match="predictions of 4 landmarks; this model has 3"):
        load_predictions(tmp_path / "p.npz", NAMES[:3])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(LandmarkDataError, match="bad.npz"):
        load_predictions(tmp_path / "bad.npz", NAMES)
