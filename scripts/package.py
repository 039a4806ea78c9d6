"""Build the model-zoo zip: ``<name>_v<version>.zip`` with the bundle name as its top folder.

    python -m scripts.package [--bundle_root .] [--output_dir dist] [--torchscript]

The zip holds what a user of the bundle needs and nothing else: configs/, scripts/ (no caches), docs/,
LICENSE, metadata.json (a file, not the repository's symlink), large_files.yml, and the weights it lists
(models/model.pt, models/coarse_model.pt, models/model.ts when exported), and models/calibration.json
(error radii, configuration check) when the model was calibrated. Every weight must match its
large_files.yml sha256, so the zip can never ship weights other than the ones the manifest promises.
No tests/, bench/, data, predictions, training states or fold folders.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

from scripts.errors import LandmarkDataError, cli_main
from scripts.large_files import sha256_of

INCLUDED_FOLDERS = ("configs", "scripts", "docs")
INCLUDED_FILES = ("LICENSE", "large_files.yml", "models/calibration.json")
SKIPPED_PARTS = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")


def listed_weights(bundle_root: Path) -> list[tuple[str, str]]:
    """(path, sha256) of each large_files.yml entry (the manifest is flat YAML; read without a YAML dependency)."""
    manifest = bundle_root / "large_files.yml"
    if not manifest.is_file():
        raise LandmarkDataError(manifest, "missing; run python -m scripts.large_files first")
    text = manifest.read_text()
    paths = re.findall(r'path:\s*"([^"]+)"', text)
    hashes = re.findall(r'hash_val:\s*"([0-9a-f]+)"', text)
    if len(paths) != len(hashes) or not paths:
        raise LandmarkDataError(manifest, "every entry needs a path and a hash_val")
    return list(zip(paths, hashes))


def bundle_files(bundle_root: Path) -> list[tuple[Path, str]]:
    """(file on disk, path inside the bundle) for everything the zip carries."""
    files = []
    for folder in INCLUDED_FOLDERS:
        for path in sorted((bundle_root / folder).rglob("*")):
            if path.is_file() and not any(part in SKIPPED_PARTS for part in path.parts) and path.suffix != ".pyc":
                files.append((path, path.relative_to(bundle_root).as_posix()))
    for name in INCLUDED_FILES:
        if (bundle_root / name).is_file():
            files.append((bundle_root / name, name))
    files.append((bundle_root / "configs" / "metadata.json", "metadata.json"))
    for relative, expected in listed_weights(bundle_root):
        path = bundle_root / relative
        if not path.is_file():
            raise LandmarkDataError(path, "listed in large_files.yml but missing")
        if sha256_of(path) != expected:
            raise LandmarkDataError(path, "sha256 differs from large_files.yml; run python -m scripts.large_files after retraining")
        files.append((path, relative))
        sidecar = path.with_suffix(".json")  # the weights' identity (scripts.model_files): small, shipped beside them
        if path.suffix == ".pt" and sidecar.is_file():
            files.append((sidecar, Path(relative).with_suffix(".json").as_posix()))
    return files


def build_zip(bundle_root: Path, output_dir: Path) -> Path:
    metadata = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    name, version = metadata["name"], metadata["version"]
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{name}_v{version}.zip"
    handle, temporary = tempfile.mkstemp(dir=output_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path, relative in bundle_files(bundle_root):
                archive.write(path, f"{name}/{relative}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def export_torchscript(bundle_root: Path) -> None:
    """models/model.ts from models/model.pt through MONAI's ckpt_export, then large_files.yml again."""
    import subprocess

    subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", "models/model.ts",
                    "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
                    "--bundle_root", "."], cwd=bundle_root, check=True)  # a plain state dict: no --key_in_ckpt (as the zoo's CI)
    subprocess.run([sys.executable, "-m", "scripts.large_files", "--bundle_root", "."], cwd=bundle_root, check=True)


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=".", type=Path)
    parser.add_argument("--output_dir", default="dist", type=Path)
    parser.add_argument("--torchscript", action="store_true", help="export models/model.ts first and ship it too")
    args = parser.parse_args(argv)
    bundle_root = args.bundle_root.resolve()
    if args.torchscript:
        export_torchscript(bundle_root)
    target = build_zip(bundle_root, args.output_dir)
    with zipfile.ZipFile(target) as archive:
        count = len(archive.namelist())
    print(f"wrote {target} ({count} files, {target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
