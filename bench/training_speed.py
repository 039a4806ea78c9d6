"""Training speed of this bundle's stages, float32 vs mixed precision, and how long a step waits for data.

    python bench/speed.py --training        (or: python bench/training_speed.py [--rounds 2] [--warmup 3] [--steps 8])

For the fine stage (configs/train.json) and, with a cascade, the coarse one (train_coarse.json merged
over it), each measurement runs in its own process, as training does: the configs' cached training
dataset (deterministic preprocessing cached once), the real DataLoader with its random augmentation and
heatmaps in ``--workers`` worker processes, the trainer's network (``train#trainer#network``, i.e.
scripts.precision.training_network) in float32 and in the precision ``auto`` picks on this machine,
the configs' loss and Adam. Per step: the time waiting for the next batch (``next()`` on the loader) and
the whole step; after ``--warmup`` steps, ``--steps`` steps are timed. Every configuration runs once per
round, in turn, so that a busy spell of a shared machine touches all of them alike; medians over rounds.

Replaces the block between the ``training-speed`` markers in docs/benchmarks.md (appended if absent), so
it can be rerun alone; the full ``python bench/speed.py`` keeps the block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

START, END = "<!-- training-speed:start -->", "<!-- training-speed:end -->"


def config_files(bundle: Path, stage: str) -> list[str]:
    files = [str(bundle / "configs" / "train.json")]
    if stage == "coarse":
        files.append(str(bundle / "configs" / "train_coarse.json"))
    return files


def measure(bundle: Path, stage: str, precision: str, workers: int, warmup: int, steps: int, variant: str = "") -> dict:
    """One configuration in this process: per-step data wait and step seconds, peak RSS (VmHWM, KiB)."""
    import torch
    from monai.bundle import ConfigParser

    from bench.peak_rss import peak_kib
    from scripts.engines import prepare_landmark_batch

    parser = ConfigParser()
    parser.read_config(config_files(bundle, stage))
    parser.update({"bundle_root": str(bundle), "precision": precision, "num_workers": workers, "pretrained": None,
                   "iterations_per_epoch": warmup + steps, "epochs": 1, **VARIANTS[variant][1]})
    network = parser.get_parsed_content("network")
    model = parser.get_parsed_content("train#trainer#network")
    loss_function = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    loader = parser.get_parsed_content("train#dataloader")
    device = parser.get_parsed_content("device")
    network.train()
    waits, totals = [], []
    batches = iter(loader)
    for _ in range(warmup + steps):
        start = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter() - start
        image, target = prepare_landmark_batch(batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(image), target)
        loss.backward()
        optimizer.step()
        waits.append(waited)
        totals.append(time.perf_counter() - start)
    del batches
    waits, totals = waits[warmup:], totals[warmup:]
    return {"stage": stage, "precision": precision, "workers": workers, "dtype": str(getattr(model, "dtype", torch.float32)).replace("torch.", ""),
            "step_s": float(np.mean(totals)), "wait_share": float(np.sum(waits) / np.sum(totals)),
            "patch_size": parser.get_parsed_content("patch_size"), "batch_size": parser.get_parsed_content("batch_size"),
            "threads": torch.get_num_threads(), "peak_rss_kib": peak_kib()}


# variants of a row: environment (set before the process starts: OpenMP and oneDNN read it once) and config ids
VARIANTS = {
    "": ({}, {}),
    # OpenMP threads sleep rather than spin while waiting: the DataLoader worker and other processes share the cores
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    # a CPU without native bfloat16 (AVX2 only), emulated by capping oneDNN and ATen: `auto` trains in float32 there
    "capped at AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, {}),
    # CacheDataset's default: a deep copy of the whole cached case before every sample's random transforms
    "cached case copied per sample": ({}, {"train#dataset#copy_cache": True}),
    # MONAI's ThreadDataLoader: the next batch augmented in a background thread while the network runs
    "prefetch thread": ({}, {"train#dataloader#_target_": "ThreadDataLoader"}),
    # torch's fused Adam kernel (one pass over all parameters) instead of its per-tensor loop
    "fused Adam": ({}, {"optimizer#fused": True}),
}


def run_one(bundle: Path, stage: str, precision: str, workers: int, warmup: int, steps: int, variant: str = "") -> dict:
    result = subprocess.run([sys.executable, __file__, "--_one", stage, precision, str(workers), "--bundle_root", str(bundle),
                             "--warmup", str(warmup), "--steps", str(steps), "--_variant", variant], capture_output=True,
                            text=True, cwd=PROJECT, env={**os.environ, **VARIANTS[variant][0]})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{stage} {precision} {workers} worker(s) failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def table(bundle: Path, rounds: int, warmup: int, steps: int) -> str:
    from bench.machine import machine_description
    from scripts.precision import training_dtype
    from scripts.throughput import training_workers

    mixed = str(training_dtype("auto", "cpu")).replace("torch.", "")
    stages = ["fine"] + (["coarse"] if (bundle / "configs" / "train_coarse.json").exists() else [])
    configurations = []
    for stage in stages:
        # float32 with 1 worker: the default before mixed precision and run-time worker counts (the reference);
        # 0 workers: augmentation in the training process, training_workers()'s choice below 4 cores
        configurations += [(stage, "float32", 1, ""), (stage, "float32", 0, ""), (stage, "auto", 0, ""), (stage, "auto", 1, "")]
        if stage == "fine":
            configurations += [(stage, "auto", 2, ""), (stage, "auto", 1, "OMP_WAIT_POLICY=PASSIVE"),
                               (stage, "auto", 0, "cached case copied per sample"), (stage, "auto", 0, "prefetch thread"),
                               (stage, "auto", 0, "fused Adam"),
                               (stage, "auto", 0, "capped at AVX2")]
    runs: dict = {c: [] for c in configurations}
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for round_ in range(rounds):
        for configuration in configurations:
            runs[configuration].append(run_one(bundle, *configuration[:3], warmup, steps, configuration[3]))
        print(f"training round {round_ + 1} of {rounds} measured", flush=True)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for (stage, precision, workers, variant), measured in runs.items():
        step = float(np.median([m["step_s"] for m in measured]))
        reference = float(np.median([m["step_s"] for m in runs[(stage, "float32", 1, "")]]))
        rows.append(f"| {stage} | {measured[0]['patch_size']} x {measured[0]['batch_size']} | "
                    f"{measured[0]['dtype']}{' (auto)' if precision == 'auto' else ''}{', ' + variant if variant else ''} | {workers} | {step:.3f} | {3600 / step:,.0f} | "
                    f"{reference / step:.2f}x | {np.median([m['wait_share'] for m in measured]):.1%} | "
                    f"{max(m['peak_rss_kib'] for m in measured) / 1024**2:.2f} |")
    minutes = (time.perf_counter() - started) / 60
    command = "".join(f" --{k} {v}" for k, v, default in (("rounds", rounds, 2), ("warmup", warmup, 3), ("steps", steps, 8)) if v != default)
    return "\n".join([
        START,
        "## Training speed (per step, as training runs it)",
        "",
        f"Written by `{'python bench/training_speed.py' + command if command else 'python bench/speed.py --training'}` ({minutes:.1f} min) on: {machine_description()}; "
        f"`--precision auto` trains in {mixed} here. 1-minute load average {load:.1f} at the start, {load_end:.1f} at the end"
        + (f" (at the start, before the benchmark's own processes, above half the core count, {os.cpu_count()}: other processes "
           "shared the machine, and every figure is slower than on a quiet one)."
           if load > 0.5 * (os.cpu_count() or 1) else " (the end figure includes the benchmark's own processes)."),
        "",
        f"Each row: one process as training runs it (the configs' cached dataset, DataLoader with its random augmentation and heatmaps "
        f"in the workers, or in the training process with 0 workers, the trainer's network, loss and Adam), {steps} steps after "
        f"{warmup} warm-up steps, the median over {rounds} rounds (every row once per round, in turn). Training picks "
        f"{training_workers()} worker(s) on this machine (scripts.throughput.training_workers: none below 4 cores). `vs float32`: "
        "against the float32 row with 1 worker, the default before mixed precision. "
        "Data wait: the share of the step spent in `next()` on the loader (with 0 workers: the augmentation itself). "
        "Peak RSS: the process's high-water mark (workers not included). `OMP_WAIT_POLICY=PASSIVE`: that row's process "
        "ran with OpenMP's threads sleeping instead of spinning while they wait; `cached case copied per sample`: "
        "CacheDataset's default `copy_cache` (a deep copy of the whole cached case before each sample's random "
        "transforms; the configs turn it off); `prefetch thread`: MONAI's ThreadDataLoader (the next batch augmented "
        "in a background thread of the training process while the network runs); `fused Adam`: torch's fused Adam "
        "kernel (`optimizer#fused`) instead of its per-parameter loop; `capped at AVX2`: with "
        "`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`, as on a CPU without native bfloat16 (`auto` picks float32 "
        "there; its `vs float32` is against this CPU's uncapped float32 row).",
        "",
        "| stage | patch x batch | precision | workers | step (s) | iterations per hour | vs float32 | data wait | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "### On a GPU (not yet measured)",
        "",
        "`python bench/gpu_check.py` plans the synthetic and the AFIDs fingerprints (bench/fixtures) with `--budget gpu`, builds",
        "each planned network, times training steps in float32 and in AMP (bfloat16 where the GPU supports it, else float16",
        "with a gradient scaler) and a sliding window over a 1 mm whole head, and prints step time, iterations per hour and",
        "peak GPU memory beside the planner's estimate (a few minutes, unattended). It needs torch, numpy and MONAI only (no",
        "SimpleITK, nibabel or ignite); where MONAI is absent, carry its pure-Python wheel",
        "(`pip download monai==1.6.1 --no-deps -d wheels`) and run",
        "`pip install --no-deps --target /tmp/site wheels/monai-*.whl && PYTHONPATH=/tmp/site python bench/gpu_check.py`.",
        "`python bench/gpu_check.py --device cpu --tiny` is the dry run the tests make.",
        END,
    ])


def write_block(output: Path, block: str) -> None:
    from scripts.atomic import atomic_write_text

    text = output.read_text() if output.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(str(output), text)


def existing_block(output: Path) -> str | None:
    """The training-speed block of ``output``, for the full bench/speed.py run to keep."""
    text = output.read_text() if output.exists() else ""
    return text[text.index(START): text.index(END) + len(END)] if START in text and END in text else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=str(PROJECT))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output", default=str(PROJECT / "docs" / "benchmarks.md"))
    parser.add_argument("--_one", nargs=3, metavar=("STAGE", "PRECISION", "WORKERS"), help=argparse.SUPPRESS)
    parser.add_argument("--_variant", default="", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bundle = Path(args.bundle_root).resolve()
    if args._one:
        stage, precision, workers = args._one
        print("RESULT " + json.dumps(measure(bundle, stage, precision, int(workers), args.warmup, args.steps, args._variant)), flush=True)
        return 0
    block = table(bundle, args.rounds, args.warmup, args.steps)
    print(block)
    write_block(Path(args.output), block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
