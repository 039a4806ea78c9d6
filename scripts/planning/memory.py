"""An explicit cost model of the landmark network: peak memory of a training step and of inference.

The network is ``DynUNet(res_block=True, norm_name="instance", deep_supervision=False)`` with one
output channel per landmark, followed by a sigmoid and a masked MSE against Gaussian heatmaps
(scripts/network.py, scripts/engines.py). Everything is float32. The model counts the tensors that
autograd keeps alive until the backward pass, per block, instead of fitting a black-box formula,
so it can be checked against a real step (bench/planner_memory.py) and reasoned about:

- ``UnetResBlock`` keeps conv1's output (for norm1), norm1's output (LeakyReLU runs in place; conv2
  reads it), conv2's output (for norm2), the block output, and conv3's output (for norm3) when the
  block changes channels or resolution: 5 tensors of (filters x voxels) per block.
- ``UnetUpBlock`` keeps the concatenation of upsampled features and skip (2 x filters; the transposed
  convolution's own output is freed after it) and runs a ``UnetBasicBlock`` (no residual path, even
  with res_block=True): conv1, norm1, conv2 and norm2 outputs, 6 x filters per voxel in all.
- The output head keeps the sigmoid's output and ``pred - label`` (for the square); the heatmap
  target is a batch tensor: 3 tensors of (landmarks x voxels). The per-channel mask is (B, N).
- Backward allocates gradients while saved tensors are still alive. Its peak (``workspace``) is
  taken as the larger of 5 output-sized tensors at the head (the gradients of the mean, the square,
  the difference and the sigmoid, with their temporaries) and 6 full-resolution feature gradients
  in the last decoder block.
- Parameters: weights, gradients and Adam's two moments (4 x params), plus 2 x params of
  temporaries in Adam's multi-tensor update.

``STEP_OVERHEAD_FACTOR`` covers what the count leaves out (allocator slack, convolution
workspaces, blocked-layout copies of oneDNN on CPU); it is calibrated by bench/planner_memory.py
and recorded, with the measurements, in docs/planner_memory.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BYTES_PER_FLOAT = 4
ENCODER_TENSORS_PER_VOXEL = 5  # conv1, norm1(+lrelu), conv2, norm2(=output), conv3 of the residual path
DECODER_TENSORS_PER_VOXEL = 6  # concatenation (2 x filters), conv1, norm1(+lrelu), conv2, norm2(=output)
HEAD_TENSORS = 3  # sigmoid output, pred - label, label
HEAD_BACKWARD_TENSORS = 5
DECODER_BACKWARD_TENSORS = 6
PARAMETER_COPIES = 6  # weights, grads, Adam exp_avg + exp_avg_sq, 2 x foreach temporaries
STEP_OVERHEAD_FACTOR = 1.3


def stage_voxels(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
    """Voxels of one sample's feature map at each stage (stage 0 = full resolution)."""
    shape = np.asarray(patch_size, dtype=np.int64)
    voxels = []
    for stride in strides:
        shape = shape // np.asarray(stride, dtype=np.int64)
        voxels.append(int(np.prod(shape)))
    return voxels


def _kernel_volume(kernel: Sequence[int]) -> int:
    return int(np.prod(kernel))


def _res_block_parameters(c_in: int, c_out: int, kernel: Sequence[int], residual_conv: bool) -> int:
    """Convolutions have no bias (MONAI's dynunet blocks); instance norm has no affine parameters."""
    count = c_in * c_out * _kernel_volume(kernel) + c_out * c_out * _kernel_volume(kernel)
    return count + (c_in * c_out if residual_conv else 0)


def count_parameters(
    in_channels: int,
    n_landmarks: int,
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    filters: Sequence[int],
) -> int:
    """Trainable parameters of DynUNet(res_block=True, norm_name="instance") with one output per landmark."""
    count = 0
    c_in = in_channels
    for i, (kernel, stride) in enumerate(zip(kernel_size, strides)):
        residual = c_in != filters[i] or any(s != 1 for s in stride)
        count += _res_block_parameters(c_in, filters[i], kernel, residual)
        c_in = filters[i]
    for i in range(len(strides) - 2, -1, -1):
        count += filters[i + 1] * filters[i] * _kernel_volume(strides[i + 1])  # transposed conv, kernel = stride
        count += _res_block_parameters(2 * filters[i], filters[i], kernel_size[i + 1], False)  # UnetBasicBlock
    return count + filters[0] * n_landmarks + n_landmarks  # 1x1x1 output conv with bias


def _check_topology(patch_size, kernel_size, strides, filters) -> None:
    if not (len(kernel_size) == len(strides) <= len(filters)) or len(strides) < 3:
        raise ValueError("kernel_size, strides and filters must describe at least 3 stages")
    divisor = np.prod(np.asarray(strides, dtype=np.int64), axis=0)
    if np.any(np.asarray(patch_size) % divisor):
        raise ValueError(f"patch {list(patch_size)} is not divisible by the strides' product {divisor.tolist()}")


def training_memory_breakdown(
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    n_landmarks: int,
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    filters: Sequence[int],
) -> dict[str, int]:
    """Bytes per component of one training step's peak (see the module docstring)."""
    _check_topology(patch_size, kernel_size, strides, filters)
    voxels = stage_voxels(patch_size, strides)
    n = len(strides)
    encoder = sum(ENCODER_TENSORS_PER_VOXEL * filters[i] * voxels[i] for i in range(n))
    decoder = sum(DECODER_TENSORS_PER_VOXEL * filters[i] * voxels[i] for i in range(n - 1))
    head = HEAD_TENSORS * n_landmarks * voxels[0]
    workspace = max(HEAD_BACKWARD_TENSORS * n_landmarks, DECODER_BACKWARD_TENSORS * filters[0]) * voxels[0]
    per_sample = in_channels * voxels[0] + encoder + decoder + head + workspace
    parameters = count_parameters(in_channels, n_landmarks, kernel_size, strides, filters)
    return {
        "input": batch_size * in_channels * voxels[0] * BYTES_PER_FLOAT,
        "encoder": batch_size * encoder * BYTES_PER_FLOAT,
        "decoder": batch_size * decoder * BYTES_PER_FLOAT,
        "heatmaps": batch_size * head * BYTES_PER_FLOAT,
        "backward_workspace": batch_size * workspace * BYTES_PER_FLOAT,
        "parameters_and_adam": PARAMETER_COPIES * parameters * BYTES_PER_FLOAT,
        "per_sample_floats": per_sample,
    }


def estimate_training_memory_bytes(
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    n_landmarks: int,
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    filters: Sequence[int],
) -> int:
    """Peak bytes of one forward + backward + Adam step (float32), beyond the framework's own baseline."""
    parts = training_memory_breakdown(patch_size, batch_size, in_channels, n_landmarks, kernel_size, strides, filters)
    counted = sum(value for key, value in parts.items() if key != "per_sample_floats")
    return int(round(counted * STEP_OVERHEAD_FACTOR))


def estimate_inference_memory_bytes(
    patch_size: Sequence[int],
    sw_batch_size: int,
    in_channels: int,
    n_landmarks: int,
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    filters: Sequence[int],
    image_shape: Sequence[int] | None = None,
) -> int:
    """Peak bytes of sliding-window inference without gradients.

    Per window: the encoder outputs kept for the skips, the widest decoder moment at full resolution
    (concatenation + 3 live tensors) and the output logits + sigmoid. With ``image_shape`` (at the
    planned spacing), the whole-image buffers of the sliding window are added: the input image, one
    aggregated heatmap per landmark and the overlap count map.
    """
    _check_topology(patch_size, kernel_size, strides, filters)
    voxels = stage_voxels(patch_size, strides)
    skips = sum(filters[i] * voxels[i] for i in range(len(strides) - 1))
    widest = 5 * filters[0] * voxels[0]
    window = in_channels * voxels[0] + skips + widest + 2 * n_landmarks * voxels[0]
    total = sw_batch_size * window + count_parameters(in_channels, n_landmarks, kernel_size, strides, filters)
    if image_shape is not None:
        total += (in_channels + n_landmarks + 1) * int(np.prod(image_shape))
    return int(round(total * BYTES_PER_FLOAT * STEP_OVERHEAD_FACTOR))


def estimate_training_flops(
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    n_landmarks: int,
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    filters: Sequence[int],
) -> float:
    """Floating-point operations of one training step: 2 per multiply-add of every convolution in the
    forward pass, times 3 for forward + backward (gradients of inputs and of weights)."""
    _check_topology(patch_size, kernel_size, strides, filters)
    voxels = stage_voxels(patch_size, strides)
    macs = 0
    c_in = in_channels
    for i, (kernel, stride) in enumerate(zip(kernel_size, strides)):
        k = _kernel_volume(kernel)
        macs += voxels[i] * (c_in * filters[i] * k + filters[i] * filters[i] * k + c_in * filters[i])
        c_in = filters[i]
    for i in range(len(strides) - 1):
        k = _kernel_volume(kernel_size[i + 1])
        macs += voxels[i + 1] * filters[i + 1] * filters[i] * _kernel_volume(strides[i + 1])  # transposed conv
        macs += voxels[i] * (2 * filters[i] * filters[i] * k + filters[i] * filters[i] * k)
    macs += voxels[0] * filters[0] * n_landmarks
    return float(2 * 3 * macs * batch_size)
