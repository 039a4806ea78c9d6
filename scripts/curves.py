"""Training curves: loss, learning rate and validation metrics per epoch, as TensorBoard event files and a PNG.

``TrainingCurves`` is one trainer handler (train.json ``train#handlers``, after ``EpochProgress``, which puts each
epoch's mean ``train_loss`` and ``lr`` into the trainer's ``state.metrics``). At each epoch it records those and, when
the epoch was validated, the evaluator's metrics (``val_mre``, ``val_median`` in mm, ``val_sdr_2mm``/``val_sdr_4mm``
as fractions); it then rewrites, beside the checkpoints:

- ``training_curves.json``: the per-epoch history (kept across a resumed training: entries up to the resumed epoch);
- ``training_curves.png``: loss, learning rate, MRE/median and SDR against the epoch, redrawn at each validation
  and at the end (matplotlib, written atomically);
- ``tensorboard/``: event files written by MONAI's ``TensorBoardStatsHandler`` (one on the trainer for ``train_loss``
  and ``lr``, one on the evaluator for the validation metrics, at the trainer's epoch), when the ``tensorboard``
  package is installed. It is not in requirements.txt: MONAI imports it (and tensorboardX) at ``import monai``
  whenever installed, which adds 0.15-0.3 s to every command's start-up, inference included (docs/your_data.md);
  ``pip install tensorboard`` turns it on, and ``tensorboard --logdir models/tensorboard`` shows it.

With a cascade's coarse stage (``checkpoint_prefix`` "coarse") the files are ``coarse_training_curves.*`` and
``coarse_tensorboard/``. Under torchrun only rank 0 has this handler (multi_gpu_train.json).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os

from ignite.engine import Events

from scripts.atomic import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

VALIDATION_KEYS = ("val_mre", "val_median", "val_sdr_2mm", "val_sdr_4mm")


def tensorboard_available() -> bool:
    """Whether MONAI's TensorBoardStatsHandler can write event files (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


class TrainingCurves:
    """Per-epoch history of one training, as JSON, a PNG and TensorBoard event files (see the module docstring).

    ``ckpt_dir``: the folder of the checkpoints, where the files go; ``evaluator``: the validation evaluator whose
    ``state.metrics`` are read after it ran; ``prefix``: the checkpoint prefix (``coarse`` for a cascade's coarse stage).
    """

    def __init__(self, ckpt_dir: str, evaluator=None, prefix: str = "", tensorboard: bool | None = None):
        self.ckpt_dir = str(ckpt_dir)
        self.evaluator = evaluator
        stem = f"{prefix}_" if prefix else ""
        self.json_file = os.path.join(self.ckpt_dir, f"{stem}training_curves.json")
        self.png_file = os.path.join(self.ckpt_dir, f"{stem}training_curves.png")
        self.log_dir = os.path.join(self.ckpt_dir, f"{stem}tensorboard")
        self.tensorboard = tensorboard_available() if tensorboard is None else bool(tensorboard)
        self.history: dict = {"epoch": [], "train_loss": [], "lr": [], "validation": {"epoch": [], **{k: [] for k in VALIDATION_KEYS}}}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self.resume)
        if self.tensorboard:
            from monai.handlers import TensorBoardStatsHandler

            TensorBoardStatsHandler(log_dir=self.log_dir, iteration_log=False, epoch_log=True).attach(engine)
            if self.evaluator is not None:
                TensorBoardStatsHandler(log_dir=self.log_dir, iteration_log=False, epoch_log=True).attach(self.evaluator)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, lambda e: self.draw())

    def resume(self, engine) -> None:
        """Keep the recorded history up to the epoch a resumed training starts from (none for a new training)."""
        if engine.state.epoch == 0 or not os.path.isfile(self.json_file):
            return
        with open(self.json_file) as f:
            saved = json.load(f)
        keep = [i for i, epoch in enumerate(saved.get("epoch", [])) if epoch <= engine.state.epoch]
        self.history.update({key: [saved[key][i] for i in keep] for key in ("epoch", "train_loss", "lr")})
        validation = saved.get("validation", {})
        kept = [i for i, epoch in enumerate(validation.get("epoch", [])) if epoch <= engine.state.epoch]
        self.history["validation"] = {key: [validation[key][i] if i < len(validation.get(key, [])) else None for i in kept]
                                      for key in ("epoch", *VALIDATION_KEYS)}

    def record(self, engine) -> None:
        """This epoch's loss and learning rate, and the validation metrics when the evaluator ran at this epoch."""
        metrics = engine.state.metrics
        self.history["epoch"].append(engine.state.epoch)
        self.history["train_loss"].append(_number(metrics.get("train_loss")))
        self.history["lr"].append(_number(metrics.get("lr")))
        validated = self.evaluator is not None and getattr(self.evaluator.state, "epoch", None) == engine.state.epoch
        if validated:
            self.history["validation"]["epoch"].append(engine.state.epoch)
            for key in VALIDATION_KEYS:
                self.history["validation"][key].append(_number(self.evaluator.state.metrics.get(key)))
        os.makedirs(self.ckpt_dir, exist_ok=True)
        atomic_write_text(self.json_file, json.dumps(self.history) + "\n")
        if validated:
            self.draw()

    def draw(self) -> None:
        """Redraw the PNG from the history (atomic: a viewer never sees half a file)."""
        if not self.history["epoch"]:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        h, v = self.history, self.history["validation"]
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
        axes[0, 0].plot(h["epoch"], h["train_loss"], color="tab:blue")
        axes[0, 0].set(title="training loss (masked heatmap MSE)", yscale="log")
        axes[0, 1].plot(h["epoch"], h["lr"], color="tab:gray")
        axes[0, 1].set(title="learning rate")
        axes[1, 0].plot(v["epoch"], v["val_mre"], "o-", label="MRE")
        axes[1, 0].plot(v["epoch"], v["val_median"], "s--", label="median")
        axes[1, 0].set(title="validation radial error (mm)", xlabel="epoch")
        axes[1, 0].legend()
        for key, label in (("val_sdr_2mm", "SDR 2 mm"), ("val_sdr_4mm", "SDR 4 mm")):
            axes[1, 1].plot(v["epoch"], [None if x is None else 100 * x for x in v[key]], "o-", label=label)
        axes[1, 1].set(title="validation success rate (%)", xlabel="epoch", ylim=(0, 100))
        axes[1, 1].legend()
        for axis in axes.flat:
            axis.grid(alpha=0.3)
            axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        atomic_write_bytes(self.png_file, buffer.getvalue())


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
