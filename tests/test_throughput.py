"""Worker count from the machine (never written into the configs) and the data-wait share of a training step."""

import json
import logging
import time
from pathlib import Path

import pytest
from ignite.engine import Engine

from scripts.throughput import DataWaitTimer, training_workers

PROJECT = Path(__file__).resolve().parent.parent


def test_worker_count_follows_the_cores_and_is_chosen_at_run_time(caplog):
    assert [training_workers(n) for n in (1, 2, 4, 7, 8, 16, 64)] == [0, 0, 1, 1, 2, 4, 8]
    with caplog.at_level(logging.INFO, logger="scripts.throughput"):
        workers = training_workers()
    assert 0 <= workers <= 8 and "worker process(es) for" in caplog.text
    train = json.loads((PROJECT / "configs" / "train.json").read_text())
    assert train["num_workers"] == {"_target_": "scripts.throughput.training_workers"} and train["precision"] == "auto"


def test_data_wait_share_of_a_real_ignite_loop(caplog):
    """Batches take 50 ms to arrive, steps 150 ms: a quarter of each iteration waits for data."""

    def batches():
        for i in range(6):
            time.sleep(0.05)
            yield i

    engine = Engine(lambda e, batch: time.sleep(0.15))
    timer = DataWaitTimer()
    timer.attach(engine)
    with caplog.at_level(logging.INFO, logger="scripts.throughput"):
        engine.run(batches(), max_epochs=1, epoch_length=6)
    assert timer.share == pytest.approx(0.25, abs=0.1)
    assert timer.shares == [timer.share] and timer.total == pytest.approx(1.2, rel=0.5)
    assert "% of it waiting for data" in caplog.text
