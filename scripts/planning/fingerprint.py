"""Dataset fingerprint: what the planner needs to know about the images and the landmarks, as JSON.

Geometry comes from image headers (scripts.image_io.read_image_header), intensities from SimpleITK.
Every number is rounded, lists whose order would be arbitrary are sorted, and sampling uses a fixed
seed, so the same datalist always gives the same fingerprint. The rules are in docs/planner.md.
Images are read on one thread per core; ``cached_fingerprint`` keeps the result beside the datalist
(``<stem>.fingerprint.json``) and reuses it while the entries, the image files and this code are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from scripts.errors import LandmarkDataError
from scripts.image_io import check_finite, read_image, read_image_header
from scripts.atomic import atomic_write_text
from scripts.data import Datalist, entry_images, grid_problems, landmarks_to_array, outside_names
from scripts.geometry import ras_axes
from scripts.landmark_names import name_variants

logger = logging.getLogger(__name__)

SEED = 20240725
WHOLE_IMAGE_SAMPLES = 100_000  # voxels drawn to estimate whole-image percentiles
FOREGROUND_SAMPLES = 10_000  # foreground voxels kept per image (nnU-Net keeps 10000 too)
CT_FOREGROUND_HU = -500.0  # CT foreground: denser than lung/air
MR_FOREGROUND_FRACTION = 0.1  # MR foreground: above p1 + 10% of the p1..p99 range
CT_AIR_PERCENTILE_RANGE = (-3100.0, -900.0)  # whole-image 0.5th percentile of a CT: air or padding
CT_MIN_AT_MOST = -500.0
LR_DOMINANCE = 2.0  # a pair's |dx| must be >= 2 x the norm of its (dy, dz)
LR_MIDLINE_FRACTION = 0.25  # a pair's midpoint within 25% of its |dx| of the mid-sagittal plane...
LR_MIDLINE_MIN_MM = 3.0  # ...or within 3 mm
MIDLINE_FROM_PAIRS_MIN = 3  # mid-sagittal plane from pair midpoints when at least 3 candidates are x-dominant
SEPARATORS = "_- ."
SIDE_WORDS = (("Left", "Right"), ("left", "right"), ("LEFT", "RIGHT"))
SIDE_LETTERS = (("L", "R"), ("l", "r"))


def _r(value, digits: int = 4):
    """Round a float, or every float in a nested list, for a stable JSON dump."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_r(v, digits) for v in value]
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


# ----------------------------------------------------------------------------- cases and geometry


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _labelled_cases(datalist: Datalist) -> list[tuple[str, int, dict]]:
    """(section, index in section, entry) of training and validation entries, sorted by image path."""
    training = datalist.section("training")
    if not training:
        raise LandmarkDataError(datalist.path, "no training cases: the planner needs at least one annotated training image")
    if not any(entry.get("landmarks") for entry in training):
        raise LandmarkDataError(datalist.path, "no training case has landmarks: nothing to plan for")
    cases = [
        (section, index, entry)
        for section in ("training", "validation")
        for index, entry in enumerate(datalist.section(section))
    ]
    channels = {len(entry_images(entry)) for _, _, entry in cases}
    if len(channels) > 1:
        raise LandmarkDataError(datalist.path, f"entries list different numbers of images per case: {sorted(channels)}")
    return sorted(cases, key=lambda case: (entry_images(case[2]), case[0], case[1]))


def _geometry(path: str) -> dict:
    header = read_image_header(path)  # the reader policy refuses what is not a 3D scalar image
    spacing = np.asarray(header.spacing, dtype=np.float64)
    shape = np.asarray(header.shape, dtype=np.int64)
    axes = ras_axes(header.affine)
    spacing_ras, shape_ras = np.empty(3), np.empty(3, dtype=np.int64)
    spacing_ras[axes], shape_ras[axes] = spacing, shape
    return {
        "header": header,
        "shape": shape.tolist(),
        "spacing": _r(spacing, 5),
        "direction": _r(header.affine[:3, :3] / spacing, 5),
        "shape_ras": shape_ras.tolist(),
        "spacing_ras": _r(spacing_ras, 5),
        "extent_mm": _r(spacing_ras * shape_ras, 3),
    }


# ----------------------------------------------------------------------------- intensities


def _read_pixels(path: str) -> tuple[np.ndarray, str | None]:
    """Voxel values (float32, flattened) and the DICOM modality tag when the file carries one.

    Read through the reader policy (scripts.image_io.read_image), as every other command reads it."""
    image = read_image(path)
    modality = image.GetMetaData("0008|0060") if image.HasMetaDataKey("0008|0060") else None
    values = sitk.GetArrayFromImage(image).astype(np.float32, copy=False).ravel()
    check_finite(path, values)
    return values, (modality.strip().upper() or None) if modality else None


def looks_like_hounsfield(whole_min: float, whole_p0_5: float) -> bool:
    """CT when the darkest voxels are air (about -1000 HU) or CT padding (-1024, -2048, -3024)."""
    low, high = CT_AIR_PERCENTILE_RANGE
    return whole_min <= CT_MIN_AT_MOST and low <= whole_p0_5 <= high


def _foreground_threshold(modality: str, whole: np.ndarray) -> float:
    if modality == "CT":
        return CT_FOREGROUND_HU
    p1, p99 = np.percentile(whole, [1, 99])
    return float(p1 + MR_FOREGROUND_FRACTION * (p99 - p1))


def _summary(values: np.ndarray) -> dict:
    p0_5, p50, p99_5 = np.percentile(values, [0.5, 50, 99.5])
    return {
        "mean": _r(values.mean(dtype=np.float64)),
        "std": _r(values.std(dtype=np.float64)),
        "p0_5": _r(p0_5),
        "p50": _r(p50),
        "p99_5": _r(p99_5),
        "min": _r(values.min()),
        "max": _r(values.max()),
    }


def image_intensities(path: str) -> tuple[dict, np.ndarray]:
    """(statistics, foreground sample) of one image; see docs/planner.md for the rules."""
    values, header_modality = _read_pixels(path)
    rng = np.random.default_rng(SEED)
    whole = values if values.size <= WHOLE_IMAGE_SAMPLES else values[rng.integers(0, values.size, WHOLE_IMAGE_SAMPLES)]
    whole_min, whole_max = float(values.min()), float(values.max())
    whole_p0_5 = float(np.percentile(whole, 0.5))
    if header_modality:
        modality, source = ("CT" if header_modality == "CT" else "MR"), f"header ({header_modality})"
    else:
        modality, source = ("CT" if looks_like_hounsfield(whole_min, whole_p0_5) else "MR"), "intensities"
    threshold = _foreground_threshold(modality, whole)
    foreground = values[values > threshold]
    if foreground.size == 0:
        foreground = values
    fraction = foreground.size / values.size
    if foreground.size > FOREGROUND_SAMPLES:
        foreground = foreground[rng.integers(0, foreground.size, FOREGROUND_SAMPLES)]
    stats = {
        "modality_hint": modality,
        "modality_source": source,
        "whole_min": _r(whole_min),
        "whole_max": _r(whole_max),
        "whole_p0_5": _r(whole_p0_5),
        "foreground_threshold": _r(threshold),
        "foreground_fraction": _r(fraction),
        "foreground": _summary(foreground),
    }
    return stats, foreground


def _intensity_cases(n_cases: int, limit: int) -> list[int]:
    """Evenly spread case positions (in the sorted case list) whose intensities are read."""
    if n_cases <= limit:
        return list(range(n_cases))
    return sorted({int(i) for i in np.linspace(0, n_cases - 1, max(limit, 1)).round()})


def _modality_vote(hints: list[str]) -> str:
    """The majority of per-image hints; a tie goes to MR (per-image z-score is the safer scheme)."""
    counts = Counter(hints)
    return "CT" if counts["CT"] > counts["MR"] else "MR"


# ----------------------------------------------------------------------------- landmarks


def _nearest_neighbours(positions: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Per landmark: median over cases of the distance to, and |offset| per axis from, the nearest other one."""
    n_cases, n = positions.shape[:2]
    distances = [[] for _ in range(n)]
    offsets = [[] for _ in range(n)]
    neighbours = [Counter() for _ in range(n)]
    for case in range(n_cases):
        present = np.flatnonzero(np.all(np.isfinite(positions[case]), axis=1))
        if present.size < 2:
            continue
        points = positions[case, present]
        diff = points[:, None, :] - points[None, :, :]
        dist = np.linalg.norm(diff, axis=2)
        np.fill_diagonal(dist, np.inf)
        nearest = np.argmin(dist, axis=1)
        for row, landmark in enumerate(present):
            distances[landmark].append(dist[row, nearest[row]])
            offsets[landmark].append(np.abs(diff[row, nearest[row]]))
            neighbours[landmark][names[present[nearest[row]]]] += 1
    result = {}
    for i, name in enumerate(names):
        if not distances[i]:
            result[name] = {"nearest_neighbour": None, "nearest_neighbour_mm": None, "nearest_neighbour_offset_mm": None}
            continue
        top = max(neighbours[i].items(), key=lambda item: (item[1], -names.index(item[0])))[0]
        result[name] = {
            "nearest_neighbour": top,
            "nearest_neighbour_mm": _r(np.median(distances[i]), 3),
            "nearest_neighbour_offset_mm": _r(np.median(np.asarray(offsets[i]), axis=0), 3),
        }
    return result


def _landmark_statistics(positions: np.ndarray, names: list[str]) -> dict[str, dict]:
    neighbours = _nearest_neighbours(positions, names)
    stats = {}
    for i, name in enumerate(names):
        annotated = positions[np.all(np.isfinite(positions[:, i]), axis=1), i]
        stats[name] = {
            "n_cases": int(annotated.shape[0]),
            "mean_position": _r(annotated.mean(axis=0), 3) if len(annotated) else None,
            "std_mm": _r(annotated.std(axis=0), 3) if len(annotated) else None,
            **neighbours[name],
        }
    return stats


def _side_partners(name: str) -> list[tuple[str, str]]:
    """(left name, right name) candidates this name implies by a side prefix or suffix, if it is a left name."""
    candidates = []
    for left, right in SIDE_WORDS:
        if name.startswith(left) and len(name) > len(left):
            candidates.append((name, right + name[len(left) :]))
        if name.endswith(left) and len(name) > len(left):
            candidates.append((name, name[: -len(left)] + right))
    for left, right in SIDE_LETTERS:
        rest = name[1:]
        # "LSLMS" (bare capital L) or "l_eye" / "L superior LMS" (letter + separator)
        if name.startswith(left) and rest and (left == "L" and rest[0].isupper() or rest[0] in SEPARATORS):
            candidates.append((name, right + rest))
        if name.endswith(left) and len(name) > 2 and name[-2] in SEPARATORS:
            candidates.append((name, name[:-1] + right))
    return candidates


def left_right_candidates(names: list[str]) -> list[tuple[str, str]]:
    """Name pairs that read as left/right (see docs/planner.md), each name used once, in name order."""
    known, used, pairs = set(names), set(), []
    for name in names:
        for left, right in _side_partners(name):
            if right in known and right != left and left not in used and right not in used:
                pairs.append((left, right))
                used.update((left, right))
    return pairs


def _midline_x(case_positions: np.ndarray, candidate_midpoints: list[float]) -> float:
    """Mid-sagittal plane x of one case: the median midpoint of its x-dominant name pairs when there are
    at least 3, else the median x of all its landmarks."""
    if len(candidate_midpoints) >= MIDLINE_FROM_PAIRS_MIN:
        return float(np.median(candidate_midpoints))
    xs = case_positions[np.all(np.isfinite(case_positions), axis=1), 0]
    return float(np.median(xs)) if xs.size else np.nan


def _x_dominant(offset: np.ndarray) -> bool:
    return abs(offset[0]) >= LR_DOMINANCE * np.linalg.norm(offset[1:])


def confirm_left_right_pairs(positions: np.ndarray, names: list[str], candidates: list[tuple[str, str]]):
    """Keep the candidate pairs whose positions mirror each other across the mid-sagittal plane.

    Per case the offset right - left and the midpoint are taken; over cases their medians must show
    (1) |dx| >= 2 |(dy, dz)|, (2) dx > 0 (RAS: the right one has the larger x), (3) the midpoint within
    max(25% of |dx|, 3 mm) of the case's mid-sagittal plane. Returns (accepted, rejected with reasons).
    """
    index = {name: i for i, name in enumerate(names)}
    per_case = []  # per candidate: list of (offset, midpoint x) over cases that annotate both
    for left, right in candidates:
        rows = []
        for case in range(positions.shape[0]):
            a, b = positions[case, index[left]], positions[case, index[right]]
            if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
                rows.append((case, b - a, (a[0] + b[0]) / 2))
        per_case.append(rows)
    midlines = []
    for case in range(positions.shape[0]):
        midpoints = [mid for rows in per_case for c, offset, mid in rows if c == case and _x_dominant(offset)]
        midlines.append(_midline_x(positions[case], midpoints))
    accepted, rejected = [], []
    for (left, right), rows in zip(candidates, per_case):
        pair = {"left": left, "right": right}
        if not rows:
            rejected.append({**pair, "reason": "never annotated together in one case"})
            continue
        offset = np.median(np.asarray([offset for _, offset, _ in rows]), axis=0)
        deviation = float(np.median([mid - midlines[case] for case, _, mid in rows]))
        tolerance = max(LR_MIDLINE_FRACTION * abs(offset[0]), LR_MIDLINE_MIN_MM)
        evidence = {"offset_mm": _r(offset, 3), "midline_deviation_mm": _r(deviation, 3), "n_cases": len(rows)}
        if not _x_dominant(offset):
            reason = f"offset right-left {_r(offset, 1)} mm is not mostly along x (|dx| < {LR_DOMINANCE} x |(dy, dz)|)"
        elif offset[0] <= 0:
            reason = f"'{right}' lies left of '{left}' (dx = {_r(offset[0], 1)} mm; RAS x grows to the right)"
        elif abs(deviation) > tolerance:
            reason = f"midpoint {_r(deviation, 1)} mm from the mid-sagittal plane (tolerance {_r(tolerance, 1)} mm)"
        else:
            accepted.append({**pair, **evidence})
            continue
        rejected.append({**pair, **evidence, "reason": reason})
    return accepted, rejected, midlines


def mid_sagittal_plane(case_positions: np.ndarray, index: dict[str, int], pairs: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """(point, unit normal) of one case's mid-sagittal plane from its left/right pairs: the normal is the
    mean left->right direction, the point the mean of the pairs' midpoints. Unlike world x, this follows
    a head in any pose."""
    directions, midpoints = [], []
    for pair in pairs:
        left, right = case_positions[index[pair["left"]]], case_positions[index[pair["right"]]]
        if np.all(np.isfinite(left)) and np.all(np.isfinite(right)) and np.linalg.norm(right - left) > 0:
            directions.append((right - left) / np.linalg.norm(right - left))
            midpoints.append((left + right) / 2)
    if not directions:
        return None
    normal = np.mean(directions, axis=0)
    return np.mean(midpoints, axis=0), normal / np.linalg.norm(normal)


def _midline_offsets(positions: np.ndarray, names: list[str], midlines: list[float], pairs: list[dict]) -> dict[str, float | None]:
    """Per landmark: median over cases of its distance (mm) to the case's mid-sagittal plane (from the
    pairs; |x - midline x| for a case without pairs)."""
    index = {name: i for i, name in enumerate(names)}
    planes = [mid_sagittal_plane(positions[c], index, pairs) for c in range(positions.shape[0])]
    result = {}
    for i, name in enumerate(names):
        values = []
        for c in range(positions.shape[0]):
            point = positions[c, i]
            if not np.all(np.isfinite(point)):
                continue
            if planes[c] is not None:
                values.append(abs(float(np.dot(point - planes[c][0], planes[c][1]))))
            elif np.isfinite(midlines[c]):
                values.append(abs(point[0] - midlines[c]))
        result[name] = _r(np.median(values), 3) if values else None
    return result


def _pairs_block(datalist: Datalist, positions: np.ndarray, names: list[str]) -> dict:
    candidates = left_right_candidates(names)
    accepted, rejected, midlines = confirm_left_right_pairs(positions, names, candidates)
    if datalist.left_right_pairs:
        pairs, source = [{"left": p["left"], "right": p["right"]} for p in datalist.left_right_pairs], "datalist"
    else:
        pairs, source = [{"left": p["left"], "right": p["right"]} for p in accepted], "names confirmed by positions"
    return {
        "left_right_pairs": pairs,
        "left_right_pairs_source": source,
        "left_right_check": {"accepted": accepted, "rejected": rejected},
        "midlines": midlines,
    }


# ----------------------------------------------------------------------------- the fingerprint


def _case_record(datalist: Datalist, section: str, index: int, entry: dict, names: list[str]) -> tuple[dict, np.ndarray, list]:
    root = str(datalist.path.parent)
    paths = entry_images(entry)
    geometries = [_geometry(path) for path in paths]
    mismatched = grid_problems([geometry["header"] for geometry in geometries])
    if mismatched:
        raise LandmarkDataError(mismatched[0].source, mismatched[0].message)
    geometry = geometries[0]
    header = geometry.pop("header")
    positions = landmarks_to_array(entry.get("landmarks") or {}, names)
    annotated = np.all(np.isfinite(positions), axis=1)
    outside = outside_names(header, names, positions)  # the planner warns; training (check_cases) refuses them
    if annotated.any() and len(outside) == int(annotated.sum()):
        raise LandmarkDataError(
            paths[0], f"all {int(annotated.sum())} landmarks lie outside the image (wrong image, or LPS/RAS mixed up?)"
        )
    warnings = []
    if outside:
        warnings.append(f"{paths[0]}: landmark(s) outside the image: {', '.join(outside)}")
    record = {
        "image": _relative(paths[0], root) if len(paths) == 1 else [_relative(p, root) for p in paths],
        "section": section,
        "index": index,
        **{key: value for key, value in geometry.items()},
        "n_landmarks": int(annotated.sum()),
        "n_landmarks_outside": len(outside),
    }
    return record, positions, warnings


def workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _parallel_map(function, items: list) -> list:
    """``[function(item) for item in items]`` on one thread per core, results in order. Threads suffice: the work is
    SimpleITK reading and numpy sorting, which release the GIL; the first error raised is re-raised as is."""
    items = list(items)
    if len(items) < 2 or workers() < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers(), len(items))) as pool:
        return list(pool.map(function, items))


def _intensity_block(records: list[dict], cases: list[tuple[str, int, dict]], limit: int) -> tuple[list, list]:
    """Per-image statistics (into the records) and the pooled foreground statistics per channel."""
    n_channels = len(entry_images(cases[0][2]))
    pooled = [[] for _ in range(n_channels)]
    hints = [[] for _ in range(n_channels)]
    chosen = set(_intensity_cases(len(cases), limit))
    paths = [path for position, (_, _, entry) in enumerate(cases) if position in chosen for path in entry_images(entry)]
    read = iter(_parallel_map(image_intensities, paths))  # in order: the fingerprint does not depend on the workers
    for position, (record, (_, _, entry)) in enumerate(zip(records, cases)):
        record["intensity"] = None
        if position not in chosen:
            continue
        record["intensity"] = []
        for channel, _ in enumerate(entry_images(entry)):
            stats, sample = next(read)
            record["intensity"].append(stats)
            pooled[channel].append(sample)
            hints[channel].append(stats["modality_hint"])
    modality = [_modality_vote(h) for h in hints]
    channels = [
        {
            "modality": modality[c],
            "modality_votes": dict(sorted(Counter(hints[c]).items())),
            "n_images": len(pooled[c]),
            "foreground": _summary(np.concatenate(pooled[c])),
        }
        for c in range(n_channels)
    ]
    return modality, channels


def count_subjects(entries) -> int:
    """Distinct people (or templates) among ``entries``: an entry's ``subject`` key, else its ``anatomy`` key
    (warps of one template share it), else its image path; several scans of one person look alike to a model."""
    def subject(entry: dict):
        for key in ("subject", "anatomy"):
            if entry.get(key) not in (None, ""):
                return (key, str(entry[key]))
        return ("image", str(entry["image"]))

    return len({subject(entry) for entry in entries})


MAX_LANDMARKS = 512  # channels; 512 heatmaps of a 96^3 patch are already 1.8 GB per sample in float32


def fingerprint_dataset(datalist: Datalist, max_cases_for_intensity: int = 50) -> dict:
    """Geometry, intensities and landmark layout of the training + validation cases (JSON-able)."""
    cases = _labelled_cases(datalist)
    names = list(datalist.landmark_names)
    if len(names) > MAX_LANDMARKS:
        raise LandmarkDataError(datalist.path, f"{len(names)} landmark names: over {MAX_LANDMARKS}, one heatmap channel each would not "
                                               "fit in memory (a point cloud or surface rather than landmarks?)")
    records, positions, warnings = [], [], []
    for record, case_positions, case_warnings in _parallel_map(lambda case: _case_record(datalist, *case, names), cases):
        records.append(record)
        positions.append(case_positions)
        warnings.extend(case_warnings)
    positions = np.stack(positions) if names else np.zeros((len(cases), 0, 3))
    modality, channels = _intensity_block(records, cases, max_cases_for_intensity)
    pairs = _pairs_block(datalist, positions, names)
    landmarks = _landmark_statistics(positions, names)
    midline = _midline_offsets(positions, names, pairs.pop("midlines"), pairs["left_right_pairs"])
    for name in names:
        landmarks[name]["midline_offset_mm"] = midline[name]
    entry_names = sorted({name for _, _, entry in cases for name in (entry.get("landmarks") or {})})
    return {
        "n_training": len(datalist.section("training")),
        "n_training_subjects": count_subjects(datalist.section("training")),
        "n_validation": len(datalist.section("validation")),
        "in_channels": len(channels),
        "modality": modality,
        "channels": channels,
        "images": records,
        "landmark_names": names,
        "landmarks": landmarks,
        **pairs,
        "name_variants": name_variants(sorted(set(names) | set(entry_names))),
        "warnings": sorted(warnings),
    }


# ----------------------------------------------------------------------------- cache beside the datalist

CACHE_SUFFIX = ".fingerprint.json"
_SOURCES = ("planning/fingerprint.py", "image_io.py", "geometry.py", "data.py", "landmark_io.py", "landmark_names.py")  # the code a fingerprint depends on


def fingerprint_cache_path(datalist: Datalist) -> Path:
    """``<datalist stem>.fingerprint.json`` beside the datalist file."""
    return datalist.path.with_name(datalist.path.stem + CACHE_SUFFIX)


def _file_state(path: str) -> list:
    """[path, size, mtime_ns] of a file, or of every file in a folder (a DICOM series)."""
    if os.path.isdir(path):
        return [_file_state(os.path.join(path, name)) for name in sorted(os.listdir(path))]
    state = os.stat(path)
    return [path, state.st_size, state.st_mtime_ns]


def fingerprint_key(datalist: Datalist, max_cases_for_intensity: int = 50) -> str:
    """What a fingerprint depends on, hashed: the labelled entries as loaded (landmark positions included), every
    image's path, size and modification time, the setting, and the source of the code that computes it."""
    root = Path(__file__).resolve().parent.parent
    code = [hashlib.sha256((root / name).read_bytes()).hexdigest() for name in _SOURCES]
    entries = [(section, datalist.section(section)) for section in ("training", "validation")]
    images = sorted({path for _, section in entries for entry in section for path in entry_images(entry)})
    content = {"code": code, "max_cases_for_intensity": max_cases_for_intensity, "names": list(datalist.landmark_names),
               "pairs": datalist.left_right_pairs, "entries": entries, "files": [_file_state(path) for path in images]}
    text = json.dumps(content, sort_keys=True, default=lambda value: np.asarray(value, dtype=np.float64).tolist()
                      if isinstance(value, (np.ndarray, np.generic)) else str(value))
    return hashlib.sha256(text.encode()).hexdigest()


def cached_fingerprint(datalist: Datalist, max_cases_for_intensity: int = 50) -> dict:
    """``fingerprint_dataset``, read from the cache beside the datalist when nothing it depends on changed
    (``fingerprint_key``), else computed and cached there (a read-only folder just goes without a cache)."""
    path = fingerprint_cache_path(datalist)
    key = fingerprint_key(datalist, max_cases_for_intensity)
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            logger.info("fingerprint read from %s", path)
            return cached["fingerprint"]
    except (OSError, ValueError, AttributeError):
        pass
    fingerprint = fingerprint_dataset(datalist, max_cases_for_intensity)
    try:
        atomic_write_text(path, json.dumps({"key": key, "fingerprint": fingerprint}, indent=1) + "\n")
    except OSError as error:
        logger.info("fingerprint not cached (%s: %s)", path, error.strerror or error)
    return json.loads(json.dumps(fingerprint))  # the same JSON values a cache read returns
