"""Single model vs fold ensemble vs mirror TTA: MRE and seconds per case on a bundle's validation cases.

    python bench/ensemble_tta.py --bundle_root BUNDLE_WITH_FOLDS [--datalist D]
    python bench/ensemble_tta.py --synthetic /tmp/ens_bench [--folds 3]   # plans, trains folds, then measures

Every variant runs evaluate.json through the real CLI on the same cases in one run: fold 0 alone, the
ensemble of every ``models/fold_*``, each with and without mirror TTA. With ``--synthetic`` a synthetic
dataset (scripts.datasets.synthetic) is planned and its folds trained briefly first (CPU minutes), so
the table says what averaging buys, not what the shipped model reaches. Writes docs/ensemble_tta.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import evaluator_seconds, machine_description  # noqa: E402
from scripts.atomic import atomic_write_text  # noqa: E402
from scripts.errors import LandmarkDataError, cli_main  # noqa: E402
from scripts.model_files import fold_dirs  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
SYNTHETIC_SCHEDULE = ["--epochs", "20", "--iterations_per_epoch", "25", "--val_interval", "20", "--learning_rate", "0.003"]


def evaluate(bundle: Path, output: Path, datalist: str | None, fold: int, ensemble: bool, tta: bool) -> tuple[dict, float]:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
            "--output_dir", str(output), "--ensemble", str(ensemble), "--tta", str(tta), "--eval_section", "validation"]
    if not ensemble:
        args += ["--fold", str(fold)]
    if datalist:
        args += ["--datalist", datalist]
    result = subprocess.run(args, cwd=bundle, check=True, capture_output=True, text=True)
    report = json.loads((output / "metrics.json").read_text())
    return report["overall"], evaluator_seconds(result.stdout + result.stderr) / max(report["cases"], 1)


def synthetic_bundle(root: Path, folds: int) -> tuple[Path, str]:
    from scripts.datasets.synthetic import make_synthetic_dataset

    datalist = make_synthetic_dataset(str(root / "data"), n_training=10, n_validation=6, n_testing=0, seed=11)
    bundle = root / "bundle"
    subprocess.run([sys.executable, "-m", "scripts.plan", datalist, "--bundle_root", str(bundle), "--memory_gb", "0.33"],
                   cwd=PROJECT, check=True)
    subprocess.run([sys.executable, "-m", "scripts.train_folds", "--bundle_root", str(bundle), "--folds", *map(str, range(folds)),
                    "--", *SYNTHETIC_SCHEDULE], cwd=bundle, check=True)
    return bundle, datalist


@cli_main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=None)
    parser.add_argument("--datalist", default=None, help="validation cases to use (default: the bundle's datalist)")
    parser.add_argument("--synthetic", default=None, help="folder for a synthetic dataset + bundle, planned and trained first")
    parser.add_argument("--folds", type=int, default=3, help="folds to train with --synthetic")
    parser.add_argument("--output", default=str(PROJECT / "docs" / "ensemble_tta.md"))
    args = parser.parse_args()
    if args.synthetic:
        bundle, datalist = synthetic_bundle(Path(args.synthetic), args.folds)
    elif args.bundle_root:
        bundle, datalist = Path(args.bundle_root).resolve(), args.datalist
    else:
        parser.error("give --bundle_root (a bundle with models/fold_*) or --synthetic DIR")
    members = [d for d in fold_dirs(str(bundle / "models")) if (Path(d) / "model.pt").is_file()]
    if not members:
        raise LandmarkDataError(bundle / "models", "no fold_N/model.pt to ensemble; train folds first (python -m scripts.train_folds)")
    variants = [("fold 0 alone", False, False), ("fold 0 + mirror TTA", False, True),
                (f"ensemble of {len(members)} folds", True, False), (f"ensemble of {len(members)} folds + mirror TTA", True, True)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ensemble, tta) in enumerate(variants):
            metrics, seconds = evaluate(bundle, Path(tmp) / str(i), datalist, 0, ensemble, tta)
            rows.append((name, metrics, seconds))
            print(f"  {name}: MRE {metrics['mre']:.3f} mm, {seconds:.2f} s/case", flush=True)
    plans = json.loads((bundle / "configs" / "plans.json").read_text())["configuration"]
    lines = [
        "# Fold ensemble and mirror TTA: what they gain and cost",
        "",
        "Written by `python bench/ensemble_tta.py " + (f"--synthetic DIR --folds {args.folds}" if args.synthetic else "--bundle_root ...") + "`;",
        "all rows measured in one run on the same validation cases. Note: \"fold 0 alone\" is evaluated on the",
        "datalist's validation section, like the ensemble (not on its own out-of-fold cases).",
        "" if not args.synthetic else "Data: synthetic volumes (scripts/datasets/synthetic.py), each fold trained briefly on 2 CPU cores;"
        " the table shows what averaging buys a short training, not a shipped model's accuracy.",
        "",
        f"TTA mirror axes planned: {plans.get('tta_mirror_axes', [])} (an empty list means TTA adds nothing but time).",
        "",
        "| variant | MRE (mm) | median (mm) | SDR@2 mm | SDR@4 mm | s / case |",
        "|---|---|---|---|---|---|",
    ]
    for name, m, seconds in rows:
        lines.append(f"| {name} | {m['mre']:.3f} | {m['median']:.3f} | {m['sdr_2mm']:.1%} | {m['sdr_4mm']:.1%} | {seconds:.2f} |")
    lines += ["", f"Machine: {machine_description()}; s / case = inference engine time per case (models loaded once).", ""]
    table = "\n".join(lines)
    print(table)
    atomic_write_text(Path(args.output), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
