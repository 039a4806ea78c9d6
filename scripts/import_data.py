"""Turn landmarks kept in another shape into this bundle's datalist (shared/DESIGN.md §2).

    python -m scripts.import_data SOURCE --format nnlandmark --output DATALIST.json
    python -m scripts.import_data SOURCE --format slicer --output DATALIST.json [--markups MARKUPS_DIR]
    python -m scripts.import_data TABLE.csv --format table --images IMAGES_DIR --output DATALIST.json [--coordinates ras|lps|voxel]

- ``nnlandmark``: an nnU-Net raw dataset as nnLandmark uses it: dataset.json ("labels": name -> id,
  "file_ending"), imagesTr/ (+ imagesTs/) with channel suffixes (CASE_0000...), labelsTr/ with one small
  blob per landmark. Coordinates come from all_landmarks_voxel.json (case -> name -> voxel index (i, j, k)
  of the NIfTI, mapped to world through the image's affine) when it is there, else from each blob's
  centre of mass in world space. A missing blob or entry is an unannotated landmark, not an error.
- ``slicer``: a folder of scans with markups of the same stem beside them (.mrk.json or .fcsv), or in
  ``--markups``. Scans without markups become testing cases.
- ``table``: a CSV with columns case, landmark, x, y, z (and optionally ``coordinates`` per row: RAS, LPS
  or voxel), images found in ``--images`` by stem (the case column).

World coordinates are RAS millimetres; image paths are written relative to the datalist's folder.
Run ``python -m scripts.check DATALIST.json`` afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from scripts.data import IMAGE_SUFFIXES, image_stem
from scripts.errors import LandmarkDataError
from scripts.image_io import read_image_header
from scripts.landmark_io import atomic_write_text, voxel_to_world

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)) if folder.is_dir() else []


def _stem(path: Path) -> str:
    return image_stem(str(path))


def _relative(path: Path, output: Path) -> str:
    return os.path.relpath(path.resolve(), output.resolve().parent)


def _rounded(point) -> list[float]:
    return [round(float(v), 4) for v in point]


# ----------------------------------------------------------------------------- nnLandmark / nnU-Net raw


def _cases_by_channel(folder: Path, file_ending: str) -> dict[str, list[Path]]:
    """case id -> channel files in channel order (CASE_0000, CASE_0001, ...)."""
    cases: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in _images(folder):
        name = path.name[: -len(file_ending)] if path.name.endswith(file_ending) else _stem(path)
        match = CHANNEL_SUFFIX.match(name)
        case, channel = (match["case"], int(match["channel"])) if match else (name, 0)
        cases[case].append((channel, path))
    return {case: [p for _, p in sorted(files)] for case, files in sorted(cases.items())}


def blob_centres(label_file: Path, label_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """World (RAS) centre of mass of each landmark's blob; landmarks without a blob are left out."""
    header = read_image_header(str(label_file))
    labels = np.asarray(nib.load(str(label_file)).dataobj)
    centres = {}
    for name, value in label_ids.items():
        voxels = np.argwhere(labels == value)
        if len(voxels):
            centres[name] = voxel_to_world(header.affine, voxels.mean(axis=0))
    return centres


def import_nnlandmark(source: Path, output: Path) -> dict:
    dataset_file = source / "dataset.json"
    if not dataset_file.is_file():
        raise LandmarkDataError(source, "no dataset.json: not an nnU-Net/nnLandmark raw dataset folder")
    dataset = json.loads(dataset_file.read_text())
    label_ids = {str(k): int(v) for k, v in dataset.get("labels", {}).items() if int(v) != 0}
    if not label_ids:
        raise LandmarkDataError(dataset_file, "'labels' names no landmark (only background)")
    names = sorted(label_ids, key=label_ids.get)
    file_ending = dataset.get("file_ending", ".nii.gz")
    voxel_file = source / "all_landmarks_voxel.json"
    voxel_table = json.loads(voxel_file.read_text()) if voxel_file.is_file() else None
    training, testing = [], []
    for case, channels in _cases_by_channel(source / "imagesTr", file_ending).items():
        image = channels[0]
        if voxel_table is not None:
            affine = read_image_header(str(image)).affine
            given = voxel_table.get(case, {})
            landmarks = {n: voxel_to_world(affine, np.asarray(given[n], dtype=np.float64)) for n in names if given.get(n) is not None}
        else:
            label_file = source / "labelsTr" / f"{case}{file_ending}"
            if not label_file.is_file():
                raise LandmarkDataError(label_file, f"label map of training case {case} not found (and no all_landmarks_voxel.json)")
            landmarks = blob_centres(label_file, label_ids)
        training.append({"image": [_relative(c, output) for c in channels] if len(channels) > 1 else _relative(image, output),
                         "landmarks": {n: _rounded(landmarks[n]) for n in names if n in landmarks}})
    for case, channels in _cases_by_channel(source / "imagesTs", file_ending).items():
        testing.append({"image": [_relative(c, output) for c in channels] if len(channels) > 1 else _relative(channels[0], output)})
    if not training:
        raise LandmarkDataError(source / "imagesTr", f"no training images ending in {file_ending}")
    return {"landmark_names": names, "training": training, **({"testing": testing} if testing else {})}


# ----------------------------------------------------------------------------- Slicer folders


def import_slicer(source: Path, output: Path, markups: Path | None = None) -> dict:
    markup_folder = markups or source
    found = {}
    for path in sorted(markup_folder.iterdir()) if markup_folder.is_dir() else []:
        for suffix in (".mrk.json", ".fcsv"):
            if path.name.lower().endswith(suffix):
                found.setdefault(path.name[: -len(suffix)], path)
    training, testing = [], []
    for image in _images(source):
        markup = found.get(_stem(image))
        if markup is not None:
            training.append({"image": _relative(image, output), "landmarks": _relative(markup, output)})
        else:
            testing.append({"image": _relative(image, output)})
    if not training:
        raise LandmarkDataError(markup_folder, "no markups (.mrk.json or .fcsv) with the stem of a scan in " + str(source))
    return {"training": training, **({"testing": testing} if testing else {})}


# ----------------------------------------------------------------------------- tables


def import_table(table: Path, output: Path, images: Path, coordinates: str = "ras") -> dict:
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    required = {"case", "landmark", "x", "y", "z"}
    if not rows or not required <= set(rows[0]):
        raise LandmarkDataError(table, f"needs the columns {', '.join(sorted(required))} (optional: coordinates)")
    by_stem = {_stem(p): p for p in _images(images)}
    cases: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    names: list[str] = []
    for line, row in enumerate(rows, start=2):
        case, name = row["case"].strip(), row["landmark"].strip()
        if case not in by_stem:
            raise LandmarkDataError(table, f"line {line}: no image for case {case!r} in {images}")
        if name in cases[case]:
            raise LandmarkDataError(table, f"line {line}: duplicate landmark {name!r} for case {case!r}")
        try:
            point = np.array([float(row[a]) for a in "xyz"])
        except ValueError:
            raise LandmarkDataError(table, f"line {line}: cannot parse coordinates {[row[a] for a in 'xyz']}") from None
        system = (row.get("coordinates") or coordinates).strip().lower()
        if system == "lps":
            point = point * LPS_TO_RAS
        elif system == "voxel":
            point = voxel_to_world(read_image_header(str(by_stem[case])).affine, point)
        elif system != "ras":
            raise LandmarkDataError(table, f"line {line}: coordinates {system!r} (expected ras, lps or voxel)")
        cases[case][name] = point
        names += [name] if name not in names else []
    training = [{"image": _relative(by_stem[case], output), "landmarks": {n: _rounded(p) for n, p in points.items()}}
                for case, points in sorted(cases.items())]
    return {"landmark_names": names, "training": training}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.import_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--format", required=True, choices=("nnlandmark", "slicer", "table"))
    parser.add_argument("--output", required=True, type=Path, help="datalist JSON to write")
    parser.add_argument("--markups", type=Path, default=None, help="slicer: folder of markups, matched to scans by stem")
    parser.add_argument("--images", type=Path, default=None, help="table: folder of images named by the case column")
    parser.add_argument("--coordinates", default="ras", choices=("ras", "lps", "voxel"), help="table: default coordinate system")
    args = parser.parse_args(argv)
    try:
        if args.format == "nnlandmark":
            datalist = import_nnlandmark(args.source, args.output)
        elif args.format == "slicer":
            datalist = import_slicer(args.source, args.output, args.markups)
        else:
            if args.images is None:
                raise SystemExit("error: --format table needs --images (the folder of scans named by the case column)")
            datalist = import_table(args.source, args.output, args.images, args.coordinates)
    except LandmarkDataError as error:
        raise SystemExit(f"error: {error}") from None
    atomic_write_text(args.output, json.dumps(datalist, indent=2) + "\n")
    n = len(datalist["training"])
    print(f"wrote {args.output}: {n} annotated case(s), {len(datalist.get('testing', []))} unannotated; "
          f"next: python -m scripts.check {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
