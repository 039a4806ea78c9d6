"""Landmark file formats: Slicer .fcsv and .mrk.json, our .json, .csv (read and written).

File formats only: the datalist and its checks are scripts.data, coordinate mapping scripts.geometry,
tables are read by scripts.tables, writes go through scripts.atomic, and points are matched to channels
by the one name resolver (scripts.landmark_names).

In memory every position is RAS world millimetres. Files may be LPS: converted on read and write
(scripts.geometry.lps_to_ras / ras_to_lps).
Written files: .fcsv in RAS (Slicer 5 style, version 4.11 header), .mrk.json in LPS (what Slicer
writes), .json and .csv in RAS.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scripts.atomic import atomic_write_text
from scripts.errors import LandmarkDataError
from scripts.geometry import lps_to_ras, ras_to_lps
from scripts.landmark_names import Point
from scripts.tables import coordinate_columns, read_table, read_text

FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"]
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_SUFFIXES = (".mrk.json", ".json", ".fcsv", ".csv")


# ----------------------------------------------------------------------------- small helpers


def parse_position(values, source, where: str) -> np.ndarray:
    """(3,) float64 from three finite numbers (list, tuple, array or tensor; numeric strings allowed), or a
    LandmarkDataError naming ``source`` and ``where`` (e.g. "line 4")."""
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


def _in_ras(position: np.ndarray, system: str) -> np.ndarray:
    """A position read in ``system`` ('RAS' or 'LPS', from _coordinate_system) as RAS."""
    return lps_to_ras(position) if system == "LPS" else position


def _named_point(path, where: str, label: str, description: str, position: np.ndarray, system: str, field: str) -> Point:
    """A Point read from a Slicer file, ``position`` given in ``system`` and kept in RAS; LandmarkDataError for
    a point with neither a label nor a description (``field``: the format's name for the description)."""
    if not label.strip() and not description.strip():
        raise LandmarkDataError(path, f"{where}: landmark has no name (empty label and {field})")
    return Point(label, description, _in_ras(position, system), where)


def _by_display_name(points: list[Point], source) -> dict[str, Point]:
    """{display name: point} in file order, refusing duplicate names (for reading a file on its own)."""
    result: dict[str, Point] = {}
    for point in points:
        if point.name in result:
            raise LandmarkDataError(source, f"duplicate landmark name '{point.name}'")
        result[point.name] = point
    return result


class JsonObject(dict):
    """A JSON object that remembers keys given more than once (json keeps only the last)."""

    def __init__(self, pairs):
        super().__init__()
        self.duplicate_keys = []
        for key, value in pairs:
            if key in self:
                self.duplicate_keys.append(key)
            self[key] = value


def plain_json(value):
    """A parsed JSON value with every JsonObject turned back into a plain dict."""
    if isinstance(value, dict):
        return {key: plain_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_json(item) for item in value]
    return value


def _read_text(path: Path, what: str = "landmark file") -> str:
    return read_text(path, what)[0]


def read_json(path: Path, what: str = "landmark file"):
    """A JSON document whose objects are JsonObjects (they remember duplicate keys); LandmarkDataError naming
    ``path`` when it cannot be read or parsed (``what`` names the file's role in the message)."""
    try:
        return json.loads(_read_text(path, what), object_pairs_hook=JsonObject)
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

    points = []
    rows = csv.reader(io.StringIO("\n".join(lines[first_data:])))
    for row in rows:
        line = first_data + rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns.index(c) for c in ("x", "y", "z")):
            raise LandmarkDataError(path, f"line {line}: expected {len(columns)} fields, got {len(row)}")
        cell = dict(zip(columns, row))
        position = parse_position([cell["x"], cell["y"], cell["z"]], path, f"line {line}")
        points.append(_named_point(path, f"line {line}", cell.get("label", ""), cell.get("desc", ""), position, system, "desc"))
    return points


def _read_mrk_json(path: Path, document=None) -> list[tuple[str, np.ndarray, str]]:
    document = read_json(path) if document is None else document
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups or not isinstance(markups[0], dict):
        raise LandmarkDataError(path, "Slicer markups JSON without a 'markups' list")
    markup = markups[0]
    if markup.get("type", "Fiducial") != "Fiducial":
        raise LandmarkDataError(path, f"markups type '{markup.get('type')}' is not a point list (Fiducial)")
    system = _coordinate_system(markup.get("coordinateSystem", "LPS"), path)  # Slicer's default is LPS
    points = []
    for index, point in enumerate(markup.get("controlPoints") or []):
        if not isinstance(point, dict):
            raise LandmarkDataError(path, f"controlPoints[{index}] is not an object")
        if str(point.get("positionStatus", "defined")).lower() in ("undefined", "missing"):
            continue
        position = parse_position(point.get("position"), path, f"controlPoints[{index}]")
        label, description = str(point.get("label") or ""), str(point.get("description") or "")
        points.append(_named_point(path, f"controlPoints[{index}]", label, description, position, system, "description"))
    return points


def _read_our_json(path: Path) -> list[tuple[str, np.ndarray, str]]:
    document = read_json(path)
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
    points = []
    for name, value in landmarks.items():
        description = ""
        if isinstance(value, dict):
            description = str(value.get("description") or "")
            value = value.get("position")
        points.append(Point(name, description, _in_ras(parse_position(value, path, f"landmark '{name}'"), system), f"landmark '{name}'"))
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
        position = parse_position(values, path, where)
        points.append(Point(cell("name"), cell("description"), _in_ras(position, system), where))
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


def coordinate_statement(source) -> str | None:
    """The coordinate system a landmark file states ('RAS'/'LPS' as written, or Slicer's 0/1), or None when a
    reader has to assume one (.fcsv and our .json: RAS; .mrk.json: LPS; .csv with x,y,z: RAS). None also
    for a file that cannot be read (the readers report that)."""
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
            "position": ras_to_lps(position).tolist(),
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
        points.append((name, parse_position(position, path, f"landmark '{name}'"), str(descriptions.get(name) or "")))
    atomic_write_text(path, text_of(points))
