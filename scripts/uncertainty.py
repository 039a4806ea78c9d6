"""How far to trust each landmark: heatmap spread, conformal error radii, and a configuration check.

- Spread: the weighted covariance of the heatmap around its peak (values >= ``SPREAD_FLOOR`` x peak within
  ``SPREAD_REACH`` sigma), mapped to world mm^2 through the grid's affine, so an ellipsoid in scanner space.
  A perfect prediction of the trained target has covariance sigma^2 (the target's own width); a blurred or
  double-peaked heatmap has more.
- Calibration (split conformal prediction): on cases the model was not trained on, the normalised score
  e / s (e = radial error, s = sqrt(trace(C) / 3) the spread's RMS axis in mm) gives one quantile q at the
  conformal level ceil((n + 1) coverage) / n, and every landmark's radius is r = q * s: confident (sharp)
  landmarks get tighter radii. With enough calibration scores (``MIN_PER_SCORE_CLASS`` per class) the quantile
  is taken per class of peak score (Mondrian conformal prediction: Vovk, Gammerman and Shafer, Algorithmic
  Learning in a Random World, 2005, ch. 4; coverage holds within each class): ``SCORE_CLASSES`` equal-count
  classes of the calibration peak scores, each its own q, so a landmark found with a weak peak, as on a brain
  or contrast unlike the training data, gets the wider radius that weak peaks needed in calibration.
  Per-landmark plain quantiles need >= 1 / (1 - coverage) - 1 cases each, so they are stored only when there
  are that many.
- Configuration check: each landmark's distances to the others against the training annotations
  (median and MAD per pair, the MAD floored at 10% of the distance or 2 mm, since one training subject has no
  spread): a landmark whose median |robust z| over its partners exceeds ``CONFIGURATION_Z`` jumped to the
  wrong structure, even when its heatmap looks confident. The median over partners keeps one wrong landmark
  from flagging its neighbours, each of which has only one bad partner. The case's overall size (the
  median ratio of its pair distances to the training medians) is divided out first: heads differ in size,
  and a scan in its own space is not a template. On AFIDs (training annotations of datalist_v1, 59 cases;
  9 held-out OASIS-1 configurations in their own T1w spaces): 0 of 288 true configurations' landmarks
  flagged with or without it; a landmark moved 20 mm caught 38% with it, 31% without (docs/uncertainty.md).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from scripts.geometry import covariance_to_world

SPREAD_FLOOR = 0.1
SPREAD_REACH = 3.0
CONFIGURATION_Z = 3.0
MAD_FLOOR_FRACTION = 0.1
MAD_FLOOR_MM = 2.0
DEFAULT_COVERAGE = 0.9
SCORE_CLASSES = 4
MIN_PER_SCORE_CLASS = 100


def heatmap_covariances(heatmaps, peaks: np.ndarray, sigma, affine: np.ndarray) -> np.ndarray:
    """(N, 3, 3) world covariance (mm^2) of each channel around its peak voxel (float (N, 3)); ``sigma`` is the
    trained target's, in voxels, one value or one per axis (the window reaches ``SPREAD_REACH`` sigma per axis)."""
    volume = heatmaps.detach().as_subclass(torch.Tensor) if isinstance(heatmaps, torch.Tensor) else torch.as_tensor(np.asarray(heatmaps))
    reach = np.ceil(SPREAD_REACH * np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,))).astype(int)
    shape = np.asarray(volume.shape[1:])
    out = np.full((volume.shape[0], 3, 3), np.nan)
    for c, peak in enumerate(np.asarray(peaks, dtype=np.float64)):
        if not np.all(np.isfinite(peak)):
            continue
        centre = np.clip(np.round(peak).astype(int), 0, shape - 1)
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, shape)
        window = volume[c, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].to(torch.float64).cpu().numpy()
        top = window.max() if window.size else 0.0
        if top <= 0:
            continue
        weights = np.where(window >= SPREAD_FLOOR * top, window, 0.0)
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1).reshape(-1, 3)
        w = weights.reshape(-1)
        mean = (grid * w[:, None]).sum(0) / w.sum()
        offsets = grid - mean
        voxel_cov = (offsets * w[:, None]).T @ offsets / w.sum()
        out[c] = covariance_to_world(affine, voxel_cov)
    return out


def spread_mm(covariances: np.ndarray) -> np.ndarray:
    """RMS axis length sqrt(trace(C) / 3) per landmark, mm (NaN where no covariance)."""
    return np.sqrt(np.trace(np.asarray(covariances), axis1=-2, axis2=-1) / 3.0)


def conformal_quantile(scores: Sequence[float], coverage: float) -> float:
    """Split-conformal quantile: the ceil((n + 1) coverage)-th smallest score (inf when n is too small)."""
    values = np.sort(np.asarray([s for s in scores if np.isfinite(s)], dtype=np.float64))
    n = len(values)
    rank = int(math.ceil((n + 1) * coverage))
    return float(values[rank - 1]) if 0 < rank <= n else math.inf


def calibrate(errors: np.ndarray, spreads: np.ndarray, names: Sequence[str], coverage: float = DEFAULT_COVERAGE,
              scores: np.ndarray | None = None) -> dict:
    """Calibration from (cases, landmarks) errors and spreads in mm (NaN = not annotated) and, optionally, the peak
    scores (cases, landmarks) in [0, 1]: with ``MIN_PER_SCORE_CLASS`` usable scores per class (up to
    ``SCORE_CLASSES`` equal-count classes), the quantile per class of peak score too (``score_classes``: the inner
    class edges, each class's quantile and size; see ``radius_mm``), unless ties leave a class under half that or
    without a finite quantile."""
    errors, spreads = np.asarray(errors, dtype=np.float64), np.asarray(spreads, dtype=np.float64)
    usable = np.isfinite(errors) & np.isfinite(spreads) & (spreads > 0)
    ratios = errors[usable] / spreads[usable]
    q = conformal_quantile(ratios, coverage)
    per_landmark = {}
    minimum_cases = int(math.ceil(1.0 / (1.0 - coverage))) - 1
    for j, name in enumerate(names):
        column = errors[:, j][np.isfinite(errors[:, j])]
        if len(column) >= minimum_cases:
            per_landmark[name] = round(conformal_quantile(column, coverage), 3)
    result = {
        "coverage": coverage,
        "method": "split conformal, normalised by the heatmap spread: radius = q * sqrt(trace(cov) / 3)",
        "normalized_quantile": round(q, 4),
        "pooled_radius_mm": round(conformal_quantile(errors[np.isfinite(errors)], coverage), 3),
        "per_landmark_radius_mm": per_landmark,
        "n_cases": int(errors.shape[0]),
        "n_scores": int(usable.sum()),
    }
    classes = score_classes(ratios, np.asarray(scores, dtype=np.float64)[usable], coverage) if scores is not None else None
    if classes:
        result["method"] = ("split conformal, normalised by the heatmap spread, per class of peak score (Mondrian): "
                            "radius = q(score class) * sqrt(trace(cov) / 3)")
        result["score_classes"] = classes
    return result


def score_classes(ratios: np.ndarray, peak: np.ndarray, coverage: float) -> dict | None:
    """Up to ``SCORE_CLASSES`` equal-count classes of the peak scores ``peak`` (n,), ``MIN_PER_SCORE_CLASS`` scores
    each, with each class's conformal quantile of ``ratios`` (n,): {"edges", "normalized_quantiles", "n_scores"};
    None with too few scores, or when ties leave a class under half that or without a finite quantile."""
    n_classes = min(SCORE_CLASSES, int(np.isfinite(peak).sum()) // MIN_PER_SCORE_CLASS)
    if n_classes < 2:
        return None
    # edges rounded once, to the 4 decimals outputs store scores with; score_class rounds scores the same way
    edges = [round(float(e), 4) for e in np.quantile(peak[np.isfinite(peak)], np.arange(1, n_classes) / n_classes)]
    classes = score_class(edges, peak)
    sizes = np.bincount(classes, minlength=n_classes)
    quantiles = [conformal_quantile(ratios[classes == k], coverage) for k in range(n_classes)]
    if sizes.min() < MIN_PER_SCORE_CLASS // 2 or not np.all(np.isfinite(quantiles)):
        return None
    return {"edges": edges, "normalized_quantiles": [round(q, 4) for q in quantiles], "n_scores": sizes.tolist()}


def score_class(edges: Sequence[float], scores) -> np.ndarray:
    """Class index per peak score: 0 below ``edges[0]``, k for edges[k-1] <= score < edges[k], the score rounded to
    the 4 decimals that outputs and saved predictions store (so inference classes a landmark as calibration did);
    a missing (NaN) score falls in class 0, the weakest peaks' (the widest radius)."""
    scores = np.round(np.asarray(scores, dtype=np.float64), 4)
    return np.where(np.isfinite(scores), np.searchsorted(np.asarray(edges, dtype=np.float64), np.nan_to_num(scores), side="right"), 0)


def radius_mm(calibration: Mapping | None, spreads, scores=None) -> np.ndarray:
    """Calibrated radius (mm) for heatmap spreads (mm, any shape): q x spread, with q of the landmark's peak-score
    class when the calibration has ``score_classes`` and ``scores`` (same shape) are given, else the pooled q;
    NaN without a calibration."""
    spreads = np.asarray(spreads, dtype=np.float64)
    if not calibration or not np.isfinite(calibration.get("normalized_quantile", np.nan)):
        return np.full(spreads.shape, np.nan)
    classes = calibration.get("score_classes")
    if classes and scores is not None:
        q = np.asarray(classes["normalized_quantiles"], dtype=np.float64)[score_class(classes["edges"], scores)]
    else:
        q = float(calibration["normalized_quantile"])
    return q * spreads


def radii(calibration: Mapping | None, covariances: np.ndarray, scores=None) -> np.ndarray:
    """Calibrated radius per landmark (mm) from (N, 3, 3) world covariances (mm^2) and, optionally, the (N,) peak
    scores (``radius_mm``); NaN without a calibration."""
    return radius_mm(calibration, spread_mm(covariances), scores)


def found_flags(scores, threshold: float, flagged=None, radius=None, calibration: Mapping | None = None) -> np.ndarray:
    """``found`` per landmark (N,) bool: peak score >= ``threshold``, not ``flagged`` by the configuration check and,
    when the calibration sets ``max_radius_mm``, a calibrated ``radius`` (mm) no larger than it."""
    found = np.asarray(scores, dtype=np.float64) >= threshold
    if flagged is not None:
        found &= ~np.asarray(flagged, dtype=bool)
    if radius is not None and calibration and np.isfinite(calibration.get("max_radius_mm", np.nan)):
        found &= ~(np.asarray(radius, dtype=np.float64) > float(calibration["max_radius_mm"]))
    return found


def distance_statistics(cases: Sequence[Mapping[str, Sequence[float]]], names: Sequence[str]) -> dict:
    """Per landmark pair: median distance and floored MAD (mm) over the annotated cases."""
    points = np.array([[case.get(n, [np.nan] * 3) for n in names] for case in cases], dtype=np.float64)
    distances = np.linalg.norm(points[:, :, None, :] - points[:, None, :, :], axis=-1)  # (cases, N, N)
    with np.errstate(all="ignore"):
        median = np.nanmedian(distances, axis=0)
        mad = 1.4826 * np.nanmedian(np.abs(distances - median), axis=0)
    scale = np.maximum(np.nan_to_num(mad), np.maximum(MAD_FLOOR_FRACTION * np.nan_to_num(median), MAD_FLOOR_MM))
    return {"names": list(names), "median_mm": np.round(median, 3).tolist(), "scale_mm": np.round(scale, 3).tolist(),
            "n_cases": len(cases)}


def case_size_factor(ratios: np.ndarray) -> float:
    """The case's size relative to the training annotations (1.0: the same size), from ``ratios`` (N, N): each
    pair's distance over its training median distance, NaN where not comparable (the diagonal, a landmark not
    in the statistics). Per landmark, the median over its partners; then the median of those over the
    landmarks. A landmark that jumped spoils one ratio of each other landmark's, so, as in the flags, the
    median over partners keeps it out even with 4 landmarks. 1.0 when no pair is comparable."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a landmark without comparable partners: all-NaN row
        per_landmark = np.nanmedian(ratios, axis=1)
    per_landmark = per_landmark[np.isfinite(per_landmark)]
    factor = float(np.median(per_landmark)) if per_landmark.size else 1.0
    return factor if factor > 0 else 1.0


def configuration_flags(world: np.ndarray, statistics: Mapping | None, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(flagged (N,) bool, median |robust z| (N,)) of predicted positions (N, 3) world mm against the training geometry,
    after dividing out the case's size (``case_size_factor``)."""
    n = len(names)
    if not statistics:
        return np.zeros(n, dtype=bool), np.full(n, np.nan)
    order = [statistics["names"].index(name) if name in statistics["names"] else -1 for name in names]
    median = np.asarray(statistics["median_mm"], dtype=np.float64)
    scale = np.asarray(statistics["scale_mm"], dtype=np.float64)
    world = np.asarray(world, dtype=np.float64)
    distances = np.linalg.norm(world[:, None, :] - world[None, :, :], axis=-1)
    known = np.asarray(order) >= 0
    pair = np.ix_(np.where(known, order, 0), np.where(known, order, 0))
    comparable = known[:, None] & known[None, :] & ~np.eye(n, dtype=bool) & np.isfinite(median[pair])
    reference = np.where(comparable, median[pair], np.nan)  # (N, N) training median of each pair of this case
    with np.errstate(all="ignore"):
        distances = distances / case_size_factor(np.where(reference > 0, distances / reference, np.nan))
        z = (distances - reference) / scale[pair]
        score = np.nanmedian(np.abs(z), axis=1)
    return np.nan_to_num(score, nan=0.0) > CONFIGURATION_Z, score


def load_calibration(path: str) -> dict | None:
    """models/calibration.json, or None before calibration."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
