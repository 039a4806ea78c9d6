"""Estimated vs measured peak memory of one training step for a few planned configurations (CPU).

Each configuration runs in a fresh Python process: after the imports it records ru_maxrss as the
baseline, builds the bundle's network (scripts.network.LandmarkHeatmapNet: DynUNet + sigmoid) and
loss (scripts.engines.MaskedHeatmapMSELoss), runs two forward + backward + Adam steps and records
ru_maxrss again. measured = peak - baseline. The table is printed and written to
docs/planner_memory.md with the machine it ran on.

    python bench/planner_memory.py [--threads 2] [--output docs/planner_memory.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from scripts.planning import make_plans  # noqa: E402
from scripts.planning.memory import estimate_training_flops, estimate_training_memory_bytes  # noqa: E402

MIB = 1024**2

STEP = r"""
import json, resource, sys, time
import torch
from scripts.engines import MaskedHeatmapMSELoss
from scripts.network import LandmarkHeatmapNet
c = json.loads(sys.argv[1])
torch.set_num_threads(c["threads"])
torch.manual_seed(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
net = LandmarkHeatmapNet(c["in_channels"], c["n_landmarks"], c["kernel_size"], c["strides"], c["filters"])
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
shape = [c["batch_size"], c["in_channels"], *c["patch_size"]]
image = torch.randn(shape)
label = torch.rand([c["batch_size"], c["n_landmarks"], *c["patch_size"]])
mask = torch.ones(c["batch_size"], c["n_landmarks"])
for step in range(2):  # the second step runs with Adam's state in place: the steady-state peak and time
    start = time.perf_counter()
    optimizer.zero_grad()
    loss = MaskedHeatmapMSELoss()(net(image), {"label": label, "mask": mask})
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    del loss
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"measured_bytes": (peak - base) * 1024, "seconds": seconds}))
"""


def synthetic_fingerprint(name, shape, spacing, n_landmarks, neighbour_mm=14.0, n_cases=4):
    """The fields of a fingerprint the decisions read, for a dataset of identical images."""
    names = [f"{name}_{i}" for i in range(n_landmarks)]
    return {
        "n_training": n_cases,
        "in_channels": 1,
        "modality": ["MR"],
        "images": [
            {"image": f"{name}{i}.nii.gz", "section": "training", "index": i, "shape_ras": list(shape), "spacing_ras": list(spacing)}
            for i in range(n_cases)
        ],
        "landmark_names": names,
        "landmarks": {n: {"nearest_neighbour_offset_mm": [neighbour_mm, 0.0, 0.0], "midline_offset_mm": 0.0} for n in names},
        "left_right_pairs": [],
    }


CASES = [  # (label, fingerprint arguments, budget, memory_gb)
    ("1 mm head, 22 landmarks, cpu", ("head", (64, 72, 60), (1.0, 1.0, 1.0), 22), "cpu", None),
    ("CT 0.7x0.7x3.4 mm, 4 landmarks, cpu", ("ct", (96, 96, 18), (0.7, 0.7, 3.4), 4), "cpu", None),
    ("60 landmarks, 1.5 mm, cpu", ("many", (40, 40, 40), (1.5, 1.5, 1.5), 60), "cpu", None),
    ("gpu profile at 0.5 GB, 10 landmarks", ("gpu", (64, 64, 64), (1.0, 1.0, 1.0), 10), "gpu", 0.5),
]


def planned(args, budget, memory_gb) -> dict:
    configuration = make_plans(synthetic_fingerprint(*args), budget, memory_gb)["configuration"]
    keys = ("patch_size", "batch_size", "in_channels", "kernel_size", "strides", "filters")
    return {**{k: configuration[k] for k in keys}, "n_landmarks": len(configuration["landmark_names"])}


def measure(config: dict, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", STEP, json.dumps({**config, "threads": threads})],
        capture_output=True, text=True, cwd=ROOT, env=env, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "docs" / "planner_memory.md"))
    args = parser.parse_args()
    import torch

    rows = []
    header = "| configuration | patch x batch | filters | estimate MiB | measured MiB | measured / estimate | step s | GFLOP/s |"
    rule = "|---|---|---|---|---|---|---|---|"
    print(header)
    print(rule)
    for label, fp_args, budget, memory_gb in CASES:
        config = planned(fp_args, budget, memory_gb)
        model = (config["patch_size"], config["batch_size"], config["in_channels"], config["n_landmarks"],
                 config["kernel_size"], config["strides"], config["filters"])
        estimate = estimate_training_memory_bytes(*model)
        result = measure(config, args.threads)
        gflops = estimate_training_flops(*model) / result["seconds"] / 1e9
        row = (
            f"| {label} | {config['patch_size']} x {config['batch_size']} | {config['filters']} | {estimate / MIB:.0f} | "
            f"{result['measured_bytes'] / MIB:.0f} | {result['measured_bytes'] / estimate:.2f} | {result['seconds']:.1f} | {gflops:.1f} |"
        )
        rows.append(row)
        print(row, flush=True)
    machine = (
        f"{cpu_model()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
        f"torch {torch.__version__} with {args.threads} threads, Python {platform.python_version()}"
    )
    text = "\n".join([
        "# Planner memory model: estimate vs measured",
        "",
        "Generated by `python bench/planner_memory.py` (one fresh process per row; measured = peak ru_maxrss",
        "after two forward + backward + Adam steps minus ru_maxrss after the imports; float32, CPU).",
        "",
        f"Machine: {machine}.",
        "",
        header,
        rule,
        *rows,
        "",
        "Repeated runs of a row vary by up to about 10% (how much freed memory the allocator reuses",
        "between the two steps; other processes sharing the cores change the times more).",
        "step s is the wall time of the second step; GFLOP/s is the planner's FLOP count of a step",
        "divided by it. The planner does not predict step times: training measures its own step time and",
        "fits the epochs to a time budget (scripts/training_budget.py, docs/planner.md rule 8).",
        "",
    ])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(f"\nmachine: {machine}\nwritten: {args.output}")


if __name__ == "__main__":
    main()
