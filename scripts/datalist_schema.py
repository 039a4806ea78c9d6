"""The datalist's structure as a JSON Schema (DESIGN §2), validated with jsonschema: every problem at once.

    python -m scripts.datalist_schema          # print the schema (JSON), e.g. for an editor

The schema checks the shape only (which keys hold lists, objects, strings); what needs the files or the
names (images exist, landmark files parse, names match channels, points inside their image) is checked by
scripts.data.load_datalist and scripts.check. Entries and the top level may carry extra keys
("group", "subject", nnU-Net's "name"): never an error. A datalist may hold only ``training``.

Each subschema may carry ``x-message``, the sentence a user reads when it fails; ``{where}`` is the
failing value's place (``training[3]``) and ``{parent}`` the place of the object holding it.
"""

from __future__ import annotations

import json
import sys

from jsonschema import Draft202012Validator



def _names(message: str) -> dict:
    return {"type": "array", "items": {"type": "string", "pattern": r"\S", "x-message": message}, "x-message": message}


_ENTRY = {
    "type": "object",
    "required": ["image"],
    "x-message": "{where} must be an object with an 'image'",
    "properties": {
        "image": {
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}],
            "x-message": "{parent}: 'image' must be a path or a list of paths, got {value}",
        },
        "label": {
            "type": "string", "minLength": 1,
            "x-message": "{parent}: 'label' must be the path of a label map, got {value}",
        },
        "landmarks": {
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "object"}, {"type": "null"}],
            "x-message": "{parent}: 'landmarks' must be a path or an object {{name: [x, y, z]}}, got {value}",
        },
    },
}
_SECTION = {"type": "array", "items": _ENTRY, "x-message": "'{where}' must be a list of entries"}

DATALIST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Landmark detection datalist",
    "description": "Images and their landmarks, paths relative to the datalist's folder (shared/DESIGN.md section 2).",
    "type": "object",
    "x-message": "a datalist must be a JSON object",
    "properties": {
        "landmark_names": {**_names("'landmark_names' must be a list of non-empty strings"), "minItems": 1},
        "left_right_pairs": {
            "type": "array",
            "x-message": "'left_right_pairs' must be a list of {{\"left\": name, \"right\": name}}",
            "items": {
                "anyOf": [
                    {"type": "object", "required": ["left", "right"], "properties": {"left": {"type": "string"}, "right": {"type": "string"}}},
                    {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                ],
                "x-message": "{where} must be {{\"left\": name, \"right\": name}}",
            },
        },
        "landmark_descriptions": {
            "type": "object", "additionalProperties": {"type": "string"},
            "x-message": "'landmark_descriptions' must be an object {{name: description}}",
        },
        "landmark_aliases": {
            "type": "object", "additionalProperties": _names("'landmark_aliases' must be an object {{name: [other name, ...]}}"),
            "x-message": "'landmark_aliases' must be an object {{name: [other name, ...]}}",
        },
        "landmark_numbering": {
            "type": "integer", "minimum": 0,
            "x-message": "'landmark_numbering' must be the whole number of the first landmark (0 or 1), got {value}",
        },
        "training": _SECTION,
        "validation": _SECTION,
        "testing": _SECTION,
    },
    "dependentRequired": {"landmark_numbering": ["landmark_names"]},
}

_VALIDATOR = Draft202012Validator(DATALIST_SCHEMA)


def _place(path) -> str:
    """JSON path as users read it: training[3].image"""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _sentence(error) -> str:
    path = list(error.absolute_path)
    template = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if error.validator == "dependentRequired":
        return "'landmark_numbering' needs 'landmark_names' (the order the numbers count)"
    if template is None:
        where = _place(path) or "datalist"
        return f"{where}: {error.message}"
    value = json.dumps(error.instance) if not isinstance(error.instance, (dict, list)) else type(error.instance).__name__
    return template.format(where=_place(path), parent=_place(path[:-1]), value=value)


def schema_problems(document) -> list[tuple[tuple, str]]:
    """(JSON path, sentence) for every place ``document`` breaks the schema, in document order; [] if none."""
    errors = sorted(_VALIDATOR.iter_errors(document), key=lambda e: [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in e.absolute_path])
    seen, problems = set(), []
    for error in errors:
        sentence = _sentence(error)
        if sentence not in seen:
            seen.add(sentence)
            problems.append((tuple(error.absolute_path), sentence))
    return problems


if __name__ == "__main__":
    print(json.dumps(DATALIST_SCHEMA, indent=2))
    sys.exit(0)
