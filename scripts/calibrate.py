"""Calibrate the trained model's error radii (split conformal, per class of peak score) and its configuration check; writes models/calibration.json.

    python -m scripts.calibrate [--bundle_root .] [--datalist D] [--section validation] [--groups G ...]
                                [--check_groups G ...] [--cases_per_group N] [--calibration_cases N] [--coverage 0.9]
                                [--pooled] [--output FILE] [--save_predictions FILE.npz] [--add_predictions FILE.npz ...]

Runs the bundle's own inference (inference.json: same preprocessing, models, ensemble, TTA) on the
chosen annotated cases the model was not trained on: the ``--groups`` of the section (default: all), at most
``--cases_per_group`` each. The first ``--calibration_cases`` of them (default: all) calibrate, together with any
``--add_predictions`` (another bundle's saved predictions, e.g. a leave-one-anatomy-out model on the brain it
never saw); the rest and the ``--check_groups`` (never calibrated on) check it. Per group it reports the coverage
of the radius and how ``found`` (as inference reports it under the new calibration) treats landmarks more than
4 mm off. The training section's annotations give the landmark geometry for the configuration check.
Inference then reads models/calibration.json (``--output`` writes elsewhere): every landmark gets
``uncertainty.radius_mm`` at the stated coverage, and ``found`` also requires a plausible configuration and a
radius under ``max_radius_mm``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from scripts.errors import LandmarkConfigError, LandmarkDataError, cli_main
from scripts.atomic import atomic_write_text
from scripts.data import cases_per_group, landmarks_to_array, load_datalist
from scripts.landmark_names import plans_landmark_names
from scripts.engines import found_threshold
from scripts.uncertainty import (DEFAULT_COVERAGE, calibrate, configuration_flags, distance_statistics, found_flags, radius_mm,
                                 spread_mm)

MAX_RADIUS_FACTOR = 3.0  # found requires radius <= this x the median calibrated radius
FAR_OFF_MM = 4.0  # a landmark this far from the truth should come back found: false
ARRAYS = ("errors", "spreads", "positions", "scores", "covariances")


def predict_cases(bundle_root: Path, entries: list[dict], names: list[str], groups: list[str]) -> dict:
    """The bundle's inference (uncalibrated) on each entry, against its annotation.

    Returns {"errors": (cases, N) radial error mm (NaN where not annotated), "spreads": (cases, N) heatmap spread mm,
    "positions": (cases, N, 3) RAS mm, "scores": (cases, N) peak scores, "covariances": (cases, N, 3, 3) mm^2 (NaN
    where absent), "groups": [group per case], "cases": [image per case]}."""
    from scripts.serving import LandmarkPredictor

    predictor = LandmarkPredictor(str(bundle_root), {"calibration": None})
    n = len(entries)
    out = {"errors": np.full((n, len(names)), np.nan), "spreads": np.full((n, len(names)), np.nan),
           "positions": np.full((n, len(names), 3), np.nan), "scores": np.full((n, len(names)), np.nan),
           "covariances": np.full((n, len(names), 3, 3), np.nan), "groups": list(groups),
           "cases": [str(e["image"] if isinstance(e["image"], str) else e["image"][0]) for e in entries]}
    for i, entry in enumerate(entries):
        record = predictor.predict(out["cases"][i])
        truth = landmarks_to_array(entry.get("landmarks", {}), names)
        for j, name in enumerate(names):
            landmark = record["landmarks"][name]
            out["positions"][i, j] = landmark["position"]
            out["scores"][i, j] = landmark["score"]
            out["errors"][i, j] = np.linalg.norm(out["positions"][i, j] - truth[j])
            covariance = landmark["uncertainty"]["covariance_mm2"]
            if covariance is not None:
                out["covariances"][i, j] = covariance
                out["spreads"][i, j] = spread_mm(np.asarray(covariance))
        print(f"  {i + 1}/{n} {Path(out['cases'][i]).name} ({groups[i]}): median error {np.nanmedian(out['errors'][i]):.2f} mm", flush=True)
    return out


def save_predictions(path: Path, predictions: dict) -> None:
    """predict_cases' result as one .npz (atomic), for calibrating with another bundle's predictions (--add_predictions)."""
    import io

    from scripts.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: predictions[k] for k in ARRAYS}, groups=np.asarray(predictions["groups"], dtype=str),
                        cases=np.asarray(predictions["cases"], dtype=str))
    atomic_write_bytes(path, buffer.getvalue())


def load_predictions(path: Path, names: list[str]) -> dict:
    """A --save_predictions file; LandmarkDataError naming it when unreadable or made for other landmarks."""
    try:
        with np.load(path) as data:
            loaded = {k: data[k] for k in ARRAYS} | {"groups": data["groups"].tolist(), "cases": data["cases"].tolist()}
    except (OSError, KeyError, ValueError) as error:
        raise LandmarkDataError(str(path), f"not a predictions file of python -m scripts.calibrate --save_predictions ({error})") from None
    if loaded["errors"].ndim != 2 or loaded["errors"].shape[1] != len(names):
        raise LandmarkDataError(str(path), f"predictions of {loaded['errors'].shape[-1]} landmarks; this model has {len(names)}")
    return loaded


def concatenate(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in ARRAYS} | {k: sum((list(p[k]) for p in parts), []) for k in ("groups", "cases")}


def rows_of(predictions: dict, rows) -> dict:
    rows = list(rows)
    return {k: predictions[k][rows] for k in ARRAYS} | {k: [predictions[k][i] for i in rows] for k in ("groups", "cases")}


def group_report(predictions: dict, calibration: dict, names: list[str], threshold: float) -> dict[str, dict]:
    """Per group: coverage of the calibrated radius, and how ``found`` (as inference would report it under this
    calibration: score, configuration check, max_radius_mm) separates landmarks more than FAR_OFF_MM off.

    Each group's row: cases; landmarks (annotated, with a radius); coverage (share within the radius); mean radius
    and MRE (mm); over_4mm (landmarks more than 4 mm off); over_4mm_found_false / over_4mm_found_true (of those, how
    many inference marks found: false / still found: true); found_false (every annotated landmark marked found: false,
    so over_4mm_found_false / found_false is the share of found: false that really is more than 4 mm off)."""
    errors = predictions["errors"]
    radius = radius_mm(calibration, predictions["spreads"], predictions["scores"])  # spreads: spread_mm of the covariances
    found = np.zeros(errors.shape, dtype=bool)
    for i in range(len(errors)):
        flagged, _ = configuration_flags(predictions["positions"][i], calibration.get("distances"), names)
        found[i] = found_flags(predictions["scores"][i], threshold, flagged, radius[i], calibration)
    result = {}
    for group in sorted(set(predictions["groups"])):
        rows = [i for i, g in enumerate(predictions["groups"]) if g == group]
        e, r, f = errors[rows], radius[rows], found[rows]
        annotated = np.isfinite(e)
        usable = annotated & np.isfinite(r)
        far = annotated & (e > FAR_OFF_MM)
        result[group] = {
            "cases": len(rows), "landmarks": int(usable.sum()),
            "coverage": round(float(np.mean(e[usable] <= r[usable])), 4) if usable.any() else None,
            "mean_radius_mm": round(float(np.mean(r[usable])), 3) if usable.any() else None,
            "mre_mm": round(float(np.mean(e[annotated])), 3) if annotated.any() else None,
            "over_4mm": int(far.sum()), "over_4mm_found_false": int((far & ~f).sum()), "over_4mm_found_true": int((far & f).sum()),
            "found_false": int((annotated & ~f).sum()),
        }
    return result


def annotated_cases(entries: list[dict], groups, per_group: int | None, default_group: str) -> list[dict]:
    """The annotated entries of ``groups`` (all when None), at most ``per_group`` of each, spread over the
    group's brains (scripts.data.cases_per_group)."""
    return cases_per_group([e for e in entries if e.get("landmarks")], per_group, groups, default_group)


def print_report(calibration: dict) -> None:
    """The per-group table: coverage of the radius, and found: false against landmarks more than 4 mm off."""
    print(f"{'cases':<12} {'group':<26} {'n':>5} {'coverage':>9} {'radius':>8} {'MRE':>8} {'>4 mm':>6} {'found:false':>12} "
          f"{'found:true':>11} {'found:false':>12}")
    print(f"{'':<12} {'':<26} {'':>5} {'':>9} {'(mean)':>8} {'':>8} {'off':>6} {'of >4 mm':>12} {'of >4 mm':>11} {'(all)':>12}")
    for label, table in (("calibration", calibration["calibration_coverage"]), ("held out", calibration.get("holdout_coverage", {}))):
        for group, row in table.items():
            coverage = f"{row['coverage']:.1%}" if row["coverage"] is not None else "-"
            radius = f"{row['mean_radius_mm']:.2f}" if row["mean_radius_mm"] is not None else "-"
            print(f"{label:<12} {group:<26} {row['landmarks']:>5} {coverage:>9} {radius:>5} mm {row['mre_mm']:>5.2f} mm {row['over_4mm']:>6} "
                  f"{row['over_4mm_found_false']:>12} {row['over_4mm_found_true']:>11} {row['found_false']:>12}")


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=".", type=Path)
    parser.add_argument("--datalist", default=None, help="default: the datalist train.json names")
    parser.add_argument("--section", default="validation")
    parser.add_argument("--groups", nargs="*", default=None, help="calibrate on entries whose 'group' is one of these (default: all)")
    parser.add_argument("--check_groups", nargs="*", default=[], help="groups only checked (coverage, found), never calibrated on")
    parser.add_argument("--cases_per_group", type=int, default=None, help="the first N annotated cases of each group (default: all)")
    parser.add_argument("--calibration_cases", type=int, default=None, help="calibrate on the first N selected, check the rest")
    parser.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE)
    parser.add_argument("--pooled", action="store_true",
                        help="one quantile for every landmark, no peak-score classes (the method before v1; to compare)")
    parser.add_argument("--description", default="", help="what the calibration data is, stored with the calibration")
    parser.add_argument("--output", type=Path, default=None, help="where to write the calibration (default: BUNDLE/models/calibration.json)")
    parser.add_argument("--save_predictions", type=Path, default=None,
                        help="also write the uncalibrated predictions of every case it ran (calibration and check), .npz")
    parser.add_argument("--add_predictions", type=Path, nargs="*", default=[],
                        help="another bundle's --save_predictions files: all their cases join the calibration cases, reported "
                             "as 'GROUP (FILE STEM)' (e.g. a leave-one-anatomy-out model on its left-out brain)")
    args = parser.parse_args(argv)
    bundle_root = args.bundle_root.resolve()
    sys.path.insert(0, str(bundle_root))
    if args.datalist is None:
        from monai.bundle import ConfigParser

        config = ConfigParser()
        config.read_config(str(bundle_root / "configs" / "train.json"))
        config["bundle_root"] = str(bundle_root)
        args.datalist = config.get_parsed_content("datalist")
    model = plans_landmark_names(bundle_root / "configs" / "plans.json")  # points matched to the model's channels
    datalist = load_datalist(args.datalist, model.channels, model.descriptions, model.source)
    names = list(datalist.landmark_names)
    section = datalist.section(args.section)
    present = {str(e.get("group", args.section)) for e in section}
    unknown = sorted((set(args.groups or []) | set(args.check_groups)) - present)
    if unknown:
        raise LandmarkDataError(args.datalist, f"no {args.section} case of group(s) {', '.join(unknown)} (groups: {', '.join(sorted(present))})")
    both = sorted(set(args.groups or []) & set(args.check_groups))
    if both:
        raise LandmarkConfigError("--check_groups", f"group(s) {', '.join(both)} also in --groups: a group is calibrated on or checked, not both")
    groups = args.groups if args.groups is not None else sorted(present - set(args.check_groups))  # check groups never calibrate
    selected = annotated_cases(section, groups, args.cases_per_group, args.section)
    checked = annotated_cases(section, args.check_groups, args.cases_per_group, args.section) if args.check_groups else []
    k = min(args.calibration_cases or len(selected), len(selected))
    added = [load_predictions(path, names) for path in args.add_predictions]
    for loaded, path in zip(added, args.add_predictions):  # reported apart from this bundle's own: "oasis_fsaverage (loao)"
        loaded["groups"] = [f"{group} ({path.stem})" for group in loaded["groups"]]
    if k + sum(len(p["errors"]) for p in added) < 2:
        raise LandmarkDataError(args.datalist, f"{k} annotated {args.section} case(s) selected; calibration needs several")
    entries = selected + checked
    predictions = predict_cases(bundle_root, entries, names, [str(e.get("group", args.section)) for e in entries])
    if args.save_predictions:
        save_predictions(args.save_predictions, predictions)
    calibrating = concatenate(rows_of(predictions, range(k)), *added)
    holdout = rows_of(predictions, range(k, len(entries)))
    calibration = calibrate(calibrating["errors"], calibrating["spreads"], names, args.coverage, None if args.pooled else calibrating["scores"])
    radius = radius_mm(calibration, calibrating["spreads"], calibrating["scores"])
    calibration["max_radius_mm"] = round(float(MAX_RADIUS_FACTOR * np.nanmedian(radius)), 3)
    existing_file = bundle_root / "models" / "calibration.json"
    existing = json.loads(existing_file.read_text()) if existing_file.exists() else {}
    if "found_threshold" in existing:
        calibration["found_threshold"] = existing["found_threshold"]
    calibration["distances"] = distance_statistics([e["landmarks"] for e in datalist.section("training") if e.get("landmarks")], names)
    calibration["calibration_data"] = args.description or (
        f"{k} {args.section} case(s) of {Path(args.datalist).name}" + (f" (groups {', '.join(groups)})" if args.groups or args.check_groups else "")
        + "".join(f" + {len(p['errors'])} case(s) of {path.name}" for p, path in zip(added, args.add_predictions)))
    threshold = found_threshold(str(existing_file))
    calibration["calibration_coverage"] = group_report(calibrating, calibration, names, threshold)
    if len(holdout["errors"]):
        calibration["holdout_coverage"] = group_report(holdout, calibration, names, threshold)
    output = args.output or existing_file
    atomic_write_text(output, json.dumps(calibration, indent=2) + "\n")
    classes = calibration.get("score_classes")
    factor = (" / ".join(f"{q:.3f}" for q in classes["normalized_quantiles"]) + " (peak-score classes split at "
              + ", ".join(f"{e:.3f}" for e in classes["edges"]) + ")") if classes else f"{calibration['normalized_quantile']:.3f}"
    print(f"calibrated on {len(calibrating['errors'])} case(s): radius = {factor} x heatmap spread for "
          f"{args.coverage:.0%} coverage; wrote {output}")
    print_report(calibration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
