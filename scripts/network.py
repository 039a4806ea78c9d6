"""The landmark heatmap network: MONAI's DynUNet with a sigmoid on its output.

DynUNet has no output activation; the nnLandmark recipe regresses Gaussian heatmaps in [0, 1] with a
sigmoid and an MSE loss. Wrapping (rather than subclassing) keeps the state-dict keys ``net.*`` stable
for every loader: ckpt_export, MONAI Label, folds.

Normalisation is MONAI's ``norm_name="instance"`` (InstanceNorm3d without affine parameters), kept over nnU-Net's
affine instance norm on measurement (docs/training_afids.md, "Ablations before the v1 run"; bench/ablations.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet


class LandmarkHeatmapNet(torch.nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        filters: Sequence[int],
        norm_name: str = "instance",
        res_block: bool = True,
        initial_output: float = 0.05,
    ):
        super().__init__()
        self.net = DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[list(k) for k in kernel_size],
            strides=[list(s) for s in strides],
            upsample_kernel_size=[list(s) for s in strides[1:]],
            filters=list(filters),
            norm_name=norm_name,
            res_block=res_block,
            deep_supervision=False,
        )
        # Start near the background value instead of sigmoid(0) = 0.5 everywhere: otherwise the first
        # epochs only learn to output zeros (the targets are >99% background).
        output_conv = self.net.output_block.conv.conv
        torch.nn.init.constant_(output_conv.bias, float(torch.logit(torch.tensor(initial_output))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heatmaps(self.features(x))

    # DynUNet.forward without deep supervision (not used here), split so that scripts.precision can run the
    # body in bfloat16 and the output layer in float32
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.skip_layers(x)

    def heatmaps(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net.output_block(features))


def norm_affine_missing(network: torch.nn.Module, state: dict) -> dict[str, torch.Tensor]:
    """The instance-norm affine parameters ``network`` has and ``state`` lacks, at weight 1 / bias 0.

    ``state``: a state dict of the same architecture trained without the affine (MONAI's ``norm_name="instance"``);
    ``network``: built with ``("instance", {"affine": True})`` (nnU-Net's instance norm). With weight 1 and bias 0
    the affine is the identity, so ``{**state, **norm_affine_missing(network, state)}`` computes exactly what
    ``state`` computed without it. Returns {} when nothing is missing (same norm, or ``network`` without affine).
    """
    missing = {}
    for key, value in network.state_dict().items():  # state-dict keys, aliases included (DynUNet's skip_layers)
        owner, _, suffix = key.rpartition(".")
        module = network.get_submodule(owner)
        if key not in state and isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and suffix in ("weight", "bias"):
            missing[key] = torch.ones_like(value) if suffix == "weight" else torch.zeros_like(value)
    return missing
