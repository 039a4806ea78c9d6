"""The dataset module: the datalist (DESIGN §2) and every check of it, and datalist entries for the engines.

- Loading: :func:`load_datalist` validates the structure against the JSON Schema (scripts.datalist_schema),
  resolves image and landmark file paths, reads the landmark files (scripts.landmark_io) and matches every
  point to a channel (scripts.landmark_names); the planner, training, evaluation and inference load
  through it.
- Checks: :func:`case_problems` (images readable, finite, not constant; annotations inside their image,
  by scripts.geometry.outside_image) and :func:`check_dataset` (all of a datalist's problems at once,
  what ``python -m scripts.check`` prints); training and evaluation run the fatal ones (:func:`check_cases`).
- Engines: training/validation selection with the planner's folds, input resolution for inference, and a
  dataset that reports unreadable cases instead of crashing.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset

from scripts.cli_args import parse_switch, path_argument
from scripts.datalist_schema import schema_problems
from scripts.errors import LandmarkConfigError, LandmarkDataError, bundle_error_in, combined_error
from scripts.geometry import outside_image
from scripts.image_io import ImageHeader, check_image_data, header_notes, read_image_header
from scripts.landmark_io import coordinate_statement, parse_position, plain_json, read_json, read_points
from scripts.landmark_names import LandmarkNames, Point, fold, plans_landmark_names, unknown_message

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
    """Verify cases before a long run starts: the fatal checks of scripts.check (:func:`case_problems`:
    readable 3D images with finite, not constant intensities, annotations inside their own images), and
    every annotated name one of ``landmark_names``.

    Reads every image once (the training cache reads them anyway). Raises one LandmarkDataError holding every
    problem (not only the first), each naming its file (scripts.errors.combined_error).
    """
    if not entries:
        raise LandmarkDataError("datalist", f"no {what} cases")
    problems = []
    for entry in entries:
        given = entry.get("landmarks") or {}
        unknown = [f"'{name}'" for name in given if name not in landmark_names]
        known = {name: given[name] for name in landmark_names if given.get(name) is not None}
        found = [p for p in case_problems(entry, None if unknown else known or None, warnings=False) if p.severity == "error"]
        if unknown and not found:  # entries that did not come through select_cases(..., landmark_names): never drop a point
            found = [Problem("error", entry_images(entry)[0], "annotation " + unknown_message(unknown, "the model's landmark_names"))]
        problems += [LandmarkDataError(problem.source, problem.message) for problem in found]
    if problems:
        raise combined_error(f"{what} cases", problems)
    return list(entries)


def dataset_cases(datalist: str, section: str, landmark_names: Sequence[str], fold: int | None = None,
                  folds: Sequence[dict] | None = None, landmark_descriptions: dict | None = None,
                  max_cases: int | None = None) -> list[dict]:
    """The checked cases of one datalist section: :func:`select_cases` (``section`` "training"/"validation"/"testing",
    the planner's ``folds`` split when ``fold`` >= 0), then :func:`check_cases` against ``landmark_names``.

    The configs' ``train#cases`` / ``validate#cases`` (named arguments reading ``@datalist``, ``@fold``, ``@folds``,
    ``@landmark_names``, so ``--fold 1`` or ``--datalist`` reach them). Returns select_cases' entries (``image``,
    ``landmarks``, ``stem``). ``max_cases`` (train.json's ``validation_cases``): at most this many, spread over the
    entries' ``group`` values (:func:`spread_over_groups`); None or 0 keeps all. Raises LandmarkDataError (every
    problem of the section in one) or LandmarkConfigError."""
    entries = select_cases(datalist, section, fold, folds, landmark_names, landmark_descriptions)
    chosen = spread_over_groups(entries, max_cases)
    if len(chosen) < len(entries):
        _note_once(f"{section}: {len(chosen)} of {len(entries)} cases during training (validation_cases {max_cases}, spread over "
                   f"{len({e.get('group', '') for e in chosen})} group(s)); evaluate.json scores them all")
    return check_cases(chosen, landmark_names, section)


def cases_per_group(entries: Sequence[dict], per_group: int | None = None, groups: Sequence[str] | None = None,
                    default_group: str = "") -> list[dict]:
    """The entries of ``groups`` (an entry's ``group``, ``default_group`` when absent; all groups when None), at most
    ``per_group`` of each: groups, ``anatomy`` values and images in sorted order, the anatomies taken in turn within
    a group (a group spanning three brains gives one case of each of the first two for ``per_group`` 2), so that a
    small subset still spans the group's brains and is the same whatever the datalist's order. Without
    ``per_group``, every entry of the groups, in datalist order. Used by bench/ablations.py's fixed validation
    subset, scripts.calibrate and bench/afids_accuracy.py."""
    def group_of(entry: dict) -> str:
        return str(entry.get("group", default_group))

    chosen = [e for e in entries if groups is None or group_of(e) in groups]
    if not per_group:
        return chosen
    by_group: dict = defaultdict(lambda: defaultdict(list))
    for entry in chosen:
        by_group[group_of(entry)][str(entry.get("anatomy", ""))].append(entry)
    subset = []
    for group in sorted(by_group):
        subset += _in_turn([sorted(by_group[group][a], key=lambda e: str(e["image"])) for a in sorted(by_group[group])], per_group)
    return subset


def _in_turn(queues: list[list], count: int) -> list:
    """Up to ``count`` items, the first of each queue, then the second of each, ... (queues are not modified)."""
    queues, taken = [list(q) for q in queues], []
    while len(taken) < count and any(queues):
        for queue in queues:
            if queue and len(taken) < count:
                taken.append(queue.pop(0))
    return taken


def spread_over_groups(entries: Sequence[dict], max_cases: int | None) -> list[dict]:
    """At most ``max_cases`` of ``entries``, taken round-robin over their ``group`` values (in order of first
    appearance; within a group, in datalist order), returned in datalist order. Entries without ``group`` form one
    group, from which evenly spaced entries are taken. None, 0 or a count >= len(entries) keeps all.

    Example: groups a, a, a, b, c with max_cases 4 -> a, a, b, c (first round a, b, c; second round a).
    """
    entries = list(entries)
    if not max_cases or int(max_cases) >= len(entries):
        return entries
    max_cases = int(max_cases)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, entry in enumerate(entries):
        groups[str(entry.get("group", ""))].append(i)
    if len(groups) == 1:
        chosen = [int(k * len(entries) / max_cases) for k in range(max_cases)]
    else:
        chosen = _in_turn(list(groups.values()), max_cases)
    return [entries[i] for i in sorted(chosen)]


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


# ----------------------------------------------------------------------------- the datalist: loading
#
# DESIGN §2. The structure is the JSON Schema's (scripts.datalist_schema); what a schema cannot say
# (files exist and parse, names resolve to channels, pairs are consistent) is checked here, for
# load_datalist (the planner, training, evaluation, inference) and scripts.check alike.

SECTIONS = ("training", "validation", "testing")


def entry_images(entry: Mapping) -> list[str]:
    """An entry's image paths as a list: one per input channel (``image`` is a path or a list of paths)."""
    return [entry["image"]] if isinstance(entry["image"], str) else list(entry["image"])


def landmarks_to_array(landmarks: Mapping[str, Sequence[float]], names: Sequence[str]) -> np.ndarray:
    """(N, 3) float64 in the order of `names`, NaN rows where a landmark is missing."""
    array = np.full((len(names), 3), np.nan, dtype=np.float64)
    for row, name in enumerate(names):
        if name in landmarks and landmarks[name] is not None:
            array[row] = np.asarray(landmarks[name], dtype=np.float64)
    return array


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


def _listed_file(datalist: Path, where: str, value: str, what: str) -> str:
    """A path listed in the datalist made absolute (relative to the datalist's folder); LandmarkDataError if missing."""
    path = _resolve(datalist.parent, value)
    if not os.path.exists(path):
        raise LandmarkDataError(path, f"{what} not found (listed in {datalist}, {where})")
    return path


def _resolve_image(datalist: Path, where: str, value):
    """An entry's image path (or list of paths, schema-checked) made absolute; LandmarkDataError if missing."""
    if isinstance(value, list):
        return [_resolve_image(datalist, where, v) for v in value]
    return _listed_file(datalist, where, value, "image")


def _resolve_label_map(datalist: Path, where: str, value) -> str:
    """An entry's optional ``label``: a label map on the image's anatomy (e.g. aseg), used by contrast
    randomisation in training (scripts.intensity_randomization); resolved like the image."""
    if not isinstance(value, str) or not value:
        raise LandmarkDataError(datalist, f"{where}: 'label' must be the path of a label map, got {value!r}")
    return _listed_file(datalist, where, value, "label map")


def _entry_points(datalist: Path, where: str, value) -> tuple[str, list[Point]]:
    """(source for messages, points) of an entry's landmark file or inline landmarks."""
    if isinstance(value, str):
        path = _resolve(datalist.parent, value)
        return path, read_points(path)
    if isinstance(value, dict):
        source = f"{datalist} ({where} landmarks)"
        if getattr(value, "duplicate_keys", None):
            raise LandmarkDataError(source, f"duplicate landmark name '{value.duplicate_keys[0]}'")
        return source, [Point(name, "", parse_position(v, source, f"landmark '{name}'"), f"landmark '{name}'") for name, v in value.items()]
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
            entry = plain_json(raw)
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
    return read_json(Path(path), "datalist")


def load_datalist(path, landmark_names: Sequence[str] | None = None, descriptions: Mapping[str, str] | None = None,
                  names_source: str = "configs/plans.json") -> Datalist:
    """Read and check a datalist (DESIGN §2): absolute image paths, landmarks as RAS {name: [x, y, z]}.

    The structure is validated against scripts.datalist_schema, then every point is matched to a channel
    by scripts.landmark_names (label, description, landmark_descriptions, landmark_aliases,
    landmark_numbering; case and whitespace ignored). With ``landmark_names`` (a trained model's, from
    the plans, with their ``descriptions``) entries come back named by those channels.
    Raises LandmarkDataError with every problem found (one line; each names its file).
    """
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
        extra={key: plain_json(value) for key, value in document.items() if key not in DATALIST_KEYS},
        aliases=report.aliases,
        numbering=document.get("landmark_numbering"),
    )


# ----------------------------------------------------------------------------- the datalist: checks


LARGEST_SANE_SPACING_MM = 10.0


@dataclass(frozen=True)
class Problem:
    """One finding of a dataset check: ``severity`` "error" (fatal) or "warning", the file it is about."""

    severity: str
    source: str
    message: str

    def line(self) -> str:
        return f"{self.severity}: {self.source}: {self.message}"


def outside_names(header: ImageHeader, names: Sequence[str], positions) -> list[str]:
    """The ``names`` whose ``positions`` ((N, 3) RAS mm, NaN rows unannotated) lie outside the image of
    ``header`` (scripts.geometry.outside_image: beyond half a voxel past the first or last voxel centre)."""
    outside = outside_image(header.affine, header.shape, np.asarray(positions, dtype=np.float64).reshape(-1, 3))
    return [name for name, out in zip(names, outside) if out]


def _image_problems(image: str, warnings: bool) -> tuple[ImageHeader | None, list[Problem]]:
    """(header or None when unreadable, problems) of one image: readable 3D scalar under the reader policy,
    finite and not constant intensities; with ``warnings`` also unusual headers and implausible spacings."""
    try:
        header = read_image_header(image)
        low, high = check_image_data(image)
    except LandmarkDataError as error:
        return None, [Problem("error", str(error.source), error.problem)]
    problems = []
    if low == high:
        problems.append(Problem("error", image, f"every voxel is {low:g}: nothing to find landmarks in"))
    if warnings:
        problems += [Problem("warning", image, note) for note in header_notes(image)]
        if max(header.spacing) > LARGEST_SANE_SPACING_MM:
            problems.append(Problem("warning", image, f"voxel spacing {[round(s, 3) for s in header.spacing]} mm: over "
                                                      f"{LARGEST_SANE_SPACING_MM:g} mm, a header error? (check the units)"))
    return header, problems


def grid_problems(headers: Sequence[ImageHeader]) -> list[Problem]:
    """Co-registered inputs of one case (one header per channel) share one grid: an error for each image
    whose shape differs from the first's."""
    first = headers[0]
    return [Problem("error", header.path, f"shape {list(header.shape)} differs from {first.path}'s {list(first.shape)}: "
                                          "co-registered inputs share one grid")
            for header in headers[1:] if tuple(header.shape) != tuple(first.shape)]


def case_problems(entry: Mapping, landmarks: Mapping[str, Sequence[float]] | None, source: str | None = None,
                  warnings: bool = True) -> list[Problem]:
    """Every problem of one datalist entry (never raised): each image (see _image_problems), one grid for all
    its images (grid_problems), and its annotation ``landmarks`` ({name: RAS [x, y, z] mm}; None when the
    entry has none; ``source`` the file or place they come from, default the image) inside the first
    image's grid (outside_names). ``warnings`` false: only what is fatal is looked for."""
    images = entry_images(entry)
    problems, headers = [], []
    for image in images:
        header, found = _image_problems(image, warnings)
        problems += found
        if header is None:
            return problems
        headers.append(header)
    problems += grid_problems(headers)
    header = headers[0]
    if landmarks is None:
        return problems
    source = str(source or images[0])
    if not landmarks:
        problems.append(Problem("error", source, "no landmarks in the file (a markups file without controlPoints?)"))
        return problems
    names = list(landmarks)
    outside = outside_names(header, names, [landmarks[name] for name in names])
    if outside:
        where = "" if source == images[0] else f" {images[0]}"
        problems.append(Problem("error", source, f"landmark(s) outside the image{where}: {', '.join(outside)}"))
    return problems


def _report(path: Path, document, channels: LandmarkNames | None, problems: list[Problem]) -> DatalistReport | None:
    """Schema problems (every one), then the names and files of what the schema let through."""
    invalid = schema_problems(document)
    problems.extend(Problem("error", str(path), sentence) for _, sentence in invalid)
    if any(place == () for place, _ in invalid):
        return None
    skip = {place[:2] for place, _ in invalid if place and place[0] in SECTIONS}
    broken = {place[0] for place, _ in invalid if place and place[0] not in SECTIONS}
    document = {key: value for key, value in document.items() if key not in broken}
    if "landmark_numbering" in document and "landmark_names" not in document:
        document.pop("landmark_numbering")
    report = inspect_datalist(path, document, channels, skip)
    problems.extend(Problem("error", str(error.source), error.problem) for error in report.problems)
    return report


def _mismatches(report: DatalistReport, problems: list[Problem]) -> None:
    """Without declared names (no landmark_names, no plans): each file's names against the majority's."""
    files = [file for file in report.files if file.points]
    if report.declared or len(files) < 2:
        return
    counts = {name: sum(name in file.points for file in files) for name in report.names}
    usual = {name for name, count in counts.items() if count * 2 > len(files)}
    for file in files:
        missing = [name for name in report.names if name in usual and name not in file.points]
        unusual = [name for name in file.points if name not in usual]
        if missing:
            problems.append(Problem("warning", file.source, f"lacks {len(missing)} landmark(s) most files have: {', '.join(missing)}"))
        if unusual:
            problems.append(Problem("warning", file.source, f"landmark(s) most other files do not have: {', '.join(unusual)} "
                                                            "(a typo or another naming? landmark_names or landmark_aliases in the datalist fix it)"))


def check_dataset(datalist_file, plans_file=None) -> tuple[list[Problem], dict]:
    """(problems, counts) for a datalist, every problem at once; never raises on bad data (scripts.check
    prints them). Counts: cases per section and ``landmarks`` (channels).

    The schema (scripts.datalist_schema), then what load_datalist refuses (files, names, pairs), then per
    entry case_problems (images, annotations outside their image), images listed twice, landmark files that
    do not state their coordinate system, and files whose names differ from the majority's. With
    ``plans_file`` (a trained bundle's configs/plans.json) every landmark must also match one of the
    model's channels, as training and evaluation with that bundle require."""
    path = Path(datalist_file).resolve()
    problems: list[Problem] = []
    try:
        document = read_datalist_document(path)
        channels = plans_landmark_names(Path(plans_file).resolve()) if plans_file else None
    except LandmarkDataError as error:
        return [Problem("error", str(error.source), error.problem)], {}
    report = _report(path, document, channels, problems)
    if report is None:
        return problems, {}
    entries = [(section, entry) for section in SECTIONS for entry in report.sections.get(section, [])]
    if not entries and not problems:
        problems.append(Problem("error", str(path), "datalist has no entries in training, validation or testing"))
    _mismatches(report, problems)

    listed = defaultdict(list)
    for section, entry in entries:
        listed[str(entry["image"])].append(section)
    for image, sections in listed.items():
        if len(sections) > 1:
            problems.append(Problem("error", image, f"listed {len(sections)} times ({', '.join(sections)})"))

    # inline coordinates are RAS by the datalist contract; files may say otherwise or nothing
    files = {str(file.source) for file in report.files if Path(str(file.source)).is_file()}
    assumed = sorted(f for f in files if coordinate_statement(f) is None)
    for source in assumed:
        problems.append(Problem("warning", source, "coordinate system not stated in the file: read as RAS "
                                                   "(Slicer .mrk.json without one: LPS)"))
    by_place = {(file.section, file.index): file for file in report.files}
    for section in SECTIONS:
        for index, entry in enumerate(report.sections.get(section, [])):
            file = by_place.get((section, index))
            landmarks = None if file is None else {name: point.position for name, point in file.points.items()}
            problems += case_problems(entry, landmarks, None if file is None else file.source)
    counts = {section: len(report.sections.get(section, [])) for section in SECTIONS}
    counts["landmarks"] = len(report.names)
    return problems, counts
