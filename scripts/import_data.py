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
  or voxel), images found in ``--images`` by stem (the case column). Read by scripts.tables: a UTF-8
  byte-order mark, semicolon or tab delimiters and decimal commas (Excel) are fine; ``label`` may name the
  landmark column and ``r,a,s`` (RAS) or ``l,p,s`` (LPS) the coordinates, as 3D Slicer exports them.
- nnU-Net v1 (Medical Segmentation Decathlon) dataset.json maps ids to names (``{"0": "background", "1":
  "AC"}``), v2 names to ids (``{"background": 0, "AC": 1}``): both are read. Malformed metadata
  (dataset.json, all_landmarks_voxel.json, a table) stops with one line naming the file.

World coordinates are RAS millimetres; image paths are written relative to the datalist's folder.
Run ``python -m scripts.check DATALIST.json`` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from scripts.data import IMAGE_SUFFIXES, image_stem
from scripts.errors import LandmarkConfigError, LandmarkDataError, cli_main
from scripts.image_io import read_image_header
from scripts.atomic import atomic_write_text
from scripts.geometry import lps_to_ras, voxel_to_world
from scripts.landmark_names import LandmarkNames, Point
from scripts.tables import coordinate_columns, read_table, read_text

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


def _voxel(voxel_file: Path, case: str, name: str, value) -> np.ndarray:
    try:
        voxel = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        voxel = np.empty(0)
    if voxel.shape != (3,) or not np.isfinite(voxel).all():
        raise LandmarkDataError(voxel_file, f"{case}/{name}: expected a voxel index [i, j, k], got {value!r}")
    return voxel


def blob_centres(label_file: Path, label_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """World (RAS) centre of mass of each landmark's blob; landmarks without a blob are left out."""
    header = read_image_header(str(label_file))
    try:
        labels = np.asarray(nib.load(str(label_file)).dataobj)
    except Exception as error:  # nibabel raises several types for a corrupt file
        raise LandmarkDataError(label_file, f"cannot read label map: {str(error).strip().splitlines()[0][:200]}") from None
    centres = {}
    for name, value in label_ids.items():
        voxels = np.argwhere(labels == value)
        if len(voxels):
            centres[name] = voxel_to_world(header.affine, voxels.mean(axis=0))
    return centres


def _json_file(path: Path, what: str):
    """A JSON document, or LandmarkDataError naming the file (missing, unreadable, invalid JSON)."""
    try:
        return json.loads(read_text(path, what)[0])
    except json.JSONDecodeError as error:
        raise LandmarkDataError(path, f"invalid JSON: {error}") from None


def _whole_number(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def label_ids(dataset_file: Path, labels) -> dict[str, int]:
    """{landmark name: label value} from a dataset.json ``labels``, background left out.

    nnU-Net v2 maps names to ids (``{"background": 0, "AC": 1}``), nnU-Net v1 / the Medical Segmentation
    Decathlon ids to names (``{"0": "background", "1": "AC"}``); both are read. Region lists (v2's
    ``"tumor": [1, 2]``) do not name one landmark and are refused. Raises LandmarkDataError(dataset_file)."""
    if not isinstance(labels, dict) or not labels:
        raise LandmarkDataError(dataset_file, "'labels' must be an object of landmark names and label values")
    if all(_whole_number(v) is not None for v in labels.values()):  # v2: name -> id
        pairs = {str(name): _whole_number(value) for name, value in labels.items()}
    elif all(_whole_number(k) is not None and isinstance(v, str) for k, v in labels.items()):  # v1: id -> name
        pairs = {name: _whole_number(key) for key, name in labels.items()}
        if len(pairs) != len(labels):
            raise LandmarkDataError(dataset_file, "'labels' (nnU-Net v1 form, id -> name) gives two ids the same name")
    else:
        bad = next(f"{k!r}: {v!r}" for k, v in labels.items() if _whole_number(v) is None)
        raise LandmarkDataError(dataset_file, f"'labels' must map names to whole numbers (nnU-Net v2) or numbers to names "
                                              f"(v1), got {bad}")
    ids = {name: value for name, value in pairs.items() if value != 0}
    if not ids:
        raise LandmarkDataError(dataset_file, "'labels' names no landmark (only background)")
    if len(set(ids.values())) != len(ids):
        raise LandmarkDataError(dataset_file, "'labels' gives two landmarks the same label value")
    return ids


def import_nnlandmark(source: Path, output: Path) -> dict:
    dataset_file = source / "dataset.json"
    if not dataset_file.is_file():
        raise LandmarkDataError(source, "no dataset.json: not an nnU-Net/nnLandmark raw dataset folder")
    dataset = _json_file(dataset_file, "dataset.json")
    if not isinstance(dataset, dict):
        raise LandmarkDataError(dataset_file, "must be a JSON object with 'labels'")
    ids = label_ids(dataset_file, dataset.get("labels"))
    names = sorted(ids, key=ids.get)
    file_ending = dataset.get("file_ending", ".nii.gz")
    if not isinstance(file_ending, str) or not file_ending:
        raise LandmarkDataError(dataset_file, f"'file_ending' must be a suffix such as '.nii.gz', got {file_ending!r}")
    voxel_file = source / "all_landmarks_voxel.json"
    voxel_table = _json_file(voxel_file, "all_landmarks_voxel.json") if voxel_file.is_file() else None
    if voxel_table is not None and not (isinstance(voxel_table, dict) and all(isinstance(v, dict) for v in voxel_table.values())):
        raise LandmarkDataError(voxel_file, "must be an object {case: {landmark: [i, j, k]}}")
    training, testing = [], []
    for case, channels in _cases_by_channel(source / "imagesTr", file_ending).items():
        image = channels[0]
        if voxel_table is not None:
            affine = read_image_header(str(image)).affine
            points = [Point(name, "", value, case) for name, value in voxel_table.get(case, {}).items() if value is not None]
            given = LandmarkNames(names, source=str(dataset_file)).resolve(points, f"{voxel_file} ({case})", "dataset.json's labels")
            landmarks = {n: voxel_to_world(affine, _voxel(voxel_file, case, n, point.position)) for n, point in given.items()}
        else:
            label_file = source / "labelsTr" / f"{case}{file_ending}"
            if not label_file.is_file():
                raise LandmarkDataError(label_file, f"label map of training case {case} not found (and no all_landmarks_voxel.json)")
            landmarks = blob_centres(label_file, ids)
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
    """A table of case, landmark, x, y, z[, coordinates] rows (scripts.tables) -> a datalist of training cases.

    ``landmark`` may be called ``label`` or ``name``; ``r,a,s``/``l,p,s`` columns instead of ``x,y,z`` fix the
    system for every row. ``coordinates`` (the default, or a per-row column): ras, lps or voxel (index of
    the image's voxel grid, mapped through its affine). Raises LandmarkDataError naming the file and line."""
    parsed = read_table(table)
    rows = parsed.rows
    header = [cell.lower() for cell in rows[0][1]] if rows else []
    found = coordinate_columns(header)
    name_column = next((c for c in ("landmark", "label", "name") if c in header), None)
    if "case" not in header or name_column is None or found is None:
        seen = ", ".join(rows[0][1]) if rows else "an empty file"
        raise LandmarkDataError(table, f"needs the columns case, landmark, x, y, z (optional: coordinates); found {seen}"
                                       + (" (one column: is the delimiter something other than comma, semicolon or tab?)"
                                          if len(header) == 1 else ""))
    axes, fixed = found
    column = {key: header.index(key) for key in ("case", name_column, *axes) if key in header}
    by_stem = {_stem(p): p for p in _images(images)}
    cases: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    names: list[str] = []
    for line, row in rows[1:]:
        cell = lambda key: row[column[key]] if column[key] < len(row) else ""  # noqa: E731
        case, name = cell("case"), cell(name_column)
        if case not in by_stem:
            raise LandmarkDataError(table, f"line {line}: no image for case {case!r} in {images}")
        if name in cases[case]:
            raise LandmarkDataError(table, f"line {line}: duplicate landmark {name!r} for case {case!r}")
        try:
            point = np.array([parsed.number(cell(a), f"line {line}") for a in axes])
        except LandmarkDataError:
            raise LandmarkDataError(table, f"line {line}: cannot parse coordinates {[cell(a) for a in axes]}") from None
        per_row = row[header.index("coordinates")] if "coordinates" in header and header.index("coordinates") < len(row) else ""
        system = (fixed or per_row or coordinates).strip().lower()
        if system == "lps":
            point = lps_to_ras(point)
        elif system == "voxel":
            point = voxel_to_world(read_image_header(str(by_stem[case])).affine, point)
        elif system != "ras":
            raise LandmarkDataError(table, f"line {line}: coordinates {system!r} (expected ras, lps or voxel)")
        cases[case][name] = point
        names += [name] if name not in names else []
    training = [{"image": _relative(by_stem[case], output), "landmarks": {n: _rounded(p) for n, p in points.items()}}
                for case, points in sorted(cases.items())]
    return {"landmark_names": names, "training": training}


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.import_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--format", required=True, choices=("nnlandmark", "slicer", "table"))
    parser.add_argument("--output", required=True, type=Path, help="datalist JSON to write")
    parser.add_argument("--markups", type=Path, default=None, help="slicer: folder of markups, matched to scans by stem")
    parser.add_argument("--images", type=Path, default=None, help="table: folder of images named by the case column")
    parser.add_argument("--coordinates", default="ras", choices=("ras", "lps", "voxel"), help="table: default coordinate system")
    args = parser.parse_args(argv)
    if args.format == "nnlandmark":
        datalist = import_nnlandmark(args.source, args.output)
    elif args.format == "slicer":
        datalist = import_slicer(args.source, args.output, args.markups)
    else:
        if args.images is None:
            raise LandmarkConfigError("--images", "--format table needs the folder of scans named by the case column")
        datalist = import_table(args.source, args.output, args.images, args.coordinates)
    atomic_write_text(args.output, json.dumps(datalist, indent=2) + "\n")
    n = len(datalist["training"])
    print(f"wrote {args.output}: {n} annotated case(s), {len(datalist.get('testing', []))} unannotated; "
          f"next: python -m scripts.check {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
