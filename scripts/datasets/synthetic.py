"""A synthetic landmark dataset: small 3D head-like volumes with distinct structures at random positions.

Used by the end-to-end tests and the benchmarks, and handy to check an installation without real data.
Each volume has its own spacing and orientation (axis permutations, flips and a small oblique
rotation), so a model that learns it must track points through every preprocessing step. The
structures: ``Apex`` (bright ball), ``Pit`` (dark ball), ``Ring`` (bright hollow shell) and a
left/right pair ``LKnob``/``RKnob`` (identical bright cubes, told apart only by their side).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from scripts.geometry import rotation_xyz, voxel_to_world

LANDMARK_NAMES = ["Apex", "Pit", "Ring", "LKnob", "RKnob"]
LEFT_RIGHT_PAIRS = [{"left": "LKnob", "right": "RKnob"}]
HEAD_RADII_MM = np.array([40.0, 46.0, 38.0])


def random_affine(rng: np.random.Generator, shape, spacing_range=(1.6, 2.4), max_rotation_deg: float = 10.0) -> np.ndarray:
    """voxel -> RAS world: random axis order and signs, anisotropic spacing, small oblique rotation, centred."""
    spacing = rng.uniform(*spacing_range, size=3)
    permutation = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)[:, None]
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
    rotation = rotation_xyz(angles)
    linear = rotation @ permutation @ np.diag(spacing)
    centre = (np.asarray(shape) - 1) / 2
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ centre + rng.uniform(-3, 3, size=3)
    return affine


def random_landmarks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """World positions inside the head, kept apart so the structures never overlap."""
    while True:
        points = {
            "Apex": rng.uniform([-15, -25, 5], [15, 25, 25]),
            "Pit": rng.uniform([-15, -25, -25], [15, 25, -5]),
            "Ring": rng.uniform([-8, -25, -15], [8, 25, 15]),
            "LKnob": rng.uniform([-30, -20, -15], [-16, 20, 15]),
            "RKnob": rng.uniform([16, -20, -15], [30, 20, 15]),
        }
        names = list(points)
        if all(np.linalg.norm(points[a] - points[b]) > 16 for i, a in enumerate(names) for b in names[i + 1 :]):
            return points


def render_volume(rng: np.random.Generator, shape, affine: np.ndarray, points: dict[str, np.ndarray]) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = voxel_to_world(affine, ijk)
    head = np.sum((world / HEAD_RADII_MM) ** 2, axis=1) <= 1.0
    image = 100.0 * head
    distance = {name: np.linalg.norm(world - p, axis=1) for name, p in points.items()}
    image[distance["Apex"] <= 4.0] = 300.0
    image[distance["Pit"] <= 5.0] = 10.0
    image[(distance["Ring"] >= 3.0) & (distance["Ring"] <= 5.5)] = 250.0
    for knob in ("LKnob", "RKnob"):
        image[np.max(np.abs(world - points[knob]), axis=1) <= 3.5] = 220.0
    image = image.reshape(shape) + rng.normal(0.0, 8.0, size=shape) * (image.reshape(shape) > 0)
    return image.astype(np.float32)


def make_case(folder: Path, name: str, rng: np.random.Generator, shape=(48, 48, 48)) -> tuple[str, dict[str, list[float]]]:
    affine = random_affine(rng, shape)
    points = random_landmarks(rng)
    image = render_volume(rng, shape, affine, points)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return str(path), {k: [float(v) for v in p] for k, p in points.items()}


def make_synthetic_dataset(root: str, n_training: int = 8, n_validation: int = 2, n_testing: int = 4, seed: int = 0, unannotated_every: int = 3) -> str:
    """Write images and a datalist under root; every ``unannotated_every``-th training case lacks ``Pit``.

    Landmarks are stored in several formats (Slicer .fcsv, LPS .mrk.json, our .json, inline) so
    every reader is exercised. Returns the datalist path.
    """
    from scripts.landmark_io import write_landmarks

    root_path = Path(root)
    (root_path / "images").mkdir(parents=True, exist_ok=True)
    (root_path / "landmarks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    formats = [".fcsv", ".mrk.json", ".json", None]
    sections: dict[str, list] = {"training": [], "validation": [], "testing": []}
    counts = {"training": n_training, "validation": n_validation, "testing": n_testing}
    for section, count in counts.items():
        for i in range(count):
            name = f"{section}_{i:03d}"
            image, points = make_case(root_path / "images", name, rng)
            if section == "training" and unannotated_every and i % unannotated_every == unannotated_every - 1:
                points.pop("Pit")
            entry = {"image": os.path.relpath(image, root_path), "group": section}
            suffix = formats[i % len(formats)]
            if suffix is None:
                entry["landmarks"] = points
            else:
                landmark_file = root_path / "landmarks" / f"{name}{suffix}"
                write_landmarks(str(landmark_file), points)
                entry["landmarks"] = os.path.relpath(landmark_file, root_path)
            sections[section].append(entry)
    datalist = {"landmark_names": LANDMARK_NAMES, "left_right_pairs": LEFT_RIGHT_PAIRS, **sections}
    path = root_path / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return str(path)
