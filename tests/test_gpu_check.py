"""bench/gpu_check.py's CPU dry run: the planner's GPU plans built and stepped, with the image readers and ignite
unimportable, as on the lent GPU machine (torch and MONAI only). One thread: ~30 s on a busy 2-core machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parent.parent

WITHOUT_READERS = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"SimpleITK", "nibabel", "ignite", "itk", "scipy"}:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)")
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_check_dry_run_on_cpu_without_image_readers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", WITHOUT_READERS, str(PROJECT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                             "--steps", "1", "--output", str(tmp_path / "rows.json")], cwd=PROJECT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {row["dataset"] for row in rows} == {"synthetic", "afids"}
    for row in rows:
        assert row["float32"]["step_s"] > 0 and row["sliding_window"]["seconds"] > 0
        assert row["estimated_training_bytes"] > 0 and row["estimated_inference_bytes"] > 0
        assert row["landmarks"] == (5 if row["dataset"] == "synthetic" else 32)
    assert "training step float32" in result.stdout and "sliding window over" in result.stdout


def test_gpu_check_says_when_there_is_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    result = subprocess.run([sys.executable, str(PROJECT / "bench" / "gpu_check.py")], cwd=PROJECT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --device cuda: no CUDA device here")
