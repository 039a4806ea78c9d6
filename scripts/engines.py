"""What the ignite engines need beyond MONAI's: the masked loss, a batch preparer that hands the
mask to it, checkpoint identity, resume, and an evaluator that skips unreadable cases.

SupervisedTrainer passes only ``targets`` to the loss. ``prepare_landmark_batch`` therefore returns
``targets = {"label": heatmaps, "mask": label_mask}`` and ``MaskedHeatmapMSELoss`` reads both; the
trainer runs with ``decollate=False`` since nothing downstream needs per-item outputs.
"""

from __future__ import annotations

import gc
import glob
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver

from scripts.errors import LandmarkConfigError, LandmarkDataError, LandmarkError, bundle_command_running


logger = logging.getLogger(__name__)


def skip_exit_garbage_collection() -> None:
    """In a ``python -m monai.bundle`` process about to exit, spare the interpreter's final garbage collection.

    It walks the million-odd objects torch, MONAI and their imports allocated, only to free memory that the
    exit frees anyway: about 0.8 s of a 2-core inference command (docs/benchmarks.md). Objects are still
    released, and files closed, as the modules are torn down; only cyclic garbage left at exit is not
    collected. Where anything else is ``__main__`` (a server, pytest) nothing changes.
    """
    if bundle_command_running():
        gc.freeze()


def prepare_landmark_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """(image, {"label", "mask"}) for the trainer; the evaluator uses MONAI's default."""
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    target = {
        "label": batchdata["label"].to(device=device, non_blocking=non_blocking, **kwargs),
        "mask": batchdata["label_mask"].to(device=device, non_blocking=non_blocking, **kwargs),
    }
    return image, target


def _normalization_parameters(preprocessing) -> list:
    """(name, settings) of each intensity normalisation step in ``preprocessing`` (a Compose or a list of transforms):
    MONAI's NormalizeIntensity* / ScaleIntensity* (the deterministic ones the planner writes), with their numbers."""
    from monai.transforms import Compose, Transform

    steps = preprocessing.transforms if isinstance(preprocessing, Compose) else list(preprocessing or [])
    found = []
    for step in steps:
        name = type(step).__name__
        if not name.startswith(("NormalizeIntensity", "ScaleIntensity")):
            continue
        inner = next((v for v in vars(step).values() if isinstance(v, Transform)), step)  # the array transform it wraps
        settings = {k: v for k, v in sorted(vars(inner).items()) if isinstance(v, (bool, int, float, str)) or v is None}
        found.append([name, settings])
    return found


def weights_hash(network: torch.nn.Module, spacing: Sequence[float], sigma, preprocessing=None) -> str:
    """What a network's weights mean, as a 16-hex-digit hash: the architecture (DynUNet kernel sizes, strides, filters,
    input and output channels; other networks: their state-dict shapes), the voxel spacing in mm the input is
    resampled to, the heatmap sigma in voxels (per axis) and the intensity normalisation (``preprocessing``'s
    NormalizeIntensity*/ScaleIntensity* steps with their numbers).

    The configs pass their own ids (``@network_def``, ``@spacing``, ``@sigma``, the preprocessing), so an override
    on the command line (``--spacing``, ``--sigma``, ``--network_def#filters``...) changes the hash as it changes what
    the weights mean. Patch size, batch, schedule, augmentation and every inference-only choice (overlap, TTA, search
    radius) are left out: weights trained with other values of those mean the same."""
    inner = getattr(network, "net", network)
    if all(hasattr(inner, key) for key in ("kernel_size", "strides", "filters")):
        architecture = {"network": type(network).__name__, "in_channels": int(inner.in_channels), "out_channels": int(inner.out_channels),
                        "kernel_size": [list(map(int, k)) for k in inner.kernel_size], "strides": [list(map(int, s)) for s in inner.strides],
                        "filters": [int(f) for f in inner.filters]}
    else:
        architecture = {"network": type(network).__name__, "shapes": {k: list(v.shape) for k, v in network.state_dict().items()}}
    sigma = [float(s) for s in (sigma if isinstance(sigma, Sequence) else [sigma] * len(spacing))]
    identity = {"architecture": architecture, "spacing_mm": [round(float(s), 6) for s in spacing], "sigma_voxels": [round(s, 6) for s in sigma],
                "normalization": _normalization_parameters(preprocessing)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class LandmarkCheckpointInfo:
    """The identity of a network's weights: which landmarks its channels are, and the hash of what the weights mean
    (:func:`weights_hash`); ``pretrained_from`` names the model file fine-tuning started from.

    Two uses: in a full training state (``landmark_info`` beside model, optimizer, trainer) it is saved and checked on
    resume; attached to the validation evaluator after MONAI's CheckpointSaver (which writes ``source``, the weights
    file, as a plain state dict), it writes the sidecar ``<source stem>.json`` beside each new weights file
    (scripts.model_files). Loading weights whose names differ from the config's is an error (LandmarkConfigError),
    never a silent mix-up; another hash only warns.
    """

    def __init__(self, landmark_names: Sequence[str], plans_hash: str = "", source: str = "checkpoint", pretrained_from: str | None = None):
        self.landmark_names = list(landmark_names)
        self.plans_hash = plans_hash
        self.source = source
        self.pretrained_from = pretrained_from  # the model file training started from (fine-tuning), if any

    def state_dict(self) -> dict:
        state = {"landmark_names": self.landmark_names, "plans_hash": self.plans_hash}
        if self.pretrained_from:
            state["pretrained_from"] = str(self.pretrained_from)
        return state

    def load_state_dict(self, state: dict) -> None:
        names = list(state.get("landmark_names", []))
        if names != self.landmark_names:
            missing = [n for n in self.landmark_names if n not in names]
            extra = [n for n in names if n not in self.landmark_names]
            detail = f"missing {missing}, unexpected {extra}" if (missing or extra) else "same names in another order"
            raise LandmarkConfigError(self.source, f"checkpoint landmarks do not match the config ({detail})")
        if state.get("plans_hash") and self.plans_hash and state["plans_hash"] != self.plans_hash:
            logger.warning("%s: trained with other plans (hash %s) than the config's spacing, sigma, network and normalisation (%s)",
                           self.source, state["plans_hash"], self.plans_hash)

    def attach(self, engine) -> None:
        """Write the sidecar after each epoch of ``engine`` whose CheckpointSaver (attached before) wrote ``source``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_sidecar)

    def write_sidecar(self, engine=None) -> None:
        """``source``'s sidecar, when ``source`` exists and its sidecar is missing, older or different (rank 0 only)."""
        from scripts.model_files import read_sidecar, sidecar_path, write_sidecar

        if not os.path.isfile(self.source) or (torch.distributed.is_initialized() and torch.distributed.get_rank() > 0):
            return
        sidecar = sidecar_path(self.source)
        current = os.path.isfile(sidecar) and os.path.getmtime(sidecar) >= os.path.getmtime(self.source)
        if not (current and read_sidecar(self.source) == self.state_dict()):
            write_sidecar(self.source, self.state_dict())


def latest_checkpoint(ckpt_dir: str, prefix: str = "") -> str | None:
    """The newest full training state in ckpt_dir (``[prefix_]checkpoint_epoch=N.pt``), or None."""
    found = glob.glob(os.path.join(ckpt_dir, f"{prefix + '_' if prefix else ''}checkpoint_epoch=*.pt"))
    return max(found, key=os.path.getmtime) if found else None


class ResumeTraining:
    """At the start of a run, load the last full training state (model, optimizer, scheduler, trainer) if any.

    MONAI's CheckpointLoader needs a path at construction time; this handler looks when the run starts,
    so ``python -m monai.bundle run`` simply continues an interrupted training. The trainer's own state
    is added here because the config cannot reference the trainer from inside its own handler list.
    """

    def __init__(self, ckpt_dir: str, load_dict: dict, prefix: str = "", enabled: bool = True):
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.prefix = prefix
        self.enabled = enabled

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        path = latest_checkpoint(self.ckpt_dir, self.prefix) if self.enabled else None
        if path is None:
            return
        from monai.handlers import CheckpointLoader

        try:
            CheckpointLoader(load_path=path, load_dict={**self.load_dict, "trainer": engine}, map_location="cpu")(engine)
        except LandmarkError:
            raise
        except Exception as error:  # truncated file, another network, another optimizer: never start over silently
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise LandmarkDataError(path, f"cannot resume from this training state ({reason}); "
                                    "move it away to start over, or set --resume false") from None
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
        if engine.state.epoch >= engine.state.max_epochs:
            logger.info("training already complete (%d epochs)", engine.state.max_epochs)


class TrainingStateSaver(CheckpointSaver):
    """MONAI's CheckpointSaver that also saves the trainer it is attached to (for ResumeTraining), and keeps
    only the newest state: a run resumed after a crash would otherwise leave the crashed run's file behind."""

    def __init__(self, *args, file_prefix: str = "", **kwargs):
        super().__init__(*args, file_prefix=file_prefix, **kwargs)
        self.state_prefix = file_prefix

    def attach(self, engine) -> None:
        self.save_dict["trainer"] = engine
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.remove_older_states)

    def remove_older_states(self, engine=None) -> None:
        prefix = f"{self.state_prefix}_" if self.state_prefix else ""
        states = glob.glob(os.path.join(self.save_dir, f"{prefix}checkpoint_epoch=*.pt"))
        epochs = {path: int(path.rsplit("=", 1)[1][:-3]) for path in states if path.rsplit("=", 1)[1][:-3].isdigit()}
        for path in sorted(epochs, key=epochs.get)[:-1]:
            os.remove(path)


class LandmarkEvaluator(SupervisedEvaluator):
    """SupervisedEvaluator that passes over cases whose loading failed (batch carries ``error``).

    Such a case produces no prediction and no postprocessing; handlers see ``{"error": ...}`` as
    the iteration output and report it.
    """

    def _iteration(self, engine, batchdata: dict) -> dict:
        errors = batchdata.get("error") if isinstance(batchdata, dict) else None
        if errors is not None and any(errors):
            return {"error": list(errors), "image_path": list(batchdata.get("image_path", []))}
        return super()._iteration(engine, batchdata)


def _scalar(value) -> float:
    """A loss as a float without touching autograd (float() of a grad-carrying tensor warns in torch 2.13)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


class EpochProgress:
    """A progress bar over each epoch's iterations and one log line per epoch (loss, lr, time).

    Each epoch's mean loss and the learning rate it trained with also go into the trainer's ``state.metrics`` as
    ``train_loss`` and ``lr``, where scripts.curves (TensorBoard, the PNG) reads them."""

    def __init__(self, show_bar: bool | None = None):
        self.show_bar = sys.stderr.isatty() if show_bar is None else show_bar
        self.losses: list[float] = []

    def attach(self, engine) -> None:
        if self.show_bar:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False, ncols=100).attach(engine, output_transform=lambda out: {"loss": _scalar(out["loss"])})
        engine.add_event_handler(Events.EPOCH_STARTED, self.start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.losses.append(_scalar(e.state.output["loss"])))
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)
        engine.add_event_handler(Events.COMPLETED, self.log_summary)

    def start_epoch(self, engine) -> None:
        self.losses.clear()
        self.lr = engine.optimizer.param_groups[0]["lr"] if hasattr(engine, "optimizer") else float("nan")  # before the scheduler steps

    def log_epoch(self, engine) -> None:
        lr = getattr(self, "lr", float("nan"))
        mean = sum(self.losses) / max(len(self.losses), 1)
        engine.state.metrics.update(train_loss=mean, lr=lr)
        seconds = engine.state.times.get("EPOCH_COMPLETED") or 0.0
        logger.info("epoch %d/%d: loss %.6f, lr %.2e, %.1f s", engine.state.epoch, engine.state.max_epochs, mean, lr, seconds)

    def log_summary(self, engine) -> None:
        total = engine.state.times.get("COMPLETED") or 0.0
        logger.info("training finished: %d epochs, %d iterations, %.1f min", engine.state.epoch, engine.state.iteration, total / 60)


DEFAULT_FOUND_THRESHOLD = 0.25


def found_threshold(calibration_file: str, default: float = DEFAULT_FOUND_THRESHOLD) -> float:
    """The peak score below which a landmark is reported ``found: false``.

    Calibrated after training into models/calibration.json; until then a documented default:
    a trained model's peaks sit near 0.5-1.0, an absent structure's below 0.1.
    """
    if not os.path.exists(calibration_file):
        return default
    with open(calibration_file) as f:
        return float(json.load(f).get("found_threshold", default))
