"""Landmark accuracy: radial errors in mm, their summary (MRE, SDR) overall and per landmark."""

from collections.abc import Sequence

import ignite.distributed as idist
import numpy as np
import torch
from ignite.metrics import Metric

DEFAULT_RADII_MM = (2.0, 3.0, 4.0)


def radial_errors(pred, gt) -> np.ndarray:
    """Euclidean distance per landmark between (..., 3) world-mm predictions and ground truth.

    NaN where the ground truth is NaN (not annotated). A NaN prediction for an annotated landmark is a
    pipeline bug, so it raises ValueError.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1:] != (3,):
        raise ValueError(f"pred and gt must both be (..., 3), got {pred.shape} and {gt.shape}")
    annotated = np.all(np.isfinite(gt), axis=-1)
    predicted = np.all(np.isfinite(pred), axis=-1)
    if np.any(annotated & ~predicted):
        raise ValueError("a prediction is NaN or infinite for an annotated landmark")
    errors = np.full(gt.shape[:-1], np.nan)
    errors[annotated] = np.linalg.norm(pred[annotated] - gt[annotated], axis=-1)
    return errors


def summarize_errors(errors, radii: Sequence[float] = DEFAULT_RADII_MM) -> dict:
    """MRE, median, std (population), max, count and success detection rates over the finite errors.

    Keys: ``mre``, ``median``, ``std``, ``max``, ``n`` and ``sdr_{radius:g}mm`` (fraction of errors <= radius).
    With no finite error every statistic is NaN and ``n`` is 0.
    """
    values = np.asarray(errors, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    n = int(values.size)
    if n == 0:
        summary = {"mre": np.nan, "median": np.nan, "std": np.nan, "max": np.nan, "n": 0}
        summary.update({f"sdr_{r:g}mm": np.nan for r in radii})
        return summary
    summary = {
        "mre": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "max": float(values.max()),
        "n": n,
    }
    summary.update({f"sdr_{r:g}mm": float(np.mean(values <= r)) for r in radii})
    return summary


def per_landmark_summary(errors, names: Sequence[str], radii: Sequence[float] = DEFAULT_RADII_MM) -> dict:
    """``summarize_errors`` of each column of (cases, N) errors, keyed by landmark name."""
    errors = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    if errors.ndim != 2 or errors.shape[1] != len(names):
        raise ValueError(f"errors must be (cases, {len(names)}), got {errors.shape}")
    return {name: summarize_errors(errors[:, column], radii) for column, name in enumerate(names)}


def case_items(state) -> list[dict]:
    """Per-case dicts of an evaluator iteration: the decollated batch merged with the post-processed output.

    MONAI's post-processing writes new keys (``pred_landmarks_world``...) into the output and leaves
    the batch (``landmarks_world``, ``stem``) as loaded.
    """
    batch, output = _as_items(state.batch), _as_items(state.output)
    if not output:
        return batch
    return [{**b, **o} for b, o in zip(batch, output)] if batch else output


def _as_items(data) -> list[dict]:
    if isinstance(data, list):
        return [d for d in data if isinstance(d, dict)]
    if isinstance(data, dict) and "error" not in data:
        return [data]
    return []


class LandmarkErrorMetric(Metric):
    """MRE, median radial error or SDR@radius over every annotated landmark of every case, in world mm.

    Reads ``pred_landmarks_world`` (post-processed output) and ``landmarks_world`` (batch) of each
    case; the plain output would only hold heatmaps. Errors are gathered over all ranks before
    the statistic is computed, so every rank reports the same value. Each case counts once: under DDP a
    validation set smaller than (or not divisible by) the number of ranks is padded by the sampler
    with repeated cases, and errors are kept per case (``stem``, else the image file) so repeats drop out.
    """

    def __init__(self, statistic: str = "mre", radius: float | None = None, pred_key: str = "pred_landmarks_world", gt_key: str = "landmarks_world", device="cpu"):
        if statistic not in ("mre", "median", "sdr"):
            raise ValueError(f"unknown statistic {statistic!r}; use mre, median or sdr")
        if statistic == "sdr" and radius is None:
            raise ValueError("statistic 'sdr' needs a radius in mm")
        self.statistic = statistic
        self.radius = radius
        self.pred_key = pred_key
        self.gt_key = gt_key
        self._errors: list[tuple[str | None, list[float]]] = []  # (case key or None, its finite errors)
        super().__init__(output_transform=lambda output: output, device=device)

    def reset(self) -> None:
        self._errors = []

    def update(self, items) -> None:
        for item in items:
            if self.pred_key not in item:
                continue
            errors = radial_errors(_to_numpy(item[self.pred_key]), _to_numpy(item[self.gt_key]))
            self._errors.append((_case_key(item), errors[np.isfinite(errors)].tolist()))

    def iteration_completed(self, engine) -> None:
        self.update(case_items(engine.state))

    def compute(self) -> float:
        cases = self._errors
        if idist.get_world_size() > 1:
            cases = [case for part in idist.all_gather(cases) for case in part]
        seen: set[str] = set()
        errors = []
        for key, values in cases:
            if key is not None and key in seen:
                continue  # a case the distributed sampler repeated to give every rank a share
            seen.add(key)
            errors.extend(values)
        summary = summarize_errors(errors, radii=(self.radius,) if self.radius is not None else ())
        return summary[f"sdr_{self.radius:g}mm"] if self.statistic == "sdr" else summary[self.statistic]


def _case_key(item) -> str | None:
    """What identifies a case across ranks: its output stem, else the file its image was loaded from."""
    if item.get("stem"):
        return str(item["stem"])
    meta = getattr(item.get("image"), "meta", None) or {}
    source = meta.get("filename_or_obj")
    return str(source) if source else None


def _to_numpy(value) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
