"""Does mixed-precision training reach the accuracy of float32 training? The same schedule, both ways, paired.

    python bench/precision_training.py synthetic [--work DIR]
    python bench/precision_training.py afids --iterations 300 [--pretrained models/model.pt] [--work DIR]

``synthetic``: tests/test_end_to_end.py's dataset, plan and schedule (20 training volumes, 40 epochs x 25
iterations), trained with ``--precision float32`` and ``--precision bfloat16``. ``afids``: the fine stage of
this bundle (data/afids), ``--iterations`` iterations in epochs of 50 from ``--pretrained`` (the shipped
weights by default; ``--pretrained none`` from scratch), the planned learning rate and poly schedule.

The two runs start together and run side by side, each with half of the cores (``OMP_NUM_THREADS``), so a
busy spell of a shared machine slows both alike; each then is evaluated (evaluate.json, float32 inference,
the same cases) on its best-validation model. Prints one table row per precision: training wall time,
iterations per hour, and MRE / median / SDR@2 mm / SDR@4 mm on the validation (and, synthetic, testing)
cases; writes the rows as JSON to ``--work``/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.machine import machine_description  # noqa: E402

PRECISIONS = ("float32", "bfloat16")
SYNTHETIC_SCHEDULE = ["--epochs", "40", "--iterations_per_epoch", "25", "--val_interval", "10", "--learning_rate", "0.003"]


def _bundle_command(bundle: Path, args: list, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *map(str, args)], cwd=bundle, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_side_by_side(bundle: Path, work: Path, runs: dict, threads: int, config_files="configs/train.json",
                       coarse_model: Path | None = None) -> dict:
    """Start one training per entry of ``runs`` ({name: extra bundle arguments}) at once, each into
    ``work``/models_<name> with ``threads`` threads, log in ``work``/train_<name>.log; {name: (seconds, log)}.

    ``coarse_model`` (a weights file with its sidecar) is linked into every models folder as ``coarse_model.pt``, so
    that validation (and a later evaluation with that ``--ckpt_dir``) runs the cascade; without it the configs'
    cascade finds no coarse model there and falls back to a full sliding window at fine resolution."""
    started, processes = time.perf_counter(), {}
    for name, extra in runs.items():
        ckpt = work / f"models_{name}"
        ckpt.mkdir(parents=True, exist_ok=True)
        for source in ([coarse_model, coarse_model.with_suffix(".json")] if coarse_model else []):
            link = ckpt / ("coarse_model" + source.suffix)
            if not link.exists():
                link.symlink_to(Path(source).resolve())
        processes[name] = _bundle_command(bundle, ["--config_file", config_files, "--ckpt_dir", ckpt, "--resume", "false", *extra], threads)
    results = {}
    for name, process in processes.items():
        log, _ = process.communicate()
        (work / f"train_{name}.log").write_text(log)
        if process.returncode != 0:
            raise RuntimeError(f"training {name} failed:\n{log[-3000:]}")
        results[name] = (training_minutes(log) * 60 or time.perf_counter() - started, log)
    return results


def train_pair(bundle: Path, work: Path, extra: list, threads: int, coarse_model: Path | None = None) -> dict:
    """Both precisions side by side; {precision: (seconds, log)}."""
    return train_side_by_side(bundle, work, {precision: ["--precision", precision, *extra] for precision in PRECISIONS}, threads,
                              coarse_model=coarse_model)


def training_minutes(log: str) -> float:
    """The trainer's own run time (scripts.engines.EpochProgress's "training finished: ..., X min"); 0 if absent."""
    found = re.findall(r"training finished: \d+ epochs, \d+ iterations, ([\d.]+) min", log)
    return float(found[-1]) if found else 0.0


def evaluate(bundle: Path, work: Path, precision: str, section: str, extra: list, threads: int) -> dict:
    out = work / f"eval_{precision}_{section}"
    process = _bundle_command(bundle, ["--config_file", "['configs/train.json','configs/evaluate.json']", "--ckpt_dir",
                                       work / f"models_{precision}", "--eval_section", section, "--output_dir", out,
                                       "--precision", "float32", "--tta", "false", *extra], threads)
    log, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"evaluating the {precision} model failed:\n{log[-3000:]}")
    return json.loads((out / "metrics.json").read_text())["overall"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("synthetic", "afids"))
    parser.add_argument("--iterations", type=int, default=300, help="afids: training iterations of each run (epochs of 50)")
    parser.add_argument("--pretrained", default=str(PROJECT / "models" / "model.pt"), help="afids: starting weights, or 'none'")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 2) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if args.dataset == "synthetic":
            from scripts.datasets.synthetic import make_synthetic_dataset

            datalist = make_synthetic_dataset(str(work / "data"), n_training=20, n_validation=2, n_testing=6, seed=1)
            bundle = work / "bundle"
            subprocess.run([sys.executable, "-m", "scripts.plan", datalist, "--bundle_root", bundle, "--memory_gb", "0.33", "--force"],
                           cwd=PROJECT, check=True, capture_output=True)
            schedule, sections, iterations = SYNTHETIC_SCHEDULE, ("validation", "testing"), 40 * 25
            evaluate_extra: list = []
        else:
            bundle = PROJECT
            epochs = max(1, args.iterations // 50)
            pretrained = [] if args.pretrained.lower() == "none" else ["--pretrained", str(Path(args.pretrained).resolve())]
            schedule = ["--epochs", str(epochs), "--iterations_per_epoch", "50", "--val_interval", str(epochs), *pretrained]
            sections, iterations, evaluate_extra = ("validation",), epochs * 50, []
        # afids: the shipped coarse model in each models folder, so validation and evaluation run the cascade
        coarse = PROJECT / "models" / "coarse_model.pt" if args.dataset == "afids" else None
        trained = train_pair(bundle, work, schedule, threads, coarse_model=coarse)
        rows = []
        for precision in PRECISIONS:
            seconds, _ = trained[precision]
            row = {"precision": precision, "training_s": round(seconds, 1),  # the trainer's run, validations included "iterations": iterations,
                   "iterations_per_hour": round(iterations * 3600 / seconds)}
            for section in sections:
                metrics = evaluate(bundle, work, precision, section, evaluate_extra, threads * 2)
                row[section] = {k: metrics[k] for k in ("n", "mre", "median", "sdr_2mm", "sdr_4mm") if k in metrics}
            rows.append(row)
        print(f"{args.dataset}: {machine_description()}; the two trainings ran side by side, {threads} thread(s) each")
        print("| training precision | training wall time (s) | iterations per hour | " +
              " | ".join(f"{s} MRE (mm) | {s} median | {s} SDR@2mm | {s} SDR@4mm" for s in sections) + " |")
        for row in rows:
            cells = [row["precision"], f"{row['training_s']:.0f}", str(row["iterations_per_hour"])]
            for section in sections:
                m = row[section]
                cells += [f"{m['mre']:.2f}", f"{m['median']:.2f}", f"{m['sdr_2mm']:.1%}", f"{m['sdr_4mm']:.1%}"]
            print("| " + " | ".join(cells) + " |")
        (work / "results.json").write_text(json.dumps(rows, indent=2))
        if args.work is None:
            print("(runs in a temporary folder, removed; --work DIR keeps them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
