"""Read the planner's output (configs/plans.json): the one place every dataset-specific number lives.

The configs only ever read ``plans["configuration"]``; the fingerprint and the reasons beside it are
for people.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged


COARSE_KEYS = ("spacing", "patch_size", "kernel_size", "strides", "filters", "batch_size", "sigma_voxels", "loss_foreground_weight")


def stage_configuration(configuration: dict, stage: str = "fine") -> dict:
    """The numbers one cascade stage trains with: ``coarse`` swaps in the planned ``coarse_*`` values."""
    if stage not in ("fine", "coarse"):
        raise SystemExit(f"error: unknown stage {stage!r}; use fine or coarse")
    if stage == "fine":
        return configuration
    cascade = configuration.get("cascade")
    if not cascade:
        raise SystemExit("error: the plans have no cascade: there is no coarse stage to train")
    return {**configuration, **{key: cascade[f"coarse_{key}"] for key in COARSE_KEYS if f"coarse_{key}" in cascade}}


def load_configuration(plans_file: str, stage: str = "fine") -> dict:
    try:
        with open(plans_file) as f:
            plans = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {plans_file}: no plans; run `python -m scripts.plan DATALIST --bundle_root DIR` first") from None
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {plans_file}: not valid JSON ({err})") from None
    return stage_configuration(plans["configuration"], stage)


def pair_indices(configuration: Mapping) -> list[list[int]]:
    """Left/right pairs as channel indices, the form transforms and extraction use."""
    names = list(configuration["landmark_names"])
    return [[names.index(p["left"]), names.index(p["right"])] for p in configuration.get("left_right_pairs", [])]


def normalization_transform(keys, normalization: Mapping):
    """MR: z-score per image (and per channel, for co-registered multi-modal input) over non-zero voxels. CT: clip to the dataset's foreground percentiles,
    then z-score with the dataset's foreground mean/std (one linear map with clipping)."""
    if normalization.get("scheme") == "ct_clip_zscore":
        lo, hi = normalization["clip"]
        mean, std = normalization["mean"], max(normalization["std"], 1e-8)
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True)
    return NormalizeIntensityd(keys, nonzero=True, channel_wise=True)
