"""Reduced precision in inference and training: which dtype is chosen, that the output layer stays float32,
and that a mixed-precision training step (real SupervisedTrainer) learns like a float32 one. Small tensors
only (16^3-24^3): bfloat16 is emulated, and slow, on CPUs without it."""

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.ensemble import HeatmapEnsemble, build_network
from scripts.errors import LandmarkConfigError
from scripts.network import LandmarkHeatmapNet
from scripts.precision import (ReducedPrecisionHeatmapNet, inference_dtype, native_bfloat16, needs_grad_scaler, training_dtype,
                               training_network, with_precision)

NAMES = ["A", "B"]


def small_net(seed=0) -> LandmarkHeatmapNet:
    torch.manual_seed(seed)
    return LandmarkHeatmapNet(1, len(NAMES), [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [8, 16, 32]).eval()


def test_precision_names_map_to_dtypes_and_auto_follows_the_processor():
    cpu = torch.device("cpu")
    assert inference_dtype("float32", cpu) == torch.float32
    assert inference_dtype("bfloat16", "cpu") == torch.bfloat16
    assert inference_dtype(" AUTO ", cpu) == (torch.bfloat16 if native_bfloat16(cpu) else torch.float32)
    with pytest.raises(LandmarkConfigError, match=r"^--precision: 'half' is not a precision: use one of auto, float32, bfloat16, float16$"):
        inference_dtype("half", cpu)


def test_training_precision_auto_follows_the_processor_and_float16_needs_cuda():
    cpu = torch.device("cpu")
    assert training_dtype("auto", cpu) == (torch.bfloat16 if native_bfloat16(cpu) else torch.float32)
    assert training_dtype("Float32", "cpu") == torch.float32 and training_dtype("bfloat16", cpu) == torch.bfloat16
    assert not needs_grad_scaler("auto", cpu) and not needs_grad_scaler("bfloat16", cpu)
    with pytest.raises(LandmarkConfigError, match=r"^--precision: float16 needs a CUDA device, not cpu: use bfloat16 or float32$"):
        training_dtype("float16", cpu)
    with pytest.raises(LandmarkConfigError, match="is not a precision"):
        needs_grad_scaler("fp8", cpu)


def _processor_has_bfloat16() -> bool:
    flags = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16") or flags.get("bf16"))


def test_auto_is_float32_where_onednn_is_capped_below_native_bfloat16(monkeypatch):
    """oneDNN calls bfloat16 'supported' from AVX512_CORE up, where it emulates it (a training step 1.9x slower than
    float32 here): a cap below AVX512_CORE_BF16 means float32, as does a processor without the bfloat16 flags."""
    cpu = torch.device("cpu")
    for isa in ("AVX512_CORE", "avx512_core_vnni", "AVX2"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert not native_bfloat16(cpu)
        assert training_dtype("auto", cpu) == torch.float32 and inference_dtype("auto", cpu) == torch.float32
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert native_bfloat16(cpu) == _processor_has_bfloat16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False})
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert not native_bfloat16(cpu), "AVX-512 without its bfloat16 instructions: emulated"


def test_auto_is_float32_on_an_avx2_capped_process():
    """A fresh process with oneDNN and ATen capped at AVX2 (how this project emulates an AVX2-only CPU): the caps take
    effect and ``auto`` picks float32 for training and inference. About 3 s (a torch import)."""
    code = ("import torch; from scripts.precision import inference_dtype, training_dtype; "
            "print(torch.backends.cpu.get_cpu_capability(), training_dtype('auto', 'cpu'), inference_dtype('auto', 'cpu'))")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=str(Path(__file__).resolve().parent.parent))
    assert result.returncode == 0, result.stderr[-2000:]
    capability, training, inference = result.stdout.split()
    assert capability in ("AVX2", "DEFAULT") and training == inference == "torch.float32"


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


def test_output_layer_stays_float32_inside_an_outer_autocast():
    """MONAI's amp (CUDA float16) wraps the whole forward in autocast; the wrapper still runs its head in float32."""
    net = small_net()
    wrapped = with_precision(net, torch.bfloat16)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = wrapped(x)
    with torch.inference_mode():
        outside = wrapped(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_out_of_place_activations_train_exactly_like_in_place_ones(dtype, one_thread):
    """training_network makes DynUNet's in-place LeakyReLUs out of place (a faster backward): the loss and every
    gradient of three Adam steps are the same bit for bit, in float32 and under bfloat16 autocast."""
    from scripts.losses import MaskedHeatmapMSELoss
    from scripts.precision import out_of_place_activations

    torch.manual_seed(3)
    image, label = torch.randn(2, 1, 16, 16, 16), torch.rand(2, len(NAMES), 16, 16, 16)
    runs = []
    for change in (False, True):
        net = small_net().train()
        assert sum(getattr(m, "inplace", False) for m in net.modules()) > 0
        if change:
            assert out_of_place_activations(net) is net and not any(getattr(m, "inplace", False) for m in net.modules())
        model, optimizer, losses = with_precision(net, dtype), torch.optim.Adam(net.parameters(), 1e-2), []
        for _ in range(3):
            optimizer.zero_grad()
            loss = MaskedHeatmapMSELoss(9.5)(model(image), label)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs.append((losses, [p.grad.clone() for p in net.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def _train(precision: str, iterations: int = 30) -> tuple[float, float, LandmarkHeatmapNet, torch.Tensor]:
    """A real SupervisedTrainer wired as train.json wires it (training_network, needs_grad_scaler) on one fixed
    24^3 batch with a Gaussian target per landmark; (first loss, last loss, trained network, its image)."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    from scripts.engines import prepare_landmark_batch
    from scripts.losses import MaskedHeatmapMSELoss
    from scripts.heatmaps import render_heatmaps

    net = small_net().train()
    torch.manual_seed(1)
    points = [[8.0, 12.0, 15.0], [16.5, 9.0, 7.5]]  # voxels
    label = torch.as_tensor(render_heatmaps(points, [24, 24, 24], 2.0))[None]
    image = label.sum(1, keepdim=True) + 0.1 * torch.randn(1, 1, 24, 24, 24)
    batch = {"image": image, "label": label, "label_mask": torch.ones(1, len(NAMES))}
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=iterations, train_data_loader=[batch] * iterations,
        network=training_network(net, precision, "cpu"), optimizer=torch.optim.Adam(net.parameters(), 3e-3),
        loss_function=MaskedHeatmapMSELoss(20.0), prepare_batch=prepare_landmark_batch, decollate=False,
        amp=needs_grad_scaler(precision, "cpu"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach())))
    trainer.run()
    assert trainer.state.output["pred"].dtype == torch.float32 and trainer.state.output["loss"].dtype == torch.float32
    return losses[0], losses[-1], net, image


def test_mixed_precision_training_learns_like_float32(one_thread):
    """bfloat16 autocast training (the default where native) lowers the loss as float32 does, the weights stay
    float32, and the trained networks agree on where the peaks are."""
    from scripts.heatmaps import extract_landmarks

    first32, last32, net32, image = _train("float32")
    first16, last16, net16, _ = _train("bfloat16")
    assert first16 == pytest.approx(first32, rel=0.02)
    assert last32 < 0.5 * first32 and last16 < 0.5 * first16
    assert last16 == pytest.approx(last32, rel=0.25)
    assert all(p.dtype == torch.float32 for p in net16.parameters())
    with torch.inference_mode():
        peaks32, _ = extract_landmarks(net32.eval()(image)[0])
        peaks16, _ = extract_landmarks(net16.eval()(image)[0])
    truth = np.array([[8.0, 12.0, 15.0], [16.5, 9.0, 7.5]])
    assert abs(peaks32 - truth).max() < 1.0 and abs(peaks16 - truth).max() < 1.0, (peaks32, peaks16)
