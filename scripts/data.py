"""Datalist entries for the engines: training/validation selection, input resolution for inference,
an up-front integrity check, and a dataset that reports unreadable cases instead of crashing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import Dataset

from scripts.cli_args import parse_switch, path_argument
from scripts.errors import LandmarkConfigError, LandmarkDataError, bundle_error_in, combined_error
from scripts.image_io import check_image_data, read_image_header
from scripts.landmark_io import landmarks_to_array, load_datalist, outside_image
from scripts.landmark_names import unknown_message

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
VOLUME_SUFFIXES = IMAGE_SUFFIXES[:-1]  # one file, one scan (DICOM slices make a scan per folder)


def image_stem(path: str | Sequence[str], root: str | None = None) -> str:
    """Output name for an input image: its path relative to root (folder structure kept), suffix dropped."""
    path = str(path[0] if isinstance(path, (list, tuple)) else path)
    path = path.rstrip("/") or path
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    if rel.startswith("..") or rel == ".":  # outside root, or root itself (a DICOM series folder given as --input)
        rel = os.path.basename(os.path.abspath(path))
    for suffix in IMAGE_SUFFIXES:
        if rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel.rstrip("/")


def _with_stems(entries: list[dict], root: str) -> list[dict]:
    return [{**entry, "stem": image_stem(entry["image"], root)} for entry in entries]


def select_cases(datalist_file: str, section: str, fold: int | None = None, folds: Sequence[dict] | None = None,
                 landmark_names: Sequence[str] | None = None, landmark_descriptions: dict | None = None) -> list[dict]:
    """Entries of one datalist section; with a fold, the planner's split of "training" decides.

    ``section`` "training"/"validation": without folds these are the datalist's own sections.
    ``landmark_names``/``landmark_descriptions``: the model's (plans'), to which every point is matched
    (scripts.landmark_names); a point that matches none stops the run with its file and name.
    A datalist with training cases only (as nnU-Net datasets come) takes fold 0 of the planned split
    instead; with no split planned (one training case) validation is that training case itself, and says so.
    """
    datalist_file = path_argument(datalist_file, "datalist")
    datalist = load_datalist(datalist_file, landmark_names, landmark_descriptions)
    root = str(Path(datalist_file).resolve().parent)
    if (fold is None or fold < 0) and section in ("training", "validation") and not datalist.section("validation"):
        training = datalist.section("training")
        if folds:
            fold = 0
            _note_once(f"{datalist_file}: no validation cases: validating on fold 0 of the planned split "
                       f"({len(folds[0]['val'])} case(s)), training on its other {len(folds[0]['train'])}")
        elif section == "validation" and training:
            _note_once(f"{datalist_file}: no validation cases and no fold split planned (one training case): "
                       "validating on the training case itself (a measure of fit, not of generalisation)")
            return _with_stems(training, root)
    if fold is not None and fold >= 0 and folds and section in ("training", "validation"):
        if fold >= len(folds):
            raise LandmarkConfigError("--fold", f"fold {fold} requested but the plans have {len(folds)} folds ({datalist_file})")
        training = datalist.section("training")
        chosen = folds[fold]["train" if section == "training" else "val"]
        return _with_stems([training[i] for i in chosen], root)
    return _with_stems(datalist.section(section), root)


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    """Print ``message`` once per process, on rank 0 only under torchrun."""
    if message not in _NOTED and os.environ.get("RANK", "0") == "0":
        print(message, flush=True)
    _NOTED.add(message)


def check_cases(entries: Sequence[dict], landmark_names: Sequence[str], what: str = "training") -> list[dict]:
    """Verify cases before a long run starts: readable 3D images with finite intensities, annotations
    inside their own images.

    Reads every image once (the training cache reads them anyway). Raises one LandmarkDataError holding every
    problem (not only the first), each naming its file (scripts.errors.combined_error).
    """
    if not entries:
        raise LandmarkDataError("datalist", f"no {what} cases")
    problems = []
    for entry in entries:
        try:
            images = [entry["image"]] if isinstance(entry["image"], str) else list(entry["image"])
            for image in images:
                header = read_image_header(image)
                check_image_data(image)
            given = entry.get("landmarks") or {}
            unknown = [f"'{name}'" for name in given if name not in landmark_names]
            if unknown:  # entries that did not come through select_cases(..., landmark_names): never drop a point
                raise LandmarkDataError(images[0], "annotation " + unknown_message(unknown, "the model's landmark_names"))
            world = landmarks_to_array(given, landmark_names)
            outside = [name for name, out in zip(landmark_names, outside_image(header.affine, header.shape, world)) if out]
            if outside:
                raise LandmarkDataError(images[0], f"annotated landmark(s) outside the image: {', '.join(outside)}")
        except LandmarkDataError as err:
            problems.append(err)
    if problems:
        raise combined_error(f"{what} cases", problems)
    return list(entries)


OUTPUT_SUFFIXES = (".fcsv", ".mrk.json", ".json")  # .json is written last: its presence marks a finished case


def resolve_inputs(input_path: str, output_dir: str | None = None, overwrite=True) -> list[dict]:
    """``--input`` as a file, a folder (searched recursively for images) or a datalist (its testing cases).

    With ``overwrite`` false, cases whose outputs are all in ``output_dir`` already are skipped (a rerun
    after an interruption only does what is left; a switch: bool or 'true'/'false'). Numbers python-fire made
    of path arguments are taken back as typed (scripts.cli_args)."""
    input_path, output_dir = path_argument(input_path, "input"), path_argument(output_dir, "output_dir")
    overwrite = parse_switch(overwrite, "overwrite")
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
        raise LandmarkConfigError(folder, f"cannot write the outputs here ({error.strerror or error})") from None


def _resolve_inputs(input_path: str, output_dir: str | None) -> list[dict]:
    path = Path(input_path)
    if not path.exists():
        raise LandmarkDataError(input_path, "no such file or folder")
    if path.is_dir():
        files = scans_in_folder(path, output_dir)
        if not files:
            raise LandmarkDataError(input_path, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM series folders)")
        return [{"image": f, "stem": image_stem(f, str(path))} for f in files]
    if path.name.lower().endswith(".json"):
        datalist = load_datalist(str(path))
        # ground truth is never an input (DESIGN §2): inference does not read it, so it cannot stop a case
        entries = [{k: v for k, v in entry.items() if k != "landmarks"} for entry in datalist.section("testing")]
        if not entries:
            raise LandmarkDataError(input_path, "the datalist has no testing cases")
        return _with_stems(entries, str(path.resolve().parent))
    return [{"image": str(path), "stem": image_stem(str(path))}]


def _may_be_dicom(name: str) -> bool:
    """A .dcm/.ima file, or a name without a suffix or with a numeric one (IM0001, 1.2.840.113619.2.55.3)."""
    lower = name.lower()
    suffix = lower.rsplit(".", 1)[-1] if "." in lower else ""
    return lower.endswith((".dcm", ".dicom", ".ima")) or suffix == "" or suffix.isdigit()


def scans_in_folder(folder, output_dir: str | None = None) -> list[str]:
    """The scans under ``folder``, sorted: every image file (NIfTI, NRRD, MHA), and every folder holding
    DICOM slices as ONE scan (a series is one case, never one case per slice; a folder of several series
    becomes one case that the reader policy refuses with one line). ``output_dir`` is skipped."""
    import SimpleITK as sitk

    scans = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not _inside(Path(directory) / d / "x", output_dir) and not d.startswith("."))
        names = sorted(n for n in names if not n.startswith("."))
        candidates = [n for n in names if _may_be_dicom(n)]
        if any(n.lower().endswith(".dcm") for n in candidates) or (
                candidates and sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory)):
            scans.append(directory)
        scans += [os.path.join(directory, n) for n in names if n.lower().endswith(VOLUME_SUFFIXES)]
    return sorted(scans)


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
    ours = bundle_error_in(err)  # MONAI's transforms wrap it in RuntimeError chains
    if ours is not None:
        return str(ours)
    cause = err
    while getattr(cause, "__cause__", None) is not None or getattr(cause, "__context__", None) is not None:
        cause = cause.__cause__ or cause.__context__
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
