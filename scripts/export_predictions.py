"""Export this bundle's predictions to other pipelines' formats, to compare with them.

    python -m scripts.export_predictions PREDICTIONS_DIR --format nnlandmark --output OUT_DIR
    python -m scripts.export_predictions PREDICTIONS_DIR --format labelmap --output OUT_DIR [--radius_mm 2]

Reads every ``<stem>.json`` that inference.json wrote under PREDICTIONS_DIR.
- ``nnlandmark``: ``OUT_DIR/<stem>.json`` = {name: [i, j, k]} (voxel index in the input image, as
  nnLandmark's per-case predictions) and ``OUT_DIR/all_landmarks_voxel.json`` = {stem: {name: [i, j, k]}}.
  Landmarks reported not found are left out, as nnLandmark leaves out absent ones.
- ``labelmap``: ``OUT_DIR/<stem>.nii.gz``, a label image on the input image's grid with a blob (sphere of
  ``--radius_mm``) per found landmark, label = landmark index + 1 in the model's order (written to
  ``OUT_DIR/labels.json``), the nnU-Net raw convention.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts.errors import LandmarkDataError, cli_main
from scripts.atomic import atomic_write_text


def prediction_records(folder: Path) -> dict[str, dict]:
    """{stem (relative path without .json): record} for every inference output under folder."""
    records = {}
    for path in sorted(folder.rglob("*.json")):
        if path.name.endswith(".mrk.json"):
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("coordinate_system") == "RAS" and "landmarks" in record and "image" in record:
            records[path.relative_to(folder).as_posix()[: -len(".json")]] = record
    if not records:
        raise LandmarkDataError(folder, "no prediction <stem>.json files (written by configs/inference.json) found")
    return records


def export_nnlandmark(records: dict[str, dict], output: Path) -> None:
    table = {}
    for stem, record in records.items():
        voxels = {name: entry["voxel"] for name, entry in record["landmarks"].items() if entry.get("found", True)}
        table[stem] = voxels
        atomic_write_text(output / f"{stem}.json", json.dumps(voxels, indent=2) + "\n")
    atomic_write_text(output / "all_landmarks_voxel.json", json.dumps(table, indent=2) + "\n")


def export_labelmaps(records: dict[str, dict], output: Path, radius_mm: float) -> None:
    from scripts.serving import write_landmark_label

    names = list(next(iter(records.values()))["landmarks"])
    for stem, record in records.items():
        (output / stem).parent.mkdir(parents=True, exist_ok=True)
        write_landmark_label(record["image"], record, str(output / f"{stem}.nii.gz"), radius_mm, names)
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(names)}}
    atomic_write_text(output / "labels.json", json.dumps({"labels": labels}, indent=2) + "\n")


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.export_predictions", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--format", required=True, choices=("nnlandmark", "labelmap"))
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--radius_mm", type=float, default=2.0)
    args = parser.parse_args(argv)
    records = prediction_records(args.predictions)
    if args.format == "nnlandmark":
        export_nnlandmark(records, args.output)
    else:
        export_labelmaps(records, args.output, args.radius_mm)
    print(f"exported {len(records)} case(s) to {args.output} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
