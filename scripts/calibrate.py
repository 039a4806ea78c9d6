"""Calibrate the trained model's error radii (split conformal) and its configuration check; writes models/calibration.json.

    python -m scripts.calibrate [--bundle_root .] [--datalist D] [--section validation] [--groups G ...]
                                [--calibration_cases N] [--coverage 0.9]

Runs the bundle's own inference (inference.json: same preprocessing, models, ensemble, TTA) on the
chosen annotated cases the model was not trained on. The first ``--calibration_cases`` of them (default:
all) calibrate; the rest check the coverage, reported per group. The training section's annotations give
the landmark geometry for the configuration check. Inference then reads models/calibration.json: every
landmark gets ``uncertainty.radius_mm`` at the stated coverage, and ``found`` also requires a plausible
configuration and a radius under ``max_radius_mm``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from scripts.errors import LandmarkDataError, cli_main
from scripts.atomic import atomic_write_text
from scripts.landmark_io import landmarks_to_array, load_datalist
from scripts.landmark_names import plans_landmark_names
from scripts.uncertainty import DEFAULT_COVERAGE, calibrate, distance_statistics, spread_mm

MAX_RADIUS_FACTOR = 3.0  # found requires radius <= this x the median calibrated radius


def predict_cases(bundle_root: Path, entries: list[dict], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(errors, spreads), each (cases, landmarks) in mm, NaN where a landmark is not annotated."""
    from scripts.serving import LandmarkPredictor

    predictor = LandmarkPredictor(str(bundle_root), {"calibration": None})
    errors = np.full((len(entries), len(names)), np.nan)
    spreads = np.full((len(entries), len(names)), np.nan)
    for i, entry in enumerate(entries):
        record = predictor.predict(entry["image"] if isinstance(entry["image"], str) else entry["image"][0])
        truth = landmarks_to_array(entry.get("landmarks", {}), names)
        for j, name in enumerate(names):
            landmark = record["landmarks"][name]
            errors[i, j] = np.linalg.norm(np.asarray(landmark["position"]) - truth[j])
            covariance = landmark["uncertainty"]["covariance_mm2"]
            spreads[i, j] = spread_mm(np.asarray(covariance)) if covariance is not None else np.nan
        print(f"  {i + 1}/{len(entries)} {Path(str(entry['image'])).name}: median error {np.nanmedian(errors[i]):.2f} mm", flush=True)
    return errors, spreads


def coverage_table(errors, spreads, groups: list[str], quantile: float) -> dict[str, dict]:
    result = {}
    for group in sorted(set(groups)):
        rows = [i for i, g in enumerate(groups) if g == group]
        e, s = errors[rows], spreads[rows]
        usable = np.isfinite(e) & np.isfinite(s)
        radius = quantile * s[usable]
        result[group] = {"cases": len(rows), "landmarks": int(usable.sum()), "coverage": round(float(np.mean(e[usable] <= radius)), 4),
                         "mean_radius_mm": round(float(np.mean(radius)), 3), "mre_mm": round(float(np.mean(e[usable])), 3)}
    return result


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=".", type=Path)
    parser.add_argument("--datalist", default=None, help="default: the datalist train.json names")
    parser.add_argument("--section", default="validation")
    parser.add_argument("--groups", nargs="*", default=None, help="only entries whose 'group' is one of these")
    parser.add_argument("--calibration_cases", type=int, default=None, help="calibrate on the first N, check coverage on the rest")
    parser.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE)
    parser.add_argument("--description", default="", help="what the calibration data is, stored with the calibration")
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
    entries = [e for e in datalist.section(args.section) if e.get("landmarks") and (not args.groups or e.get("group") in args.groups)]
    if len(entries) < 2:
        raise LandmarkDataError(args.datalist, f"{len(entries)} annotated {args.section} case(s) selected; calibration needs several")
    k = args.calibration_cases or len(entries)
    errors, spreads = predict_cases(bundle_root, entries, names)
    calibration = calibrate(errors[:k], spreads[:k], names, args.coverage)
    radius = calibration["normalized_quantile"] * spreads[:k]
    calibration["max_radius_mm"] = round(float(MAX_RADIUS_FACTOR * np.nanmedian(radius)), 3)
    existing_file = bundle_root / "models" / "calibration.json"
    existing = json.loads(existing_file.read_text()) if existing_file.exists() else {}
    if "found_threshold" in existing:
        calibration["found_threshold"] = existing["found_threshold"]
    calibration["distances"] = distance_statistics([e["landmarks"] for e in datalist.section("training") if e.get("landmarks")], names)
    groups = [str(e.get("group", args.section)) for e in entries]
    calibration["calibration_data"] = args.description or f"{k} {args.section} case(s) of {Path(args.datalist).name}"
    calibration["calibration_coverage"] = coverage_table(errors[:k], spreads[:k], groups[:k], calibration["normalized_quantile"])
    if k < len(entries):
        calibration["holdout_coverage"] = coverage_table(errors[k:], spreads[k:], groups[k:], calibration["normalized_quantile"])
    atomic_write_text(existing_file, json.dumps(calibration, indent=2) + "\n")
    print(f"calibrated on {k} case(s): radius = {calibration['normalized_quantile']:.3f} x heatmap spread for {args.coverage:.0%} "
          f"coverage; wrote {existing_file}")
    print(f"{'cases':<12} {'group':<24} {'n':>5} {'coverage':>9} {'mean radius':>12} {'MRE':>8}")
    for label, table in (("calibration", calibration["calibration_coverage"]), ("held out", calibration.get("holdout_coverage", {}))):
        for group, row in table.items():
            print(f"{label:<12} {group:<24} {row['landmarks']:>5} {row['coverage']:>9.1%} {row['mean_radius_mm']:>9.2f} mm {row['mre_mm']:>5.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
