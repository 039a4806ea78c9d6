"""Training length from a wall-clock budget and the step time of the machine that trains.

The plans hold the budget (``training_hours``, per stage) and the iterations per epoch, never a step time:
plans stay machine-independent and re-planning stays byte-identical. At the start of a training run
``decide_epochs`` times a few real training steps (data loading included) and one validation case on
this machine, logs what it measured, and returns the largest epoch count whose training steps plus
validations fit the budget. The trainer's ``max_epochs``, the learning-rate schedule's length and the
validation interval all follow from that one number.

An interrupted run keeps the epoch count it decided: ignite stores ``max_epochs`` in the trainer's state,
which every training state file holds; a resumed run reads it from the newest one (``ResumeTraining``
loads the same file) instead of measuring again. An explicit ``--epochs N`` replaces the whole expression
and wins; ``--hours H`` changes the budget.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass

import torch

from scripts.errors import LandmarkConfigError

logger = logging.getLogger(__name__)

VALIDATIONS_PER_TRAINING = 20  # about 20 validations per run: val_interval = max(1, epochs // 20)
MAX_EPOCHS = 10_000
WARMUP_STEPS = 2  # the first steps start the loader's workers and warm oneDNN's caches
TIMED_STEPS = 6


def validation_interval(epochs: int, validations: int = VALIDATIONS_PER_TRAINING) -> int:
    """Epochs between validations: about ``validations`` of them in ``epochs`` epochs."""
    return max(1, int(epochs) // validations)


def run_seconds(epochs: int, iterations_per_epoch: int, step_seconds: float, validation_seconds: float,
                validations: int = VALIDATIONS_PER_TRAINING) -> float:
    """Predicted wall time (s) of ``epochs`` epochs: every step plus every validation (one per ``validation_interval``)."""
    n_validations = epochs // validation_interval(epochs, validations)
    return epochs * iterations_per_epoch * step_seconds + n_validations * validation_seconds


def epochs_for_budget(budget_seconds: float, iterations_per_epoch: int, step_seconds: float, validation_seconds: float = 0.0,
                      validations: int = VALIDATIONS_PER_TRAINING, max_epochs: int = MAX_EPOCHS) -> int:
    """The largest epoch count in [1, max_epochs] whose ``run_seconds`` fits ``budget_seconds`` (1 when none does).

    Example: 2.5 h, 50 iterations of 0.6 s, validations of 30 s: 20 validations take 600 s, leaving
    8400 s = 280 epochs; 280 epochs validate every 14 -> 20 validations: 280 x 30 s + 600 s = 9000 s.
    """
    if step_seconds <= 0 or iterations_per_epoch <= 0:
        raise ValueError("step_seconds and iterations_per_epoch must be positive")
    fitting = [e for e in range(1, max_epochs + 1)
               if run_seconds(e, iterations_per_epoch, step_seconds, validation_seconds, validations) <= budget_seconds]
    return max(fitting) if fitting else 1


def resumed_epochs(ckpt_dir: str, prefix: str = "") -> int | None:
    """``max_epochs`` that the newest training state in ``ckpt_dir`` was decided with, or None (no state, or none stored)."""
    from scripts.engines import latest_checkpoint

    path = latest_checkpoint(ckpt_dir, prefix)
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # ResumeTraining reports an unreadable state with its own message
        return None
    epochs = (state.get("trainer") or {}).get("max_epochs") if isinstance(state, dict) else None
    return int(epochs) if epochs else None


def _batches(loader):
    """The loader's batches, started again as often as needed (a tiny test epoch may hold fewer than the timed steps)."""
    return itertools.chain.from_iterable(loader for _ in itertools.count())


def time_training_steps(network: torch.nn.Module, loss_function: Callable, optimizer: torch.optim.Optimizer, loader,
                        prepare_batch: Callable, device, warmup: int = WARMUP_STEPS, steps: int = TIMED_STEPS) -> float:
    """Seconds per training step (mean of ``steps`` after ``warmup``), waiting for the loader included.

    Runs on a copy of the network with a fresh optimizer of the same class and settings, so the model that
    trains (and its optimizer state) is untouched; the loader's random patches are simply consumed.
    """
    model = copy.deepcopy(getattr(network, "module", network)).to(device).train()
    opt = type(optimizer)(model.parameters(), **optimizer.defaults)
    batches = _batches(loader)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        image, target = prepare_batch(next(batches), device)
        opt.zero_grad(set_to_none=True)
        loss_function(model(image), target).backward()
        opt.step()
    seconds = (time.perf_counter() - start) / steps
    del model, opt
    return seconds


def time_validation_case(inferer: Callable, dataset, network: torch.nn.Module, device) -> float:
    """Seconds for the inferer on the first validation case (0 without validation cases)."""
    if not isinstance(dataset, Sized) or len(dataset) == 0:
        return 0.0
    image = dataset[0]["image"]
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            inferer(torch.as_tensor(image)[None].to(device), network)
            return time.perf_counter() - start
    finally:
        network.train(training)


def _agree_across_ranks(epochs: int) -> int:
    """Under torchrun every rank must train the same number of epochs: rank 0's decision wins."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        decided = [epochs]
        torch.distributed.broadcast_object_list(decided, src=0)
        return int(decided[0])
    return epochs


@dataclass(frozen=True)
class BudgetDecision:
    """What ``decide_epochs`` measured and chose (seconds; ``source``: "resumed", "fixed" or "measured")."""

    epochs: int
    source: str
    step_seconds: float = 0.0
    validation_seconds: float = 0.0
    validation_cases: int = 0


def decide_epochs(hours, fallback_epochs, iterations_per_epoch: int, network, loss_function, optimizer, loader, prepare_batch,
                  validate_inferer, validate_dataset, device, ckpt_dir: str, prefix: str = "", resume: bool = True,
                  validations: int = VALIDATIONS_PER_TRAINING, max_epochs: int = MAX_EPOCHS) -> BudgetDecision:
    """The epoch count of this run: the resumed state's, else from ``hours`` and the measured step time, else ``fallback_epochs``.

    ``hours`` (``--hours``): the wall-clock budget of this stage's run, validations included; None uses
    ``fallback_epochs`` (the plans' fixed schedule, e.g. nnU-Net's 1000 on a GPU budget). Raises
    LandmarkConfigError when neither is given or ``hours`` is not a positive number.
    """
    if resume:
        decided = resumed_epochs(ckpt_dir, prefix)
        if decided is not None:
            logger.info("training budget: resuming a run that decided %d epochs (kept)", decided)
            return BudgetDecision(decided, "resumed")
    if hours is None:
        if fallback_epochs is None:
            raise LandmarkConfigError("--hours", "the plans have no fixed schedule: give a time budget (--hours H) or --epochs N")
        return BudgetDecision(int(fallback_epochs), "fixed")
    try:
        hours = float(hours)
    except (TypeError, ValueError):
        raise LandmarkConfigError("--hours", f"expected a number of hours, got {hours!r}") from None
    if not hours > 0:
        raise LandmarkConfigError("--hours", f"the time budget must be positive, got {hours:g}")
    step = time_training_steps(network, loss_function, optimizer, loader, prepare_batch, device)
    case = time_validation_case(validate_inferer, validate_dataset, getattr(network, "module", network), device)
    n_cases = len(validate_dataset) if isinstance(validate_dataset, Sized) else 0
    validation = case * n_cases
    epochs = _agree_across_ranks(epochs_for_budget(hours * 3600, iterations_per_epoch, step, validation, validations, max_epochs))
    predicted = run_seconds(epochs, iterations_per_epoch, step, validation, validations)
    logger.info(
        "training budget %.3g h: a step takes %.3f s (mean of %d after %d warm-up, data loading included), a validation %.1f s "
        "(%d cases x %.2f s) -> %d epochs x %d iterations, validating every %d epoch(s); predicted %.3g h",
        hours, step, TIMED_STEPS, WARMUP_STEPS, validation, n_cases, case, epochs, iterations_per_epoch,
        validation_interval(epochs, validations), predicted / 3600,
    )
    return BudgetDecision(epochs, "measured", step, validation, n_cases)


def budgeted_epochs(*args, **kwargs) -> int:
    """``decide_epochs(...).epochs``: what train.json's ``epochs`` id evaluates."""
    return decide_epochs(*args, **kwargs).epochs
