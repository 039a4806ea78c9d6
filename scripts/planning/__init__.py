"""The auto-planner core: dataset fingerprint -> decisions (each with its reason) -> plans.

scripts/plan.py turns the plans into the bundle's configs; docs/planner.md lists every rule.

The names below are imported on first use: ``scripts.planning.decisions`` and ``.memory`` need only numpy
and torch, so a machine without the image readers (SimpleITK, which ``fingerprint`` needs) can still plan
from a stored fingerprint (bench/gpu_check.py).
"""

import importlib

_HOMES = {
    "make_plans": "scripts.planning.decisions",
    "fingerprint_dataset": "scripts.planning.fingerprint",
    "estimate_training_memory_bytes": "scripts.planning.memory",
    "estimate_inference_memory_bytes": "scripts.planning.memory",
}

__all__ = ["fingerprint_dataset", "make_plans", "estimate_training_memory_bytes", "estimate_inference_memory_bytes"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
