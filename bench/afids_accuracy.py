"""An AFIDs model against atlas registration, one table per validation group, same cases, same run; writes docs/results_afids.md.

    python bench/afids_accuracy.py [--bundle_root .] [--datalist data/afids/datalist_v1.json] [--groups G ...]
                                   [--cases_per_group N] [--threads N] [--no_bspline] [--output docs/results_afids.md]
                                   [--training_datalist D]

Model: evaluate.json through the real CLI on each group's cases, without and with mirror TTA; ``--bundle_root``
takes another trained bundle (e.g. the leave-one-anatomy-out model). Registration: SimpleITK registers the
training template (``--template_anatomy``, default ``mni2009c`` = MNI152NLin2009cAsym, carrying its 32 expert AFIDs) to each
case, affine (Mattes mutual information, so the T2w cases work too), then affine + B-spline, and carries the
template's fiducials along. Seconds per case: model = evaluator time per case (models loaded once); registration
= the registration calls alone. Also the coarse-stage check: per group, the share of landmarks whose coarse
position lies within the fine search radius (``fine_search_radius_mm``), from the same model runs. Groups are the
datalist's ``group`` (docs/afids_dataset.md). Training validates on ``validation_cases`` of the validation cases
(train.json) and keeps the checkpoint that scores best on them; each group table adds the model + TTA row over its
other cases, which played no part in choosing the model (``--training_datalist``: the datalist the bundle trained
with when it is not ``--datalist``, e.g. data/afids/datalist_v1_loao.json for the leave-one-anatomy-out model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.machine import evaluator_seconds, machine_description  # noqa: E402
from bench.registration import carry_landmarks, register_affine, register_bspline  # noqa: E402
from scripts.atomic import atomic_write_text  # noqa: E402
from scripts.calibrate import annotated_cases  # noqa: E402
from scripts.errors import LandmarkConfigError, LandmarkDataError, cli_main  # noqa: E402
from scripts.data import image_stem, landmarks_to_array, load_datalist  # noqa: E402
from scripts.metrics import summarize_errors  # noqa: E402


# ----------------------------------------------------------------------------- the cases

GROUP_NOTES = {  # what each group of the v1 datalist measures (docs/afids_dataset.md); other groups are listed by name
    "oasis_mni2009c": "a real person's landmark configuration (held-out OASIS-1 subject) given to the MNI152NLin2009cAsym template, then re-posed and re-sampled",
    "oasis_nlin6": "the same for the MNI152NLin6Asym (FSL) template",
    "oasis_fsaverage": "the same for FreeSurfer's fsaverage (a new brain for the leave-one-anatomy-out model)",
    "same_anatomy_warp": "each template's own configuration through a stronger elastic warp (real-subject scale)",
    "skull_stripped": "brain-extracted templates given held-out configurations (appearance never trained on)",
    "t2w_oasis": "the 2009cAsym T2w template given held-out configurations (a contrast never trained on)",
}


def choose_cases(datalist, sections, groups, cases_per_group: int | None) -> list[dict]:
    """Annotated entries of ``sections`` whose ``group`` is in ``groups`` (all when empty), at most ``cases_per_group``
    per group spread over the group's brains (scripts.calibrate.annotated_cases); each a copy with ``group`` set (the
    section name when absent)."""
    chosen = [{**e, "group": str(e.get("group", section))}
              for section in sections for e in annotated_cases(datalist.section(section), groups or None, cases_per_group, section)]
    missing = sorted(set(groups or ()) - {e["group"] for e in chosen})
    if missing:
        raise LandmarkConfigError("--groups", f"no annotated case of group(s) {', '.join(missing)} in {datalist.path}")
    return chosen


def selection_images(bundle: Path, datalist_path: Path) -> set[str]:
    """Resolved image paths of the validation cases that training scored to keep its best checkpoint: train.json's
    ``validation_cases`` of the datalist's validation section, as training spreads them over the groups
    (scripts.data.spread_over_groups); empty when training scores them all."""
    from monai.bundle import ConfigParser

    from scripts.data import select_cases, spread_over_groups

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    limit = parser.get("validation_cases")
    entries = select_cases(str(datalist_path), "validation")
    chosen = spread_over_groups(entries, limit)
    return set() if len(chosen) == len(entries) else {str(Path(e["image"]).resolve()) for e in chosen}


def registration_template(datalist, anatomy: str) -> dict:
    """The training entry that is the ``anatomy`` template as it is (``configuration: template``), else the first training entry."""
    training = datalist.section("training")
    for entry in training:
        if entry.get("anatomy") == anatomy and entry.get("configuration") == "template":
            return entry
    if not training:
        raise LandmarkDataError(datalist.path, "no training entry to register (the template carrying its landmarks)")
    return training[0]


def write_case_datalist(path: Path, names: list[str], entries: list[dict]) -> None:
    """One group's cases as a datalist of their own (absolute image paths, inline RAS landmarks): evaluate.json runs it."""
    def plain(entry):
        return {"image": entry["image"], "landmarks": {n: [float(v) for v in p] for n, p in entry["landmarks"].items()}}

    document = {"landmark_names": names, "training": [plain(entries[0])], "validation": [plain(e) for e in entries]}
    atomic_write_text(path, json.dumps(document))


# ----------------------------------------------------------------------------- the model


def evaluate_model(bundle: Path, datalist: Path, tta: bool, output: Path) -> tuple[dict, dict, float]:
    """({case: {landmark: error_mm}}, {case: {landmark: coarse-stage error_mm}}, seconds per case) of the datalist's
    validation section, through evaluate.json (the real CLI); seconds = the evaluator's run time over the cases.
    The configs import ``scripts``: the bundle's own package when it has one (the working directory comes first on
    the path), else this project's (a bundle root holding only configs and models, e.g. runs/afids_v1_loao)."""
    python_path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
         "--datalist", str(datalist), "--eval_section", "validation", "--output_dir", str(output), "--tta", str(tta)],
        cwd=bundle, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": python_path},
    )
    if result.returncode != 0:
        raise RuntimeError(f"evaluate.json failed on {datalist}:\n{(result.stdout + result.stderr)[-3000:]}")
    errors: dict = defaultdict(dict)
    coarse: dict = defaultdict(dict)
    with open(output / "per_case.csv") as f:
        for row in csv.DictReader(f):
            if row["error_mm"]:
                errors[row["case"]][row["landmark"]] = float(row["error_mm"])
            if row.get("coarse_error_mm"):
                coarse[row["case"]][row["landmark"]] = float(row["coarse_error_mm"])
    return errors, coarse, evaluator_seconds(result.stdout + result.stderr) / max(len(errors), 1)


def registration_errors(template_entry: dict, cases: list[tuple[str, dict]], names: list[str], bspline: bool) -> dict:
    """{method: ({case: {landmark: error_mm}}, {case: seconds})}: the template registered to each case (Mattes mutual
    information, bench/registration.py), its landmarks carried into the case."""
    template = sitk.ReadImage(template_entry["image"], sitk.sitkFloat32)
    template_points = landmarks_to_array(template_entry["landmarks"], names)
    methods = ["affine registration"] + (["affine + B-spline registration"] if bspline else [])
    results = {method: (defaultdict(dict), {}) for method in methods}
    for stem, entry in cases:
        case = sitk.ReadImage(entry["image"], sitk.sitkFloat32)
        truth = landmarks_to_array(entry["landmarks"], names)
        started = time.perf_counter()
        transforms = {"affine registration": register_affine(template, case)}
        results["affine registration"][1][stem] = time.perf_counter() - started
        if bspline:
            started = time.perf_counter()
            transforms["affine + B-spline registration"] = register_bspline(template, case, transforms["affine registration"])
            results["affine + B-spline registration"][1][stem] = results["affine registration"][1][stem] + time.perf_counter() - started
        for method, transform in transforms.items():
            predicted = carry_landmarks(transform, template_points)
            for i, name in enumerate(names):
                if np.all(np.isfinite(truth[i])):
                    results[method][0][stem][name] = float(np.linalg.norm(predicted[i] - truth[i]))
        print(f"  registered {stem}: " + ", ".join(f"{m} {results[m][1][stem]:.1f} s" for m in transforms), flush=True)
    return results


# ----------------------------------------------------------------------------- tables


def group_table(results: dict, cases: list[str], selection: set[str] = frozenset()) -> list[str]:
    """One group: a row per method over the same ``cases`` (MRE, median, SDR@2/3/4 mm, seconds per case), then,
    when some of ``cases`` are in ``selection`` (the cases training kept its best checkpoint on), the model + mirror
    TTA row over the others.

    ``results``: {method: ({case: {landmark: error_mm}}, {case: seconds})}."""
    lines = ["| method | cases | landmarks | MRE (mm) | median (mm) | SDR@2 mm | SDR@3 mm | SDR@4 mm | s / case |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [(method, result, cases) for method, result in results.items()]
    unseen = [c for c in cases if c not in selection]
    if "model + mirror TTA" in results and 0 < len(unseen) < len(cases):
        rows.insert(2, (f"model + mirror TTA, not the {len(cases) - len(unseen)} checkpoint-selection case(s)", results["model + mirror TTA"], unseen))
    for method, (errors, seconds), subset in rows:
        values = [e for case in subset for e in errors.get(case, {}).values()]
        if not values:
            continue
        s = summarize_errors(values)
        per_case = np.mean([seconds[c] for c in subset if c in seconds])
        lines.append(f"| {method} | {sum(1 for c in subset if c in errors)} | {s['n']} | {s['mre']:.2f} | {s['median']:.2f} | {s['sdr_2mm']:.1%} | "
                     f"{s['sdr_3mm']:.1%} | {s['sdr_4mm']:.1%} | {per_case:.1f} |")
    return lines


def coarse_table(coarse: dict, groups: dict[str, list[str]], radius_mm: float) -> list[str]:
    """Per group and model run: the coarse stage's own error and the share of landmarks within the fine search radius."""
    lines = [f"| group | run | landmarks | coarse MRE (mm) | coarse max (mm) | within {radius_mm:g} mm | outside (landmark: mm) |",
             "|---|---|---|---|---|---|---|"]
    for group, cases in groups.items():
        for run, errors in coarse.items():
            pairs = [(name, e) for case in cases for name, e in errors.get(case, {}).items()]
            if not pairs:
                continue
            values = np.array([e for _, e in pairs])
            outside = sorted(((e, name) for name, e in pairs if e > radius_mm), reverse=True)
            listed = ", ".join(f"{name}: {e:.1f}" for e, name in outside[:6]) + (f", ... ({len(outside)})" if len(outside) > 6 else "")
            lines.append(f"| {group} | {run} | {len(values)} | {values.mean():.2f} | {values.max():.1f} | "
                         f"{np.mean(values <= radius_mm):.1%} | {listed or '-'} |")
    return lines


def landmark_table(errors: dict, groups: dict[str, list[str]], names: list[str]) -> list[str]:
    """MRE per landmark (rows) and group (columns) of one method."""
    lines = ["| landmark | " + " | ".join(groups) + " |", "|---" * (1 + len(groups)) + "|"]
    for name in names:
        cells = []
        for cases in groups.values():
            values = [errors[c][name] for c in cases if name in errors.get(c, {})]
            cells.append(f"{np.mean(values):.2f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def fine_search_radius(bundle: Path) -> float | None:
    """``fine_search_radius_mm`` of the bundle's inference.json (the planner's rule), mm; None without a cascade."""
    value = json.loads((bundle / "configs" / "inference.json").read_text()).get("fine_search_radius_mm")
    return float(value) if value else None


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=".", help="the trained bundle (e.g. the leave-one-anatomy-out model's)")
    parser.add_argument("--datalist", default="data/afids/datalist_v1.json")
    parser.add_argument("--groups", nargs="*", default=None, help="only these validation groups (default: all)")
    parser.add_argument("--cases_per_group", type=int, default=None, help="the first N cases of each group (default: all)")
    parser.add_argument("--template_anatomy", default="mni2009c", help="the training template registration carries the landmarks from")
    parser.add_argument("--output", default="docs/results_afids.md", help="the page to write, relative to the bundle root ('' to only print)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model and the registration (default: the libraries')")
    parser.add_argument("--no_bspline", action="store_true", help="skip the (slow) B-spline registration")
    parser.add_argument("--training_datalist", default=None,
                        help="the datalist the bundle was trained with, whose validation cases chose its checkpoint (default: --datalist)")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle_root).resolve()
    datalist_path = Path(args.datalist).resolve()
    datalist = load_datalist(str(datalist_path))
    names = list(datalist.landmark_names)
    if args.threads:
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        torch.set_num_threads(args.threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    chosen = choose_cases(datalist, ("validation", "testing"), args.groups, args.cases_per_group)
    radius = fine_search_radius(bundle)

    results: dict = {"model": (defaultdict(dict), {}), "model + mirror TTA": (defaultdict(dict), {})}
    coarse: dict = {run: defaultdict(dict) for run in results}
    groups: dict[str, list[str]] = {}  # group -> case stems, in datalist order
    cases: list[tuple[str, dict]] = []
    selection_paths, selection = selection_images(bundle, Path(args.training_datalist or datalist_path).resolve()), set()  # the latter: their case stems
    with tempfile.TemporaryDirectory() as tmp:
        for group in dict.fromkeys(e["group"] for e in chosen):
            entries = [e for e in chosen if e["group"] == group]
            group_datalist = Path(tmp) / f"{group}.json"
            write_case_datalist(group_datalist, names, entries)
            stems = [image_stem(e["image"], tmp) for e in entries]  # as evaluate.json names them
            if len(set(stems)) < len(stems):
                raise LandmarkDataError(str(datalist_path), f"two cases of group {group} share an image file name")
            groups[group] = stems
            selection |= {s for s, e in zip(stems, entries) if str(Path(e["image"]).resolve()) in selection_paths}
            cases += list(zip(stems, entries))
            for run, tta in (("model", False), ("model + mirror TTA", True)):
                errors, coarse_errors, seconds = evaluate_model(bundle, group_datalist, tta, Path(tmp) / f"{group}_{tta}")
                results[run][0].update(errors)
                coarse[run].update(coarse_errors)
                results[run][1].update(dict.fromkeys(stems, seconds))  # the group's mean: the evaluator times the run
            print(f"  evaluated the model on {group} ({len(entries)} cases)", flush=True)
    template = registration_template(datalist, args.template_anatomy)
    results.update(registration_errors(template, cases, names, not args.no_bspline))

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    command = shlex.join(["python", "bench/afids_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# AFIDs model vs atlas registration, per validation group",
        "",
        f"Written by `{command}`: every row of a group measured in the same run on the same cases.",
        f"Model: the bundle at `{args.bundle_root}` (version {metadata.get('version')}), evaluate.json without and with mirror TTA",
        "(inference's default). Registration: SimpleITK registers the "
        f"`{Path(template['image']).name}` template carrying its expert AFIDs to each case (Mattes mutual",
        "information, so T2w cases work too; bench/registration.py), affine, then affine + B-spline, and carries the",
        "landmarks along. s / case: the model's evaluator time (loading excluded), the registration calls alone.",
        "None of these images is a real subject's scan (docs/afids_dataset.md).",
        "",
    ]
    for group, stems in groups.items():
        lines += [f"## {group}", "", GROUP_NOTES.get(group, f"validation group `{group}`") + f" ({len(stems)} case(s)).", "",
                  *group_table(results, stems, selection), ""]
    if radius is not None and any(coarse.values()):
        lines += ["## Coarse stage", "",
                  f"The cascade's coarse positions against the truth: the fine network searches within {radius:g} mm of them",
                  "(`fine_search_radius_mm`, configs/inference.json), so a landmark outside that radius cannot be recovered.", "",
                  *coarse_table(coarse, groups, radius), ""]
    lines += ["## Per landmark (model + mirror TTA, MRE in mm)", "",
              *landmark_table(results["model + mirror TTA"][0], groups, names), "",
              f"Machine: {machine_description()}.", ""]
    table = "\n".join(lines)
    print(table)
    if args.output:
        atomic_write_text(bundle / args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
