"""The GPU profile on a GPU: plan with ``--budget gpu``, then time AMP training steps and a whole-head sliding window.

    python bench/gpu_check.py                       # on a CUDA machine, unattended, a few minutes
    python bench/gpu_check.py --device cpu --tiny   # dry run of the same code on a CPU (tests/test_gpu_check.py)
    python bench/gpu_check.py --write_fingerprints  # regenerate bench/fixtures/*.json (needs SimpleITK and nibabel)

For each stored dataset fingerprint (bench/fixtures: the synthetic dataset of tests/test_end_to_end.py and
data/afids), the planner (scripts.planning.decisions.make_plans, ``budget="gpu"``) plans the networks; for each
planned stage (fine, and coarse when it plans a cascade) this builds the LandmarkHeatmapNet, times training
steps (forward, MaskedHeatmapMSELoss, backward, Adam) on random tensors of the planned patch and batch, in
float32 and in the training precision ``auto`` picks (scripts.precision: bfloat16 where the GPU supports it,
else float16 with a gradient scaler), and a sliding-window inference (the planned window batch and
overlap, Gaussian blending) over a 1 mm head-sized tensor (176 x 208 x 176). It prints step time,
iterations per hour and peak GPU memory beside the planner's estimates (scripts/planning/memory.py,
float32 model).

Imports only the planner, the network, the loss and the precision code: torch, numpy and MONAI (its
DynUNet and SlidingWindowInferer; a pure-Python wheel), no image readers (SimpleITK, nibabel) and no ignite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from scripts.losses import MaskedHeatmapMSELoss  # noqa: E402
from scripts.network import LandmarkHeatmapNet  # noqa: E402
from scripts.planning.decisions import make_plans  # noqa: E402
from scripts.planning.memory import estimate_inference_memory_bytes, estimate_training_memory_bytes  # noqa: E402
from scripts.precision import training_dtype, with_precision  # noqa: E402

FIXTURES = PROJECT / "bench" / "fixtures"
FINGERPRINTS = {"synthetic": FIXTURES / "fingerprint_synthetic.json", "afids": FIXTURES / "fingerprint_afids.json"}
HEAD_SHAPE = (176, 208, 176)  # a 1 mm whole head (the AFIDs sample at 1 mm is 171 x 204 x 174)
GIB = 1024**3


def stages(configuration: dict) -> list[tuple[str, dict]]:
    """(name, network settings) of each planned stage: fine, and coarse when a cascade is planned."""
    fine = {k: configuration[k] for k in ("spacing", "patch_size", "kernel_size", "strides", "filters", "batch_size", "sw_batch_size",
                                          "sw_overlap")}
    planned = [("fine", fine)]
    cascade = configuration.get("cascade")
    if cascade:
        coarse = {k: cascade.get(f"coarse_{k}", fine[k]) for k in fine}
        planned.append(("coarse", coarse))
    return planned


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: torch.device) -> float:
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_training(net: LandmarkHeatmapNet, stage: dict, n_landmarks: int, dtype: torch.dtype, device: torch.device, steps: int) -> dict:
    """Seconds per training step (median of ``steps`` after 3 warm-up steps) and the peak memory of one."""
    batch, patch = stage["batch_size"], stage["patch_size"]
    model = with_precision(net, dtype)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_function = MaskedHeatmapMSELoss(10.0)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    x = torch.randn(batch, 1, *patch, device=device)
    y = {"label": torch.rand(batch, n_landmarks, *patch, device=device) * 0.05, "mask": torch.ones(batch, n_landmarks, device=device)}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    reset_peak(device)
    for _ in range(3):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"step_s": seconds, "iterations_per_hour": 3600 / seconds, "peak_bytes": peak_bytes(device)}


def time_sliding_window(net: LandmarkHeatmapNet, stage: dict, dtype: torch.dtype, device: torch.device, shape, repeats: int) -> dict:
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(stage["patch_size"], sw_batch_size=stage["sw_batch_size"], overlap=stage["sw_overlap"], mode="gaussian")
    model = with_precision(net.eval(), dtype)
    image = torch.randn(1, 1, *shape, device=device)
    reset_peak(device)
    times = []
    with torch.inference_mode():
        inferer(image, model)  # warm-up (cuDNN autotuning, allocator)
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            inferer(image, model)
            synchronize(device)
            times.append(time.perf_counter() - start)
    net.train()
    return {"seconds": float(np.median(times)), "peak_bytes": peak_bytes(device)}


def check(name: str, fingerprint: dict, device: torch.device, tiny: bool, steps: int) -> list[dict]:
    configuration = make_plans(fingerprint, budget="gpu")["configuration"]
    n_landmarks = len(configuration["landmark_names"])
    in_channels = configuration["in_channels"]
    amp_dtype = training_dtype("auto", device)
    rows = []
    for stage_name, stage in stages(configuration):
        if tiny:  # the same code on a CPU in seconds: the planned topology with the smallest patch its strides allow,
            # at most 8 filters per stage, batch 1
            divisor = np.prod(np.asarray(stage["strides"]), axis=0)
            stage = {**stage, "patch_size": [int(d) * 2 for d in divisor], "batch_size": 1, "sw_batch_size": 1,
                     "filters": [min(f, 8) for f in stage["filters"]]}
        torch.manual_seed(0)
        net = LandmarkHeatmapNet(in_channels, n_landmarks, stage["kernel_size"], stage["strides"], stage["filters"]).to(device)
        model = (stage["patch_size"], stage["batch_size"], in_channels, n_landmarks, stage["kernel_size"], stage["strides"], stage["filters"])
        # the fine stage over a head in 1 mm voxels, the coarse one over the same head at its coarser spacing
        scale = np.asarray(configuration["spacing"]) / np.asarray(stage["spacing"])
        shape = [2 * p for p in stage["patch_size"]] if tiny else [int(round(n * f)) for n, f in zip(HEAD_SHAPE, scale)]
        row = {"dataset": name, "stage": stage_name, "patch_size": stage["patch_size"], "batch_size": stage["batch_size"],
               "filters": stage["filters"], "landmarks": n_landmarks, "amp_dtype": str(amp_dtype).replace("torch.", ""),
               "estimated_training_bytes": estimate_training_memory_bytes(*model),
               "estimated_inference_bytes": estimate_inference_memory_bytes(stage["patch_size"], stage["sw_batch_size"], in_channels,
                                                                            n_landmarks, stage["kernel_size"], stage["strides"],
                                                                            stage["filters"], image_shape=shape),
               "head_shape": shape}
        row["float32"] = time_training(net, stage, n_landmarks, torch.float32, device, steps)
        if amp_dtype != torch.float32:
            row["amp"] = time_training(net, stage, n_landmarks, amp_dtype, device, steps)
        row["sliding_window"] = time_sliding_window(net, stage, amp_dtype if amp_dtype != torch.float16 else torch.float32, device, shape,
                                                    1 if tiny else 3)
        rows.append(row)
        print(format_row(row), flush=True)
        del net
        reset_peak(device)
    return rows


def _gb(n_bytes: float) -> str:
    return "n/a" if n_bytes != n_bytes else f"{n_bytes / GIB:.2f}"


def format_row(row: dict) -> str:
    parts = [f"{row['dataset']} {row['stage']}: patch {row['patch_size']} x batch {row['batch_size']}, filters {row['filters']}, "
             f"{row['landmarks']} landmarks"]
    for key, label in (("float32", "float32"), ("amp", f"AMP {row['amp_dtype']}")):
        if key in row:
            r = row[key]
            parts.append(f"  training step {label}: {r['step_s'] * 1e3:.1f} ms, {r['iterations_per_hour']:,.0f} iterations/h, "
                         f"peak {_gb(r['peak_bytes'])} GiB (planner's float32 estimate {_gb(row['estimated_training_bytes'])} GiB)")
    sw = row["sliding_window"]
    parts.append(f"  sliding window over {'x'.join(map(str, row['head_shape']))}: {sw['seconds']:.2f} s, peak {_gb(sw['peak_bytes'])} GiB "
                 f"(planner's estimate {_gb(row['estimated_inference_bytes'])} GiB)")
    return "\n".join(parts)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_fingerprints() -> None:
    """bench/fixtures/fingerprint_*.json from the synthetic dataset (tests/test_end_to_end.py's) and data/afids."""
    import tempfile

    from scripts.datasets.synthetic import make_synthetic_dataset
    from scripts.atomic import atomic_write_text
    from scripts.data import load_datalist
    from scripts.planning.fingerprint import fingerprint_dataset

    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        datalist = make_synthetic_dataset(str(Path(tmp) / "data"), n_training=20, n_validation=2, n_testing=6, seed=1)
        sources = {"synthetic": datalist, "afids": str(PROJECT / "data" / "afids" / "datalist.json")}
        for name, source in sources.items():
            fingerprint = _plain(fingerprint_dataset(load_datalist(source)))
            text = json.dumps(fingerprint, indent=1, sort_keys=True).replace(str(Path(source).parent) + "/", "")
            atomic_write_text(str(FINGERPRINTS[name]), text + "\n")
            print(f"wrote {FINGERPRINTS[name]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="smallest patches, batch 1, a small image: a dry run of the code")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per stage and precision")
    parser.add_argument("--datasets", nargs="+", default=list(FINGERPRINTS), choices=list(FINGERPRINTS))
    parser.add_argument("--output", default=None, help="also write the rows as JSON here")
    parser.add_argument("--write_fingerprints", action="store_true", help="regenerate bench/fixtures (SimpleITK, nibabel)")
    args = parser.parse_args(argv)
    if args.write_fingerprints:
        write_fingerprints()
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here (torch.cuda.is_available() is False); --device cpu --tiny for a dry run",
              file=sys.stderr)
        return 1
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"{torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / GIB:.0f} GiB, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, bfloat16 {'supported' if torch.cuda.is_bf16_supported() else 'not supported'}")
    else:
        from bench.machine import machine_description

        print(machine_description())
    rows = []
    for name in args.datasets:
        fingerprint = json.loads(FINGERPRINTS[name].read_text())
        rows += check(name, fingerprint, device, args.tiny, max(1, args.steps))
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
