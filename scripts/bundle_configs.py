"""The bundle's JSON configs, written by the planner (``python -m scripts.plan``).

Configs hold the wiring, plans.json the numbers: every dataset-specific value is read from
``configs/plans.json`` through the top-level ids below, so a user can still override any of them on
the command line (``--patch_size``, ``--epochs``...). Pieces that train.json and inference.json share
are built once here, so the two can never disagree about preprocessing or the network.
"""

from __future__ import annotations

PLANS = "$scripts.plans.load_configuration(@plans_file, @stage)"
DEVICE = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"


def plan_ids() -> dict:
    """Top-level ids taken from plans.json, shared by every config (``stage`` picks a cascade stage's numbers)."""
    return {
        "plans_file": "$@bundle_root + '/configs/plans.json'",
        "stage": "fine",
        "plans": PLANS,
        "landmark_names": "$@plans['landmark_names']",
        "landmark_descriptions": "$@plans.get('landmark_descriptions', {})",
        "left_right_pairs": "$scripts.plans.pair_indices(@plans)",
        "in_channels": "$@plans['in_channels']",
        "spacing": "$@plans['spacing']",
        "patch_size": "$@plans['patch_size']",
        "sigma": "$@plans['sigma_voxels']",
    }


def network_def(plans: str = "plans") -> dict:
    return {
        "_target_": "scripts.network.LandmarkHeatmapNet",
        "in_channels": "@in_channels",
        "out_channels": "$len(@landmark_names)",
        "kernel_size": f"$@{plans}['kernel_size']",
        "strides": f"$@{plans}['strides']",
        "filters": f"$@{plans}['filters']",
    }


def cascade_ids() -> dict:
    """Ids of the coarse stage, present when the plans call for a cascade."""
    return {
        "coarse_plans": "$scripts.plans.load_configuration(@plans_file, 'coarse')",
        "coarse_network_def": network_def("coarse_plans"),
    }


def landmark_inferer(cascade: bool, mirror_axes: str = "[]") -> dict | str:
    """Sliding window, or (cascade planned) the coarse-then-fine inferer built from the coarse model file(s)."""
    if not cascade:
        return sliding_window_inferer()
    return f"$scripts.cascade.make_inferer(@plans, @coarse_network_def, @coarse_model_files, @device, @stage, @left_right_pairs, {mirror_axes})"


def ensemble_ids(ensemble: bool, tta: bool) -> dict:
    """Ids that pick the model files (every fold's when ``ensemble``), the mirror TTA (``tta``) and the
    convolution dtype (``precision``: auto = bfloat16 where the CPU has it natively, scripts.precision) of
    evaluation and inference; the network they build averages the members' heatmaps."""
    return {
        "ensemble": ensemble,
        "tta": tta,
        "precision": "auto",
        "tta_mirror_axes": "$@plans.get('tta_mirror_axes', []) if scripts.ensemble.parse_switch(@tta, 'tta') else []",
        "model_files": "$scripts.model_files.member_files(@ckpt_dir, @model_file, scripts.ensemble.parse_switch(@ensemble, 'ensemble'))",
        "coarse_model_files": "$scripts.model_files.member_files(@ckpt_dir, 'coarse_model.pt', scripts.ensemble.parse_switch(@ensemble, 'ensemble'))",
        "network": "$scripts.ensemble.build_network(@network_def, @model_files, @landmark_names, @left_right_pairs, @tta_mirror_axes, "
                   "@device, scripts.engines.plans_hash(@plans_file), @precision)",
    }


def checkpoint_info() -> dict:
    return {
        "_target_": "scripts.engines.LandmarkCheckpointInfo",
        "landmark_names": "@landmark_names",
        "plans_hash": "$scripts.engines.plans_hash(@plans_file)",
        "source": "$@ckpt_dir + '/' + @model_file",
        "pretrained_from": "@pretrained",
    }


def load_preprocessing() -> list:
    """Deterministic steps from file to network input; landmarks ride along as world coordinates."""
    return [
        {"_target_": "LoadImaged", "keys": "image", "reader": "$scripts.image_io.SimpleITKReader()", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "scripts.transforms.CheckImaged", "keys": "image", "channels": "@in_channels", "check_files": "@check_image_files",
         "spacing": "@spacing", "working_channels": "$@in_channels + len(@landmark_names) + 1"},
        {"_target_": "scripts.transforms.LoadLandmarksd", "landmark_names": "@landmark_names"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": None},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@spacing", "mode": "bilinear"},
        "$scripts.plans.normalization_transform('image', @plans['normalization'])",
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]


def sliding_window_inferer() -> dict:
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@patch_size",
        "sw_batch_size": "$@plans['sw_batch_size']",
        "overlap": "$@plans['sw_overlap']",
        "mode": "gaussian",
    }


def _aug(key: str) -> str:
    return f"$@augmentation['{key}']"


def augmentation() -> list:
    """Random steps after the cached preprocessing: crop first (everything after it is cheaper), then
    spatial (points follow through the affine or the deformation's inverse), then intensity."""
    return [
        {"_target_": "SpatialPadd", "keys": "image", "spatial_size": "@crop_size"},
        {
            "_target_": "scripts.transforms.RandLandmarkCropd",
            "keys": "image",
            "roi_size": "@crop_size",
            "landmark_region": "@landmark_region",
            "landmark_ratio": "$@plans['landmark_sampling_ratio']",
        },
        {
            "_target_": "RandAffined",
            "keys": "image",
            "prob": "$max(@augmentation['rotation_prob'], @augmentation['scale_prob'])",
            "spatial_size": "@patch_size",
            "rotate_range": "$[numpy.deg2rad(d) for d in @augmentation['rotation_deg']]",
            "scale_range": "$[[@augmentation['scale_range'][0] - 1, @augmentation['scale_range'][1] - 1]] * 3",
            "mode": "bilinear",
            "padding_mode": "zeros",
        },
        {
            "_target_": "scripts.transforms.RandFlipLandmarksd",
            "keys": "image",
            "spatial_axis": 0,
            "prob": _aug("lr_flip_prob"),
            "left_right_pairs": "@left_right_pairs",
        },
        {
            "_target_": "scripts.elastic.RandElasticDeformd",
            "keys": "image",
            "prob": _aug("elastic_prob"),
            "magnitude_mm": _aug("elastic_magnitude_mm"),
            "control_spacing_mm": _aug("elastic_control_spacing_mm"),
        },
        {
            "_target_": "RandSimulateLowResolutiond",
            "keys": "image",
            "prob": _aug("low_resolution_prob"),
            "zoom_range": "$[1.0 / @augmentation['low_resolution_zoom'][1], 1.0 / @augmentation['low_resolution_zoom'][0]]",
        },
        {"_target_": "RandBiasFieldd", "keys": "image", "prob": _aug("bias_field_prob"), "coeff_range": "$[0.0, @augmentation['bias_field_coeff']]"},
        {
            "_target_": "RandGaussianSmoothd",
            "keys": "image",
            "prob": _aug("blur_prob"),
            "sigma_x": _aug("blur_sigma"),
            "sigma_y": _aug("blur_sigma"),
            "sigma_z": _aug("blur_sigma"),
        },
        {
            "_target_": "RandScaleIntensityd",
            "keys": "image",
            "prob": _aug("brightness_prob"),
            "factors": "$[r - 1 for r in @augmentation['brightness_range']]",
        },
        {
            "_target_": "RandScaleIntensityFixedMeand",
            "keys": "image",
            "prob": _aug("contrast_prob"),
            "factors": "$[r - 1 for r in @augmentation['contrast_range']]",
        },
        {"_target_": "RandAdjustContrastd", "keys": "image", "prob": _aug("gamma_prob"), "gamma": _aug("gamma_range")},
        {"_target_": "RandGaussianNoised", "keys": "image", "prob": _aug("noise_prob"), "std": _aug("noise_std")},
        {"_target_": "scripts.transforms.LandmarksToVoxeld"},
        {"_target_": "scripts.transforms.LandmarkHeatmapd", "sigma": "@sigma"},
    ]


def _cases(section: str) -> str:
    return (
        f"$scripts.data.check_cases(scripts.data.select_cases(@datalist, {section}, @fold, @plans['folds']), "
        f"@landmark_names, {section})"
    )


def _metric(statistic: str, radius: float | None = None) -> dict:
    metric = {"_target_": "scripts.metrics.LandmarkErrorMetric", "statistic": statistic}
    if radius is not None:
        metric["radius"] = radius
    return metric


MODEL_FILE = "$'coarse_model.pt' if @stage == 'coarse' else 'model.pt'"


def train_config(datalist: str, cascade: bool = False) -> dict:
    """train.json; ``datalist`` is the config expression or path the planner bakes in; with a cascade,
    ``--stage coarse`` trains the coarse network into models/coarse_model.pt."""
    training_state = {"model": "@network", "landmark_info": "@checkpoint_info", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}
    return {
        "imports": ["$import os", "$import numpy", "$import torch", "$import scripts", "$import scripts.data",
                    "$import scripts.engines", "$import scripts.metrics", "$import scripts.plans", "$import scripts.cascade", "$import scripts.pretrained",
                    "$import scripts.model_files", "$import scripts.ensemble"],
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
        "num_workers": 2,
        **plan_ids(),
        "model_file": MODEL_FILE,
        "checkpoint_prefix": "$'coarse' if @stage == 'coarse' else ''",
        **(cascade_ids() if cascade else {}),
        "coarse_model_files": "$scripts.model_files.member_files(@ckpt_dir, 'coarse_model.pt', False)",
        "crop_size": "$[int(round(s * 1.25)) for s in @patch_size]",
        "landmark_region": "$[int(round(s * 0.8)) for s in @patch_size]",
        "batch_size": "$@plans['batch_size']",
        "epochs": "$@plans['epochs']",
        "iterations_per_epoch": "$@plans['iterations_per_epoch']",
        "val_interval": "$@plans['val_interval']",
        "learning_rate": "$@plans['learning_rate']",
        "augmentation": "$@plans['augmentation']",
        "network_def": network_def(),
        "network": "$scripts.pretrained.initialize_from(@network_def, @pretrained, @landmark_names).to(@device)",
        "loss": {"_target_": "scripts.engines.MaskedHeatmapMSELoss", "foreground_weight": "$@plans['loss_foreground_weight']"},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": "@learning_rate"},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.PolynomialLR", "optimizer": "@optimizer", "total_iters": "@epochs", "power": 0.9},
        "checkpoint_info": checkpoint_info(),
        "load_preprocessing": load_preprocessing(),
        "train": {
            "cases": _cases("'training'"),
            "augmentation": augmentation(),
            "preprocessing": {"_target_": "Compose", "transforms": "$@load_preprocessing + @train#augmentation"},
            "dataset": {"_target_": "CacheDataset", "data": "@train#cases", "transform": "@train#preprocessing",
                        "cache_rate": 1.0, "num_workers": 1, "progress": False},
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
                {"_target_": "scripts.engines.TrainingStateSaver", "save_dir": "@ckpt_dir", "save_dict": training_state,
                 "file_prefix": "@checkpoint_prefix", "save_interval": 1, "n_saved": 1},
                {"_target_": "scripts.engines.EpochProgress"},
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@epochs",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "prepare_batch": "$scripts.engines.prepare_landmark_batch",
                "train_handlers": "@train#handlers",
                "decollate": False,
                "amp": False,
            },
        },
        "validate": {
            "cases": _cases("'validation'"),
            "preprocessing": {"_target_": "Compose", "transforms": "$@load_preprocessing"},
            "dataset": {"_target_": "CacheDataset", "data": "@validate#cases", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0, "num_workers": 1, "progress": False},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
            "inferer": landmark_inferer(cascade),
            "postprocessing": {"_target_": "scripts.transforms.ExtractLandmarksd", "left_right_pairs": "@left_right_pairs"},
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network", "landmark_info": "@checkpoint_info"},
                 "save_key_metric": True, "key_metric_filename": "@model_file", "key_metric_negative_sign": True},
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
        "initialize": ["$monai.utils.set_determinism(seed=max(@fold, 0))", "$os.makedirs(@ckpt_dir, exist_ok=True)"],
        "run": ["$@train#trainer.run()"],
        "finalize": [],
    }


def evaluate_config(cascade: bool = False) -> dict:
    """evaluate.json, merged over train.json: the model (``--ensemble true``: every fold's; ``--tta true``:
    mirrored too) on a section (``--eval_section``), report to ``--output_dir``."""
    return {
        "eval_section": "validation",
        **ensemble_ids(False, False),
        "validate#cases": _cases("@eval_section"),
        "validate#inferer": landmark_inferer(cascade, "@tta_mirror_axes"),
        "validate#handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "scripts.evaluation.LandmarkEvaluationReport", "output_dir": "@output_dir", "landmark_names": "@landmark_names"},
        ],
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@validate#evaluator.run()"],
        "finalize": [],
    }


def inference_config(default_input: str, cascade: bool = False) -> dict:
    """inference.json: ``--input`` a scan, a folder or a datalist (its testing cases); ``--output_dir``."""
    return {
        "imports": ["$import os", "$import torch", "$import scripts", "$import scripts.data", "$import scripts.engines",
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
        **plan_ids(),
        "model_file": "model.pt",
        **(cascade_ids() if cascade else {}),
        "calibration": "$scripts.uncertainty.load_calibration(@ckpt_dir + '/calibration.json')",
        "found_threshold": "$scripts.engines.found_threshold(@ckpt_dir + '/calibration.json')",
        "network_def": network_def(),
        **ensemble_ids(True, True),
        "overwrite": False,
        "cases": "$scripts.data.resolve_inputs(@input, @output_dir, scripts.ensemble.parse_switch(@overwrite, 'overwrite'))",
        "preprocessing": {"_target_": "Compose", "transforms": load_preprocessing()},
        "dataset": {"_target_": "scripts.data.ReportingDataset", "data": "@cases", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": landmark_inferer(cascade, "@tta_mirror_axes"),
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
        "handlers": ["@summary"],
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
        "initialize": ["$torch.set_grad_enabled(False)"],
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
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": "$scripts.pretrained.initialize_from(@network_def, @pretrained, @landmark_names).to(@device)",
            "device_ids": "$[@device] if @device.type == 'cuda' else None",
        },
        "train#sampler": {
            "_target_": "scripts.data.DistributedRandomSampler",
            "data_source": "@train#dataset",
            "num_samples": "$@iterations_per_epoch * @batch_size",
        },
        "train#trainer#train_handlers": "$@train#handlers[: -2 if dist.get_rank() > 0 else None]",
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": False, "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
        "initialize": [
            "$import torch.distributed as dist",
            "$dist.is_initialized() or dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')",
            "$torch.cuda.set_device(@device) if @device.type == 'cuda' else None",
            "$monai.utils.set_determinism(seed=max(@fold, 0) + 1000 * dist.get_rank())",
            "$os.makedirs(@ckpt_dir, exist_ok=True)",
        ],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }
