"""What the benchmarks ran on, for the tables they write, and how long the evaluator took."""

import os
import platform
import re
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


ENGINE_TIME = re.compile(r"LandmarkEvaluator - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)")


def evaluator_seconds(log: str) -> float:
    """The evaluator's own run time (ignite's "Engine run finished" line): model work without process start-up."""
    hours, minutes, seconds = ENGINE_TIME.search(log).groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
