"""Landmark files (Slicer .fcsv and .mrk.json, our .json, .csv), the datalist, and world <-> voxel mapping.

The datalist is validated against its JSON Schema (scripts.datalist_schema) and its points matched to
channels by the one name resolver (scripts.landmark_names); tables are read by scripts.tables; writes go
through scripts.atomic.

In memory every position is RAS world millimetres. Files may be LPS: converted on read and write.
Written files: .fcsv in RAS (Slicer 5 style, version 4.11 header), .mrk.json in LPS (what Slicer
writes), .json and .csv in RAS.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scripts.atomic import atomic_write_text
from scripts.errors import LandmarkDataError, combined_error
from scripts.landmark_names import LandmarkNames, Point, fold, unknown_message
from scripts.tables import coordinate_columns, read_table, read_text

SECTIONS = ("training", "validation", "testing")
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # same flip both ways
FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"]
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_SUFFIXES = (".mrk.json", ".json", ".fcsv", ".csv")


# ----------------------------------------------------------------------------- small helpers


def _position(values, source, where: str) -> np.ndarray:
    """Three finite floats or a LandmarkDataError saying where."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") or len(values) != 3:
        raise LandmarkDataError(source, f"{where}: position must be 3 numbers, got {values!r}")
    try:
        if any(isinstance(v, bool) for v in values):
            raise ValueError
        point = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise LandmarkDataError(source, f"{where}: cannot parse coordinates {list(values)!r}") from None
    if not np.isfinite(point).all():
        raise LandmarkDataError(source, f"{where}: non-finite coordinate {point.tolist()}")
    return point


def _coordinate_system(value, source) -> str:
    """'RAS' or 'LPS' from Slicer's spellings (0/RAS, 1/LPS)."""
    text = str(value).strip().upper()
    if text in ("0", "RAS"):
        return "RAS"
    if text in ("1", "LPS"):
        return "LPS"
    raise LandmarkDataError(source, f"unsupported coordinate system {value!r} (expected RAS or LPS)")


def _by_display_name(points: list[Point], source) -> dict[str, Point]:
    """{display name: point} in file order, refusing duplicate names (for reading a file on its own)."""
    result: dict[str, Point] = {}
    for point in points:
        if point.name in result:
            raise LandmarkDataError(source, f"duplicate landmark name '{point.name}'")
        result[point.name] = point
    return result


class _JsonObject(dict):
    """A JSON object that remembers keys given more than once (json keeps only the last)."""

    def __init__(self, pairs):
        super().__init__()
        self.duplicate_keys = []
        for key, value in pairs:
            if key in self:
                self.duplicate_keys.append(key)
            self[key] = value


def _plain(value):
    """A parsed JSON value with every _JsonObject turned back into a plain dict."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _read_text(path: Path, what: str = "landmark file") -> str:
    return read_text(path, what)[0]


def _read_json(path: Path, what: str = "landmark file"):
    try:
        return json.loads(_read_text(path, what), object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as error:
        raise LandmarkDataError(path, f"invalid JSON: {error}") from None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise LandmarkDataError(path, "unsupported landmark file type (expected .fcsv, .mrk.json, .json or .csv)")


# ----------------------------------------------------------------------------- readers


def _read_fcsv(path: Path) -> list[tuple[str, np.ndarray, str]]:
    text = _read_text(path)
    lines = text.splitlines()
    header: dict[str, str] = {}
    first_data = 0
    while first_data < len(lines) and lines[first_data].startswith("#"):
        key, _, value = lines[first_data][1:].partition("=")
        header[key.strip().lower()] = value.strip()
        first_data += 1
    columns = [c.strip() for c in header["columns"].split(",")] if "columns" in header else FCSV_COLUMNS
    missing = [c for c in ("x", "y", "z") if c not in columns]
    if missing or ("label" not in columns and "desc" not in columns):
        raise LandmarkDataError(path, f"columns line lacks {missing or ['label']}: {columns}")
    system = _coordinate_system(header.get("coordinatesystem", "RAS"), path)
    flip = LPS_TO_RAS if system == "LPS" else np.ones(3)

    points = []
    rows = csv.reader(io.StringIO("\n".join(lines[first_data:])))
    for row in rows:
        line = first_data + rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns.index(c) for c in ("x", "y", "z")):
            raise LandmarkDataError(path, f"line {line}: expected {len(columns)} fields, got {len(row)}")
        cell = dict(zip(columns, row))
        position = _position([cell["x"], cell["y"], cell["z"]], path, f"line {line}")
        label, description = cell.get("label", ""), cell.get("desc", "")
        if not label.strip() and not description.strip():
            raise LandmarkDataError(path, f"line {line}: landmark has no name (empty label and desc)")
        points.append(Point(label, description, position * flip, f"line {line}"))
    return points


def _read_mrk_json(path: Path, document=None) -> list[tuple[str, np.ndarray, str]]:
    document = _read_json(path) if document is None else document
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups or not isinstance(markups[0], dict):
        raise LandmarkDataError(path, "Slicer markups JSON without a 'markups' list")
    markup = markups[0]
    if markup.get("type", "Fiducial") != "Fiducial":
        raise LandmarkDataError(path, f"markups type '{markup.get('type')}' is not a point list (Fiducial)")
    system = _coordinate_system(markup.get("coordinateSystem", "LPS"), path)  # Slicer's default is LPS
    flip = LPS_TO_RAS if system == "LPS" else np.ones(3)
    points = []
    for index, point in enumerate(markup.get("controlPoints") or []):
        if not isinstance(point, dict):
            raise LandmarkDataError(path, f"controlPoints[{index}] is not an object")
        if str(point.get("positionStatus", "defined")).lower() in ("undefined", "missing"):
            continue
        position = _position(point.get("position"), path, f"controlPoints[{index}]")
        label, description = str(point.get("label") or ""), str(point.get("description") or "")
        if not label.strip() and not description.strip():
            raise LandmarkDataError(path, f"controlPoints[{index}]: landmark has no name (empty label and description)")
        points.append(Point(label, description, position * flip, f"controlPoints[{index}]"))
    return points


def _read_our_json(path: Path) -> list[tuple[str, np.ndarray, str]]:
    document = _read_json(path)
    if not isinstance(document, dict):
        raise LandmarkDataError(path, "expected a JSON object of landmarks")
    if "markups" in document:
        return _read_mrk_json(path, document)
    if "landmarks" in document or "coordinate_system" in document:
        landmarks = document.get("landmarks")
        system = _coordinate_system(document.get("coordinate_system", "RAS"), path)
    else:
        landmarks, system = document, "RAS"
    if not isinstance(landmarks, dict):
        raise LandmarkDataError(path, "'landmarks' must be an object {name: position}")
    if landmarks.duplicate_keys:
        raise LandmarkDataError(path, f"duplicate landmark name '{landmarks.duplicate_keys[0]}'")
    flip = LPS_TO_RAS if system == "LPS" else np.ones(3)
    points = []
    for name, value in landmarks.items():
        description = ""
        if isinstance(value, dict):
            description = str(value.get("description") or "")
            value = value.get("position")
        points.append(Point(name, description, _position(value, path, f"landmark '{name}'") * flip, f"landmark '{name}'"))
    return points


def _read_csv(path: Path) -> list[Point]:
    """A landmark table (scripts.tables: BOM, delimiter, decimal comma). With a header: a name column
    (``name``, ``label`` or ``landmark``), coordinates ``x,y,z`` (RAS), ``r,a,s`` (RAS) or ``l,p,s`` (LPS,
    Slicer's Markups > Export to table), optional ``description``/``desc``, and Slicer's ``defined``
    (rows with 0/false are unplaced points, skipped). Without one: name, x, y, z[, description]."""
    table = read_table(path, "landmark file")
    rows = table.rows
    columns, system = {"name": 0, "description": 4}, "RAS"
    axes = ("x", "y", "z")
    found = coordinate_columns(rows[0][1]) if rows else None
    if found:
        header = [cell.lower() for cell in rows[0][1]]
        axes, system = found[0], found[1] or "RAS"
        name_column = next((c for c in ("name", "label", "landmark") if c in header), None)
        if name_column is None:
            raise LandmarkDataError(path, f"header lacks a name column (name or label): {rows[0][1]}")
        columns = {"name": header.index(name_column)}
        for key, spellings in (("description", ("description", "desc")), ("defined", ("defined",))):
            column = next((c for c in spellings if c in header), None)
            if column is not None:
                columns[key] = header.index(column)
        columns.update({axis: header.index(axis) for axis in axes})
        rows = rows[1:]
    else:
        columns.update({"x": 1, "y": 2, "z": 3})
    flip = LPS_TO_RAS if system == "LPS" else np.ones(3)
    width = max(columns[a] for a in axes) + 1
    points = []
    for number, (line, row) in enumerate(rows, start=1):
        where = f"row {number}" if not found else f"line {line}"
        if len(row) < max(4, width):
            expected = "name,x,y,z" if not found else f"{width} fields"
            raise LandmarkDataError(path, f"{where}: expected {expected}, got {row}")
        cell = lambda key: row[columns[key]] if key in columns and columns[key] < len(row) else ""  # noqa: E731
        if cell("defined").strip().lower() in ("0", "false", "no"):
            continue
        values = [cell(axis) for axis in axes]
        try:
            values = [table.number(v, where) for v in values]
        except LandmarkDataError:
            raise LandmarkDataError(path, f"{where}: cannot parse coordinates {values}") from None
        position = _position(values, path, where)
        points.append(Point(cell("name"), cell("description"), position * flip, where))
    return points


_READERS = {".fcsv": _read_fcsv, ".mrk.json": _read_mrk_json, ".json": _read_our_json, ".csv": _read_csv}


def read_points(path) -> list[Point]:
    """Every point of a landmark file, whatever the format, in file order: label and description as
    written (scripts.landmark_names matches them to channels), position RAS world mm."""
    path = Path(path)
    return _READERS[_suffix(path)](path)


def read_landmarks(path) -> dict[str, np.ndarray]:
    """Landmark positions, RAS world mm, in file order, named as the file names them (the label; the
    description where the label is a bare number or empty). Raises LandmarkDataError on duplicates."""
    return {name: point.position for name, point in _by_display_name(read_points(path), path).items()}


def read_landmark_descriptions(path) -> dict[str, str]:
    """Name -> long description ("" if the file has none, or if the description was used as the name)."""
    return {name: point.note for name, point in _by_display_name(read_points(path), path).items()}


# ----------------------------------------------------------------------------- writers


def _fcsv_text(points) -> str:
    out = io.StringIO()
    out.write("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n")
    out.write("# columns = " + ",".join(FCSV_COLUMNS) + "\n")
    writer = csv.writer(out, lineterminator="\n")
    for index, (name, position, description) in enumerate(points, start=1):
        writer.writerow([index, *(repr(float(v)) for v in position), 0, 0, 0, 1, 1, 1, 0, name, description, ""])
    return out.getvalue()


def _mrk_json_text(points) -> str:
    control_points = [
        {
            "id": str(index),
            "label": name,
            "description": description,
            "associatedNodeID": "",
            "position": (np.asarray(position) * LPS_TO_RAS).tolist(),
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for index, (name, position, description) in enumerate(points, start=1)
    ]
    markup = {
        "type": "Fiducial",
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(control_points),
        "controlPoints": control_points,
        "measurements": [],
    }
    return json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [markup]}, indent=2) + "\n"


def _our_json_text(points) -> str:
    landmarks = {}
    for name, position, description in points:
        landmarks[name] = {"position": np.asarray(position).tolist()}
        if description:
            landmarks[name]["description"] = description
    return json.dumps({"coordinate_system": "RAS", "units": "mm", "landmarks": landmarks}, indent=2) + "\n"


def _csv_text(points) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with_descriptions = any(description for _, _, description in points)
    writer.writerow(["name", "x", "y", "z", "description"] if with_descriptions else ["name", "x", "y", "z"])
    for name, position, description in points:
        row = [name, *(repr(float(v)) for v in position)]
        writer.writerow(row + [description] if with_descriptions else row)
    return out.getvalue()


_WRITERS = {".fcsv": _fcsv_text, ".mrk.json": _mrk_json_text, ".json": _our_json_text, ".csv": _csv_text}


def write_landmarks(path, positions: Mapping[str, Sequence[float]], descriptions: Mapping[str, str] | None = None):
    """Write RAS positions by suffix (.fcsv / .mrk.json / .json / .csv), atomically."""
    path = Path(path)
    text_of = _WRITERS[_suffix(path)]
    descriptions = descriptions or {}
    points = []
    for name, position in positions.items():
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
            raise LandmarkDataError(path, f"cannot write landmark name {name!r}")
        points.append((name, _position(position, path, f"landmark '{name}'"), str(descriptions.get(name) or "")))
    atomic_write_text(path, text_of(points))


# ----------------------------------------------------------------------------- arrays and geometry


def landmarks_to_array(landmarks: Mapping[str, Sequence[float]], names: Sequence[str]) -> np.ndarray:
    """(N, 3) float64 in the order of `names`, NaN rows where a landmark is missing."""
    array = np.full((len(names), 3), np.nan, dtype=np.float64)
    for row, name in enumerate(names):
        if name in landmarks and landmarks[name] is not None:
            array[row] = np.asarray(landmarks[name], dtype=np.float64)
    return array


def _as_float64(values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor / MetaTensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _apply_affine(affine, points) -> np.ndarray:
    affine, points = _as_float64(affine), _as_float64(points)
    if affine.shape != (4, 4) or points.shape[-1:] != (3,):
        raise ValueError(f"expected a 4x4 affine and (..., 3) points, got {affine.shape} and {points.shape}")
    return points @ affine[:3, :3].T + affine[:3, 3]


def voxel_to_world(affine, points) -> np.ndarray:
    """Voxel indices (N, 3) -> world (N, 3) through a 4x4 affine; NaN rows stay NaN."""
    return _apply_affine(affine, points)


def voxel_spacing(affine) -> np.ndarray:
    """Voxel size (mm) along each array axis: the lengths of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def world_to_voxel(affine, points) -> np.ndarray:
    """World (N, 3) -> voxel indices (N, 3) through the inverse of a 4x4 affine; NaN rows stay NaN."""
    return _apply_affine(np.linalg.inv(_as_float64(affine)), points)


def outside_image(affine, shape, points) -> np.ndarray:
    """Boolean per row of ``points`` (N, 3) world mm: the point lies outside the image, i.e. beyond half a
    voxel past the first or last voxel centre along some axis. NaN rows (unannotated) are never outside.
    The one rule for "annotation outside its image" (scripts.check, training's check_cases, the fingerprint)."""
    voxels = world_to_voxel(affine, np.asarray(points, dtype=np.float64).reshape(-1, 3))
    upper = np.asarray(shape[:3], dtype=np.float64) - 0.5
    with np.errstate(invalid="ignore"):
        beyond = (voxels < -0.5) | (voxels > upper)
    return np.any(beyond, axis=1) & np.all(np.isfinite(voxels), axis=1)


# ----------------------------------------------------------------------------- datalist


@dataclass
class Datalist:
    """A loaded datalist: resolved entries per section, the channel order, pairs and descriptions."""

    path: Path
    landmark_names: list[str]
    left_right_pairs: list[dict]
    descriptions: dict[str, str]
    sections: dict[str, list[dict]]
    extra: dict = field(default_factory=dict)  # unknown top-level keys, kept as given
    aliases: dict[str, list[str]] = field(default_factory=dict)
    numbering: int | None = None

    def section(self, name: str) -> list[dict]:
        """Entries of one section; [] when absent."""
        return self.sections.get(name, [])

    def pair_indices(self) -> list[tuple[int, int]]:
        """(left channel, right channel) for each left/right pair."""
        index = {name: i for i, name in enumerate(self.landmark_names)}
        return [(index[pair["left"]], index[pair["right"]]) for pair in self.left_right_pairs]


DATALIST_KEYS = ("landmark_names", "left_right_pairs", "landmark_descriptions", "landmark_aliases", "landmark_numbering", *SECTIONS)


def _resolve(folder: Path, value: str) -> str:
    return os.path.normpath(os.path.join(folder, os.path.expanduser(value)))


def _resolve_image(datalist: Path, where: str, value):
    """An entry's image path (or list of paths, schema-checked) made absolute; LandmarkDataError if missing."""
    if isinstance(value, list):
        return [_resolve_image(datalist, where, v) for v in value]
    image = _resolve(datalist.parent, value)
    if not os.path.exists(image):
        raise LandmarkDataError(image, f"image not found (listed in {datalist}, {where})")
    return image


def _resolve_label_map(datalist: Path, where: str, value) -> str:
    """An entry's optional ``label``: a label map on the image's anatomy (e.g. aseg), used by contrast
    randomisation in training (scripts.intensity_randomization); resolved like the image."""
    if not isinstance(value, str) or not value:
        raise LandmarkDataError(datalist, f"{where}: 'label' must be the path of a label map, got {value!r}")
    label = _resolve(datalist.parent, value)
    if not os.path.exists(label):
        raise LandmarkDataError(label, f"label map not found (listed in {datalist}, {where})")
    return label


def _entry_points(datalist: Path, where: str, value) -> tuple[str, list[Point]]:
    """(source for messages, points) of an entry's landmark file or inline landmarks."""
    if isinstance(value, str):
        path = _resolve(datalist.parent, value)
        return path, read_points(path)
    if isinstance(value, dict):
        source = f"{datalist} ({where} landmarks)"
        if getattr(value, "duplicate_keys", None):
            raise LandmarkDataError(source, f"duplicate landmark name '{value.duplicate_keys[0]}'")
        return source, [Point(name, "", _position(v, source, f"landmark '{name}'"), f"landmark '{name}'") for name, v in value.items()]
    raise TypeError(f"{where}: landmarks of type {type(value).__name__}: validate the datalist against its schema first")


@dataclass
class LandmarkFile:
    """One entry's landmarks once matched to channels: ``points`` {channel: Point}."""

    section: str
    index: int
    source: str
    points: dict[str, Point]


@dataclass
class DatalistReport:
    """What scripts.check and load_datalist learn from a datalist, problems included (never raised here)."""

    names: list[str]
    declared: bool
    descriptions: dict[str, str]
    aliases: dict[str, list[str]]
    pairs: list[dict]
    sections: dict[str, list[dict]]
    files: list[LandmarkFile]
    problems: list[LandmarkDataError]


def _declared_names(path: Path, document: dict) -> LandmarkNames:
    names = document["landmark_names"]
    seen = set()
    for name in names:
        if name in seen:
            raise LandmarkDataError(path, f"duplicate name '{name}' in landmark_names")
        seen.add(name)
    return LandmarkNames(names, document.get("landmark_descriptions") or {}, document.get("landmark_aliases") or {},
                         document.get("landmark_numbering"), source=str(path))


def _collected_names(document: dict, loaded: list[tuple[str, str, int, list[Point]]], problems: list) -> LandmarkNames:
    """Channels from the files, in order of first appearance: a point opens a channel unless its label or
    description names one already opened (case/whitespace ignored, descriptions and aliases count)."""
    names: list[str] = []
    learned: dict[str, str] = dict(document.get("landmark_descriptions") or {})
    aliases = document.get("landmark_aliases") or {}
    canonical = {fold(text): name for name, others in aliases.items() for text in (name, *others)}
    resolver = LandmarkNames([], {}, {}, None)
    for source, _, _, points in loaded:
        for point in points:
            channel, conflict = resolver.match(point.label, point.description)
            if channel is None and conflict is None:  # a new channel, under the alias table's name if it has one
                names.append(canonical.get(fold(point.label)) or canonical.get(fold(point.description)) or point.name)
                if point.note and point.note != point.name:
                    learned.setdefault(point.name, point.note)
                try:
                    resolver = LandmarkNames(names, learned, aliases, None, source="the dataset's files")
                except LandmarkDataError as error:  # an alias or description claims two names: report, go on
                    problems.append(LandmarkDataError(source, error.problem))
                    names.pop()
    return resolver


def _pairs(datalist: Path, value, resolver: LandmarkNames) -> list[dict]:
    pairs, used = [], set()
    for index, pair in enumerate(value):
        left, right = (pair["left"], pair["right"]) if isinstance(pair, dict) else pair
        resolved = []
        for name in (left, right):
            channel = resolver.channel(name)
            if channel is None:
                raise LandmarkDataError(datalist, unknown_message([f"'{name}'"], "landmark_names"))
            resolved.append(channel)
        left, right = resolved
        if left == right or left in used or right in used:
            raise LandmarkDataError(datalist, f"left_right_pairs[{index}]: '{left}'/'{right}' repeats a landmark")
        used.update((left, right))
        pairs.append({"left": left, "right": right})
    return pairs


def inspect_datalist(path, document, channels: LandmarkNames | None = None, skip=frozenset()) -> DatalistReport:
    """Resolve a schema-valid datalist document (scripts.datalist_schema) and collect every problem.

    ``channels``: a trained model's names (plans ``landmark_names`` + ``landmark_descriptions``); the
    datalist's names are then matched to them and entries come back named by channel. ``skip``: (section,)
    and (section, index) places the schema already refused. Nothing is raised: see ``problems``.
    """
    path = Path(path)
    problems: list[LandmarkDataError] = []
    sections: dict[str, list[dict]] = {}
    loaded: list[tuple[str, str, int, list[Point]]] = []
    for section in (s for s in SECTIONS if s in document and (s,) not in skip):
        sections[section] = []
        for index, raw in enumerate(document[section]):
            if (section, index) in skip:
                continue
            landmarks = raw.get("landmarks")  # still a _JsonObject when parsed here: it knows duplicate keys
            entry = _plain(raw)
            try:
                entry["image"] = _resolve_image(path, f"{section}[{index}]", entry["image"])
                if "label" in entry:
                    entry["label"] = _resolve_label_map(path, f"{section}[{index}]", entry["label"])
                if landmarks is not None:
                    source, points = _entry_points(path, f"{section}[{index}]", landmarks)
                    loaded.append((source, section, len(sections[section]), points))
            except LandmarkDataError as error:
                problems.append(error)
                continue
            entry.pop("landmarks", None)
            sections[section].append(entry)
    declared = "landmark_names" in document
    try:
        resolver = _declared_names(path, document) if declared else _collected_names(document, loaded, problems)
    except LandmarkDataError as error:
        return DatalistReport([], declared, {}, {}, [], sections, [], problems + [error])
    names = list(resolver.channels)
    files = []
    for source, section, index, points in loaded:
        try:
            resolved = resolver.resolve(points, source, "landmark_names" if declared else None)
        except LandmarkDataError as error:
            problems.append(error)
            continue
        files.append(LandmarkFile(section, index, source, resolved))
    descriptions = {name: "" for name in names}
    for name, text in (document.get("landmark_descriptions") or {}).items():
        channel = resolver.channel(name)
        if channel is None:
            problems.append(LandmarkDataError(path, f"landmark_descriptions: {unknown_message([repr(name)], 'landmark_names')}"))
        else:
            descriptions[channel] = text
    for file in files:
        for channel, point in file.points.items():
            if not descriptions[channel] and point.note and point.note != channel:
                descriptions[channel] = point.note
    try:
        pairs = _pairs(path, document.get("left_right_pairs") or [], resolver)
    except LandmarkDataError as error:
        problems.append(error)
        pairs = []
    report = DatalistReport(names, declared, descriptions, dict(document.get("landmark_aliases") or {}), pairs, sections, files, problems)
    if channels is not None:
        _to_channels(path, report, channels)
    for file in report.files:
        sections[file.section][file.index]["landmarks"] = {c: p.position.tolist() for c, p in file.points.items()}
    return report


def _to_channels(path: Path, report: DatalistReport, channels: LandmarkNames) -> None:
    """Rename the report's landmarks to a model's channels; names no channel has are problems, by file."""
    mapping = {}
    for name in report.names:
        mapping[name], _ = channels.match(name, report.descriptions.get(name, ""))
    for file in report.files:
        unknown = [point.shown() for name, point in file.points.items() if mapping[name] is None]
        if unknown:
            report.problems.append(LandmarkDataError(file.source, unknown_message(unknown, f"the model's landmarks ({channels.source})")))
            continue
        renamed: dict[str, Point] = {}
        for name, point in file.points.items():
            if mapping[name] in renamed:
                other = renamed[mapping[name]]
                report.problems.append(LandmarkDataError(file.source, f"landmarks {other.shown()} and {point.shown()} both match '{mapping[name]}'"))
            renamed[mapping[name]] = point
        file.points = renamed
    report.pairs = [{"left": mapping[p["left"]], "right": mapping[p["right"]]} for p in report.pairs
                    if mapping.get(p["left"]) and mapping.get(p["right"])]
    report.descriptions = {c: channels.descriptions.get(c, "") for c in channels.channels}
    report.names = list(channels.channels)


def read_datalist_document(path):
    """The parsed datalist JSON (objects remember duplicate keys); LandmarkDataError if unreadable."""
    return _read_json(Path(path), "datalist")


def load_datalist(path, landmark_names: Sequence[str] | None = None, descriptions: Mapping[str, str] | None = None,
                  names_source: str = "configs/plans.json") -> Datalist:
    """Read and check a datalist (DESIGN §2): absolute image paths, landmarks as RAS {name: [x, y, z]}.

    The structure is validated against scripts.datalist_schema, then every point is matched to a channel
    by scripts.landmark_names (label, description, landmark_descriptions, landmark_aliases,
    landmark_numbering; case and whitespace ignored). With ``landmark_names`` (a trained model's, from
    the plans, with their ``descriptions``) entries come back named by those channels.
    Raises LandmarkDataError with every problem found (one line; each names its file).
    """
    from scripts.datalist_schema import schema_problems

    path = Path(os.path.abspath(path))
    document = read_datalist_document(path)
    invalid = schema_problems(document)
    if invalid:
        raise combined_error(path, [LandmarkDataError(path, sentence) for _, sentence in invalid])
    if not any(document.get(section) for section in SECTIONS):
        raise LandmarkDataError(path, "datalist has no entries in training, validation or testing")
    channels = None if landmark_names is None else LandmarkNames(landmark_names, descriptions or {}, source=names_source)
    report = inspect_datalist(path, document, channels)
    if report.problems:
        raise combined_error(path, report.problems)
    return Datalist(
        path=path,
        landmark_names=report.names,
        left_right_pairs=report.pairs,
        descriptions=report.descriptions,
        sections=report.sections,
        extra={key: _plain(value) for key, value in document.items() if key not in DATALIST_KEYS},
        aliases=report.aliases,
        numbering=document.get("landmark_numbering"),
    )
