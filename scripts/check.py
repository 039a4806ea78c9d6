"""Check a dataset before anything runs, and report every problem at once.

    python -m scripts.check DATALIST [--plans BUNDLE/configs/plans.json]

Like nnU-Net's dataset integrity check: the datalist's structure against its JSON Schema
(scripts.datalist_schema); every image exists, loads, is 3D single-channel with finite, not all-zero
intensities and a sane spacing; every landmark file parses; every point matches a channel by the one
name resolver (scripts.landmark_names: landmark_names, or with --plans a trained model's channels; without
either, the files are compared with one another); annotations lie inside their own images; each
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

from scripts.errors import LandmarkDataError, cli_main
from scripts.image_io import check_image_data, header_notes, read_image_header
from scripts.datalist_schema import schema_problems
from scripts.landmark_io import SECTIONS, DatalistReport, inspect_datalist, outside_image, read_datalist_document
from scripts.landmark_names import LandmarkNames, plans_landmark_names
from scripts.tables import coordinate_columns, read_table

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
        if name.endswith(".csv"):
            rows = read_table(path).rows
            found = coordinate_columns(rows[0][1]) if rows else None
            return found[1] if found else None
    except (OSError, ValueError, AttributeError, IndexError, LandmarkDataError):
        return None
    return None


def _report(path: Path, document, channels: LandmarkNames | None, problems: list[Problem]) -> DatalistReport | None:
    """Schema problems (every one), then the names and files of what the schema let through."""
    invalid = schema_problems(document)
    problems.extend(Problem("error", str(path), sentence) for _, sentence in invalid)
    if any(place == () for place, _ in invalid):
        return None
    skip = {place[:2] for place, _ in invalid if place and place[0] in SECTIONS}
    broken = {place[0] for place, _ in invalid if place and place[0] not in SECTIONS}
    document = {key: value for key, value in document.items() if key not in broken}
    if "landmark_numbering" in document and "landmark_names" not in document:
        document.pop("landmark_numbering")
    report = inspect_datalist(path, document, channels, skip)
    problems.extend(Problem("error", error.source, error.problem) for error in report.problems)
    return report


def _mismatches(report: DatalistReport, problems: list[Problem]) -> None:
    """Without declared names (no landmark_names, no plans): each file's names against the majority's."""
    files = [file for file in report.files if file.points]
    if report.declared or len(files) < 2:
        return
    counts = {name: sum(name in file.points for file in files) for name in report.names}
    usual = {name for name, count in counts.items() if count * 2 > len(files)}
    for file in files:
        missing = [name for name in report.names if name in usual and name not in file.points]
        unusual = [name for name in file.points if name not in usual]
        if missing:
            problems.append(Problem("warning", file.source, f"lacks {len(missing)} landmark(s) most files have: {', '.join(missing)}"))
        if unusual:
            problems.append(Problem("warning", file.source, f"landmark(s) most other files do not have: {', '.join(unusual)} "
                                                            "(a typo or another naming? landmark_names or landmark_aliases in the datalist fix it)"))


def _image(entry: dict, points, problems: list[Problem]) -> None:
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
        for note in header_notes(image):
            problems.append(Problem("warning", image, note))
        if max(header.spacing) > LARGEST_SANE_SPACING_MM:
            problems.append(Problem("warning", image, f"voxel spacing {[round(s, 3) for s in header.spacing]} mm: over "
                                                      f"{LARGEST_SANE_SPACING_MM:g} mm, a header error? (check the units)"))
    if points is None:
        return
    if not points.points:
        problems.append(Problem("error", str(points.source), "no landmarks in the file (a markups file without controlPoints?)"))
        return
    names = list(points.points)
    outside = outside_image(header.affine, header.shape, np.array([points.points[n].position for n in names]))
    if outside.any():
        listed = ", ".join(name for name, out in zip(names, outside) if out)
        problems.append(Problem("error", str(points.source), f"landmark(s) outside their image {images[0]}: {listed}"))


def check_dataset(datalist_file, plans_file=None) -> tuple[list[Problem], dict]:
    """(problems, counts) for a datalist; never raises on bad data.

    With ``plans_file`` (a trained bundle's configs/plans.json) every landmark must also match one of the
    model's channels, as training and evaluation with that bundle require."""
    path = Path(datalist_file).resolve()
    problems: list[Problem] = []
    try:
        document = read_datalist_document(path)
        channels = plans_landmark_names(Path(plans_file).resolve()) if plans_file else None
    except LandmarkDataError as error:
        return [Problem("error", error.source, error.problem)], {}
    report = _report(path, document, channels, problems)
    if report is None:
        return problems, {}
    entries = [(section, entry) for section in SECTIONS for entry in report.sections.get(section, [])]
    if not entries and not problems:
        problems.append(Problem("error", str(path), "datalist has no entries in training, validation or testing"))
    _mismatches(report, problems)

    listed = defaultdict(list)
    for section, entry in entries:
        listed[str(entry["image"])].append(section)
    for image, sections in listed.items():
        if len(sections) > 1:
            problems.append(Problem("error", image, f"listed {len(sections)} times ({', '.join(sections)})"))

    # inline coordinates are RAS by the datalist contract; files may say otherwise or nothing
    files = {str(file.source) for file in report.files if Path(str(file.source)).is_file()}
    assumed = sorted(f for f in files if coordinate_statement(f) is None)
    for source in assumed:
        problems.append(Problem("warning", source, "coordinate system not stated in the file: read as RAS "
                                                   "(Slicer .mrk.json without one: LPS)"))
    by_place = {(file.section, file.index): file for file in report.files}
    for section in SECTIONS:
        for index, entry in enumerate(report.sections.get(section, [])):
            _image(entry, by_place.get((section, index)), problems)
    counts = {section: len(report.sections.get(section, [])) for section in SECTIONS}
    counts["landmarks"] = len(report.names)
    return problems, counts


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("datalist")
    parser.add_argument("--plans", default=None, help="a trained bundle's configs/plans.json: landmarks must match its channels")
    args = parser.parse_args(argv)
    problems, counts = check_dataset(args.datalist, args.plans)
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
