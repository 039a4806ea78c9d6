"""Planning decisions: one small pure function per choice, from the fingerprint to (value, reason).

``make_plans`` runs them in order and returns the plans document; docs/planner.md lists every rule
with its numbers. Spacings, shapes and patch sizes are in RAS axis order (x, y, z): the bundle's
preprocessing orients every image to RAS before resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scripts.planning.memory import (
    estimate_inference_memory_bytes,
    estimate_training_memory_bytes,
)
from scripts.training_budget import VALIDATIONS_PER_TRAINING, validation_interval

GIB = 1024**3


@dataclass(frozen=True)
class BudgetProfile:
    name: str
    memory_gb: float  # default RAM (cpu) or VRAM (gpu) budget
    usable_fraction: float  # share of the budget one training step may take
    base_filters: int
    max_filters: int
    start_patch_voxels: int  # the patch grows from this volume (capped at the median image)
    min_batch_size: int
    max_batch_size: int
    sw_overlap: float
    sw_batch_sizes: tuple[int, ...]  # tried largest first


PROFILES = {
    # sliding-window batches of 2 on cpu: the fastest per 48^3 window on 2 cores (docs/planner.md)
    "cpu": BudgetProfile("cpu", 8.0, 0.5, 16, 128, 48**3, 2, 2, 0.25, (2, 1)),
    "gpu": BudgetProfile("gpu", 10.0, 0.8, 32, 320, 256**3, 2, 64, 0.5, (4, 2, 1)),
}

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net: max/min median spacing above this is anisotropic
ANISOTROPIC_AXIS_PERCENTILE = 10
MIN_FEATURE_MAP = 4  # an axis is downsampled only while its feature map stays >= 4 voxels
MAX_DOWNSAMPLINGS = 5
MIN_PATCH_AXIS = 16  # smallest patch edge (voxels); smaller images are padded
BATCH_DATASET_FRACTION = 0.05  # nnU-Net: one batch covers at most 5% of the dataset's voxels

SIGMA_DEFAULT = 4.0
SIGMA_MIN = 2.0
SIGMA_MAX = 8.0
SIGMA_GROWTH_FRACTION = 1 / 8  # sigma grows to 1/8 of the nearest-neighbour distance...
SIGMA_NEIGHBOUR_FRACTION = 1 / 3  # ...but never beyond 1/3 of it

GPU_ITERATIONS_PER_EPOCH, GPU_EPOCHS = 250, 1000  # nnU-Net's schedule
CPU_ITERATIONS_PER_EPOCH = 50
CPU_TRAINING_HOURS = 2.5  # per stage: one working session; the epochs follow from the step time measured when training starts
CPU_VALIDATION_CASES = 12  # at most, during training (spread over the datalist's groups); evaluate.json scores all
REFERENCE_CPU_STEP_SECONDS = 0.6  # measured: 48^3 x batch 2, 32 landmarks, 2 AMD EPYC cores (docs/benchmarks.md); for reasons only
LEARNING_RATE_SHORT, LEARNING_RATE_LONG, LONG_SCHEDULE_ITERATIONS = 1e-3, 3e-4, 20_000

LANDMARK_SAMPLING_RATIO = 0.67
CASCADE_VOLUME_RATIO = 8.0
COARSE_SPACING_STEP = 1.05
LR_FLIP_MIDLINE_MM = 5.0  # unpaired landmarks must lie this close to the midline for left/right flips

FOLDS, FOLD_SEED = 5, 12345


def _r(value, digits: int = 4):
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_r(v, digits) for v in value]
    return round(float(value), digits) + 0.0


def profile_for(budget: str) -> BudgetProfile:
    if budget not in PROFILES:
        raise ValueError(f"budget must be one of {sorted(PROFILES)}, got {budget!r}")
    return PROFILES[budget]


def usable_bytes(budget: str, memory_gb: float | None = None) -> int:
    profile = profile_for(budget)
    return int((memory_gb if memory_gb is not None else profile.memory_gb) * profile.usable_fraction * GIB)


# ----------------------------------------------------------------------------- geometry helpers


def _training_images(fingerprint: dict) -> list[dict]:
    return [image for image in fingerprint["images"] if image["section"] == "training"] or fingerprint["images"]


def _spacings(fingerprint: dict) -> np.ndarray:
    return np.asarray([image["spacing_ras"] for image in _training_images(fingerprint)], dtype=np.float64)


def shapes_at(fingerprint: dict, spacing) -> np.ndarray:
    """Every training image's shape (RAS order) after resampling to ``spacing``."""
    images = _training_images(fingerprint)
    extent = np.asarray([np.asarray(i["shape_ras"]) * np.asarray(i["spacing_ras"]) for i in images])
    return np.maximum(np.round(extent / np.asarray(spacing, dtype=np.float64)), 1).astype(np.int64)


def median_shape_at(fingerprint: dict, spacing) -> list[int]:
    return [int(v) for v in np.round(np.median(shapes_at(fingerprint, spacing), axis=0))]


def network_topology(patch_size, spacing, max_downsamplings: int = MAX_DOWNSAMPLINGS):
    """nnU-Net's rule for (kernel_size, strides) per stage.

    An axis is downsampled (stride 2) while its feature map stays >= MIN_FEATURE_MAP voxels and its
    current spacing is less than twice the finest current spacing (coarse axes wait until the fine
    ones catch up). An axis gets kernel 3 once its spacing is within 2x of the finest, 1 before.
    """
    size = np.asarray(patch_size, dtype=np.float64)
    current = np.asarray(spacing, dtype=np.float64)
    kernel = [3 if s / current.min() < 2 else 1 for s in current]
    kernels, strides = [list(kernel)], [[1, 1, 1]]
    while len(strides) <= max_downsamplings:
        pool = [bool(size[i] >= 2 * MIN_FEATURE_MAP and current[i] / current.min() < 2) for i in range(3)]
        if not any(pool):
            break
        stride = [2 if p else 1 for p in pool]
        size, current = size / stride, current * stride
        kernel = [3 if kernel[i] == 3 or current[i] / current.min() < 2 else 1 for i in range(3)]
        kernels.append(list(kernel))
        strides.append(stride)
    return kernels, strides


def filters_for(n_stages: int, profile: BudgetProfile) -> list[int]:
    return [min(profile.base_filters * 2**i, profile.max_filters) for i in range(n_stages)]


def _divisor(strides) -> np.ndarray:
    return np.prod(np.asarray(strides, dtype=np.int64), axis=0)


def network_for(patch_size, spacing, profile: BudgetProfile) -> dict:
    """Topology for a patch, the patch rounded up to a multiple of the total stride per axis."""
    patch = np.maximum(np.asarray(patch_size, dtype=np.int64), MIN_PATCH_AXIS)
    for _ in range(4):  # rounding up may allow one more downsampling: settle
        kernels, strides = network_topology(patch, spacing)
        rounded = (np.ceil(patch / _divisor(strides)) * _divisor(strides)).astype(np.int64)
        if np.array_equal(rounded, patch):
            break
        patch = rounded
    if len(strides) < 3:
        raise ValueError(f"patch {patch.tolist()} at spacing {list(spacing)} is too small for a 3-stage DynUNet")
    return {
        "patch_size": [int(v) for v in patch],
        "kernel_size": kernels,
        "strides": strides,
        "filters": filters_for(len(strides), profile),
    }


def _training_bytes(network: dict, batch_size: int, fingerprint: dict) -> int:
    return estimate_training_memory_bytes(
        network["patch_size"],
        batch_size,
        fingerprint["in_channels"],
        len(fingerprint["landmark_names"]),
        network["kernel_size"],
        network["strides"],
        network["filters"],
    )


def _gb(n_bytes: int) -> float:
    return _r(n_bytes / GIB, 3)


# ----------------------------------------------------------------------------- decisions


def determine_target_spacing(fingerprint: dict):
    """Median spacing per axis; nnU-Net's anisotropy rule (``determine_fullres_target_spacing``) for the coarsest axis:
    its median spacing > 3 x the largest other one, and its median size (voxels as read) x 3 < the smallest other one."""
    spacings = _spacings(fingerprint)
    median = np.median(spacings, axis=0)
    worst = int(np.argmax(median))
    others = [i for i in range(3) if i != worst]
    ratio = median[worst] / max(median[i] for i in others)
    shape = [int(v) for v in np.round(np.median([image["shape_ras"] for image in _training_images(fingerprint)], axis=0))]
    few_voxels = shape[worst] * ANISOTROPY_THRESHOLD < min(shape[i] for i in others)
    if ratio > ANISOTROPY_THRESHOLD and few_voxels:
        target = median.copy()
        low = np.percentile(spacings[:, worst], ANISOTROPIC_AXIS_PERCENTILE)
        target[worst] = max(low, max(median[i] for i in others))
        return _r(target), (
            f"median spacing {_r(median, 3)} mm is anisotropic (axis {'xyz'[worst]} / the largest other {ratio:.2f} > "
            f"{ANISOTROPY_THRESHOLD:g}) and that axis has few voxels (median {shape[worst]} x {ANISOTROPY_THRESHOLD:g} < "
            f"{min(shape[i] for i in others)}): it takes the {ANISOTROPIC_AXIS_PERCENTILE}th percentile of its spacings "
            f"({low:.4g} mm), never finer than the other axes, as nnU-Net does"
        )
    return _r(median), f"median spacing per axis over {len(spacings)} training images (coarsest / largest other {ratio:.2f})"


def determine_normalization(fingerprint: dict):
    """CT: clip to the foreground 0.5/99.5 percentiles, z-score with the dataset's foreground mean/std.
    MR (and anything not CT): z-score each image over its non-zero voxels."""
    modality = fingerprint["modality"]
    if fingerprint["in_channels"] == 1 and modality[0] == "CT":
        fg = fingerprint["channels"][0]["foreground"]
        value = {"scheme": "ct_clip_zscore", "clip": [fg["p0_5"], fg["p99_5"]], "mean": fg["mean"], "std": fg["std"]}
        return value, (
            f"CT (Hounsfield units are comparable across scans): clip to the pooled foreground 0.5-99.5 percentiles "
            f"[{fg['p0_5']}, {fg['p99_5']}] HU, then z-score with its mean {fg['mean']} and std {fg['std']}"
        )
    value = {"scheme": "zscore_per_image", "clip": None, "mean": None, "std": None}
    if fingerprint["in_channels"] > 1:
        return value, f"{fingerprint['in_channels']} input channels ({'+'.join(modality)}): z-score each image and channel over its non-zero voxels"
    return value, "MR intensities have no absolute scale: z-score each image over its non-zero voxels"


def nearest_neighbour_mm(fingerprint: dict) -> float | None:
    """Median over landmarks of the distance (mm) to the nearest other landmark."""
    distances = [
        float(np.linalg.norm(stats["nearest_neighbour_offset_mm"]))
        for stats in fingerprint["landmarks"].values()
        if stats.get("nearest_neighbour_offset_mm") is not None
    ]
    return float(np.median(distances)) if distances else None


def sigma_rule(distance_voxels: float | None) -> float:
    """nnLandmark's 4 voxels, grown to d/8 (at most 8) for far-apart landmarks, capped at d/3, floored at 2
    (``d``: the median nearest-neighbour distance in voxels)."""
    if distance_voxels is None:
        return SIGMA_DEFAULT
    sigma = max(SIGMA_DEFAULT, min(distance_voxels * SIGMA_GROWTH_FRACTION, SIGMA_MAX))
    return _r(max(min(sigma, distance_voxels * SIGMA_NEIGHBOUR_FRACTION), SIGMA_MIN), 2)


def geometric_mean_spacing(spacing) -> float:
    """(s_x * s_y * s_z) ** (1/3) in mm: the edge of the cube holding one voxel's volume."""
    return float(np.exp(np.mean(np.log(np.asarray(spacing, dtype=np.float64)))))


def sigma_per_axis(sigma_voxels: float, spacing) -> dict:
    """An isotropic Gaussian (in mm) of ``sigma_voxels`` voxels of the geometric-mean spacing of ``spacing`` (so
    its volume in voxels is ``sigma_voxels ** 3``), widened where needed so that the coarsest axis still gets
    ``SIGMA_MIN`` voxels: {"mm": sigma in mm, "voxels": sigma per axis}."""
    spacing = np.asarray(spacing, dtype=np.float64)
    sigma_mm = _r(max(sigma_voxels * geometric_mean_spacing(spacing), SIGMA_MIN * float(spacing.max())))
    return {"mm": sigma_mm, "voxels": _r(sigma_mm / spacing)}


def determine_sigma(fingerprint: dict, spacing):
    """Heatmap sigma, isotropic in millimetres and rendered per axis in voxels: the voxel rule (4; grows to 1/8 of
    the median nearest-neighbour distance, at most 8, when landmarks are far apart; never above 1/3 of that
    distance; never below 2) counted in voxels of the geometric-mean spacing, then widened until every axis has
    >= 2 voxels. The geometric mean keeps the Gaussian's volume in voxels (sigma_x * sigma_y * sigma_z) at
    nnLandmark's 4^3 on near-isotropic data, so the foreground share of a patch, which the loss balance and a
    short schedule depend on, stays what nnLandmark's rule gives. Counting in voxels of the finest axis shrank it:
    on the synthetic end-to-end data (1.8-2.1 mm) it gave [4.0, 3.8, 3.5] voxels and 83% of the held-out landmarks
    within 4 voxels (float32 and bfloat16 training alike, one run each), below the test's 90%, which this rule's
    [4.2, 4.1, 3.7] meets.
    Isotropic data gets nnLandmark's numbers; a 0.5 x 0.5 x 5 mm scan a round 10 mm Gaussian (2 slices) rather
    than a 4-voxel one 10x longer through the slices than across them."""
    reference, coarsest = geometric_mean_spacing(spacing), float(np.max(spacing))
    distance = nearest_neighbour_mm(fingerprint)
    voxels = sigma_rule(None if distance is None else distance / reference)
    sigma = sigma_per_axis(voxels, spacing)
    if distance is None:
        head = f"no two landmarks annotated together: the default {SIGMA_DEFAULT:g}"
    else:
        head = (f"median nearest-neighbour distance {distance:.1f} mm = {distance / reference:.1f} voxels "
                f"(geometric-mean spacing {_r(reference):g} mm): clamp(max(4, min(d/8, 8)), <= d/3, >= 2) = {voxels:g}")
    floor = f", raised to {SIGMA_MIN:g} voxels of the coarsest axis ({coarsest:g} mm)" if sigma["mm"] > voxels * reference + 1e-9 else ""
    return sigma, (
        f"{head} voxels = {_r(voxels * reference):g} mm{floor}: sigma {sigma['mm']:g} mm, isotropic in the world, "
        f"{sigma['voxels']} voxels per axis (a neighbour sits >= 3 sigma away, where the heatmap is < 1.1%, unless the floor wins)"
    )


def _initial_patch(median_shape, spacing, voxels: int) -> np.ndarray:
    """nnU-Net: a patch of ``voxels`` whose edges are equal in millimetres, capped at the median image."""
    aspect = 1.0 / np.asarray(spacing, dtype=np.float64)
    patch = aspect * (voxels / np.prod(aspect)) ** (1 / 3)
    return np.minimum(np.round(patch), np.asarray(median_shape)).astype(np.int64)


def plan_patch_and_network(fingerprint: dict, spacing, profile: BudgetProfile, usable: int, median_shape) -> dict:
    """Shrink the patch (the axis largest relative to the median image first, by one stride product)
    until a training step at the minimum batch size fits ``usable`` bytes and the patch, rounded up to
    the strides, holds no more voxels than the profile's starting volume (on a CPU that is a time budget)."""
    shape = np.asarray(median_shape, dtype=np.float64)
    network = network_for(_initial_patch(shape, spacing, profile.start_patch_voxels), spacing, profile)
    while (
        _training_bytes(network, profile.min_batch_size, fingerprint) > usable
        or np.prod(network["patch_size"]) > profile.start_patch_voxels
    ):
        patch, divisor = np.asarray(network["patch_size"]), _divisor(network["strides"])
        shrinkable = patch - divisor >= MIN_PATCH_AXIS
        if not shrinkable.any():
            need = _training_bytes(network, profile.min_batch_size, fingerprint)
            if need <= usable:
                break
            raise ValueError(
                f"even the smallest patch {patch.tolist()} needs {_gb(need)} GiB for batch {profile.min_batch_size}; "
                f"the {profile.name} budget allows {_gb(usable)} GiB: raise --memory_gb"
            )
        relative = np.where(shrinkable, patch / np.maximum(shape, 1), -np.inf)
        axis = int(np.argmax(relative))
        patch[axis] -= divisor[axis]
        network = network_for(patch, spacing, profile)
    return network


def determine_patch_and_network(fingerprint: dict, spacing, budget: str = "cpu", memory_gb: float | None = None):
    profile = profile_for(budget)
    usable = usable_bytes(budget, memory_gb)
    shape = median_shape_at(fingerprint, spacing)
    network = plan_patch_and_network(fingerprint, spacing, profile, usable, shape)
    need = _training_bytes(network, profile.min_batch_size, fingerprint)
    value = {**network, "estimated_training_memory_gb": _gb(need), "usable_memory_gb": _gb(usable)}
    edge = round(profile.start_patch_voxels ** (1 / 3))
    return value, (
        f"median image at target spacing {shape}; patch starts at {edge}^3 voxels with equal edges in mm, capped at the "
        f"median image, and shrinks until one training step at batch {profile.min_batch_size} fits "
        f"{profile.usable_fraction:g} x {memory_gb if memory_gb is not None else profile.memory_gb:g} GiB "
        f"({_gb(need)} GiB estimated, {len(fingerprint['landmark_names'])} heatmap channels counted); DynUNet downsamples an axis "
        f"while its feature map stays >= {MIN_FEATURE_MAP} and its spacing < 2x the finest, filters "
        f"{profile.base_filters}*2^k capped at {profile.max_filters}"
    )


def determine_batch_size(fingerprint: dict, spacing, network: dict, budget: str = "cpu", memory_gb: float | None = None):
    """Grow the batch from the profile's minimum while it fits memory, stays under the profile's maximum
    and covers at most 5% of the dataset's voxels (nnU-Net)."""
    profile = profile_for(budget)
    usable = usable_bytes(budget, memory_gb)
    dataset_voxels = float(np.prod(shapes_at(fingerprint, spacing), axis=1).sum())
    cap = max(profile.min_batch_size, int(BATCH_DATASET_FRACTION * dataset_voxels / np.prod(network["patch_size"])))
    cap = min(cap, profile.max_batch_size)
    batch = profile.min_batch_size
    while batch + 1 <= cap and _training_bytes(network, batch + 1, fingerprint) <= usable:
        batch += 1
    limits = f"at most {profile.max_batch_size} on {profile.name}, 5% of the dataset's voxels allow {cap}"
    return batch, f"largest batch from {profile.min_batch_size} whose training step fits the budget ({limits})"


def determine_sliding_window(fingerprint: dict, spacing, network: dict, budget: str = "cpu", memory_gb: float | None = None):
    profile = profile_for(budget)
    usable = usable_bytes(budget, memory_gb)
    largest = np.max(shapes_at(fingerprint, spacing), axis=0).tolist()
    args = (fingerprint["in_channels"], len(fingerprint["landmark_names"]), network["kernel_size"], network["strides"], network["filters"])
    for sw_batch in profile.sw_batch_sizes:
        need = estimate_inference_memory_bytes(network["patch_size"], sw_batch, *args, image_shape=largest)
        if need <= usable:
            break
    note = "fits" if need <= usable else "does NOT fit (keep the aggregation on the CPU: sw_device)"
    value = {"overlap": profile.sw_overlap, "sw_batch_size": sw_batch, "estimated_inference_memory_gb": _gb(need)}
    return value, (
        f"overlap {profile.sw_overlap:g} on {profile.name} (nnU-Net uses 0.5; 0.25 needs 3x fewer windows on a CPU); "
        f"{sw_batch} window(s) per batch: the largest image {largest} with one heatmap per landmark {note} ({_gb(need)} GiB)"
    )


FINE_SEARCH_COARSE_VOXELS = 2.0  # AFIDs validation, 4.3 mm coarse grid: radius 8 mm MRE 4.1, 12 mm 5.6, 16 mm 6.6, none 11.4


def determine_cascade(fingerprint: dict, spacing, network: dict, budget: str = "cpu", memory_gb: float | None = None):
    """Two stages when the median image is > 8x the patch: a coarse network sees the whole image at a
    coarser spacing (same voxel budget), the fine one refines each landmark in a patch around it."""
    profile = profile_for(budget)
    shape = np.asarray(median_shape_at(fingerprint, spacing), dtype=np.float64)
    patch_voxels = float(np.prod(network["patch_size"]))
    ratio = float(np.prod(shape) / patch_voxels)
    if ratio <= CASCADE_VOLUME_RATIO:
        return None, f"median image {shape.astype(int).tolist()} is {ratio:.1f}x the patch volume (<= {CASCADE_VOLUME_RATIO:g}): single stage"
    extent = shape * np.asarray(spacing, dtype=np.float64)
    usable = usable_bytes(budget, memory_gb)
    step = float(min(spacing))
    for _ in range(500):
        step *= COARSE_SPACING_STEP
        coarse_spacing = np.maximum(np.asarray(spacing, dtype=np.float64), step)
        coarse_shape = np.ceil(extent / coarse_spacing)
        if np.prod(coarse_shape) > patch_voxels:
            continue
        try:
            coarse = network_for(coarse_shape, coarse_spacing, profile)
        except ValueError:
            continue
        if _training_bytes(coarse, profile.min_batch_size, fingerprint) <= usable:
            break
    else:
        raise ValueError(f"no coarse spacing fits the {profile.name} memory budget")
    # The coarse stage only places the fine patches: its peaks need not keep neighbours apart, and wide
    # targets are learnt far faster on a CPU budget, so it keeps the default sigma without the neighbour cap.
    coarse_sigma = sigma_per_axis(SIGMA_DEFAULT, coarse_spacing)
    value = {
        "coarse_spacing": _r(coarse_spacing),
        "coarse_patch_size": coarse["patch_size"],
        "coarse_kernel_size": coarse["kernel_size"],
        "coarse_strides": coarse["strides"],
        "coarse_filters": coarse["filters"],
        "coarse_batch_size": profile.min_batch_size,
        "coarse_sigma_mm": coarse_sigma["mm"],
        "coarse_sigma_voxels": coarse_sigma["voxels"],
        "fine_search_radius_mm": _r(FINE_SEARCH_COARSE_VOXELS * float(np.max(coarse_spacing)), 3),
    }
    return value, (
        f"median image {shape.astype(int).tolist()} is {ratio:.1f}x the patch volume (> {CASCADE_VOLUME_RATIO:g}): a coarse stage at "
        f"{_r(coarse_spacing, 3)} mm sees the whole median image in one {coarse['patch_size']} patch, the fine stage "
        f"refines each landmark in a {network['patch_size']} patch at {list(spacing)} mm, its peak searched within "
        f"{FINE_SEARCH_COARSE_VOXELS:g} coarse voxels of the coarse position (a fine patch holds look-alike structures); the coarse "
        f"sigma is the default {SIGMA_DEFAULT:g} finest-axis voxels ({coarse_sigma['mm']:g} mm, {coarse_sigma['voxels']} voxels per axis) without the neighbour cap (it only places patches, and wide targets learn fast)"
    )


def determine_training_length(fingerprint: dict, network: dict, batch_size: int, budget: str = "cpu", cascade: bool = False):
    """GPU: nnU-Net's 250 x 1000. CPU: a wall-clock budget of 2.5 h per stage (validations included); the epoch
    count follows at the start of training from the step time measured on the machine that trains
    (scripts.training_budget), so plans hold no machine's speed."""
    if budget == "gpu":
        value = {"iterations_per_epoch": GPU_ITERATIONS_PER_EPOCH, "epochs": GPU_EPOCHS, "training_hours": None}
        value["val_interval"] = validation_interval(GPU_EPOCHS)
        return value, (f"nnU-Net's schedule: {GPU_ITERATIONS_PER_EPOCH} iterations x {GPU_EPOCHS} epochs; validate every "
                       f"{value['val_interval']} epoch(s) ({VALIDATIONS_PER_TRAINING} validations); --hours H trains to a time budget instead")
    value = {"iterations_per_epoch": CPU_ITERATIONS_PER_EPOCH, "epochs": None, "training_hours": CPU_TRAINING_HOURS, "val_interval": None,
             "validation_cases": CPU_VALIDATION_CASES}
    reference = int(CPU_TRAINING_HOURS * 3600 / REFERENCE_CPU_STEP_SECONDS / CPU_ITERATIONS_PER_EPOCH)
    return value, (
        f"a time budget of {CPU_TRAINING_HOURS:g} h{' per stage' if cascade else ''}, validations included, in epochs of "
        f"{CPU_ITERATIONS_PER_EPOCH} iterations: training times a few steps on the machine that trains and takes as many "
        f"epochs as fit (e.g. about {reference} at the {REFERENCE_CPU_STEP_SECONDS:g} s step measured for 48^3 x 2 on 2 AMD EPYC "
        f"cores), validating about {VALIDATIONS_PER_TRAINING} times on at most {CPU_VALIDATION_CASES} validation cases spread over "
        f"the datalist's groups (50 cascade validations of 3 s each, 20 times, would take a third of the budget; evaluate.json "
        f"scores every case); --hours H changes the budget, --epochs N fixes the count"
    )


def determine_learning_rate(iterations_per_epoch: int, epochs: int | None):
    """nnU-Net's Adam variant (3e-4) for 20 000 iterations or more; 1e-3 for shorter schedules. A CPU time
    budget (``epochs`` None) counts as short: 2.5 h at the reference 0.6 s step is 15 000 iterations."""
    if epochs is None:
        total = int(CPU_TRAINING_HOURS * 3600 / REFERENCE_CPU_STEP_SECONDS)
        return LEARNING_RATE_SHORT, (f"Adam at {LEARNING_RATE_SHORT:g}: a {CPU_TRAINING_HOURS:g} h CPU budget is a short schedule "
                                     f"(about {total} < {LONG_SCHEDULE_ITERATIONS} iterations at the reference step) and needs a faster start")
    total = iterations_per_epoch * epochs
    if total >= LONG_SCHEDULE_ITERATIONS:
        return LEARNING_RATE_LONG, f"Adam at {LEARNING_RATE_LONG:g} for a long schedule ({total} iterations; nnU-Net's Adam variant)"
    return LEARNING_RATE_SHORT, f"Adam at {LEARNING_RATE_SHORT:g}: a short schedule ({total} < {LONG_SCHEDULE_ITERATIONS} iterations) needs a faster start"


def gaussian_mass(sigma) -> float:
    """Sum of an unnormalised 3D Gaussian with peak 1 over a voxel grid: (2 pi)^1.5 sigma_x sigma_y sigma_z (voxels)."""
    return float((2 * np.pi) ** 1.5 * np.prod(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,))))


def loss_foreground_weight(patch_size, sigma) -> float:
    """sqrt(patch voxels / Gaussian mass) - 1, clipped to [0, 100]; ``sigma`` in voxels, one value or one per axis."""
    mass = gaussian_mass(sigma)
    return _r(float(np.clip(np.sqrt(np.prod(patch_size) / mass) - 1.0, 0.0, 100.0)), 1)


def determine_loss_foreground_weight(network: dict, sigma):
    """Voxel weight 1 + w * target in the MSE: a Gaussian covers well under 1% of a patch, and plain MSE
    (nnLandmark, w = 0) spends a short CPU schedule learning the background. Full balance (w = patch /
    mass) over-predicts; its square root is the compromise."""
    weight = loss_foreground_weight(network["patch_size"], sigma)
    return weight, (
        f"a Gaussian of sigma {sigma} voxels holds {gaussian_mass(sigma):.0f} voxel-equivalents of a {int(np.prod(network['patch_size']))}-voxel "
        f"patch: w = sqrt(patch / mass) - 1 = {weight:g}"
    )


def determine_landmark_sampling_ratio(fingerprint: dict):
    return LANDMARK_SAMPLING_RATIO, (
        f"{LANDMARK_SAMPLING_RATIO:g} of the patches are centred near a landmark (nnU-Net forces 1/3 foreground; a landmark is "
        f"far sparser than an organ), the rest anywhere, to teach where none are"
    )


AUGMENTATION_TIERS = (  # (fewer training cases than, tier name, strengths)
    (5, "heavy", {
        "rotation_deg": 20.0, "rotation_prob": 0.5, "scale_range": [0.85, 1.15], "scale_prob": 0.5,
        "elastic_prob": 0.3, "elastic_magnitude_mm": [2.0, 4.0], "elastic_control_spacing_mm": 24.0,
        "low_resolution_prob": 0.25, "low_resolution_zoom": [1.0, 2.0],
        "bias_field_prob": 0.3, "bias_field_coeff": 0.3,
        "gamma_prob": 0.3, "gamma_range": [0.7, 1.5], "noise_prob": 0.2, "noise_std": 0.1,
        "blur_prob": 0.2, "blur_sigma": [0.5, 1.0], "brightness_prob": 0.3, "brightness_range": [0.75, 1.25],
        "contrast_prob": 0.3, "contrast_range": [0.75, 1.25],
    }),
    (50, "medium", {
        "rotation_deg": 20.0, "rotation_prob": 0.3, "scale_range": [0.85, 1.15], "scale_prob": 0.3,
        "elastic_prob": 0.15, "elastic_magnitude_mm": [1.0, 3.0], "elastic_control_spacing_mm": 24.0,
        "low_resolution_prob": 0.25, "low_resolution_zoom": [1.0, 2.0],
        "bias_field_prob": 0.15, "bias_field_coeff": 0.2,
        "gamma_prob": 0.3, "gamma_range": [0.7, 1.5], "noise_prob": 0.15, "noise_std": 0.1,
        "blur_prob": 0.2, "blur_sigma": [0.5, 1.0], "brightness_prob": 0.2, "brightness_range": [0.75, 1.25],
        "contrast_prob": 0.2, "contrast_range": [0.75, 1.25],
    }),
    (math.inf, "default", {  # nnU-Net's defaults (elastic deformation off, as in nnU-Net v2)
        "rotation_deg": 30.0, "rotation_prob": 0.2, "scale_range": [0.7, 1.4], "scale_prob": 0.2,
        "elastic_prob": 0.0, "elastic_magnitude_mm": [0.0, 0.0], "elastic_control_spacing_mm": 24.0,
        "low_resolution_prob": 0.25, "low_resolution_zoom": [1.0, 2.0],
        "bias_field_prob": 0.0, "bias_field_coeff": 0.0,
        "gamma_prob": 0.3, "gamma_range": [0.7, 1.5], "noise_prob": 0.1, "noise_std": 0.1,
        "blur_prob": 0.2, "blur_sigma": [0.5, 1.0], "brightness_prob": 0.15, "brightness_range": [0.75, 1.25],
        "contrast_prob": 0.15, "contrast_range": [0.75, 1.25],
    }),
)


def _lr_flip(fingerprint: dict) -> tuple[float, str]:
    pairs = fingerprint["left_right_pairs"]
    if not pairs:
        return 0.0, "no left/right pairs: no left/right flips"
    paired = {name for pair in pairs for name in (pair["left"], pair["right"])}
    lateral = [
        name for name, stats in fingerprint["landmarks"].items()
        if name not in paired and (stats.get("midline_offset_mm") or 0.0) > LR_FLIP_MIDLINE_MM
    ]
    if lateral:
        return 0.0, f"unpaired landmarks off the midline ({', '.join(lateral[:5])}): a flip would make impossible anatomy"
    return 0.5, f"{len(pairs)} left/right pairs swap channels on a flip; unpaired landmarks lie within {LR_FLIP_MIDLINE_MM:g} mm of the midline"


CONTRAST_SUBJECTS = 20  # fewer distinct subjects than this: their scans show a few protocols, not the contrasts users have
CONTRAST_RANDOMIZATION = {  # scripts.intensity_randomization; SynthSeg's ranges scaled to [0, 1]
    "tissue_contrast_prob": 0.5, "tissue_contrast_std": [0.01, 0.1], "intensity_classes": 6, "skull_strip_prob": 0.2,
}
CONTRAST_OFF = {"tissue_contrast_prob": 0.0, "tissue_contrast_std": [0.01, 0.1], "intensity_classes": 6, "skull_strip_prob": 0.0}


def determine_contrast_randomization(fingerprint: dict, request: str = "auto"):
    """Random per-tissue intensities (SynthSeg-style) and skull-strip simulation in training.

    ``auto``: on for single-channel MR with fewer than 20 distinct training subjects (entries' ``subject``,
    else ``anatomy``, else image): such a model has seen a few protocols and must still read the other MRI
    contrasts users bring; off for CT (Hounsfield units are the same on every scanner: the intensities are
    information) and multi-channel input (the channels' contrasts are what the model is given). ``on``/``off``
    (``python -m scripts.plan --contrast_randomization``) decide it for the user, who may want robustness anyway."""
    if request not in ("auto", "on", "off"):
        raise ValueError(f"contrast randomization must be auto, on or off, got {request!r}")
    subjects = fingerprint.get("n_training_subjects", fingerprint["n_training"])
    modality = "+".join(fingerprint["modality"])
    params = ", ".join(f"{k} {v}" for k, v in CONTRAST_RANDOMIZATION.items())
    if request == "on":
        return dict(CONTRAST_RANDOMIZATION), f"contrast randomisation on (asked for): {params}"
    if request == "off":
        return dict(CONTRAST_OFF), "contrast randomisation off (asked for)"
    if fingerprint["in_channels"] != 1 or modality != "MR":
        return dict(CONTRAST_OFF), f"contrast randomisation off: {modality} input keeps its intensities (--contrast_randomization on to force)"
    if subjects >= CONTRAST_SUBJECTS:
        return dict(CONTRAST_OFF), (f"contrast randomisation off: {subjects} distinct training subjects (>= {CONTRAST_SUBJECTS}) "
                                    "show the contrast variation themselves (--contrast_randomization on to force)")
    return dict(CONTRAST_RANDOMIZATION), (
        f"contrast randomisation on: MR with {subjects} distinct training subject(s) (< {CONTRAST_SUBJECTS}) must still read other "
        f"contrasts: random per-tissue intensities from the case's label map or {CONTRAST_RANDOMIZATION['intensity_classes']} "
        f"intensity bands, skull-strip simulation where a label map gives the brain ({params})"
    )


def determine_augmentation(fingerprint: dict, spacing, contrast: str = "auto"):
    """Strength by the number of training cases; rotation in-plane only for anisotropic spacing; contrast
    randomisation by ``determine_contrast_randomization``."""
    n = fingerprint["n_training"]
    limit, tier, strengths = next(t for t in AUGMENTATION_TIERS if n < t[0])
    value = {"tier": tier, **strengths}
    spacing = np.asarray(spacing, dtype=np.float64)
    rotation = [strengths["rotation_deg"]] * 3
    note = ""
    if spacing.max() / spacing.min() > ANISOTROPY_THRESHOLD:
        rotation = [strengths["rotation_deg"] if i == int(np.argmax(spacing)) else 0.0 for i in range(3)]
        note = "; anisotropic spacing: rotation only about the coarse axis (nnU-Net's in-plane augmentation)"
    value["rotation_deg"] = rotation
    value["lr_flip_prob"], flip_reason = _lr_flip(fingerprint)
    rule = "< 5 heavy, < 50 medium, else nnU-Net defaults"
    contrast_value, contrast_reason = determine_contrast_randomization(fingerprint, contrast)
    value.update(contrast_value)
    return value, f"{n} training case(s): '{tier}' ({rule}){note}; {flip_reason}; {contrast_reason}"


def determine_tta_mirror_axes(augmentation: dict):
    """Mirror at test time only along axes the network saw mirrored in training; a mirrored view it never
    learned is noise in the average (nnU-Net mirrors every axis because it trains with every mirroring)."""
    if augmentation.get("lr_flip_prob", 0.0) > 0:
        return [0], ("left/right mirroring, paired channels swapped back (trained with left/right flips); no other axis: "
                     "anatomy is not symmetric front/back or top/bottom and training never flips those")
    return [], "no mirroring: training never flips (no left/right pairs, or unpaired landmarks off the midline)"


def determine_folds(fingerprint: dict):
    """min(5, n) folds over the training section, assigned round-robin after a seeded shuffle of the
    cases sorted by image path (so reordering the datalist does not change who is in which fold)."""
    cases = [image for image in fingerprint["images"] if image["section"] == "training"]
    n = len(cases)
    if n < 2:
        return [], "one training case: no cross-validation; train several seeds on it and ensemble them instead"
    order = sorted(cases, key=lambda image: (image["image"] if isinstance(image["image"], str) else image["image"][0], image["index"]))
    shuffled = [order[i]["index"] for i in np.random.default_rng(FOLD_SEED).permutation(n)]
    k = min(FOLDS, n)
    folds = []
    for fold in range(k):
        val = sorted(shuffled[fold::k])
        folds.append({"train": sorted(set(shuffled) - set(val)), "val": val})
    return folds, f"{k} folds over {n} training cases (sorted by image path, shuffled with seed {FOLD_SEED}, round-robin)"


# ----------------------------------------------------------------------------- plans


def _modality_name(fingerprint: dict) -> str:
    return "+".join(fingerprint["modality"])


def make_plans(fingerprint: dict, budget: str = "cpu", memory_gb: float | None = None, contrast: str = "auto") -> dict:
    """Every decision with its reason, and the flat configuration the config writer reads."""
    profile_for(budget)
    decisions: dict[str, dict] = {}

    def decide(name: str, result):
        value, reason = result
        decisions[name] = {"value": value, "reason": reason}
        return value

    spacing = decide("target_spacing", determine_target_spacing(fingerprint))
    normalization = decide("normalization", determine_normalization(fingerprint))
    sigma = decide("sigma", determine_sigma(fingerprint, spacing))
    network = decide("patch_and_network", determine_patch_and_network(fingerprint, spacing, budget, memory_gb))
    batch_size = decide("batch_size", determine_batch_size(fingerprint, spacing, network, budget, memory_gb))
    window = decide("sliding_window", determine_sliding_window(fingerprint, spacing, network, budget, memory_gb))
    cascade = decide("cascade", determine_cascade(fingerprint, spacing, network, budget, memory_gb))
    length = decide("training_length", determine_training_length(fingerprint, network, batch_size, budget, cascade is not None))
    learning_rate = decide("learning_rate", determine_learning_rate(length["iterations_per_epoch"], length["epochs"]))
    sampling = decide("landmark_sampling_ratio", determine_landmark_sampling_ratio(fingerprint))
    augmentation = decide("augmentation", determine_augmentation(fingerprint, spacing, contrast))
    tta_mirror_axes = decide("tta_mirror_axes", determine_tta_mirror_axes(augmentation))
    folds = decide("folds", determine_folds(fingerprint))
    loss_weight = decide("loss_foreground_weight", determine_loss_foreground_weight(network, sigma["voxels"]))
    if cascade is not None:
        cascade["coarse_loss_foreground_weight"] = loss_foreground_weight(cascade["coarse_patch_size"], cascade["coarse_sigma_voxels"])
    configuration = {
        "landmark_names": list(fingerprint["landmark_names"]),
        "left_right_pairs": [dict(pair) for pair in fingerprint["left_right_pairs"]],
        "in_channels": fingerprint["in_channels"],
        "modality": _modality_name(fingerprint),
        "spacing": spacing,
        "normalization": normalization,
        "sigma_mm": sigma["mm"],
        "sigma_voxels": sigma["voxels"],
        "patch_size": network["patch_size"],
        "batch_size": batch_size,
        "kernel_size": network["kernel_size"],
        "strides": network["strides"],
        "filters": network["filters"],
        "sw_overlap": window["overlap"],
        "sw_batch_size": window["sw_batch_size"],
        "tta_mirror_axes": tta_mirror_axes,
        "iterations_per_epoch": length["iterations_per_epoch"],
        "epochs": length["epochs"],
        "training_hours": length["training_hours"],
        "val_interval": length["val_interval"],
        "validation_cases": length.get("validation_cases"),
        "learning_rate": learning_rate,
        "loss_foreground_weight": loss_weight,
        "landmark_sampling_ratio": sampling,
        "augmentation": augmentation,
        "folds": folds,
        "cascade": cascade,
    }
    return {"fingerprint": fingerprint, "budget": budget, "configuration": configuration, "decisions": decisions}
