"""Reduced-precision inference: which dtype is chosen, and that the output layer stays float32."""

import logging

import pytest
import torch

from scripts.ensemble import HeatmapEnsemble, build_network
from scripts.network import LandmarkHeatmapNet
from scripts.precision import ReducedPrecisionHeatmapNet, inference_dtype, native_bfloat16, with_precision

NAMES = ["A", "B"]


def small_net(seed=0) -> LandmarkHeatmapNet:
    torch.manual_seed(seed)
    return LandmarkHeatmapNet(1, len(NAMES), [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [8, 16, 32]).eval()


def test_precision_names_map_to_dtypes_and_auto_follows_the_processor():
    cpu = torch.device("cpu")
    assert inference_dtype("float32", cpu) == torch.float32
    assert inference_dtype("bfloat16", "cpu") == torch.bfloat16
    assert inference_dtype(" AUTO ", cpu) == (torch.bfloat16 if native_bfloat16(cpu) else torch.float32)
    with pytest.raises(SystemExit, match=r"--precision 'half': use one of auto, float32, bfloat16"):
        inference_dtype("half", cpu)


def test_split_forward_equals_dynunet_forward():
    net = small_net()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.equal(net(x), torch.sigmoid(net.net(x)))


def test_reduced_precision_keeps_the_weights_and_a_float32_output_layer():
    net = small_net()
    wrapped = with_precision(net, torch.bfloat16)
    assert isinstance(wrapped, ReducedPrecisionHeatmapNet) and wrapped.network is net
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x = torch.randn(2, 1, 24, 24, 24)
    with torch.inference_mode():
        reference, reduced = net(x), wrapped(x)
        everything_bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
        with everything_bf16:
            all_bf16 = net(x).float()
    assert reduced.dtype == torch.float32 and reduced.shape == reference.shape
    assert (reduced - reference).abs().max() < 0.02
    # a bfloat16 output layer leaves values on bfloat16's 8-bit-mantissa grid; the float32 one does not
    on_grid = lambda t: torch.equal(t.to(torch.bfloat16).float(), t)  # noqa: E731
    assert on_grid(all_bf16) and not on_grid(reduced)


def test_float32_and_unsplittable_networks_are_left_as_they_are(caplog):
    net = small_net()
    assert with_precision(net, torch.float32) is net
    plain = torch.nn.Conv3d(1, 2, 1)
    with caplog.at_level(logging.WARNING, logger="scripts.precision"):
        assert with_precision(plain, torch.bfloat16) is plain
    assert "kept in float32" in caplog.text


def test_build_network_wraps_every_member(tmp_path):
    files = []
    for seed in (0, 1):
        files.append(str(tmp_path / f"m{seed}.pt"))
        torch.save({"model": small_net(seed).state_dict(), "landmark_info": {"landmark_names": NAMES}}, files[-1])
    single = build_network(small_net(), files[:1], NAMES, precision="bfloat16")
    assert isinstance(single, ReducedPrecisionHeatmapNet)
    assert isinstance(build_network(small_net(), files[:1], NAMES, precision="float32"), LandmarkHeatmapNet)
    ensemble = build_network(small_net(), files, NAMES, precision="bfloat16")
    assert isinstance(ensemble, HeatmapEnsemble) and all(isinstance(m, ReducedPrecisionHeatmapNet) for m in ensemble.members)
