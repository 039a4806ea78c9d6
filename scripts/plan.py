"""Plan a landmark dataset and write a complete, runnable bundle.

    python -m scripts.plan DATALIST --bundle_root NEW_DIR [--budget cpu|gpu] [--memory_gb N] [--force]
                           [--contrast_randomization auto|on|off]

Fingerprint -> plans (every number with its reason, configs/plans.json) -> the bundle's configs.
Running it twice on the same datalist writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from scripts.bundle_configs import LOGGING_CONF, evaluate_config, inference_config, multi_gpu_train_config, train_coarse_config, train_config
from scripts.errors import LandmarkConfigError, LandmarkDataError, cli_main
from scripts.atomic import atomic_write_text
from scripts.data import load_datalist
from scripts.metadata import build_metadata

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_SUFFIXES = (".pt", ".ts", ".pth")
DEFAULT_NAME = "landmark_detection"


def dumps(data) -> str:
    return json.dumps(data, indent=4) + "\n"


def bundle_reference(path: str, bundle_root: Path) -> str:
    """A path inside the bundle is written relative to ``@bundle_root`` (the bundle can move); others absolute."""
    path = Path(path).resolve()
    try:
        relative = path.relative_to(bundle_root.resolve())
    except ValueError:
        return str(path)
    return f"$@bundle_root + '/{relative.as_posix()}'"


def has_checkpoint(bundle_root: Path) -> bool:
    models = bundle_root / "models"
    return models.is_dir() and any(p.suffix in CHECKPOINT_SUFFIXES for p in models.rglob("*") if p.is_file())


def make_bundle_plans(datalist_file: str, budget: str = "cpu", memory_gb: float | None = None, contrast: str = "auto") -> dict:
    from scripts.planning.decisions import make_plans
    from scripts.planning.fingerprint import cached_fingerprint

    datalist = load_datalist(datalist_file)
    plans = make_plans(cached_fingerprint(datalist), budget=budget, memory_gb=memory_gb, contrast=contrast)
    descriptions = {n: d for n, d in datalist.descriptions.items() if d}
    if descriptions:
        plans["configuration"]["landmark_descriptions"] = descriptions
    return plans


def write_configs(bundle_root: Path, plans: dict, datalist_file: str, default_input: str | None = None, name: str | None = None) -> list[Path]:
    configs = bundle_root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    datalist = bundle_reference(datalist_file, bundle_root)
    existing_metadata = configs / "metadata.json"
    existing = json.loads(existing_metadata.read_text()) if existing_metadata.exists() else None
    configuration = plans["configuration"]
    files = {
        "plans.json": dumps(plans),
        "train.json": dumps(train_config(datalist, configuration)),
        "evaluate.json": dumps(evaluate_config(configuration)),
        "inference.json": dumps(inference_config(bundle_reference(default_input, bundle_root) if default_input else datalist, configuration)),
        "metadata.json": dumps(build_metadata(configuration, existing, name=name)),
        "multi_gpu_train.json": dumps(multi_gpu_train_config()),
        "logging.conf": LOGGING_CONF,
    }
    if configuration.get("cascade"):
        files["train_coarse.json"] = dumps(train_coarse_config(configuration))
    elif (configs / "train_coarse.json").exists():  # re-planned without a cascade: no coarse stage to train
        (configs / "train_coarse.json").unlink()
    written = []
    for name, text in files.items():
        atomic_write_text(configs / name, text)
        written.append(configs / name)
    return written


def copy_bundle_files(bundle_root: Path) -> None:
    """scripts/, LICENSE, a docs stub, models/ and the top-level metadata.json link, for a bundle elsewhere."""
    if bundle_root.resolve() != PROJECT_ROOT:
        target = bundle_root / "scripts"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(PROJECT_ROOT / "scripts", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copyfile(PROJECT_ROOT / "LICENSE", bundle_root / "LICENSE")
    (bundle_root / "models").mkdir(exist_ok=True)
    readme = bundle_root / "docs" / "README.md"
    if not readme.exists():
        readme.parent.mkdir(exist_ok=True)
        atomic_write_text(readme, f"# {bundle_root.resolve().name}\n\nPlanned by `python -m scripts.plan`; see configs/plans.json for every decision and its reason.\n")
    link = bundle_root / "metadata.json"
    if not link.is_symlink():
        if link.exists():
            link.unlink()
        link.symlink_to(os.path.join("configs", "metadata.json"))


def plan_bundle(datalist: str, bundle_root: str, budget: str = "cpu", memory_gb: float | None = None, force: bool = False,
                default_input: str | None = None, name: str | None = None, contrast: str = "auto") -> dict:
    root = Path(bundle_root)
    if has_checkpoint(root) and (root / "configs" / "train.json").exists() and not force:
        raise LandmarkConfigError(root, "models/ holds a checkpoint; refusing to overwrite its configs (use --force)")
    plans = make_bundle_plans(datalist, budget, memory_gb, contrast)
    root.mkdir(parents=True, exist_ok=True)
    write_configs(root, plans, datalist, default_input, name)
    copy_bundle_files(root)
    return plans


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("datalist", help="datalist JSON (shared/DESIGN.md §2)")
    parser.add_argument("--bundle_root", required=True, help="folder to write the bundle into")
    parser.add_argument("--budget", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--memory_gb", type=float, default=None, help="memory budget (RAM for cpu, VRAM for gpu)")
    parser.add_argument("--contrast_randomization", choices=("auto", "on", "off"), default="auto",
                        help="random per-tissue MRI contrasts in training (auto: MR with < 20 distinct subjects; docs/planner.md)")
    parser.add_argument("--force", action="store_true", help="overwrite the configs of a bundle that has checkpoints")
    parser.add_argument("--default_input", default=None, help="inference.json's default --input (default: the datalist)")
    parser.add_argument("--name", default=None, help=f"bundle name in metadata.json (default: kept, else {DEFAULT_NAME})")
    args = parser.parse_args(argv)
    plans = plan_bundle(args.datalist, args.bundle_root, args.budget, args.memory_gb, args.force, args.default_input, args.name,
                        args.contrast_randomization)
    c = plans["configuration"]
    length = f"{c['epochs']} epochs" if c.get("epochs") else f"epochs for {c['training_hours']:g} h"
    print(
        f"planned {len(c['landmark_names'])} landmarks ({args.budget}): spacing {c['spacing']} mm, patch {c['patch_size']}, "
        f"batch {c['batch_size']}, filters {c['filters']}, sigma {c['sigma_mm']} mm = {c['sigma_voxels']} voxels, "
        f"{length} x {c['iterations_per_epoch']} iterations -> {args.bundle_root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
