"""Reduced-precision inference: bfloat16 convolutions where the processor computes them natively.

On CPUs with AVX512-BF16 or AMX (the processor flags ``avx512_bf16``/``amx_bf16``, and oneDNN not capped below them) a bfloat16 3D convolution of
the fine network runs about twice as fast as float32 (0.052 vs 0.107 s per 48^3 window on 2 cores);
elsewhere oneDNN would emulate it, so ``auto`` keeps float32 there (:func:`native_bfloat16`; emulated
bfloat16 measured by capping oneDNN on this project's CPU: a fine-stage training step 22x slower than float32
at AVX2, about 1.8x slower at AVX512_CORE). The output layer and the sigmoid stay float32: bfloat16 keeps 8 bits of
mantissa, so heatmap values near the peak (0.97 one voxel off at sigma 4) would be rounded in steps of
0.004 and the sub-voxel refinement would follow the rounding (the 1 mm AFIDs sample, mirror TTA, both
stages in bfloat16: 0.40 voxel mean shift from float32; with a float32 output layer 0.06).

Only the fine network (the one build_network makes from ``precision``) runs in bfloat16; the cascade's
coarse network stays float32. Its positions place the fine patches, and the fine network's output depends
a little on where in its patch a landmark falls, so a bfloat16 coarse pass moved the sample's landmarks
more (0.62 voxel mean without TTA) than bfloat16 itself does (0.12), for a saving of ~0.1 s.

Training (``precision`` of train.json, :func:`training_dtype`) uses the same split: the network's body
runs under autocast, the output layer, the sigmoid and the loss in float32, the weights and the optimizer
stay float32 (mixed precision, not a bfloat16 model). ``auto`` is bfloat16 on a CPU that has it natively,
float32 on one that would emulate it (emulated bfloat16 is several times slower than float32), and on CUDA
bfloat16 where the GPU supports it, else float16 with a gradient scaler (float16's 5-bit exponent
underflows small gradients; bfloat16 has float32's range and needs none).
"""

from __future__ import annotations

import logging
import os
import platform

import torch

from scripts.errors import LandmarkConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


X86 = ("x86_64", "amd64", "i386", "i686")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA) below AVX512_CORE_BF16: oneDNN then emulates bfloat16
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively: a CPU with AVX512-BF16 or AMX-BF16 whose oneDNN
    is not capped below them. GPUs: False (not measured).

    oneDNN's own answer (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is not enough on x86: it is True from
    AVX512_CORE up (Skylake-class AVX-512 without bfloat16 instructions), where oneDNN emulates bfloat16 and a
    fine-stage training step took 2.0 s against 1.1 s in float32 (1 thread, measured here with
    ``ONEDNN_MAX_CPU_ISA=AVX512_CORE``); it is False with oneDNN capped at AVX2 (emulated there: 35 s against
    1.6 s). So on x86 the processor's flags (``torch.cpu.get_capabilities``: avx512_bf16 or amx_bf16) and any
    ``ONEDNN_MAX_CPU_ISA`` cap count too. oneDNN reads the cap once, at its first use: set it before the process
    starts (a variable set later changes this answer but not oneDNN).
    Capping ATen alone (``ATEN_CPU_CAPABILITY=avx2``) leaves oneDNN's bfloat16 convolutions native and bfloat16
    training still 1.9x faster than float32, so ATen's capability is not consulted."""
    if device.type != "cpu":
        return False
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query
        return False
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if not onednn or cap in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if platform.machine().lower() in X86:  # torch >= 2.13 (requirements.txt) has the flags query; without it, no
        flags = capabilities() if capabilities is not None else {}
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    return True  # ARM: oneDNN checks the bf16 extension itself


def _parse(precision: str, device) -> tuple[str, torch.device]:
    """(auto | float32 | bfloat16 | float16, device); float16 only on CUDA (a CPU emulates it, slowly).

    Raises LandmarkConfigError (``--precision``) for any other name."""
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise LandmarkConfigError("--precision", f"{precision!r} is not a precision: use one of {', '.join(PRECISIONS)}")
    device = torch.device(device if device is not None else "cpu")
    if text == "float16" and device.type != "cuda":
        raise LandmarkConfigError("--precision", f"float16 needs a CUDA device, not {device.type}: use bfloat16 or float32")
    return text, device


def inference_dtype(precision: str, device) -> torch.dtype:
    """``precision`` (auto | float32 | bfloat16 | float16) -> the dtype of the network's convolutions on ``device``.

    ``auto``: bfloat16 on a CPU with native bfloat16, float32 elsewhere (GPUs: not measured for inference)."""
    text, device = _parse(precision, device)
    if text == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return DTYPES[text]


def training_dtype(precision: str, device) -> torch.dtype:
    """``precision`` of train.json -> the autocast dtype of the network's body during training on ``device``.

    ``auto``: CPU: bfloat16 where native (:func:`native_bfloat16`), else float32; CUDA: bfloat16 where the GPU
    supports it, else float16 (with a gradient scaler, :func:`needs_grad_scaler`). Raises LandmarkConfigError."""
    text, device = _parse(precision, device)
    if text != "auto":
        return DTYPES[text]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_bfloat16(device) else torch.float32


def needs_grad_scaler(precision: str, device) -> bool:
    """Whether training in ``precision`` on ``device`` runs in float16, which needs loss scaling: the
    ``amp`` switch of MONAI's SupervisedTrainer (its GradScaler and ``torch.autocast("cuda")``)."""
    return training_dtype(precision, device) == torch.float16


def training_network(network: torch.nn.Module, precision: str, device) -> torch.nn.Module:
    """The network the trainer runs: ``network`` itself in float32, else wrapped so that its body runs under
    autocast and its output layer in float32 (:class:`ReducedPrecisionHeatmapNet`; it holds ``network``,
    so checkpoints of ``network`` are unchanged). Logs the choice once. Under DistributedDataParallel
    (multi_gpu_train.json) DDP wraps what this returns, not the reverse, so that the wrapper reaches the output layer.

    Also turns ``network``'s in-place LeakyReLUs out of place (:func:`out_of_place_activations`: the same values,
    a faster backward)."""
    dtype = training_dtype(precision, device)
    out_of_place_activations(network)
    wrapped = with_precision(network, dtype)
    if wrapped is network and dtype != torch.float32:  # no features/heatmaps split: with_precision warned
        if dtype != torch.float16:
            dtype = torch.float32
        detail = "the whole forward under MONAI's float16 autocast" if dtype == torch.float16 else "float32 throughout"
    else:
        detail = "float32 throughout" if dtype == torch.float32 else "autocast body; output layer, loss, weights and optimizer float32"
    logger.info("training precision: %s (%s; --precision %s)", str(dtype).replace("torch.", ""), detail, str(precision).strip().lower())
    return wrapped


def out_of_place_activations(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` with its in-place activations (DynUNet's ``LeakyReLU(inplace=True)``) made out of place; returns it.

    The values and gradients are the same (the loss after a few steps equal to every printed digit), but in training
    an in-place activation on an instance norm's output, which is a view, makes autograd record a CopySlices and,
    in the backward, allocate, zero and copy a whole activation-sized tensor per activation: measured on a fine-stage
    step (48^3 x 2, 2 threads, shared machine), 7% of a bfloat16 step and 5% of a float32 one. Inference (no
    autograd) gains nothing: the networks inference builds keep theirs."""
    for module in network.modules():
        if isinstance(module, (torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.ELU)) and getattr(module, "inplace", False):
            module.inplace = False
    return network


class ReducedPrecisionHeatmapNet(torch.nn.Module):
    """A LandmarkHeatmapNet whose body runs under autocast to ``dtype`` and whose output layer stays float32.

    Holds the network rather than copying it, so its weights (float32) and state-dict keys are unchanged."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            features = self.network.features(x)
        with torch.autocast(x.device.type, enabled=False):  # float32 even inside an outer autocast (MONAI's amp)
            return self.network.heatmaps(features.float())


def with_precision(network: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``network`` itself for float32 (or a network without a features/heatmaps split, e.g. TorchScript), else wrapped."""
    if dtype == torch.float32:
        return network
    if not (hasattr(network, "features") and hasattr(network, "heatmaps")):
        logger.warning("%s cannot run its output layer apart: kept in float32", type(network).__name__)
        return network
    return ReducedPrecisionHeatmapNet(network, dtype)
