"""configs/metadata.json (model-zoo schema 20240725) from the planned configuration."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

import numpy
import torch

import monai

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
MONAILABEL_VERSION = "0.8.5"  # monailabel_app/ is tested against it (requirements-monailabel.txt)
# what the bundle runs with beyond torch, monai and numpy: requirements.txt (tests/test_distribution.py keeps them equal)
REQUIRED_PACKAGES = ("nibabel", "pytorch-ignite", "fire", "jsonschema", "SimpleITK", "tqdm", "matplotlib", "pyyaml")
KEPT_FIELDS = ("version", "changelog", "eval_metrics", "description", "authors", "copyright", "data_source",
               "intended_use", "references", "name")
REFERENCES = [
    "nnLandmark: a self-configuring method for 3D medical landmark detection (Ertl et al., 2025), arXiv:2504.06742",
    "Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation, Nature Methods 18, 2021",
    "Taha et al., Magnetic resonance imaging datasets with anatomical fiducials for quality control and registration, Scientific Data 10, 2023 (AFIDs)",
]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _spatial_multiples(configuration: Mapping) -> list[str]:
    """Inputs must be divisible by the product of the strides per axis, and the deepest feature map needs
    at least 2 voxels per axis that is downsampled (instance norm of a single voxel is undefined), so the
    smallest valid input is twice the product: declared as multiples of that, which verify_net_in_out
    checks at n = 1."""
    products = [1, 1, 1]
    for stride in configuration["strides"]:
        products = [p * s for p, s in zip(products, stride)]
    return [f"{2 * p if p > 1 else 1}*n" for p in products]


def network_data_format(configuration: Mapping) -> dict:
    names = list(configuration["landmark_names"])
    shape = _spatial_multiples(configuration)
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": configuration.get("modality", "MR"),
                "num_channels": int(configuration["in_channels"]),
                "spatial_shape": shape,
                "dtype": "float32",
                "value_range": [-10, 10] if configuration["normalization"]["scheme"] != "ct_clip_zscore" else [-5, 5],
                "is_patch_data": True,
                "channel_def": {str(i): f"image {i}" for i in range(int(configuration["in_channels"]))},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "heatmap",
                "num_channels": len(names),
                "spatial_shape": shape,
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(names)},
            }
        },
    }


def build_metadata(configuration: Mapping, existing: Mapping | None = None, name: str | None = None) -> dict:
    """A complete metadata.json; version, changelog, eval_metrics and prose of an existing one are kept,
    and so is its name unless one is given."""
    names = list(configuration["landmark_names"])
    metadata = {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": "configuration planned by scripts.plan"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {p: _version(p) for p in REQUIRED_PACKAGES},
        "name": name or (existing or {}).get("name") or "landmark_detection",
        "task": "3D anatomical landmark detection by heatmap regression",
        "description": (
            f"Self-configuring 3D landmark detector (nnLandmark method as a MONAI bundle): a DynUNet regresses one "
            f"Gaussian heatmap per landmark ({len(names)} landmarks); peaks give positions in world millimetres."
        ),
        "authors": "Self-configuring landmark detection bundle contributors",
        "copyright": "Copyright (c) the bundle contributors, Apache-2.0",
        "data_source": "Described in docs/README.md",
        "data_type": "nifti",
        "image_classes": f"{configuration['in_channels']} channel(s), {configuration.get('modality', 'MR')}, resampled to {configuration['spacing']} mm",
        "label_classes": "one Gaussian heatmap per landmark (sigma in voxels from plans.json), peak 1 at the landmark",
        "pred_classes": "; ".join(f"{i}: {n}" for i, n in enumerate(names)),
        "eval_metrics": {},
        "intended_use": "Research use only; not a medical device and not for clinical decisions.",
        "references": REFERENCES,
        "supported_apps": {"monailabel": MONAILABEL_VERSION},
        "network_data_format": network_data_format(configuration),
    }
    cascade = configuration.get("cascade")
    if cascade:
        metadata["coarse_data_format"] = network_data_format({**configuration, "strides": cascade["coarse_strides"]})
    for field in KEPT_FIELDS:
        if existing and field in existing and not (field == "name" and name):
            metadata[field] = existing[field]
    return metadata
