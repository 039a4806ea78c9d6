"""Ablations of the fine stage on the AFIDs v1 data: short fixed-iteration runs, one setting changed, one validation subset.

    python bench/ablations.py --iterations 300 [--settings planned norm_affine contrast_off skull_strip_off]
                              [--per_group 2] [--parallel 2] [--pretrained models/model.pt | none] [--seed 0] --work DIR
    python bench/ablations.py --report DIR [DIR...] --work OUT    # the tables over finished runs (several seeds)

Each setting trains the fine stage of this bundle's configs/train.json on data/afids/datalist_v1.json (all 59
training cases) for ``--iterations`` iterations (epochs of 50, batch 2, the planned learning rate and poly
schedule over those epochs, fresh Adam, ``--precision auto``), starting from ``--pretrained`` (the shipped fine
weights by default), with the same seed; only the setting differs:

- ``planned``: the configs as planned (MONAI's ``norm_name="instance"``, no affine; contrast randomisation on);
- ``norm_affine``: instance norm with a learnable affine (``("instance", {"affine": True})``, nnU-Net's). From
  the shipped weights the affine starts at weight 1 / bias 0 (``scripts.network.norm_affine_missing``): the
  same function as ``planned`` at iteration 0, so the runs differ only in what training does with the affine;
- ``contrast_off``: RandTissueContrastd and RandSkullStripd at probability 0 (as ``--contrast_randomization off``
  plans; blur, bias field, noise, low resolution and the intensity scalings stay);
- ``skull_strip_off``: only RandSkullStripd at probability 0.

The probabilities are zeroed rather than the transforms removed, so every run draws the same random numbers
(the same crops and spatial augmentations). Every run validates once, at its end, on the same fixed subset of
datalist_v1's validation cases (``--per_group`` per group, anatomies alternating within a group): the cascade
with the shipped coarse model (models/coarse_model.pt), float32, no TTA, as train.json's validation runs it.
``--parallel`` runs start together with one thread each (a busy spell of a shared machine slows them alike).

Prints and writes ``DIR``/ablations.md: per setting and validation group, n landmarks, MRE / median / SDR@2 mm /
SDR@4 mm; then each setting's MRE and SDR@2 mm minus those of ``planned`` (same seed) with a 95% interval from
resampling the validation cases (how much the choice of cases alone moves the difference; the run-to-run noise of
training is what a second ``--seed`` measures), and the per-epoch training loss; the rows also go to ``DIR``/ablations.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.machine import machine_description  # noqa: E402
from bench.precision_training import train_side_by_side, training_minutes  # noqa: E402
from scripts.atomic import atomic_write_text  # noqa: E402
from scripts.data import cases_per_group, image_stem  # noqa: E402
from scripts.errors import LandmarkConfigError, LandmarkDataError, cli_main  # noqa: E402
from scripts.metrics import summarize_errors  # noqa: E402

DATALIST = PROJECT / "data" / "afids" / "datalist_v1.json"
TRAIN_CONFIG = PROJECT / "configs" / "train.json"
COARSE_MODEL = PROJECT / "models" / "coarse_model.pt"
AFFINE_NORM = ["instance", {"affine": True}]
CASCADE_LIMITED = ("t2w_oasis",)  # groups the shipped coarse model (T1w only) misplaces: the fine stage cannot change them
SETTINGS = {
    "planned": "configs as planned: instance norm without affine, contrast randomisation on",
    "norm_affine": "instance norm with affine (nnU-Net's)",
    "contrast_off": "RandTissueContrastd and RandSkullStripd at probability 0",
    "skull_strip_off": "RandSkullStripd at probability 0",
}


def write_datalist(work: Path, per_group: int) -> tuple[Path, dict]:
    """datalist_v1 with absolute paths, every training case, the validation subset; returns (path, {stem: group})."""
    datalist = json.loads(DATALIST.read_text())
    root = DATALIST.parent

    def absolute(entry: dict) -> dict:
        return {k: (str(root / v) if k in ("image", "landmarks", "label") and isinstance(v, str) else v) for k, v in entry.items()}

    subset = [absolute(e) for e in cases_per_group(datalist["validation"], per_group)]
    out = {**datalist, "training": [absolute(e) for e in datalist["training"]], "validation": subset, "testing": []}
    path = work / "datalist_ablation.json"
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    return path, {image_stem(e["image"], str(work)): e["group"] for e in subset}


def augmentation_index(target: str) -> int:
    """Position of the transform ``target`` (class name) in train.json's ``train#augmentation``."""
    augmentation = json.loads(TRAIN_CONFIG.read_text())["train"]["augmentation"]
    found = [i for i, t in enumerate(augmentation) if str(t.get("_target_", "")).endswith("." + target)]
    if not found:
        raise LandmarkConfigError(str(TRAIN_CONFIG), f"no {target} in train#augmentation (contrast randomisation planned off?)")
    return found[0]


def affine_pretrained(pretrained: Path, work: Path) -> Path:
    """``pretrained``'s weights with instance-norm affine parameters at weight 1 / bias 0 (the same function), with its sidecar."""
    import torch
    from monai.bundle import ConfigParser

    from scripts.model_files import read_checkpoint, write_sidecar
    from scripts.network import norm_affine_missing

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["network_def#norm_name"] = AFFINE_NORM
    network = parser.get_parsed_content("network_def")
    state, identity = read_checkpoint(str(pretrained))
    path = work / "pretrained_norm_affine.pt"
    torch.save({**state, **norm_affine_missing(network, state)}, path)
    if identity is not None:
        write_sidecar(str(path), identity)
    return path


def setting_arguments(name: str, pretrained: Path | None, work: Path) -> list:
    start = ["--pretrained", pretrained] if pretrained else []
    if name == "planned":
        return start
    if name == "norm_affine":
        start = ["--pretrained", affine_pretrained(pretrained, work)] if pretrained else []
        return ["--network_def#norm_name", repr(tuple(AFFINE_NORM)), *start]
    if name == "contrast_off":
        return [f"--train#augmentation#{augmentation_index('RandTissueContrastd')}#prob", "0.0",
                f"--train#augmentation#{augmentation_index('RandSkullStripd')}#prob", "0.0", *start]
    if name == "skull_strip_off":
        return [f"--train#augmentation#{augmentation_index('RandSkullStripd')}#prob", "0.0", *start]
    raise LandmarkConfigError("--settings", f"unknown setting {name!r}: one of {', '.join(SETTINGS)}")


def seeded_initialize(seed: int) -> list:
    """train.json's ``initialize`` with ``seed`` for the fold's seed of ``set_determinism``."""
    initialize = json.loads(TRAIN_CONFIG.read_text())["initialize"]
    seeded = [step.replace("seed=max(@fold, 0)", f"seed={int(seed)}") for step in initialize]
    if seeded == initialize:
        raise LandmarkConfigError(str(TRAIN_CONFIG), "no set_determinism(seed=max(@fold, 0)) in initialize to replace")
    return seeded


def case_errors(per_case_csv: Path) -> dict:
    """{case stem: radial errors (mm) of its landmarks in file order, NaN where not annotated} from per_case.csv."""
    errors = defaultdict(list)
    with open(per_case_csv, newline="") as f:
        for row in csv.DictReader(f):
            errors[row["case"]].append(float(row["error_mm"]) if row["error_mm"] else np.nan)
    return {case: np.asarray(values) for case, values in errors.items()}


def group_metrics(errors: dict, groups: dict) -> dict:
    """{group: summarize_errors} over every annotated landmark of the group's cases, plus "all"."""
    by_group = defaultdict(list)
    for case, values in errors.items():
        by_group[groups[case]].append(values)
    summary = {group: summarize_errors(np.concatenate(v)) for group, v in sorted(by_group.items())}
    summary["all"] = summarize_errors(np.concatenate(list(errors.values())))
    return summary


def paired_difference(errors: dict, reference: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """MRE and SDR@2 mm of ``errors`` minus ``reference`` over their common cases, with a 95% interval from resampling the
    cases (landmarks of one case stay together): the spread the choice of validation cases alone would give."""
    cases = sorted(set(errors) & set(reference))
    a, b = np.stack([errors[c] for c in cases]), np.stack([reference[c] for c in cases])

    def stats(rows):
        x, y = a[rows], b[rows]
        return np.nanmean(x) - np.nanmean(y), np.nanmean(x[np.isfinite(x)] <= 2) - np.nanmean(y[np.isfinite(y)] <= 2)

    rng = np.random.default_rng(seed)
    draws = np.array([stats(rng.integers(0, len(cases), len(cases))) for _ in range(resamples)])
    point = stats(np.arange(len(cases)))
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {"mre": point[0], "mre_ci": [low[0], high[0]], "sdr_2mm": point[1], "sdr_2mm_ci": [low[1], high[1]], "cases": len(cases)}


def epoch_losses(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"epoch \d+/\d+: loss ([\d.e+-]+)", log)]


def collect(work: Path) -> list[dict]:
    """One row per finished run in ``work`` (models_<setting>/evaluation/per_case.csv), labelled with the run's seed and
    start (``pretrained`` weights or ``scratch``)."""
    datalist = json.loads((work / "datalist_ablation.json").read_text())
    groups = {image_stem(e["image"], str(work)): e["group"] for e in datalist["validation"]}
    initialize = json.loads((work / "ablation_override.json").read_text())["initialize"]
    seed = int(re.search(r"seed=(\d+)", " ".join(initialize)).group(1))
    rows = []
    for name in SETTINGS:
        per_case = work / f"models_{name}" / "evaluation" / "per_case.csv"
        if not per_case.exists():
            continue
        log = (work / f"train_{name}.log").read_text() if (work / f"train_{name}.log").exists() else ""
        errors = case_errors(per_case)
        start = "pretrained" if "initialised from" in log else "scratch"  # scripts.pretrained logs the file it starts from
        rows.append({"setting": name, "seed": seed, "start": start, "training_min": training_minutes(log), "losses": epoch_losses(log),
                     "groups": group_metrics(errors, groups), "errors": errors, "case_groups": groups})
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """Per (setting, seed, start) and validation group: the metrics; then each run against ``planned`` of the same seed and start."""
    groups = [g for g in rows[0]["groups"] if g != "all"] + ["all"]
    lines = [header, "", "| setting | seed | start | group | landmarks | MRE (mm) | median (mm) | SDR@2 mm | SDR@4 mm |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for group in groups:
            m = row["groups"][group]
            lines.append(f"| {row['setting']} | {row['seed']} | {row['start']} | {group} | {m['n']} | {m['mre']:.2f} | {m['median']:.2f} | "
                         f"{m['sdr_2mm']:.1%} | {m['sdr_4mm']:.1%} |")
    lines += ["", f"MRE and SDR@2 mm minus those of `planned` (same seed and start), 95% interval from resampling the validation cases; "
              f"'without {', '.join(CASCADE_LIMITED)}': the cases the shipped coarse model can place (it never trained on T2w).", "",
              "| setting | seed | start | what changed | MRE - planned's (mm) | SDR@2 mm - planned's | MRE - planned's, without T2w | "
              "SDR@2 mm - planned's, without T2w | per group MRE - planned's (mm) | trainer run (min) | loss per epoch |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        reference = next((r for r in rows if r["setting"] == "planned" and (r["seed"], r["start"]) == (row["seed"], row["start"])), None)
        if reference is None or reference is row:
            cells = ["(reference)" if reference is row else "(no planned run)"] + [""] * 4
        else:
            cells = []
            kept = {c: v for c, v in row["errors"].items() if row["case_groups"][c] not in CASCADE_LIMITED}
            for d in (paired_difference(row["errors"], reference["errors"]), paired_difference(kept, reference["errors"])):
                cells += [f"{d['mre']:+.2f} [{d['mre_ci'][0]:+.2f}, {d['mre_ci'][1]:+.2f}]",
                          f"{d['sdr_2mm']:+.1%} [{d['sdr_2mm_ci'][0]:+.1%}, {d['sdr_2mm_ci'][1]:+.1%}]"]
            cells.append(", ".join(f"{g} {row['groups'][g]['mre'] - reference['groups'][g]['mre']:+.2f}" for g in groups if g != "all"))
        lines.append(f"| {row['setting']} | {row['seed']} | {row['start']} | {SETTINGS[row['setting']]} | " + " | ".join(cells) + " | "
                     f"{row['training_min']:.1f} | " + ", ".join(f"{v:.4e}" for v in row["losses"]) + " |")
    return "\n".join(lines) + "\n"


def report(works: list[Path], header: str, out: Path) -> str:
    """The tables over the runs of ``works``, printed and written to ``out``/ablations.md (rows: ablations.json)."""
    rows = [row for work in works for row in collect(work)]
    if not rows:
        raise LandmarkDataError(", ".join(map(str, works)), "no finished run")
    table = markdown(rows, header)
    print(table)
    atomic_write_text(out / "ablations.md", table)
    atomic_write_text(out / "ablations.json", json.dumps([{k: v for k, v in r.items() if k not in ("errors", "case_groups")} for r in rows], indent=1, default=float) + "\n")
    return table


@cli_main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="training iterations of each run (epochs of 50)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--per_group", type=int, default=2, help="validation cases per group")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--pretrained", default=str(PROJECT / "models" / "model.pt"), help="starting weights, or 'none'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", required=True, help="folder for the runs (kept: logs, weights, evaluations)")
    parser.add_argument("--report", nargs="+", default=None, metavar="DIR",
                        help="train nothing: the tables over the finished runs of these --work folders, written to --work")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    if args.report:
        work.mkdir(parents=True, exist_ok=True)
        report([Path(d).resolve() for d in args.report], f"Runs of {', '.join(args.report)} (bench/ablations.py; see each folder's logs).", work)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    datalist, groups = write_datalist(work, args.per_group)
    epochs = max(1, args.iterations // 50)
    pretrained = None if args.pretrained.lower() == "none" else Path(args.pretrained).resolve()
    # one validation, at the end, with the per-case report beside the run's weights
    override = {"+validate#handlers": [{"_target_": "scripts.evaluation.LandmarkEvaluationReport",
                                        "output_dir": "$@ckpt_dir + '/evaluation'", "landmark_names": "@landmark_names"}],
                "initialize": seeded_initialize(args.seed)}
    override_file = work / "ablation_override.json"
    atomic_write_text(override_file, json.dumps(override, indent=1) + "\n")
    common = ["--datalist", datalist, "--epochs", epochs, "--iterations_per_epoch", 50, "--val_interval", epochs,
              "--precision", "auto"]
    runs = {name: [*common, *setting_arguments(name, pretrained, work)] for name in args.settings}
    names = list(runs)
    for start in range(0, len(names), args.parallel):  # logs: train_<setting>.log, read back by collect()
        batch = {name: runs[name] for name in names[start:start + args.parallel]}
        train_side_by_side(PROJECT, work, batch, 1, config_files=f"['{TRAIN_CONFIG}','{override_file}']", coarse_model=COARSE_MODEL)
    start_from = f"from {pretrained.relative_to(PROJECT) if pretrained.is_relative_to(PROJECT) else pretrained}" if pretrained else "from scratch"
    header = (f"Fine stage on datalist_v1 (59 training cases), {epochs * 50} iterations ({epochs} epochs x 50, batch 2) {start_from}, "
              f"--precision auto; validation: {len(groups)} cases ({args.per_group} per group), cascade with "
              f"models/coarse_model.pt, float32, no TTA. {machine_description()}; {args.parallel} run(s) side by side, 1 thread each.")
    report([work], header, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
