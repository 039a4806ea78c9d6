"""Heatmap spread, split-conformal radii and coverage, the configuration check, and the QA outputs."""

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.figures import WriteLandmarkFigured
from scripts.heatmaps import render_heatmaps
from scripts.outputs import InferenceSummary
from scripts.transforms import ExtractLandmarksd
from scripts.uncertainty import (calibrate, configuration_flags, conformal_quantile, distance_statistics, heatmap_covariances, radii,
                                 radius_mm, score_class, spread_mm)

NAMES = ["A", "B", "C", "D"]
LAYOUT = np.array([[0.0, 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 40.0, 0.0], [0.0, 0.0, 40.0]])


def test_conformal_quantile_by_hand():
    scores = np.arange(1.0, 11.0)  # 1..10
    assert conformal_quantile(scores, 0.9) == 10.0  # ceil(11 * 0.9) = 10th smallest
    assert conformal_quantile(scores, 0.5) == 6.0  # ceil(11 * 0.5) = 6th
    assert conformal_quantile(scores[:5], 0.9) == np.inf  # ceil(6 * 0.9) = 6 > 5 scores: no finite radius


def test_covariance_follows_the_grid_spacing_and_is_axis_aligned():
    heatmaps = torch.from_numpy(render_heatmaps([[20.0, 20.0, 20.0]], (40, 40, 40), 3.0))
    affine = np.diag([1.0, 2.0, 1.0, 1.0])
    covariance = heatmap_covariances(heatmaps, np.array([[20.0, 20.0, 20.0]]), 3.0, affine)[0]
    assert covariance[1, 1] == pytest.approx(4 * covariance[0, 0], rel=1e-6)  # 2 mm voxels along y: 4x the variance
    assert covariance[0, 0] == pytest.approx(covariance[2, 2], rel=1e-6)
    assert abs(covariance[0, 1]) < 1e-6 * covariance[0, 0]
    assert 0.5 * 9 < covariance[0, 0] < 9  # the 10%-of-peak floor trims the sigma^2 = 9 voxel^2 tails a little


def test_sharp_heatmap_gets_a_smaller_radius_than_a_blurred_one():
    points = np.array([[20.0, 20.0, 20.0], [20.0, 20.0, 20.0]])
    heatmaps = torch.from_numpy(np.concatenate([render_heatmaps(points[:1], (40, 40, 40), 2.0),
                                                render_heatmaps(points[1:], (40, 40, 40), 6.0)]))
    covariances = heatmap_covariances(heatmaps, points, 6.0, np.eye(4))
    r = radii({"normalized_quantile": 1.5}, covariances)
    assert r[0] < 0.5 * r[1]
    assert np.all(np.isnan(radii(None, covariances))), "no calibration, no radius"


def test_calibrated_radius_reaches_the_nominal_coverage_on_fresh_cases():
    rng = np.random.default_rng(0)
    spreads = rng.uniform(0.5, 4.0, size=(800, 5))
    errors = spreads * np.linalg.norm(rng.normal(size=(800, 5, 3)), axis=-1)  # error scale proportional to spread
    calibration = calibrate(errors[:400], spreads[:400], [f"L{i}" for i in range(5)], coverage=0.9)
    held_out = np.mean(errors[400:] <= calibration["normalized_quantile"] * spreads[400:])
    assert 0.88 <= held_out <= 0.92
    assert len(calibration["per_landmark_radius_mm"]) == 5  # 400 cases each: enough for plain per-landmark radii
    few = calibrate(errors[:5], spreads[:5], [f"L{i}" for i in range(5)], coverage=0.9)
    assert few["per_landmark_radius_mm"] == {} and np.isfinite(few["normalized_quantile"])  # 25 pooled scores suffice


def test_score_classes_and_their_radii_by_hand():
    assert score_class([0.5, 0.7], [0.1, 0.5, 0.6, 0.7, 0.9, np.nan]).tolist() == [0, 1, 1, 2, 2, 0]  # NaN: the weakest class
    calibration = {"normalized_quantile": 1.0, "score_classes": {"edges": [0.5], "normalized_quantiles": [2.0, 0.5]}}
    spreads = np.array([2.0, 2.0, 2.0])
    np.testing.assert_allclose(radius_mm(calibration, spreads, [0.2, 0.8, np.nan]), [4.0, 1.0, 4.0])
    np.testing.assert_allclose(radius_mm(calibration, spreads), [2.0, 2.0, 2.0])  # no scores: the pooled quantile
    assert np.isnan(radius_mm(None, spreads)).all()


def test_score_class_quantiles_by_hand():
    """200 scores: 100 weak peaks (0.100-0.199) with error / spread 1..100, 100 strong ones (0.800-0.899) with 0.1..10.
    Two classes (200 // 100), split at the median score, (0.199 + 0.8) / 2; each class's 90% conformal quantile is its
    ceil(101 x 0.9) = 91st smallest ratio; pooled, the ceil(201 x 0.9) = 181st of all 200: 110 ratios <= 10, then 71
    more of the weak class's, 81."""
    scores = np.r_[0.1 + np.arange(100) / 1000, 0.8 + np.arange(100) / 1000][:, None]
    errors = np.r_[np.arange(1.0, 101.0), np.arange(1.0, 101.0) / 10][:, None]
    spreads = np.ones_like(errors)
    calibration = calibrate(errors, spreads, ["L"], 0.9, scores)
    assert calibration["normalized_quantile"] == 81.0
    assert calibration["score_classes"] == {"edges": [0.4995], "normalized_quantiles": [91.0, 9.1], "n_scores": [100, 100]}
    json.dumps(calibration, allow_nan=False)  # plain JSON numbers, no Infinity
    np.testing.assert_allclose(radius_mm(calibration, [2.0, 2.0], [0.4994, 0.4995]), [182.0, 18.2])  # the edge opens the upper class
    few = calibrate(errors[:199], spreads[:199], ["L"], 0.9, scores[:199])  # 199 scores: one class, the pooled quantile only
    assert "score_classes" not in few and np.isfinite(few["normalized_quantile"])
    strict = calibrate(errors, spreads, ["L"], 0.995, scores)  # 100 per class cannot give 99.5%: no infinite class radius
    assert "score_classes" not in strict


def test_weak_peaks_get_wider_radii_and_every_score_class_its_coverage():
    """Errors twice as large (relative to the spread) for peaks below 0.5 as above: one pooled quantile would
    under-cover the weak peaks and over-cover the strong ones; per score class (Mondrian) each gets its 90%."""
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.2, 0.9, size=(1600, 5))
    spreads = rng.uniform(1.5, 3.5, size=(1600, 5))
    errors = spreads * np.where(scores < 0.5, 1.0, 0.5) * np.linalg.norm(rng.normal(size=(1600, 5, 3)), axis=-1)
    names = [f"L{i}" for i in range(5)]
    calibration = calibrate(errors[:800], spreads[:800], names, 0.9, scores[:800])
    classes = calibration["score_classes"]
    assert len(classes["edges"]) == 3 and sum(classes["n_scores"]) == 4000  # quartiles of 4000 scores (edges to 4 decimals)
    assert all(abs(n - 1000) <= 2 for n in classes["n_scores"]), classes["n_scores"]
    assert classes["edges"] == pytest.approx([0.375, 0.55, 0.725], abs=0.02)  # uniform on [0.2, 0.9]
    q = classes["normalized_quantiles"]
    assert q[0] > 1.8 * q[3] and q[2] == pytest.approx(q[3], rel=0.1)  # the lowest quartile lies below 0.5, the top two above
    radius = radius_mm(calibration, spreads[800:], scores[800:])
    held_out_classes = score_class(classes["edges"], scores[800:])
    for k in range(4):  # ~1000 fresh scores per class
        rows = held_out_classes == k
        assert 0.87 <= np.mean(errors[800:][rows] <= radius[rows]) <= 0.93, k
    pooled = calibration["normalized_quantile"] * spreads[800:]
    assert np.mean(errors[800:][scores[800:] < 0.5] <= pooled[scores[800:] < 0.5]) < 0.85  # what the classes fix
    assert "score_classes" not in calibrate(errors[:30], spreads[:30], names, 0.9, scores[:30])  # 150 scores: one class
    assert "score_classes" not in calibrate(errors[:800], spreads[:800], names, 0.9, np.full((800, 5), 0.5))  # all tied


def test_configuration_check_flags_only_the_landmark_that_jumped():
    rng = np.random.default_rng(1)
    training = [{n: (LAYOUT[i] * rng.uniform(0.95, 1.05) + rng.normal(0, 0.5, 3)).tolist() for i, n in enumerate(NAMES)} for _ in range(8)]
    statistics = distance_statistics(training, NAMES)
    predicted = LAYOUT.copy()
    flagged, score = configuration_flags(predicted, statistics, NAMES)
    assert not flagged.any()
    predicted[2] += [0.0, -30.0, 25.0]  # C jumps to another structure
    flagged, score = configuration_flags(predicted, statistics, NAMES)
    assert flagged.tolist() == [False, False, True, False] and score[2] > 3


def test_one_training_subject_still_gives_a_usable_geometry():
    statistics = distance_statistics([{n: LAYOUT[i].tolist() for i, n in enumerate(NAMES)}], NAMES)
    assert statistics["scale_mm"][0][1] == pytest.approx(4.0)  # MAD 0 -> floor max(10% of 40 mm, 2 mm)
    predicted = LAYOUT * 1.1  # a 10% larger head is plausible
    assert not configuration_flags(predicted, statistics, NAMES)[0].any()


def test_head_size_is_divided_out_but_a_jump_in_a_larger_head_is_not():
    from scripts.uncertainty import case_size_factor

    statistics = distance_statistics([{n: LAYOUT[i].tolist() for i, n in enumerate(NAMES)}], NAMES)
    median = np.asarray(statistics["median_mm"])
    larger = LAYOUT * 1.3  # 30% larger: every distance 1.3x, well beyond the 10% floor without the size factor
    ratios = np.linalg.norm(larger[:, None] - larger[None], axis=-1) / np.where(np.eye(4, dtype=bool), np.nan, median)
    assert case_size_factor(ratios) == pytest.approx(1.3, rel=1e-5)
    flagged, score = configuration_flags(larger, statistics, NAMES)
    assert not flagged.any() and np.allclose(score, 0.0, atol=1e-3)
    larger[2] += [0.0, -39.0, 32.5]  # C jumps (the 1.3x head's version of the jump above)
    # ratios to the training distances: AB, AD, BD 1.3; AC |(0, 13, 32.5)| / 40 = 0.875; BC |(-52, 13, 32.5)| / 56.57
    # = 1.108; CD |(0, 13, -19.5)| / 56.57 = 0.414. Median over partners: A 1.3, B 1.3, C 0.875, D 1.3 -> 1.3
    ratios = np.linalg.norm(larger[:, None] - larger[None], axis=-1) / np.where(np.eye(4, dtype=bool), np.nan, median)
    assert case_size_factor(ratios) == pytest.approx(1.3, rel=1e-5)
    assert configuration_flags(larger, statistics, NAMES)[0].tolist() == [False, False, True, False]


def prediction_case(tmp_path, displaced: bool, score_classes: dict | None = None):
    image = MetaTensor(torch.rand(1, 48, 48, 48), affine=torch.eye(4), meta={"filename_or_obj": str(tmp_path / "scan.nii.gz")})
    centres = LAYOUT / 2 + 4
    if displaced:
        centres[2] = [40.0, 40.0, 40.0]
    heatmaps = torch.from_numpy(render_heatmaps(centres, (48, 48, 48), 2.0))
    training = [{n: (LAYOUT[i] / 2 + 4).tolist() for i, n in enumerate(NAMES)}]
    calibration = {"normalized_quantile": 2.0, "coverage": 0.9, "max_radius_mm": 100.0, "distances": distance_statistics(training, NAMES)}
    if score_classes:
        calibration["score_classes"] = score_classes
    extract = ExtractLandmarksd(sigma=2.0, calibration=calibration, landmark_names=NAMES, found_threshold=0.25)
    return extract({"image": image, "pred": heatmaps, "stem": "scan"})


def test_extraction_reports_radius_covariance_and_configuration_flags(tmp_path):
    good = prediction_case(tmp_path, displaced=False)
    assert np.all(good["pred_found"]) and not good["pred_flagged"].any()
    np.testing.assert_allclose(good["pred_radius_mm"], 2.0 * spread_mm(good["pred_covariance_mm2"]))
    bad = prediction_case(tmp_path, displaced=True)
    assert bad["pred_flagged"].tolist() == [False, False, True, False]
    assert bad["pred_found"].tolist() == [True, True, False, True], "a confident peak in the wrong place is not 'found'"
    weak = prediction_case(tmp_path, displaced=False, score_classes={"edges": [0.5, 1.01], "normalized_quantiles": [9.0, 3.0, 1.0]})
    np.testing.assert_allclose(weak["pred_scores"], 1.0, atol=1e-3)  # peaks of 1 at voxel centres: the middle class
    np.testing.assert_allclose(weak["pred_radius_mm"], 3.0 * spread_mm(weak["pred_covariance_mm2"]))


def test_qa_figure_and_page_show_flagged_landmarks(tmp_path):
    data = prediction_case(tmp_path, displaced=True)
    WriteLandmarkFigured(str(tmp_path / "out"), NAMES)(data)
    assert (tmp_path / "out" / "scan_landmarks.png").read_bytes()[:4] == b"\x89PNG"
    summary = InferenceSummary(str(tmp_path / "out"), NAMES)

    class State:
        output = [data]
        batch = None

    class Engine:
        state = State()

    summary.collect(Engine())
    summary.write()
    page = (tmp_path / "out" / "qa.html").read_text()
    assert "<img src='scan_landmarks.png'" in page
    assert "<tr class='flag'><td>C</td>" in page and "<td>configuration</td>" in page
