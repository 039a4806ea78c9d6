"""Start training from another model's weights, matching output channels by landmark name.

Fine-tuning the shipped AFIDs model on one's own scans, or continuing a stage with a fresh learning-rate
schedule, needs the weights but not the optimizer or the epoch counter (that is ResumeTraining's job, and a
saved training state, when present, wins over this). Every layer but the output convolution must match in
shape; the output rows are copied for the landmarks both models know, landmarks new to this dataset keep
their fresh initialisation, and those the checkpoint has but the dataset lacks are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from scripts.errors import LandmarkDataError
from scripts.model_files import check_identity, read_checkpoint

logger = logging.getLogger(__name__)

OUTPUT_PREFIX = "net.output_block.conv.conv."


def transfer_weights(network: torch.nn.Module, path: str, landmark_names: Sequence[str]) -> dict:
    """Load ``path`` into ``network`` in place; returns what was kept, added and dropped (by landmark name)."""
    source_state, identity = read_checkpoint(path)
    if identity is None:  # a weights file without its sidecar: only where the channels can be the config's, in order
        check_identity(path, None, landmark_names, state=source_state)
        identity = {"landmark_names": list(landmark_names)}
    source_names = list(identity.get("landmark_names", []))
    target_state = network.state_dict()
    for key, value in source_state.items():
        if key.startswith(OUTPUT_PREFIX):
            continue
        if key not in target_state or target_state[key].shape != value.shape:
            raise LandmarkDataError(path, f"network differs from the planned one at {key} (other plans?)")
    merged = {k: v for k, v in source_state.items() if not k.startswith(OUTPUT_PREFIX)}
    kept = [n for n in landmark_names if n in source_names]
    for suffix in ("weight", "bias"):
        key = OUTPUT_PREFIX + suffix
        rows = target_state[key].clone()
        for name in kept:
            rows[list(landmark_names).index(name)] = source_state[key][source_names.index(name)]
        merged[key] = rows
    network.load_state_dict(merged, strict=True)
    report = {
        "source": path,
        "kept": kept,
        "added": [n for n in landmark_names if n not in source_names],
        "dropped": [n for n in source_names if n not in landmark_names],
    }
    logger.info("initialised from %s: %d landmarks kept, added %s, dropped %s", path, len(kept), report["added"], report["dropped"])
    return report


def initialize_from(network: torch.nn.Module, path: str | None, landmark_names: Sequence[str], device=None) -> torch.nn.Module:
    """Config helper (train.json's ``network``): the network, with ``path``'s weights when a path is given
    (``--pretrained``), moved to ``device`` when given."""
    if path:
        transfer_weights(network, path, landmark_names)
    return network.to(device) if device is not None else network
