"""What the benchmarks ran on, for the tables they write, and how long the evaluator took."""

import os
import platform
import re
import subprocess
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
    from scripts.precision import native_bfloat16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = "native bfloat16" if native_bfloat16(torch.device("cpu")) else "no native bfloat16"
    return f"{cpu_model()} ({bf16}), {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


ENVIRONMENT_PROBE = """
import importlib.metadata as m
def v(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "absent"
print(", ".join(f"{p} {v(p)}" for p in ("torch", "monai", "scipy", "itk", "monailabel")))
"""


def environment_description(python: str) -> str:
    """The packages that decide a bundle command's start-up, as installed for ``python``."""
    probe = subprocess.run([python, "-c", ENVIRONMENT_PROBE], capture_output=True, text=True)
    return probe.stdout.strip() or f"unknown ({probe.stderr.strip()[-200:]})"


ENGINE_TIME = re.compile(r"LandmarkEvaluator - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)")


def evaluator_seconds(log: str) -> float:
    """The evaluator's own run time (ignite's "Engine run finished" line): model work without process start-up;
    NaN for a log without one."""
    found = ENGINE_TIME.search(log)
    if found is None:
        return float("nan")
    hours, minutes, seconds = found.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
