"""Landmark files (Slicer .fcsv and .mrk.json, our .json, .csv), the datalist, and world <-> voxel mapping.

In memory every position is RAS world millimetres. Files may be LPS: converted on read and write.
Written files: .fcsv in RAS (Slicer 5 style, version 4.11 header), .mrk.json in LPS (what Slicer
writes), .json and .csv in RAS.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scripts.errors import LandmarkDataError

SECTIONS = ("training", "validation", "testing")
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # same flip both ways
FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"]
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_NUMBER_ONLY = re.compile(r"\s*[+-]?\d+\s*")
_SUFFIXES = (".mrk.json", ".json", ".fcsv", ".csv")


# ----------------------------------------------------------------------------- small helpers


def _name_from(label: str, description: str) -> tuple[str, str]:
    """(name, description): the name is the label unless the label is only a number (or empty) and a
    description exists, as AFIDs/Slicer files keep the name in the description."""
    label = "" if label is None else str(label)
    description = "" if description is None else str(description)
    if description and (not label.strip() or _NUMBER_ONLY.fullmatch(label)):
        return description, ""
    return label, description


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


def _points_to_dict(points, source) -> dict[str, tuple[np.ndarray, str]]:
    """[(name, position, description)] -> {name: (position, description)}, refusing empty and duplicate names."""
    result: dict[str, tuple[np.ndarray, str]] = {}
    for name, position, description in points:
        if not name.strip():
            raise LandmarkDataError(source, "landmark without a name")
        if name in result:
            raise LandmarkDataError(source, f"duplicate landmark name '{name}'")
        result[name] = (position, description)
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
    if not path.exists():
        raise LandmarkDataError(path, f"{what} not found")
    if path.is_dir():
        raise LandmarkDataError(path, f"is a folder, not a {what}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LandmarkDataError(path, "not UTF-8 text") from None
    except OSError as error:
        raise LandmarkDataError(path, f"cannot read: {error.strerror or error}") from None


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
        name, description = _name_from(cell.get("label", ""), cell.get("desc", ""))
        if not name.strip():
            raise LandmarkDataError(path, f"line {line}: landmark has no name (empty label and desc)")
        points.append((name, position * flip, description))
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
        name, description = _name_from(point.get("label", ""), point.get("description", ""))
        if not name.strip():
            raise LandmarkDataError(path, f"controlPoints[{index}]: landmark has no name (empty label and description)")
        points.append((name, position * flip, description))
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
        points.append((name, _position(value, path, f"landmark '{name}'") * flip, description))
    return points


def _read_csv(path: Path) -> list[tuple[str, np.ndarray, str]]:
    rows = [row for row in csv.reader(io.StringIO(_read_text(path))) if any(cell.strip() for cell in row)]
    columns = ["name", "x", "y", "z", "description"]
    if rows and {"x", "y", "z"} <= {cell.strip().lower() for cell in rows[0]}:
        columns = [cell.strip().lower() for cell in rows[0]]
        columns = ["description" if c == "desc" else c for c in columns]
        if "name" not in columns:
            raise LandmarkDataError(path, f"header lacks a 'name' column: {rows[0]}")
        rows = rows[1:]
    points = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 4:
            raise LandmarkDataError(path, f"row {number}: expected name,x,y,z, got {row}")
        cell = dict(zip(columns, row))
        position = _position([cell.get("x"), cell.get("y"), cell.get("z")], path, f"row {number}")
        points.append((cell["name"], position, cell.get("description", "")))
    return points


_READERS = {".fcsv": _read_fcsv, ".mrk.json": _read_mrk_json, ".json": _read_our_json, ".csv": _read_csv}


def _read_points(path) -> dict[str, tuple[np.ndarray, str]]:
    """{name: (RAS position, description)} in file order, whatever the format."""
    path = Path(path)
    reader = _READERS[_suffix(path)]
    return _points_to_dict(reader(path), path)


def read_landmarks(path) -> dict[str, np.ndarray]:
    """Landmark positions, RAS world mm, in file order."""
    return {name: position for name, (position, _) in _read_points(path).items()}


def read_landmark_descriptions(path) -> dict[str, str]:
    """Name -> long description ("" if the file has none, or if the description was used as the name)."""
    return {name: description for name, (_, description) in _read_points(path).items()}


# ----------------------------------------------------------------------------- writers


def atomic_write_bytes(path, data: bytes) -> None:
    """Write bytes through a temp file in the same folder and os.replace; nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def atomic_write_text(path, text: str) -> None:
    """UTF-8 text, written atomically (see atomic_write_bytes)."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text needs str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


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

    def section(self, name: str) -> list[dict]:
        """Entries of one section; [] when absent."""
        return self.sections.get(name, [])

    def pair_indices(self) -> list[tuple[int, int]]:
        """(left channel, right channel) for each left/right pair."""
        index = {name: i for i, name in enumerate(self.landmark_names)}
        return [(index[pair["left"]], index[pair["right"]]) for pair in self.left_right_pairs]


def _folded(name: str) -> str:
    """The key under which names that differ only in case/whitespace collide."""
    return "".join(name.split()).casefold()


def _resolve(folder: Path, value: str) -> str:
    return os.path.normpath(os.path.join(folder, os.path.expanduser(value)))


def _resolve_image(datalist: Path, where: str, value):
    if isinstance(value, str) and value:
        image = _resolve(datalist.parent, value)
        if not os.path.exists(image):
            raise LandmarkDataError(image, f"image not found (listed in {datalist}, {where})")
        return image
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [_resolve_image(datalist, where, v) for v in value]
    raise LandmarkDataError(datalist, f"{where}: 'image' must be a path or a list of paths, got {value!r}")


def _entry_landmarks(datalist: Path, where: str, value) -> tuple[str, dict[str, tuple[np.ndarray, str]]]:
    """(source for messages, {name: (RAS position, description)}) of an entry's path or inline landmarks."""
    if isinstance(value, str):
        path = _resolve(datalist.parent, value)
        return path, _read_points(path)
    if isinstance(value, dict):
        source = f"{datalist} ({where} landmarks)"
        if value.duplicate_keys:
            raise LandmarkDataError(source, f"duplicate landmark name '{value.duplicate_keys[0]}'")
        points = [(name, _position(v, source, f"landmark '{name}'"), "") for name, v in value.items()]
        return source, _points_to_dict(points, source)
    raise LandmarkDataError(datalist, f"{where}: 'landmarks' must be a path or an object {{name: [x, y, z]}}")


def _explicit_names(datalist: Path, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(n, str) and n.strip() for n in value):
        raise LandmarkDataError(datalist, "'landmark_names' must be a list of non-empty strings")
    seen: dict[str, str] = {}
    for name in value:
        if name in seen.values():
            raise LandmarkDataError(datalist, f"duplicate name '{name}' in landmark_names")
        if _folded(name) in seen:
            other = seen[_folded(name)]
            raise LandmarkDataError(datalist, f"landmark_names '{other}' and '{name}' differ only in case/whitespace")
        seen[_folded(name)] = name
    return list(value)


def _check_known(source, name: str, names: list[str]) -> None:
    """Error unless `name` is one of the explicit `names`, saying when it differs only in case/whitespace."""
    if name in names:
        return
    close = [known for known in names if _folded(known) == _folded(name)]
    if close:
        raise LandmarkDataError(source, f"landmark '{name}' differs only in case/whitespace from '{close[0]}'")
    raise LandmarkDataError(source, f"landmark '{name}' is not in landmark_names")


def _collect_names(loaded: list[tuple[str, dict]]) -> list[str]:
    """Names in order of first appearance; names that differ only in case/whitespace are an error."""
    first_seen: dict[str, tuple[str, str]] = {}  # folded -> (name, source)
    names: list[str] = []
    for source, points in loaded:
        for name in points:
            known = first_seen.get(_folded(name))
            if known is None:
                first_seen[_folded(name)] = (name, source)
                names.append(name)
            elif known[0] != name:
                raise LandmarkDataError(
                    source, f"landmark '{name}' differs only in case/whitespace from '{known[0]}' (in {known[1]})"
                )
    return names


def _pairs(datalist: Path, value, names: list[str]) -> list[dict]:
    if not isinstance(value, list):
        raise LandmarkDataError(datalist, "'left_right_pairs' must be a list of {\"left\": name, \"right\": name}")
    pairs, used = [], set()
    for index, pair in enumerate(value):
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            pair = {"left": pair[0], "right": pair[1]}
        if not isinstance(pair, dict) or not all(isinstance(pair.get(side), str) for side in ("left", "right")):
            raise LandmarkDataError(datalist, f"left_right_pairs[{index}] must be {{\"left\": name, \"right\": name}}")
        left, right = pair["left"], pair["right"]
        for name in (left, right):
            _check_known(datalist, name, names)
        if left == right or left in used or right in used:
            raise LandmarkDataError(datalist, f"left_right_pairs[{index}]: '{left}'/'{right}' repeats a landmark")
        used.update((left, right))
        pairs.append({"left": left, "right": right})
    return pairs


def _descriptions(datalist: Path, explicit, loaded, names: list[str]) -> dict[str, str]:
    """Every name -> description: the datalist's `landmark_descriptions`, else the first file description
    that differs from the name, else ""."""
    if not isinstance(explicit, dict) or not all(isinstance(v, str) for v in explicit.values()):
        raise LandmarkDataError(datalist, "'landmark_descriptions' must be an object {name: description}")
    for name in explicit:
        _check_known(datalist, name, names)
    result = {name: explicit.get(name, "") for name in names}
    for _, points in loaded:
        for name, (_, description) in points.items():
            if name in result and not result[name] and description and description != name:
                result[name] = description
    return result


def _load_entry(datalist: Path, where: str, entry) -> tuple[dict, tuple[str, dict] | None]:
    """(resolved entry, (source, points) or None when it has no landmarks)."""
    if not isinstance(entry, dict) or "image" not in entry:
        raise LandmarkDataError(datalist, f"{where} must be an object with an 'image'")
    landmarks = entry.get("landmarks")  # still a _JsonObject, which knows its duplicate keys
    entry = _plain(entry)
    entry["image"] = _resolve_image(datalist, where, entry["image"])
    if landmarks is None:
        entry.pop("landmarks", None)
        return entry, None
    source, points = _entry_landmarks(datalist, where, landmarks)
    entry["landmarks"] = {name: position.tolist() for name, (position, _) in points.items()}
    return entry, (source, points)


def load_datalist(path) -> Datalist:
    """Read and check a datalist (DESIGN §2): absolute image paths, landmarks as RAS {name: [x, y, z]}."""
    path = Path(os.path.abspath(path))
    document = _read_json(path, "datalist")
    if not isinstance(document, dict):
        raise LandmarkDataError(path, "a datalist must be a JSON object")
    sections: dict[str, list[dict]] = {}
    loaded: list[tuple[str, dict]] = []  # (source, points) in training, validation, testing order
    for section in (s for s in SECTIONS if s in document):
        if not isinstance(document[section], list):
            raise LandmarkDataError(path, f"'{section}' must be a list of entries")
        sections[section] = []
        for index, raw in enumerate(document[section]):
            entry, landmarks = _load_entry(path, f"{section}[{index}]", raw)
            sections[section].append(entry)
            loaded += [landmarks] if landmarks else []
    if not any(sections.values()):
        raise LandmarkDataError(path, "datalist has no entries in training, validation or testing")

    if "landmark_names" in document:
        names = _explicit_names(path, document["landmark_names"])
        for source, points in loaded:
            for name in points:
                _check_known(source, name, names)
    else:
        names = _collect_names(loaded)
    known = ("landmark_names", "left_right_pairs", "landmark_descriptions", *SECTIONS)
    return Datalist(
        path=path,
        landmark_names=names,
        left_right_pairs=_pairs(path, document.get("left_right_pairs", []), names),
        descriptions=_descriptions(path, document.get("landmark_descriptions", {}), loaded, names),
        sections=sections,
        extra={key: _plain(value) for key, value in document.items() if key not in known},
    )
