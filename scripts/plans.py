"""The planner's output (configs/plans.json) as the config writer uses it.

plans.json is the planner's record: the fingerprint, every decision with its reason, and the flat
``configuration`` the config writer (scripts.bundle_configs) copies into the configs as literal numbers.
Nothing reads plans.json at training or inference time except the checkpoint identity (the plans hash).
"""

from __future__ import annotations

from collections.abc import Mapping

from scripts.errors import LandmarkConfigError


COARSE_KEYS = ("spacing", "patch_size", "kernel_size", "strides", "filters", "batch_size", "sigma_mm", "sigma_voxels", "loss_foreground_weight")


def stage_configuration(configuration: dict, stage: str = "fine") -> dict:
    """The numbers one cascade stage trains with: ``coarse`` swaps in the planned ``coarse_*`` values."""
    if stage not in ("fine", "coarse"):
        raise LandmarkConfigError("stage", f"unknown stage {stage!r}; use fine or coarse")
    if stage == "fine":
        return configuration
    cascade = configuration.get("cascade")
    if not cascade:
        raise LandmarkConfigError("configs/plans.json", "the plans have no cascade: there is no coarse stage to train")
    return {**configuration, **{key: cascade[f"coarse_{key}"] for key in COARSE_KEYS if f"coarse_{key}" in cascade}}


def pair_indices(configuration: Mapping) -> list[list[int]]:
    """Left/right pairs as channel indices, the form transforms and extraction use."""
    names = list(configuration["landmark_names"])
    return [[names.index(p["left"]), names.index(p["right"])] for p in configuration.get("left_right_pairs", [])]


def normalization_config(keys, normalization: Mapping) -> dict:
    """The normalisation step as a config component (MONAI's transform with its planned arguments).

    MR: z-score per image (and per channel, for co-registered multi-modal input) over non-zero voxels. CT: clip to
    the dataset's foreground percentiles, then z-score with the dataset's foreground mean/std, as one linear map
    with clipping: ScaleIntensityRanged from [a_min, a_max] HU to [(a_min - mean) / std, (a_max - mean) / std]."""
    if normalization.get("scheme") == "ct_clip_zscore":
        lo, hi = normalization["clip"]
        mean, std = normalization["mean"], max(normalization["std"], 1e-8)
        return {"_target_": "ScaleIntensityRanged", "keys": keys, "a_min": lo, "a_max": hi, "b_min": (lo - mean) / std,
                "b_max": (hi - mean) / std, "clip": True}
    return {"_target_": "NormalizeIntensityd", "keys": keys, "nonzero": True, "channel_wise": True}
