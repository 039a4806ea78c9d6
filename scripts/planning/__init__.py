"""The auto-planner core: dataset fingerprint -> decisions (each with its reason) -> plans.

scripts/plan.py turns the plans into the bundle's configs; docs/planner.md lists every rule.
"""

from scripts.planning.decisions import make_plans
from scripts.planning.fingerprint import fingerprint_dataset
from scripts.planning.memory import estimate_inference_memory_bytes, estimate_training_memory_bytes

__all__ = ["fingerprint_dataset", "make_plans", "estimate_training_memory_bytes", "estimate_inference_memory_bytes"]
