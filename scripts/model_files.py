"""Reading this bundle's model files and finding the ensemble members among them.

A weights file (``models/model.pt``, ``models/coarse_model.pt``, ``models/fold_N/model.pt``) is the plain state
dict of the config's ``network_def``, as model-zoo bundles ship them (the zoo's CI exports it with ``ckpt_export``
and no ``--key_in_ckpt``). Its identity travels in a sidecar beside it, the same name with ``.json``
(``models/model.json``): ``{"landmark_names": [...], "plans_hash": "..."}`` (``pretrained_from`` when fine-tuned),
written by :class:`scripts.engines.LandmarkCheckpointInfo` after MONAI's CheckpointSaver and checked by every loader
here. A weights file without a sidecar loads only when its output channels number the config's landmarks (one
warning: the names cannot be checked); the wrapped files of bundles before 0.4 (``{"model": state_dict,
"landmark_info": {...}}``) still load, with a one-line note. Cross-validation folds (or seed members of a one-subject
dataset) live in ``models/fold_N/``; ``models/model.pt`` is the single model.
"""

from __future__ import annotations

import copy
import glob
import io
import json
import logging
import os
import re
import sys
from collections.abc import Sequence

import torch

from scripts.engines import LandmarkCheckpointInfo
from scripts.errors import LandmarkConfigError, LandmarkDataError, cli_main

logger = logging.getLogger(__name__)

OUTPUT_WEIGHT = "net.output_block.conv.conv.weight"  # LandmarkHeatmapNet's output convolution: one row per landmark
_TOLD: set[str] = set()


def sidecar_path(weights_path: str) -> str:
    """The identity file of a weights file: ``models/model.pt`` -> ``models/model.json``."""
    return os.path.splitext(str(weights_path))[0] + ".json"


def write_sidecar(weights_path: str, identity: dict) -> None:
    """Write ``identity`` (landmark_names, plans_hash[, pretrained_from]) beside ``weights_path``, atomically."""
    from scripts.atomic import atomic_write_text

    atomic_write_text(sidecar_path(weights_path), json.dumps(identity, indent=2) + "\n")


def read_sidecar(weights_path: str) -> dict | None:
    """The sidecar of ``weights_path`` as a dict, or None when there is none; LandmarkDataError when unreadable."""
    path = sidecar_path(weights_path)
    try:
        with open(path) as f:
            identity = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise LandmarkDataError(path, f"unreadable weights sidecar ({error})") from None
    if not isinstance(identity, dict) or not isinstance(identity.get("landmark_names"), list):
        raise LandmarkDataError(path, "weights sidecar without a 'landmark_names' list")
    return identity


def _tell_once(path: str, level: int, message: str) -> None:
    if (path, message) not in _TOLD:
        _TOLD.add((path, message))
        logger.log(level, "%s: %s", path, message)


def read_checkpoint(path: str) -> tuple[dict, dict | None]:
    """(state_dict, identity) of a weights file: the plain state dict and its sidecar (None when absent; a wrapped
    pre-0.4 file's own ``landmark_info``, with a one-line note). One-line LandmarkDataError for missing, foreign or
    broken files."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LandmarkDataError(path, "model file not found") from None
    except Exception as error:  # truncated or foreign files raise many kinds
        raise LandmarkDataError(path, f"not a readable model checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise LandmarkDataError(path, "not a model checkpoint (a state dict of network_def)")
    if "model" in checkpoint and "landmark_info" in checkpoint:
        _tell_once(path, logging.INFO, "note: a wrapped checkpoint of a bundle before 0.4 ({'model', 'landmark_info'}); "
                   "loaded as such (python -m scripts.model_files converts it to a state dict + sidecar)")
        return checkpoint["model"], {**dict(checkpoint["landmark_info"]), "wrapped": True}
    if not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise LandmarkDataError(path, "not a model checkpoint (a state dict of network_def)")
    return checkpoint, read_sidecar(path)


def output_channels(state: dict) -> int | None:
    """The number of landmarks (output channels) of a LandmarkHeatmapNet state dict, or None for another network."""
    weight = state.get(OUTPUT_WEIGHT)
    return int(weight.shape[0]) if weight is not None else None


def check_identity(path: str, identity: dict | None, landmark_names: Sequence[str], plans_hash: str = "", state: dict | None = None) -> None:
    """Raise LandmarkConfigError unless the weights at ``path`` are for ``landmark_names``: by the sidecar's names (a
    plans hash other than ``plans_hash`` only warns), or, without a sidecar, by the output channel count (warns once)."""
    if identity is not None:
        stored_hash = "" if identity.get("wrapped") else plans_hash  # pre-0.4 files hashed plans.json: not comparable
        LandmarkCheckpointInfo(landmark_names, stored_hash, source=path).load_state_dict(identity)
        return
    channels = output_channels(state if state is not None else read_checkpoint(path)[0])
    if channels != len(landmark_names):
        raise LandmarkConfigError(path, f"no sidecar {os.path.basename(sidecar_path(path))} names its landmarks, and its {channels} "
                                  f"output channels are not the config's {len(landmark_names)}")
    _tell_once(path, logging.WARNING, f"no sidecar {os.path.basename(sidecar_path(path))}: landmark names unchecked (its "
               f"{channels} channels taken as the config's landmarks, in order)")


def fold_dirs(ckpt_dir: str) -> list[str]:
    """``ckpt_dir/fold_N`` folders, in fold order."""
    found = [d for d in glob.glob(os.path.join(ckpt_dir, "fold_*")) if re.fullmatch(r"fold_\d+", os.path.basename(d))]
    return sorted(found, key=lambda d: int(os.path.basename(d)[5:]))


def member_files(ckpt_dir: str, model_file: str, ensemble=True) -> list[str]:
    """The model files to average: every ``fold_N/<model_file>`` present when ``ensemble`` (a switch: bool or
    'true'/'false' from the command line), else (or when no fold has one) ``ckpt_dir/<model_file>``."""
    from scripts.cli_args import parse_switch

    if parse_switch(ensemble, "ensemble"):
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


def loads_through_checkpoint_loader(model_files: Sequence[str]) -> bool:
    """Whether the configs' MONAI CheckpointLoader loads the weights: exactly one model file, not TorchScript."""
    return len(model_files) == 1 and not str(model_files[0]).endswith(".ts")


def load_configured_weights(handlers) -> None:
    """Run the config's weight loaders (MONAI CheckpointLoader handlers, see ``loads_through_checkpoint_loader``)
    now, for code that calls the config's ``network`` outside its evaluator (servers, benchmarks, tests)."""
    from ignite.engine import Engine
    from monai.handlers import CheckpointLoader

    for handler in handlers or []:
        if isinstance(handler, CheckpointLoader):
            handler(Engine(lambda engine, batch: None))


def check_member(path: str, landmark_names: Sequence[str], plans_hash: str = "") -> None:
    """Check that the model file ``path`` was trained for ``landmark_names`` (raises otherwise; warns on other plans).

    Reads the file (5 MB for the shipped model: milliseconds) so that a truncated or foreign one is refused with its
    line here, before the config's CheckpointLoader loads it into the network."""
    state, identity = read_checkpoint(path)
    check_identity(path, identity, landmark_names, plans_hash, state)


def load_member(network_def: torch.nn.Module, path: str, landmark_names: Sequence[str], plans_hash: str = "") -> torch.nn.Module:
    """A copy of ``network_def`` with the weights of ``path``, whose landmarks must be the config's; a ``.ts``
    path is the exported TorchScript network itself."""
    if str(path).endswith(".ts"):
        module, names = torchscript_landmark_names(path)
        LandmarkCheckpointInfo(landmark_names, source=path).load_state_dict({"landmark_names": names})
        return module.eval()
    state, identity = read_checkpoint(path)
    check_identity(path, identity, landmark_names, plans_hash, state)
    network = copy.deepcopy(network_def)
    network.load_state_dict(state)
    return network.eval()


def convert_wrapped(path: str) -> bool:
    """Rewrite a pre-0.4 wrapped weights file as its plain state dict + sidecar (same tensors; the old plans hash, of
    plans.json, is dropped: an empty one is never compared); False if already plain."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(checkpoint, dict) and "model" in checkpoint and "landmark_info" in checkpoint):
        return False
    from scripts.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(checkpoint["model"], buffer)
    identity = {k: v for k, v in dict(checkpoint["landmark_info"]).items() if k != "plans_hash"}  # 0.3.x hashed plans.json:
    write_sidecar(path, {**identity, "plans_hash": ""})  # not comparable with scripts.engines.weights_hash, so left empty
    atomic_write_bytes(path, buffer.getvalue())
    return True


@cli_main
def main(argv=None) -> int:
    """``python -m scripts.model_files FILE...``: convert wrapped weights files (bundles before 0.4) to state dict + sidecar."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scripts.model_files", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("files", nargs="+")
    for path in parser.parse_args(argv).files:
        read_checkpoint(path)  # one line for a missing or broken file
        print(f"{path}: {'converted; identity in ' + sidecar_path(path) if convert_wrapped(path) else 'already a state dict'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
