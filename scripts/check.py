"""Check a dataset before anything runs, and report every problem at once.

    python -m scripts.check DATALIST [--quiet]

Like nnU-Net's dataset integrity check: every image exists, loads, is 3D single-channel with finite,
not all-zero intensities and a sane spacing; every landmark file parses; names are consistent (unknown
names, duplicates, near-duplicates such as "AC" / "ac "); annotations lie inside their own images; each
file's coordinate system is stated or the assumption is named; no image is listed twice. Errors are
fatal (exit 1), warnings are printed and exit 0. The planner and training run the fatal checks too; this
command shows them all before a long run, in one table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.errors import LandmarkDataError
from scripts.image_io import check_image_data, read_image_header
from scripts.landmark_io import SECTIONS, _check_known, _explicit_names, _load_entry, _read_json, world_to_voxel
from scripts.planning.fingerprint import name_variants

LARGEST_SANE_SPACING_MM = 10.0


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" (fatal) or "warning"
    source: str
    message: str

    def line(self) -> str:
        return f"{self.severity}: {self.source}: {self.message}"


def coordinate_statement(source) -> str | None:
    """The coordinate system a landmark file states, or None when the reader has to assume one."""
    path = Path(str(source))
    name = path.name.lower()
    try:
        if name.endswith(".fcsv"):
            header = [line for line in path.read_text(errors="replace").splitlines()[:5] if line.startswith("#")]
            return next((line.split("=", 1)[1].strip() for line in header if "coordinatesystem" in line.lower().replace(" ", "")), None)
        if name.endswith(".mrk.json"):
            markups = json.loads(path.read_text()).get("markups", [{}])
            return markups[0].get("coordinateSystem") if markups else None
        if name.endswith(".json"):
            return json.loads(path.read_text()).get("coordinate_system")
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    return None


def _entries(path: Path, document: dict, problems: list[Problem]) -> list[tuple[str, dict, tuple | None]]:
    entries = []
    for section in (s for s in SECTIONS if s in document):
        if not isinstance(document[section], list):
            problems.append(Problem("error", str(path), f"'{section}' must be a list of entries"))
            continue
        for index, raw in enumerate(document[section]):
            try:
                entry, points = _load_entry(path, f"{section}[{index}]", raw)
            except LandmarkDataError as error:
                problems.append(Problem("error", error.source, error.problem))
                continue
            entries.append((section, entry, points))
    return entries


def _names(path: Path, document: dict, entries, problems: list[Problem]) -> list[str]:
    used = sorted({name for _, _, points in entries if points for name in points[1]})
    declared = document.get("landmark_names")
    if declared is None:
        names = used
    else:
        try:
            names = _explicit_names(path, declared)
        except LandmarkDataError as error:
            problems.append(Problem("error", error.source, error.problem))
            names = [n for n in declared if isinstance(n, str)] if isinstance(declared, list) else []
        for _, _, points in entries:
            if not points:
                continue
            for name in points[1]:
                try:
                    _check_known(points[0], name, names)
                except LandmarkDataError as error:
                    problems.append(Problem("error", error.source, error.problem))
    for group in name_variants(sorted(set(names) | set(used))):
        problems.append(Problem("error", str(path), "landmark names differ only in case/whitespace: " + ", ".join(repr(n) for n in group)))
    return names


def _image(entry: dict, points, names: list[str], problems: list[Problem]) -> None:
    images = [entry["image"]] if isinstance(entry["image"], str) else list(entry["image"])
    for image in images:
        try:
            header = read_image_header(image)
            low, high = check_image_data(image)
        except LandmarkDataError as error:
            problems.append(Problem("error", error.source, error.problem))
            return
        if low == high:
            problems.append(Problem("error", image, f"every voxel is {low:g}: nothing to find landmarks in"))
        if max(header.spacing) > LARGEST_SANE_SPACING_MM:
            problems.append(Problem("warning", image, f"voxel spacing {[round(s, 3) for s in header.spacing]} mm: over "
                                                      f"{LARGEST_SANE_SPACING_MM:g} mm, a header error? (check the units)"))
    if not points:
        return
    point_names = list(points[1])
    if not point_names:
        problems.append(Problem("error", str(points[0]), "no landmarks in the file (a markups file without controlPoints?)"))
        return
    voxels = world_to_voxel(header.affine, np.array([points[1][n][0] for n in point_names], dtype=np.float64))
    shape = np.asarray(header.shape)
    outside = [n for n, v in zip(point_names, voxels) if np.any(v < -0.5) or np.any(v > shape - 0.5)]
    if outside:
        problems.append(Problem("error", str(points[0]), f"landmark(s) outside their image {images[0]}: {', '.join(outside)}"))


def check_dataset(datalist_file) -> tuple[list[Problem], dict]:
    """(problems, counts) for a datalist; never raises on bad data."""
    path = Path(datalist_file).resolve()
    problems: list[Problem] = []
    try:
        document = _read_json(path, "datalist")
    except LandmarkDataError as error:
        return [Problem("error", error.source, error.problem)], {}
    if not isinstance(document, dict):
        return [Problem("error", str(path), "a datalist must be a JSON object")], {}
    entries = _entries(path, document, problems)
    if not entries and not problems:
        problems.append(Problem("error", str(path), "datalist has no entries in training, validation or testing"))
    names = _names(path, document, entries, problems)

    listed = defaultdict(list)
    for section, entry, _ in entries:
        listed[str(entry["image"])].append(section)
    for image, sections in listed.items():
        if len(sections) > 1:
            problems.append(Problem("error", image, f"listed {len(sections)} times ({', '.join(sections)})"))

    # inline coordinates are RAS by the datalist contract; files may say otherwise or nothing
    files = {str(points[0]) for _, _, points in entries if points and Path(str(points[0])).is_file()}
    assumed = sorted(f for f in files if coordinate_statement(f) is None)
    for source in assumed:
        problems.append(Problem("warning", source, "coordinate system not stated in the file: read as RAS "
                                                   "(Slicer .mrk.json without one: LPS)"))
    for _, entry, points in entries:
        _image(entry, points, names, problems)
    counts = {section: sum(1 for s, _, _ in entries if s == section) for section in SECTIONS}
    counts["landmarks"] = len(names)
    return problems, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("datalist")
    args = parser.parse_args(argv)
    problems, counts = check_dataset(args.datalist)
    for problem in problems:
        print(problem.line(), file=sys.stderr if problem.severity == "error" else sys.stdout)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if counts:
        print(f"{args.datalist}: {counts.get('training', 0)} training, {counts.get('validation', 0)} validation, "
              f"{counts.get('testing', 0)} testing cases, {counts.get('landmarks', 0)} landmark names: "
              f"{errors} error(s), {warnings} warning(s)")
    else:
        print(f"{args.datalist}: {errors} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
