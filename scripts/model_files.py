"""Reading this bundle's model files and finding the ensemble members among them.

A model file is ``{"model": state_dict, "landmark_info": {"landmark_names": [...], "plans_hash": ...}}``
(written by the trainer's CheckpointSaver). Cross-validation folds (or seed members of a one-subject
dataset) live in ``models/fold_N/``; ``models/model.pt`` is the single model.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
from collections.abc import Sequence

import torch

from scripts.engines import LandmarkCheckpointInfo
from scripts.errors import LandmarkDataError


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(state_dict, landmark_info) of a model file; one-line errors for missing, foreign or broken files."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LandmarkDataError(path, "model file not found") from None
    except Exception as error:  # truncated or foreign files raise many kinds
        raise LandmarkDataError(path, f"not a readable model checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "landmark_info" not in checkpoint:
        raise LandmarkDataError(path, "not a landmark model checkpoint (needs 'model' and 'landmark_info')")
    return checkpoint["model"], dict(checkpoint["landmark_info"])


def fold_dirs(ckpt_dir: str) -> list[str]:
    """``ckpt_dir/fold_N`` folders, in fold order."""
    found = [d for d in glob.glob(os.path.join(ckpt_dir, "fold_*")) if re.fullmatch(r"fold_\d+", os.path.basename(d))]
    return sorted(found, key=lambda d: int(os.path.basename(d)[5:]))


def member_files(ckpt_dir: str, model_file: str, ensemble: bool = True) -> list[str]:
    """The model files to average: every ``fold_N/<model_file>`` present when ensembling, else (or when
    no fold has one) ``ckpt_dir/<model_file>``."""
    if ensemble:
        members = [os.path.join(d, model_file) for d in fold_dirs(ckpt_dir) if os.path.isfile(os.path.join(d, model_file))]
        if members:
            return members
    return [os.path.join(ckpt_dir, model_file)]


def torchscript_landmark_names(path: str) -> tuple[torch.nn.Module, list[str]]:
    """A TorchScript export (``ckpt_export``) and its landmark names, read from the metadata.json it embeds."""
    extra = {"metadata.json": ""}
    try:
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for foreign files
        raise LandmarkDataError(path, f"not a readable TorchScript file ({type(error).__name__})") from None
    try:
        channels = json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]["channel_def"]
    except (ValueError, KeyError, TypeError):
        raise LandmarkDataError(path, "TorchScript file without the bundle's metadata.json (export it with ckpt_export)") from None
    return module, [channels[str(i)] for i in range(len(channels))]


def load_member(network_def: torch.nn.Module, path: str, landmark_names: Sequence[str], plans_hash: str = "") -> torch.nn.Module:
    """A copy of ``network_def`` with the weights of ``path``, whose landmarks must be the config's; a ``.ts``
    path is the exported TorchScript network itself."""
    if str(path).endswith(".ts"):
        module, names = torchscript_landmark_names(path)
        LandmarkCheckpointInfo(landmark_names, source=path).load_state_dict({"landmark_names": names})
        return module.eval()
    state, info = read_checkpoint(path)
    LandmarkCheckpointInfo(landmark_names, plans_hash, source=path).load_state_dict(info)
    network = copy.deepcopy(network_def)
    network.load_state_dict(state)
    return network.eval()
