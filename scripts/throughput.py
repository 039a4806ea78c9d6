"""Training throughput: the data-loader worker count chosen from the machine, and how long each step waits for data.

The worker count is a property of the machine, not of the dataset, so it is decided when training starts
(``num_workers`` of train.json is ``{"_target_": "scripts.throughput.training_workers"}``) and never written into
plans.json or the configs: re-planning the same data on another machine writes the same files.

Deterministic preprocessing (reading, reorientation, resampling, normalisation) is cached once by
train.json's CacheDataset (read in place, without a per-sample copy: ``copy_cache`` false); a worker (or, below 4
cores, the training process) only runs the random part (crop, affine, elastic deformation, intensity augmentation,
heatmap targets), about a tenth of a 2-core CPU training step (the v1 coarse run's log).
"""

from __future__ import annotations

import logging
import os
import time

from ignite.engine import Events

logger = logging.getLogger(__name__)

MAX_WORKERS = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or ``taskset``'s share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def training_workers(cores: int | None = None) -> int:
    """Data-loader worker processes for training on a machine with ``cores`` cores (default: this one's).

    One per four cores, at most 8, and none (augmentation in the training process, between steps) below 4
    cores: on a CPU the network step takes every core, and a worker process on the same 2 cores preempts
    the training threads, which then wait for each other. Measured here (2 cores, bfloat16, 10 steps):
    fine stage 0.407 s per step inline against 0.480 s with one worker, coarse 0.453 against 0.457
    (bench/training_speed.py --_one; its table in docs/benchmarks.md gets these rows when next rerun). A GPU
    machine's step is short and its cores many, so it gets workers.
    Logged, so a training log says what it ran with."""
    count = available_cores() if cores is None else int(cores)
    workers = max(0, min(MAX_WORKERS, count // 4))
    if cores is None:
        logger.info("data loading: %d worker process(es) for %d available core(s)", workers, count)
    return workers


class DataWaitTimer:
    """Measures the share of each training iteration spent waiting for the next batch and logs it per epoch.

    Ignite fires GET_BATCH_STARTED / GET_BATCH_COMPLETED around ``next(dataloader)``; the time between them
    is what the step waited for data (with workers, only what they had not prepared ahead). The iteration
    time runs from one GET_BATCH_STARTED to the next, so it includes handlers. ``wait`` and ``total`` hold
    the seconds of the current epoch; ``shares`` the share of every finished epoch."""

    def __init__(self):
        self.wait = 0.0
        self.total = 0.0
        self.shares: list[float] = []
        self._batch_started = None
        self._iteration_started = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _reset(self, engine=None) -> None:
        self.wait = self.total = 0.0

    def _get_batch_started(self, engine=None) -> None:
        self._batch_started = self._iteration_started = time.perf_counter()

    def _get_batch_completed(self, engine=None) -> None:
        if self._batch_started is not None:
            self.wait += time.perf_counter() - self._batch_started

    def _iteration_completed(self, engine=None) -> None:
        if self._iteration_started is not None:
            self.total += time.perf_counter() - self._iteration_started

    @property
    def share(self) -> float:
        """Waiting time / iteration time of the current (or just finished) epoch; 0 before any iteration."""
        return self.wait / self.total if self.total > 0 else 0.0

    def _log(self, engine) -> None:
        self.shares.append(self.share)
        iterations = max(engine.state.epoch_length or 1, 1)
        logger.info("epoch %d: %.3f s per iteration, %.1f%% of it waiting for data", engine.state.epoch, self.total / iterations,
                    100 * self.share)
