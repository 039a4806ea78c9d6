import time

import numpy as np
import pytest
import torch

from scripts.heatmaps import correct_left_right, extract_landmarks, pair_permutation, render_heatmaps


def test_render_peak_is_one_at_integer_point():
    heatmap = render_heatmaps([[10, 12, 8]], (24, 24, 24), sigma=2.0)
    assert heatmap.shape == (1, 24, 24, 24) and heatmap.dtype == np.float32
    assert heatmap[0, 10, 12, 8] == 1.0
    assert heatmap.max() == 1.0


def test_render_value_at_voxel_near_float_point():
    heatmap = render_heatmaps([[5.3, 6.0, 7.5]], (12, 12, 12), sigma=1.5)
    # d^2 = 0.7^2 + 1^2 + 0.5^2 = 1.74; exp(-1.74 / (2 * 1.5^2))
    assert heatmap[0, 6, 7, 7] == pytest.approx(0.679317496, rel=1e-6)


def test_render_per_axis_sigma():
    heatmap = render_heatmaps([[5.3, 6.0, 7.5]], (12, 12, 12), sigma=(1.0, 2.0, 1.0))
    # 0.3^2 / 2 + 0 + 0.5^2 / 2 = 0.17
    assert heatmap[0, 5, 6, 7] == pytest.approx(0.843664817, rel=1e-6)


def test_render_is_zero_outside_window():
    heatmap = render_heatmaps([[10, 10, 10], [10.5, 10, 10]], (24, 24, 24), sigma=1.0, truncate=3.0)
    assert heatmap[0, 13, 10, 10] == pytest.approx(0.011108997, rel=1e-6)  # exp(-4.5), distance 3 = radius
    assert heatmap[0, 14, 10, 10] == 0.0
    assert heatmap[0, 10, 10, 6] == 0.0
    assert np.count_nonzero(heatmap[0]) == 7**3
    # 10.5 +- 3 covers voxels 8..13 along x
    assert heatmap[1, 8, 10, 10] > 0 and heatmap[1, 13, 10, 10] > 0
    assert heatmap[1, 7, 10, 10] == 0 and heatmap[1, 14, 10, 10] == 0


def test_render_nan_row_gives_zero_channel():
    heatmap = render_heatmaps([[4, 4, 4], [np.nan, np.nan, np.nan], [4, np.nan, 4]], (8, 8, 8), sigma=1.0)
    assert heatmap[0].max() == 1.0
    assert not heatmap[1].any() and not heatmap[2].any()


def test_render_point_outside_array_renders_its_tail():
    heatmap = render_heatmaps([[-1.5, 5, 5], [-10, 5, 5]], (10, 10, 10), sigma=1.0)
    assert heatmap[0, 0, 5, 5] == pytest.approx(0.324652467, rel=1e-6)  # exp(-1.5^2 / 2)
    assert heatmap[0, 1, 5, 5] == pytest.approx(0.043936934, rel=1e-6)  # exp(-2.5^2 / 2)
    assert heatmap[0, 2, 5, 5] == 0.0  # 3.5 voxels away: outside the window
    assert not heatmap[1].any()


def test_render_rejects_bad_sigma():
    with pytest.raises(ValueError):
        render_heatmaps([[1, 1, 1]], (4, 4, 4), sigma=0.0)


def test_render_is_fast():
    points = np.random.default_rng(0).uniform(0, 96, size=(32, 3))
    render_heatmaps(points, (96, 96, 96), sigma=2.0)
    best = min(_timed(lambda: render_heatmaps(points, (96, 96, 96), sigma=2.0)) for _ in range(3))
    assert best < 0.1  # typically ~5 ms; the bound leaves room for a busy machine


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def test_extract_recovers_float_coordinate():
    point = np.array([10.3, 20.71, 15.45])
    heatmap = render_heatmaps(point[None], (32, 40, 36), sigma=4.0)
    coords, scores = extract_landmarks(heatmap)
    assert coords.shape == (1, 3) and coords.dtype == np.float64
    np.testing.assert_allclose(coords[0], point, atol=1e-4)
    # argmax voxel (10, 21, 15): exp(-(0.3^2 + 0.29^2 + 0.45^2) / 32)
    assert scores[0] == pytest.approx(0.98830023, rel=1e-6)


def test_extract_torch_and_numpy_agree_per_channel():
    points = np.array([[5.2, 6.7, 7.1], [12.6, 3.4, 9.9]])
    heatmap = render_heatmaps(points, (16, 12, 14), sigma=2.0)
    coords_np, scores_np = extract_landmarks(heatmap)
    coords_torch, scores_torch = extract_landmarks(torch.from_numpy(heatmap))
    np.testing.assert_allclose(coords_np, points, atol=1e-4)
    np.testing.assert_array_equal(coords_np, coords_torch)
    np.testing.assert_array_equal(scores_np, scores_torch)


def test_extract_falls_back_to_integer_at_border():
    heatmap = render_heatmaps([[0.3, 5.2, 15.4]], (10, 10, 16), sigma=2.0)
    coords, _ = extract_landmarks(heatmap)
    assert coords[0, 0] == 0.0  # argmax on the lower border
    assert coords[0, 2] == 15.0  # argmax on the upper border
    assert coords[0, 1] == pytest.approx(5.2, abs=1e-4)


def test_extract_falls_back_without_positive_neighbours():
    heatmap = np.zeros((1, 8, 8, 8), dtype=np.float32)
    heatmap[0, 3, 4, 5] = 0.7  # lone voxel: every neighbour is 0
    coords, scores = extract_landmarks(heatmap)
    np.testing.assert_array_equal(coords[0], [3, 4, 5])
    assert scores[0] == pytest.approx(0.7)


def test_extract_plateau_gives_its_midpoint():
    heatmap = np.zeros((1, 8, 8, 8), dtype=np.float32)
    heatmap[0, 1, 4, 4] = 0.25
    heatmap[0, 2:4, 4, 4] = 0.5  # argmax takes x = 2; the tie with x = 3 puts the fitted peak at 2.5
    coords, _ = extract_landmarks(heatmap)
    np.testing.assert_allclose(coords[0], [2.5, 4.0, 4.0])


def test_extract_rejects_wrong_dimensions():
    with pytest.raises(ValueError):
        extract_landmarks(np.zeros((1, 1, 4, 4, 4)))


def test_pair_permutation():
    assert pair_permutation(5, [(0, 1), (3, 4)]) == [1, 0, 2, 4, 3]
    assert pair_permutation(3, []) == [0, 1, 2]
    with pytest.raises(ValueError):
        pair_permutation(3, [(0, 3)])


def test_correct_left_right_swaps_only_crossed_pairs():
    points = np.array(
        [
            [30.0, 1.0, 2.0],  # 0: left, but on the right of 1: crossed
            [-30.0, 3.0, 4.0],  # 1: right
            [-20.0, 0.0, 0.0],  # 2: left, correct
            [20.0, 0.0, 0.0],  # 3: right, correct
            [5.0, 0.0, 0.0],  # 4: left
            [np.nan, np.nan, np.nan],  # 5: right, missing
        ]
    )
    corrected, permutation = correct_left_right(points, [(0, 1), (2, 3), (4, 5)])
    assert permutation == [1, 0, 2, 3, 4, 5]
    np.testing.assert_array_equal(corrected[0], [-30.0, 3.0, 4.0])
    np.testing.assert_array_equal(corrected[1], [30.0, 1.0, 2.0])
    np.testing.assert_array_equal(corrected[2:], points[2:])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    np.testing.assert_array_equal(scores[permutation], [0.8, 0.9, 0.7, 0.6, 0.5, 0.4])


def test_correct_left_right_follows_right_direction():
    points = np.array([[-20.0, 0.0, 0.0], [20.0, 0.0, 0.0]])  # correct in RAS, crossed if right is -x (LPS)
    _, permutation = correct_left_right(points, [(0, 1)], right_direction=(-1, 0, 0))
    assert permutation == [1, 0]
