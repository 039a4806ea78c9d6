"""Datalist entries for the engines: training/validation selection, input resolution for inference,
an up-front integrity check, and a dataset that reports unreadable cases instead of crashing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset

from scripts.errors import LandmarkDataError, exits_on_data_error
from scripts.image_io import check_image_data, read_image_header
from scripts.landmark_io import landmarks_to_array, load_datalist, world_to_voxel

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def image_stem(path: str | Sequence[str], root: str | None = None) -> str:
    """Output name for an input image: its path relative to root (folder structure kept), suffix dropped."""
    path = str(path[0] if isinstance(path, (list, tuple)) else path)
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    if rel.startswith(".."):
        rel = os.path.basename(path)
    for suffix in IMAGE_SUFFIXES:
        if rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel.rstrip("/")


def _with_stems(entries: list[dict], root: str) -> list[dict]:
    return [{**entry, "stem": image_stem(entry["image"], root)} for entry in entries]


@exits_on_data_error
def select_cases(datalist_file: str, section: str, fold: int | None = None, folds: Sequence[dict] | None = None) -> list[dict]:
    """Entries of one datalist section; with a fold, the planner's split of "training" decides.

    ``section`` "training"/"validation": without folds these are the datalist's own sections.
    """
    datalist = load_datalist(datalist_file)
    root = str(Path(datalist_file).resolve().parent)
    if fold is not None and fold >= 0 and folds and section in ("training", "validation"):
        if fold >= len(folds):
            raise SystemExit(f"error: {datalist_file}: fold {fold} requested but the plans have {len(folds)} folds")
        training = datalist.section("training")
        chosen = folds[fold]["train" if section == "training" else "val"]
        return _with_stems([training[i] for i in chosen], root)
    return _with_stems(datalist.section(section), root)


def check_cases(entries: Sequence[dict], landmark_names: Sequence[str], what: str = "training") -> list[dict]:
    """Verify cases before a long run starts: readable 3D images with finite intensities, annotations
    inside their own images.

    Reads every image once (the training cache reads them anyway) and exits with one line per problem
    (all problems, not only the first), each naming the file.
    """
    if not entries:
        raise SystemExit(f"error: no {what} cases in the datalist")
    problems = []
    for entry in entries:
        try:
            images = [entry["image"]] if isinstance(entry["image"], str) else list(entry["image"])
            for image in images:
                header = read_image_header(image)
                check_image_data(image)
            world = landmarks_to_array(entry.get("landmarks") or {}, landmark_names)
            voxels = world_to_voxel(header.affine, world)
            shape = np.asarray(header.shape)
            outside = [
                landmark_names[i]
                for i in np.flatnonzero(np.all(np.isfinite(voxels), axis=1))
                if np.any(voxels[i] < -0.5) or np.any(voxels[i] > shape - 0.5)
            ]
            if outside:
                raise LandmarkDataError(images[0], f"annotated landmark(s) outside the image: {', '.join(outside)}")
        except LandmarkDataError as err:
            problems.append(str(err))
    if problems:
        raise SystemExit("\n".join(f"error: {p}" for p in problems))
    return list(entries)


OUTPUT_SUFFIXES = (".fcsv", ".mrk.json", ".json")  # .json is written last: its presence marks a finished case


@exits_on_data_error
def resolve_inputs(input_path: str, output_dir: str | None = None, overwrite: bool = True) -> list[dict]:
    """``--input`` as a file, a folder (searched recursively for images) or a datalist (its testing cases).

    With ``overwrite`` false, cases whose outputs are all in ``output_dir`` already are skipped (a rerun
    after an interruption only does what is left)."""
    cases = _resolve_inputs(input_path, output_dir)
    if output_dir:
        _check_writable(output_dir)
    if overwrite or not output_dir:
        return cases
    todo = [c for c in cases if not all(os.path.exists(os.path.join(output_dir, c["stem"] + s)) for s in OUTPUT_SUFFIXES)]
    if len(todo) < len(cases):
        print(f"skipping {len(cases) - len(todo)} case(s) already written to {output_dir} (--overwrite true to redo them)")
    return todo


def _check_writable(folder: str) -> None:
    """Fail before any work when the output folder cannot be created or written (read-only, no space)."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as error:
        raise SystemExit(f"error: {folder}: cannot write the outputs here ({error.strerror or error})") from None


def _resolve_inputs(input_path: str, output_dir: str | None) -> list[dict]:
    path = Path(input_path)
    if not path.exists():
        raise SystemExit(f"error: {input_path}: no such file or folder")
    if path.is_dir():
        files = sorted(
            str(p) for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not _inside(p, output_dir)
        )
        if not files:
            raise SystemExit(f"error: {input_path}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return [{"image": f, "stem": image_stem(f, str(path))} for f in files]
    if path.name.lower().endswith(".json"):
        datalist = load_datalist(str(path))
        entries = datalist.section("testing")
        if not entries:
            raise SystemExit(f"error: {input_path}: the datalist has no testing cases")
        return _with_stems(entries, str(path.resolve().parent))
    return [{"image": str(path), "stem": image_stem(str(path))}]


def _inside(path: Path, folder: str | None) -> bool:
    return bool(folder) and Path(folder).resolve() in path.resolve().parents


class ReportingDataset(Dataset):
    """A Dataset whose failing cases come back as ``{"error": "<file>: <problem>"}`` instead of raising.

    Inference over a folder must not stop at one bad file; the evaluator skips such batches and the
    summary names them.
    """

    def _transform(self, index: int):
        entry = self.data[index]
        try:
            return {**super()._transform(index), "error": ""}
        except Exception as err:  # any reader or transform failure becomes a reported case
            return {"error": _one_line(entry, err), "image_path": str(entry.get("image")), "stem": entry.get("stem", "")}


def _one_line(entry: dict, err: Exception) -> str:
    cause = err
    while getattr(cause, "__cause__", None) is not None or getattr(cause, "__context__", None) is not None:
        if isinstance(cause, LandmarkDataError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, LandmarkDataError):
        return str(cause)
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"{entry.get('image')}: cannot load ({message[:200]})"



class DistributedRandomSampler(torch.utils.data.Sampler):
    """Each rank draws ``num_samples`` case indices with replacement, from its own stream per epoch.

    The single-process trainer uses RandomSampler(replacement=True, num_samples=...); this is its DDP
    twin (DistributedSampler would split the few cases instead of the iterations).
    """

    def __init__(self, data_source, num_samples: int, seed: int = 0):
        import torch.distributed as dist

        self.size = len(data_source)
        self.num_samples = int(num_samples)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + 100003 * self.rank + self.epoch)
        self.epoch += 1
        return iter(torch.randint(self.size, (self.num_samples,), generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
