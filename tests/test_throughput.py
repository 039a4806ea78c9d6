"""Worker count from the machine (never written into the configs), the data-wait share of a training step, and the
training cache that random augmentation reads without copying."""

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import CacheDataset, MetaTensor

from scripts.throughput import DataWaitTimer, training_workers
from scripts.transforms import RandLandmarkCropd

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


def _same(a, b) -> bool:
    """Equal values, arrays, tensors (with their affine and metadata) and containers of them, recursively."""
    if isinstance(a, MetaTensor) or isinstance(b, MetaTensor):
        return (isinstance(a, MetaTensor) and isinstance(b, MetaTensor) and torch.equal(a.as_tensor(), b.as_tensor())
                and _same(a.meta, b.meta) and _same(a.applied_operations, b.applied_operations))
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return type(a) is type(b) and a.shape == b.shape and bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def test_the_landmark_crop_copies_its_patch_out_of_its_input():
    image = MetaTensor(torch.arange(10 * 12 * 8, dtype=torch.float32).reshape(1, 10, 12, 8), affine=torch.eye(4))
    data = {"image": image, "landmarks_world": np.array([[5.0, 6.0, 4.0]])}
    before = copy.deepcopy(data)
    crop = RandLandmarkCropd("image", roi_size=(6, 6, 6))
    crop.set_random_state(0)
    patch = crop(data)["image"]
    patch.add_(1000.0)  # a later in-place transform
    assert patch.shape == (1, 6, 6, 6) and patch.applied_operations and _same(data, before)


def test_cached_training_cases_stay_unchanged_by_augmentation(afids_bundle_dir):
    """train.json caches the loaded, resampled case once and hands the cache itself (copy_cache false, no per-sample
    deep copy) to the random transforms: 40 augmented samples, every transform of train#augmentation drawn, leave the
    cached image, tissue labels, landmarks, affine, metadata and applied operations exactly as they were."""
    parser = ConfigParser()
    parser.read_config(str(PROJECT / "configs" / "train.json"))
    parser.update({"bundle_root": str(afids_bundle_dir)})
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, CacheDataset) and dataset.copy_cache is False and len(dataset) == 1
    dataset.transform.set_random_state(seed=0)
    cached = dataset._cache[0]
    before = copy.deepcopy(cached)
    samples = [dataset[0] for _ in range(40)]
    assert _same(cached, before)
    assert samples[0]["image"].shape[1:] == tuple(parser.get_parsed_content("patch_size"))
    assert not torch.equal(samples[0]["image"], samples[1]["image"])  # the samples are random, the cache is not
