"""The bundle's JSON configs, written by the planner (``python -m scripts.plan``).

The configs are recipes, as a model-zoo bundle's are: every planned number is written where it acts, as a
literal top-level id (``spacing``, ``patch_size``, ``sigma``, ``learning_rate``, ``epochs``...) or as an
argument of the MONAI transform that uses it (the normalisation, the augmentation); configs/plans.json
keeps the planner's record (fingerprint, every decision with its reason) and is not read to run.
Components are ``_target_`` with named arguments that read ids, so ``--patch_size`` (or any id) given on
the command line reaches every consumer: training crops, the validation window, the cascade, extraction.
Pieces that train.json and inference.json share are built once here, so the two can never disagree
about preprocessing or the network.
"""

from __future__ import annotations

from scripts.intensity_randomization import TISSUE_KEY
from scripts.plans import normalization_config, pair_indices, stage_configuration

DEVICE = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
# first step of every "initialize": a LandmarkError ends `monai.bundle run` with its one line, exit 1 (scripts.errors)
HOOK = "$scripts.errors.install_bundle_hook()"


def recipe_ids(c: dict) -> dict:
    """Top-level ids every config shares, the planner's numbers written literally (``c``: plans["configuration"])."""
    return {
        "plans_file": "$@bundle_root + '/configs/plans.json'",
        "landmark_names": list(c["landmark_names"]),
        "landmark_descriptions": dict(c.get("landmark_descriptions", {})),
        "left_right_pairs": pair_indices(c),
        "in_channels": c["in_channels"],
        "spacing": c["spacing"],
        "patch_size": c["patch_size"],
        "sigma": c["sigma_voxels"],
        "sw_batch_size": c["sw_batch_size"],
        "sw_overlap": c["sw_overlap"],
    }


def network_def(c: dict, prefix: str = "") -> dict:
    """The planned DynUNet; ``prefix`` "coarse_" reads the cascade's coarse stage (``c["cascade"]``)."""
    planned = c["cascade"] if prefix else c
    return {
        "_target_": "scripts.network.LandmarkHeatmapNet",
        "in_channels": "@in_channels",
        "out_channels": "$len(@landmark_names)",
        "kernel_size": planned[f"{prefix}kernel_size"],
        "strides": planned[f"{prefix}strides"],
        "filters": planned[f"{prefix}filters"],
    }


def model_files(model_file: str, ensemble) -> dict:
    """The weights files of one stage: ``models/<model_file>``, or every fold's when ``ensemble`` (a switch id)."""
    return {"_target_": "scripts.model_files.member_files", "ckpt_dir": "@ckpt_dir", "model_file": model_file, "ensemble": ensemble}


def cascade_ids(c: dict, ensemble, preprocessing: str) -> dict:
    """Ids of the coarse stage, present when the plans call for a cascade; ``preprocessing`` the config's id of its
    preprocessing (for the coarse weights' hash, compared with models/coarse_model.json)."""
    cascade = c["cascade"]
    return {
        "coarse_spacing": cascade["coarse_spacing"],
        "coarse_patch_size": cascade["coarse_patch_size"],
        "coarse_sigma": cascade["coarse_sigma_voxels"],
        "fine_search_radius_mm": cascade["fine_search_radius_mm"],
        "coarse_network_def": network_def(c, "coarse_"),
        "coarse_model_files": model_files("coarse_model.pt", ensemble),
        "coarse_weights_hash": weights_hash(preprocessing, "coarse_"),
    }


def sliding_window_inferer() -> dict:
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@patch_size",
        "sw_batch_size": "@sw_batch_size",
        "overlap": "@sw_overlap",
        "mode": "gaussian",
    }


def landmark_inferer(cascade: bool, tta, mirror_axes="@tta_mirror_axes") -> dict:
    """Sliding window, or (cascade planned) the coarse-then-fine inferer built from the coarse model file(s);
    ``tta``, ``mirror_axes``: the coarse pass's mirroring (ids, or literals where the config has none)."""
    if not cascade:
        return sliding_window_inferer()
    return {
        "_target_": "scripts.cascade.make_inferer",
        "patch_size": "@patch_size",
        "sigma": "@sigma",
        "spacing": "@spacing",
        "sw_batch_size": "@sw_batch_size",
        "overlap": "@sw_overlap",
        "coarse_network_def": "@coarse_network_def",
        "coarse_model_files": "@coarse_model_files",
        "coarse_spacing": "@coarse_spacing",
        "coarse_patch_size": "@coarse_patch_size",
        "coarse_plans_hash": "@coarse_weights_hash",
        "search_radius_mm": "@fine_search_radius_mm",
        "landmark_names": "@landmark_names",
        "left_right_pairs": "@left_right_pairs",
        "mirror_axes": mirror_axes,
        "tta": tta,
        "device": "@device",
    }


def checkpoint_loader() -> dict:
    """MONAI's CheckpointLoader of the single model's weights into ``network_def`` (scripts.ensemble.build_network
    leaves them to it); disabled for a fold ensemble or a TorchScript file, which build_network loads itself."""
    return {
        "_target_": "CheckpointLoader",
        "_disabled_": "$not @checkpoint_loader_enabled",
        "load_path": "$@model_files[0]",
        "load_dict": {"model": "@network_def"},
        "map_location": "cpu",
    }


def ensemble_ids(c: dict, ensemble: bool, tta: bool) -> dict:
    """Ids that pick the model files (every fold's when ``ensemble``), the mirror TTA (``tta``) and the
    convolution dtype (``precision``: auto = bfloat16 where the CPU has it natively, scripts.precision) of
    evaluation and inference; the network they build averages the members' heatmaps."""
    return {
        "ensemble": ensemble,
        "tta": tta,
        "precision": "auto",
        "tta_mirror_axes": c.get("tta_mirror_axes", []),
        "model_files": model_files("@model_file", "@ensemble"),
        # MONAI's CheckpointLoader loads the weights when one (non-TorchScript) weights file is used
        "checkpoint_loader_enabled": {"_target_": "scripts.model_files.loads_through_checkpoint_loader", "model_files": "@model_files"},
        "network": {
            "_target_": "scripts.ensemble.build_network",
            "network_def": "@network_def",
            "model_files": "@model_files",
            "landmark_names": "@landmark_names",
            "left_right_pairs": "@left_right_pairs",
            "mirror_axes": "@tta_mirror_axes",
            "tta": "@tta",
            "device": "@device",
            "plans_hash": "@weights_hash",
            "precision": "@precision",
            "checkpoint_loader": True,
        },
    }


def weights_hash(preprocessing: str, prefix: str = "") -> dict:
    """The hash of what the weights mean (scripts.engines.weights_hash) from this config's own ids, overrides included;
    stored in each weights file's sidecar and compared when weights are loaded. ``prefix`` "coarse_": the cascade's
    coarse network (its ``coarse_network_def``, ``coarse_spacing``, ``coarse_sigma``, the same normalisation)."""
    return {"_target_": "scripts.engines.weights_hash", "network": f"@{prefix}network_def", "spacing": f"@{prefix}spacing",
            "sigma": f"@{prefix}sigma", "preprocessing": preprocessing}


def checkpoint_info() -> dict:
    """The weights' identity: saved in training states, and written as the sidecar beside each weights file."""
    return {
        "_target_": "scripts.engines.LandmarkCheckpointInfo",
        "landmark_names": "@landmark_names",
        "plans_hash": "@weights_hash",
        "source": "$@ckpt_dir + '/' + @model_file",
        "pretrained_from": "@pretrained",
    }


def load_preprocessing(c: dict) -> list:
    """Deterministic steps from file to network input; landmarks ride along as world coordinates. The
    normalisation is MONAI's transform with the planned arguments (``c["normalization"]``)."""
    return [
        {"_target_": "scripts.image_io.LoadImaged", "keys": "image", "image_only": True},  # the reader policy, no fallback
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "scripts.transforms.CheckImaged", "keys": "image", "channels": "@in_channels", "check_files": "@check_image_files",
         "spacing": "@spacing", "working_channels": "$@in_channels + len(@landmark_names) + 1"},
        {"_target_": "scripts.transforms.LoadLandmarksd", "landmark_names": "@landmark_names"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": None},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@spacing", "mode": "bilinear"},
        normalization_config("image", c["normalization"]),
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]


def _minus_one(values) -> list[float]:
    """Factors as MONAI's intensity/affine scale ranges take them (1.25 -> 0.25), rounded against float noise."""
    return [round(v - 1.0, 6) for v in values]


TISSUE_LABELS = TISSUE_KEY  # the batch key of the tissue labels, dropped before collation


def contrast_randomization(a: dict) -> tuple[list, list]:
    """(cached: tissue labels on the image grid, random: after the crop) of scripts.intensity_randomization, when
    the plans turn contrast randomisation on; intensity only, before the spatial steps so the labels need only
    the pad and the crop, and dropped before collation."""
    if not (a.get("tissue_contrast_prob", 0) > 0 or a.get("skull_strip_prob", 0) > 0):
        return [], []
    load = [{"_target_": "scripts.intensity_randomization.LoadTissueLabelsd", "intensity_classes": a["intensity_classes"]}]
    randomize = [
        {"_target_": "scripts.intensity_randomization.RandTissueContrastd", "keys": "image", "prob": a["tissue_contrast_prob"],
         "std_range": a["tissue_contrast_std"]},
        {"_target_": "scripts.intensity_randomization.RandSkullStripd", "keys": "image", "prob": a["skull_strip_prob"]},
        {"_target_": "DeleteItemsd", "keys": TISSUE_LABELS},
    ]
    return load, randomize


def augmentation(c: dict) -> list:
    """Random steps after the cached preprocessing: crop first (everything after it is cheaper), then
    spatial (points follow through the affine or the deformation's inverse), then intensity. Every
    probability and range is the planner's (``c["augmentation"]``), written into the transform."""
    a = c["augmentation"]
    load_labels, randomize_contrast = contrast_randomization(a)
    keys = ["image", TISSUE_LABELS] if load_labels else "image"
    return [
        *load_labels,
        {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@crop_size"},
        {
            "_target_": "scripts.transforms.RandLandmarkCropd",
            "keys": keys,
            "roi_size": "@crop_size",
            "landmark_region": "@landmark_region",
            "landmark_ratio": c["landmark_sampling_ratio"],
        },
        *randomize_contrast,
        {
            "_target_": "RandAffined",
            "keys": "image",
            "prob": max(a["rotation_prob"], a["scale_prob"]),
            "spatial_size": "@patch_size",
            "rotate_range": f"$[numpy.deg2rad(d) for d in {list(a['rotation_deg'])}]",
            "scale_range": [_minus_one(a["scale_range"])] * 3,
            "mode": "bilinear",
            "padding_mode": "zeros",
        },
        {
            "_target_": "scripts.transforms.RandFlipLandmarksd",
            "keys": "image",
            "spatial_axis": 0,
            "prob": a["lr_flip_prob"],
            "left_right_pairs": "@left_right_pairs",
        },
        {
            "_target_": "scripts.elastic.RandElasticDeformd",
            "keys": "image",
            "prob": a["elastic_prob"],
            "magnitude_mm": a["elastic_magnitude_mm"],
            "control_spacing_mm": a["elastic_control_spacing_mm"],
        },
        {
            "_target_": "RandSimulateLowResolutiond",
            "keys": "image",
            "prob": a["low_resolution_prob"],
            "zoom_range": [1.0 / a["low_resolution_zoom"][1], 1.0 / a["low_resolution_zoom"][0]],
        },
        {"_target_": "RandBiasFieldd", "keys": "image", "prob": a["bias_field_prob"], "coeff_range": [0.0, a["bias_field_coeff"]]},
        {
            "_target_": "RandGaussianSmoothd",
            "keys": "image",
            "prob": a["blur_prob"],
            "sigma_x": a["blur_sigma"],
            "sigma_y": a["blur_sigma"],
            "sigma_z": a["blur_sigma"],
        },
        {
            "_target_": "RandScaleIntensityd",
            "keys": "image",
            "prob": a["brightness_prob"],
            "factors": _minus_one(a["brightness_range"]),
        },
        {
            "_target_": "RandScaleIntensityFixedMeand",
            "keys": "image",
            "prob": a["contrast_prob"],
            "factors": _minus_one(a["contrast_range"]),
        },
        {"_target_": "RandAdjustContrastd", "keys": "image", "prob": a["gamma_prob"], "gamma": a["gamma_range"]},
        {"_target_": "RandGaussianNoised", "keys": "image", "prob": a["noise_prob"], "std": a["noise_std"]},
        {"_target_": "scripts.transforms.LandmarksToVoxeld"},
        {"_target_": "scripts.transforms.LandmarkHeatmapd", "sigma": "@sigma"},
    ]


def _cases(section: str, max_cases: str | None = None) -> dict:
    """The checked cases of a datalist section (a literal like "training", or an id like "@eval_section");
    ``max_cases``: an id limiting their number (training-time validation)."""
    cases = {"_target_": "scripts.data.dataset_cases", "datalist": "@datalist", "section": section, "fold": "@fold",
             "folds": "@folds", "landmark_names": "@landmark_names", "landmark_descriptions": "@landmark_descriptions"}
    return {**cases, "max_cases": max_cases} if max_cases else cases


def _metric(statistic: str, radius: float | None = None) -> dict:
    metric = {"_target_": "scripts.metrics.LandmarkErrorMetric", "statistic": statistic}
    if radius is not None:
        metric["radius"] = radius
    return metric


def budgeted_epochs(fixed_epochs: int | None) -> dict:
    """``epochs``: from the ``--hours`` budget and the step time measured when training starts (the resumed run's
    own count when resuming), else the plans' fixed schedule; ``--epochs N`` replaces it (scripts.training_budget).
    The step is timed on ``training_network``, the network the trainer runs (bfloat16 where it trains in bfloat16)."""
    return {"_target_": "scripts.training_budget.budgeted_epochs", "hours": "@hours", "fallback_epochs": fixed_epochs,
            "iterations_per_epoch": "@iterations_per_epoch", "network": "@training_network", "loss_function": "@loss",
            "optimizer": "@optimizer", "loader": "@train#dataloader", "prepare_batch": "$scripts.engines.prepare_landmark_batch",
            "validate_inferer": "@validate#inferer", "validate_dataset": "@validate#dataset", "device": "@device",
            "ckpt_dir": "@ckpt_dir", "prefix": "@checkpoint_prefix", "resume": "@resume"}


def train_config(datalist: str, c: dict) -> dict:
    """train.json; ``datalist`` is the config expression or path the planner bakes in, ``c`` the plans'
    configuration; with a cascade, train_coarse.json merged over it trains the coarse network."""
    cascade = bool(c.get("cascade"))
    training_state = {"model": "@network", "landmark_info": "@checkpoint_info", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}
    return {
        "imports": ["$import os", "$import numpy", "$import torch", "$import scripts", "$import scripts.errors", "$import scripts.data",
                    "$import scripts.engines", "$import scripts.metrics", "$import scripts.plans", "$import scripts.cascade", "$import scripts.pretrained",
                    "$import scripts.model_files", "$import scripts.ensemble", "$import scripts.training_budget",
                    "$import scripts.precision", "$import scripts.throughput"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models' + ('/fold_' + str(@fold) if @fold >= 0 else '')",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": datalist,
        "fold": -1,
        "resume": True,
        "pretrained": None,
        "check_image_files": False,
        "device": DEVICE,
        "num_workers": {"_target_": "scripts.throughput.training_workers"},
        "precision": "auto",
        **recipe_ids(c),
        "batch_size": c["batch_size"],
        "hours": c.get("training_hours"),
        "epochs": budgeted_epochs(c.get("epochs")),
        "iterations_per_epoch": c["iterations_per_epoch"],
        "val_interval": {"_target_": "scripts.training_budget.validation_interval", "epochs": "@epochs"},
        "validation_cases": c.get("validation_cases"),
        "learning_rate": c["learning_rate"],
        "loss_foreground_weight": c["loss_foreground_weight"],
        "folds": c["folds"],
        "model_file": "model.pt",
        "checkpoint_prefix": "",
        **(cascade_ids(c, False, "@load_preprocessing") if cascade else {}),
        "crop_size": "$[int(round(s * 1.25)) for s in @patch_size]",
        "landmark_region": "$[int(round(s * 0.8)) for s in @patch_size]",
        "network_def": network_def(c),
        "network": {"_target_": "scripts.pretrained.initialize_from", "network": "@network_def", "path": "@pretrained",
                    "landmark_names": "@landmark_names", "device": "@device"},
        # the network the trainer runs: @network itself in float32, else its body under autocast (scripts.precision)
        "training_network": {"_target_": "scripts.precision.training_network", "network": "@network", "precision": "@precision",
                             "device": "@device"},
        "loss": {"_target_": "scripts.losses.MaskedHeatmapMSELoss", "foreground_weight": "@loss_foreground_weight"},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": "@learning_rate"},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.PolynomialLR", "optimizer": "@optimizer", "total_iters": "@epochs", "power": 0.9},
        "weights_hash": weights_hash("@load_preprocessing"),
        "checkpoint_info": checkpoint_info(),
        "load_preprocessing": load_preprocessing(c),
        "train": {
            "cases": _cases("training"),
            "augmentation": augmentation(c),
            "preprocessing": {"_target_": "Compose", "transforms": "$@load_preprocessing + @train#augmentation"},
            # the deterministic part cached once; copy_cache false: no deep copy of the whole cached volume per sample
            # (a third of the data wait: bench/training_speed.py, row "cached case copied per sample"), safe as RandLandmarkCropd,
            # the first random transform, copies its patch out of the cache (tests/test_throughput.py: the cache stays unchanged)
            "dataset": {"_target_": "CacheDataset", "data": "@train#cases", "transform": "@train#preprocessing",
                        "cache_rate": 1.0, "num_workers": 1, "progress": False, "copy_cache": False},
            "sampler": {"_target_": "torch.utils.data.RandomSampler", "data_source": "@train#dataset", "replacement": True,
                        "num_samples": "$@iterations_per_epoch * @batch_size"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                           "sampler": "@train#sampler", "num_workers": "@num_workers",
                           "persistent_workers": "$@num_workers > 0"},
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                {"_target_": "scripts.engines.ResumeTraining", "ckpt_dir": "@ckpt_dir", "enabled": "@resume", "load_dict": training_state,
                 "prefix": "@checkpoint_prefix"},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True, "interval": "@val_interval"},
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
                {"_target_": "scripts.throughput.DataWaitTimer"},
                {"_target_": "scripts.engines.TrainingStateSaver", "save_dir": "@ckpt_dir", "save_dict": training_state,
                 "file_prefix": "@checkpoint_prefix", "save_interval": 1, "n_saved": 1},
                {"_target_": "scripts.engines.EpochProgress"},
                # loss, lr, validation metrics per epoch: models/training_curves.png (+ .json) and, with tensorboard installed,
                # models/tensorboard/ through MONAI's TensorBoardStatsHandler (scripts.curves)
                {"_target_": "scripts.curves.TrainingCurves", "ckpt_dir": "@ckpt_dir", "evaluator": "@validate#evaluator",
                 "prefix": "@checkpoint_prefix"},
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@epochs",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@training_network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "prepare_batch": "$scripts.engines.prepare_landmark_batch",
                "train_handlers": "@train#handlers",
                "decollate": False,
                "amp": {"_target_": "scripts.precision.needs_grad_scaler", "precision": "@precision", "device": "@device"},
                "amp_kwargs": {"dtype": "$torch.float16"},
            },
        },
        "validate": {
            "cases": _cases("validation", "@validation_cases"),
            "preprocessing": {"_target_": "Compose", "transforms": "$@load_preprocessing"},
            "dataset": {"_target_": "CacheDataset", "data": "@validate#cases", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0, "num_workers": 1, "progress": False},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
            "inferer": landmark_inferer(cascade, False, []),
            "postprocessing": {"_target_": "scripts.transforms.ExtractLandmarksd", "left_right_pairs": "@left_right_pairs"},
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                # the best weights as a plain state dict of network_def (model-zoo form), then their sidecar beside them
                {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
                 "save_key_metric": True, "key_metric_filename": "@model_file", "key_metric_negative_sign": True},
                "@checkpoint_info",
            ],
            "key_metric": {"val_mre": _metric("mre")},
            "additional_metrics": {
                "val_median": _metric("median"),
                "val_sdr_2mm": _metric("sdr", 2.0),
                "val_sdr_4mm": _metric("sdr", 4.0),
            },
            "evaluator": {
                "_target_": "scripts.engines.LandmarkEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "additional_metrics": "@validate#additional_metrics",
                "metric_cmp_fn": "$lambda current, best: best < 0 or current < best",
                "val_handlers": "@validate#handlers",
                "amp": False,
            },
        },
        "initialize": [HOOK, "$monai.utils.set_determinism(seed=max(@fold, 0))", "$os.makedirs(@ckpt_dir, exist_ok=True)"],
        "run": ["$@train#trainer.run()"],
        "finalize": [],
    }


def evaluate_config(c: dict) -> dict:
    """evaluate.json, merged over train.json: the model (``--ensemble true``: every fold's; ``--tta true``:
    mirrored too) on a section (``--eval_section``), report to ``--output_dir``."""
    cascade = bool(c.get("cascade"))
    return {
        "eval_section": "validation",
        **ensemble_ids(c, False, False),
        **({"coarse_model_files": model_files("coarse_model.pt", "@ensemble")} if cascade else {}),
        "validate#cases": _cases("@eval_section"),
        "validate#inferer": landmark_inferer(cascade, "@tta"),
        "validate#handlers": [
            checkpoint_loader(),
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "scripts.evaluation.LandmarkEvaluationReport", "output_dir": "@output_dir", "landmark_names": "@landmark_names"},
        ],
        "initialize": [HOOK, "$monai.utils.set_determinism(seed=0)"],
        "run": ["$@validate#evaluator.run()"],
        "finalize": [],
    }


def train_coarse_config(c: dict) -> dict:
    """train_coarse.json (cascade planned), merged over train.json: the coarse stage's planned numbers replace
    the fine stage's, and training writes models/coarse_model.pt (``[prefix_]checkpoint_epoch=N.pt`` states)."""
    coarse = stage_configuration(c, "coarse")
    return {
        "spacing": "@coarse_spacing",
        "patch_size": "@coarse_patch_size",
        "sigma": "@coarse_sigma",
        "batch_size": coarse["batch_size"],
        "loss_foreground_weight": coarse["loss_foreground_weight"],
        "network_def": "@coarse_network_def",
        "model_file": "coarse_model.pt",
        "checkpoint_prefix": "coarse",
        "validate#inferer": sliding_window_inferer(),
    }


def inference_config(default_input: str, c: dict) -> dict:
    """inference.json: ``--input`` a scan, a folder or a datalist (its testing cases); ``--output_dir``."""
    cascade = bool(c.get("cascade"))
    return {
        "imports": ["$import os", "$import torch", "$import scripts", "$import scripts.errors", "$import scripts.data", "$import scripts.engines",
                    "$import scripts.outputs", "$import scripts.plans", "$import scripts.cascade", "$import scripts.figures",
                    "$import scripts.model_files", "$import scripts.ensemble", "$import scripts.uncertainty"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
        "input": default_input,
        "output_dir": "$@bundle_root + '/predictions'",
        "save_png": True,
        "check_image_files": True,
        "device": DEVICE,
        **recipe_ids(c),
        "model_file": "model.pt",
        **ensemble_ids(c, True, True),
        **(cascade_ids(c, "@ensemble", "@preprocessing") if cascade else {}),
        "calibration_file": "$@ckpt_dir + '/calibration.json'",
        "calibration": {"_target_": "scripts.uncertainty.load_calibration", "path": "@calibration_file"},
        "found_threshold": {"_target_": "scripts.engines.found_threshold", "calibration_file": "@calibration_file"},
        "network_def": network_def(c),
        "overwrite": False,
        "cases": {"_target_": "scripts.data.resolve_inputs", "input_path": "@input", "output_dir": "@output_dir", "overwrite": "@overwrite"},
        "preprocessing": {"_target_": "Compose", "transforms": load_preprocessing(c)},
        "weights_hash": weights_hash("@preprocessing"),
        "dataset": {"_target_": "scripts.data.ReportingDataset", "data": "@cases", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": landmark_inferer(cascade, "@tta"),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "scripts.transforms.ExtractLandmarksd", "left_right_pairs": "@left_right_pairs", "found_threshold": "@found_threshold",
                 "sigma": "@sigma", "calibration": "@calibration", "landmark_names": "@landmark_names"},
                {"_target_": "scripts.figures.WriteLandmarkFigured", "output_dir": "@output_dir", "landmark_names": "@landmark_names",
                 "enabled": "@save_png"},
                {"_target_": "scripts.outputs.WriteLandmarksd", "output_dir": "@output_dir", "landmark_names": "@landmark_names",
                 "descriptions": "@landmark_descriptions"},
            ],
        },
        "summary": {"_target_": "scripts.outputs.InferenceSummary", "output_dir": "@output_dir", "landmark_names": "@landmark_names"},
        "handlers": [checkpoint_loader(), "@summary"],
        "evaluator": {
            "_target_": "scripts.engines.LandmarkEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": [HOOK, "$torch.set_grad_enabled(False)"],
        "run": ["$@evaluator.run() if @cases else print('nothing left to do')", "$@summary.exit_on_failures()"],
        "finalize": ["$scripts.engines.skip_exit_garbage_collection()"],
    }


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def multi_gpu_train_config() -> dict:
    """multi_gpu_train.json, merged over train.json for torchrun: DDP with nccl on CUDA, gloo on CPU.

    Each rank draws its own training patches; validation cases are split across ranks and the
    metrics gathered, so every rank agrees on the key metric; only rank 0 logs and saves.
    """
    return {
        "device": "$torch.device(f\"cuda:{os.environ['LOCAL_RANK']}\") if torch.cuda.is_available() else torch.device('cpu')",
        # DDP wraps the precision wrapper (not the reverse, which could not reach the output layer through DDP):
        # mixed precision as in one process; `network` stays the plain float32 network the optimizer, the
        # validation evaluator and the checkpoints use (its parameters are the ones DDP synchronises)
        "training_network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": {"_target_": "scripts.precision.training_network", "network": "@network", "precision": "@precision",
                       "device": "@device"},
            "device_ids": "$[@device] if @device.type == 'cuda' else None",
        },
        "train#sampler": {
            "_target_": "scripts.data.DistributedRandomSampler",
            "data_source": "@train#dataset",
            "num_samples": "$@iterations_per_epoch * @batch_size",
        },
        # ranks > 0 leave out the last three (TrainingStateSaver, EpochProgress, TrainingCurves): rank 0 saves and logs
        "train#trainer#train_handlers": "$@train#handlers[: -3 if dist.get_rank() > 0 else None]",
        # even_divisible: a rank short of cases repeats one (MONAI refuses fewer cases than ranks otherwise); the metrics count each case once
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": True, "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
        "initialize": [
            HOOK,
            "$import torch.distributed as dist",
            "$import scripts.distributed",
            "$scripts.distributed.init_process_group()",
            "$torch.cuda.set_device(@device) if @device.type == 'cuda' else None",
            "$monai.utils.set_determinism(seed=max(@fold, 0) + 1000 * dist.get_rank())",
            "$os.makedirs(@ckpt_dir, exist_ok=True)",
        ],
        "run": ["$@train#trainer.run()"],
        # not the bare dist calls of model-zoo bundles: with DDP on gloo they leave the group's threads running into
        # the interpreter's exit, where a rank sometimes died (SIGABRT); scripts/distributed.py says why and what it measured
        "finalize": ["$scripts.distributed.destroy_process_group(network=@training_network)"],
    }
