"""Fold ensembles and mirror TTA: averaging, left/right channel swaps, model-file discovery, pretrained weights."""

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from scripts.ensemble import HeatmapEnsemble, build_network
from scripts.errors import LandmarkConfigError, LandmarkDataError
from scripts.cli_args import parse_switch
from scripts.heatmaps import extract_landmarks
from scripts.model_files import member_files, write_sidecar
from scripts.network import LandmarkHeatmapNet
from scripts.pretrained import transfer_weights

NAMES = ["Nasion", "LEye", "REye"]
PAIRS = [[1, 2]]  # (left, right) channel indices


class SideDetector(torch.nn.Module):
    """An anatomy-aware toy network: channel 1 ("LEye") marks bright voxels in the low-x half of its input,
    channel 2 ("REye") those in the high-x half, channel 0 everything bright. Images are RAS, so low x is left."""

    def forward(self, x):
        mid = x.shape[2] / 2
        low = (torch.arange(x.shape[2]) < mid).to(x).view(1, 1, -1, 1, 1)
        return torch.cat([x, x * low, x * (1 - low)], dim=1)


def two_eyes(left_value=0.6, right_value=1.0, shape=(32, 24, 20)):
    """A volume whose two sides differ: a dim blob at x=8 (left), a bright one at x=25 (right)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float32)
    image = np.zeros(shape, np.float32)
    for centre, value in (((8.0, 12.0, 10.0), left_value), ((25.0, 12.0, 10.0), right_value)):
        image += value * np.exp(-((grid - np.asarray(centre)) ** 2).sum(-1) / (2 * 2.0**2))
    return torch.from_numpy(image)[None, None]


def test_mirror_tta_keeps_left_landmarks_left_without_the_left_right_correction():
    image = two_eyes()
    tta = HeatmapEnsemble([SideDetector()], mirror_axes=[0], left_right_pairs=PAIRS)
    voxels, _ = extract_landmarks(tta(image)[0])  # extraction alone: no left/right correction applied
    np.testing.assert_allclose(voxels[1], [8, 12, 10], atol=0.05)
    np.testing.assert_allclose(voxels[2], [25, 12, 10], atol=0.05)
    # without swapping the channels back, the mirrored pass pulls "LEye" onto the brighter right blob
    unswapped = HeatmapEnsemble([SideDetector()], mirror_axes=[0], left_right_pairs=[])
    wrong, _ = extract_landmarks(unswapped(image)[0])
    assert abs(wrong[1][0] - 25) < 0.5, "the test volume must expose a missing swap"


def test_mirror_tta_through_a_sliding_window_equals_the_average_of_both_passes():
    torch.manual_seed(0)
    net = LandmarkHeatmapNet(1, 3, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [4, 8, 8]).eval()
    image = torch.randn(1, 1, 20, 16, 16)
    inferer = SlidingWindowInferer([16, 16, 16], overlap=0.25, mode="gaussian")
    with torch.no_grad():
        tta = inferer(image, HeatmapEnsemble([net], [0], PAIRS))
        plain = inferer(image, net)
        mirrored = torch.flip(inferer(torch.flip(image, [2]), net), [2])[:, [0, 2, 1]]
    torch.testing.assert_close(tta, (plain + mirrored) / 2, atol=1e-6, rtol=1e-5)


def test_ensemble_of_two_members_averages_their_heatmaps():
    torch.manual_seed(0)
    nets = [LandmarkHeatmapNet(1, 3, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [4, 8, 8]).eval() for _ in range(2)]
    image = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        mean = HeatmapEnsemble(nets)(image)
        torch.testing.assert_close(mean, (nets[0](image) + nets[1](image)) / 2)
    assert HeatmapEnsemble(nets, [0, 1]).n_passes == 2 * 4  # identity + {0}, {1}, {0, 1} per member


def save_model(path, net, names):
    """Weights as training writes them: the plain state dict and its sidecar (scripts.model_files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    write_sidecar(str(path), {"landmark_names": list(names), "plans_hash": ""})


def small_net(out_channels=3, seed=0):
    torch.manual_seed(seed)
    return LandmarkHeatmapNet(1, out_channels, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [4, 8, 8])


def test_member_files_prefers_fold_models_and_falls_back_to_the_single_model(tmp_path):
    assert member_files(str(tmp_path), "model.pt") == [str(tmp_path / "model.pt")]
    for fold in (10, 2, 0):
        save_model(tmp_path / f"fold_{fold}" / "model.pt", small_net(), NAMES)
    (tmp_path / "fold_x").mkdir()
    (tmp_path / "fold_1").mkdir()  # a fold still training: no model yet
    assert member_files(str(tmp_path), "model.pt") == [str(tmp_path / f"fold_{f}" / "model.pt") for f in (0, 2, 10)]
    assert member_files(str(tmp_path), "model.pt", ensemble=False) == [str(tmp_path / "model.pt")]


def test_build_network_loads_each_fold_and_refuses_other_landmarks(tmp_path):
    for fold in (0, 1):
        save_model(tmp_path / f"fold_{fold}" / "model.pt", small_net(seed=fold), NAMES)
    files = member_files(str(tmp_path), "model.pt")
    ensemble = build_network(small_net(), files, NAMES, PAIRS)
    assert isinstance(ensemble, HeatmapEnsemble) and len(ensemble.members) == 2
    single = build_network(small_net(), files[:1], NAMES)
    assert isinstance(single, LandmarkHeatmapNet)
    save_model(tmp_path / "other.pt", small_net(), ["Nasion", "REye", "LEye"])
    with pytest.raises(LandmarkConfigError, match=r"other.pt: checkpoint landmarks do not match.*same names in another order"):
        build_network(small_net(), [str(tmp_path / "other.pt")], NAMES)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LandmarkDataError, match=r"broken.pt: not a readable model checkpoint"):
        build_network(small_net(), [str(tmp_path / "broken.pt")], NAMES)


def test_pretrained_weights_are_matched_by_landmark_name(tmp_path):
    source = small_net(out_channels=3, seed=1)
    save_model(tmp_path / "source.pt", source, NAMES)
    target_names = ["REye", "Chin", "Nasion"]  # REye and Nasion kept (reordered), Chin new, LEye dropped
    target = small_net(out_channels=3, seed=2)
    fresh_bias = target.net.output_block.conv.conv.bias.detach().clone()
    report = transfer_weights(target, str(tmp_path / "source.pt"), target_names)
    assert report["kept"] == ["REye", "Nasion"] and report["added"] == ["Chin"] and report["dropped"] == ["LEye"]
    src_w, dst_w = source.net.output_block.conv.conv.weight, target.net.output_block.conv.conv.weight
    torch.testing.assert_close(dst_w[0], src_w[2])
    torch.testing.assert_close(dst_w[2], src_w[0])
    assert target.net.output_block.conv.conv.bias[1] == fresh_bias[1]
    torch.testing.assert_close(target.net.input_block.conv1.conv.weight, source.net.input_block.conv1.conv.weight)
    wider = LandmarkHeatmapNet(1, 3, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [8, 16, 16])
    with pytest.raises(Exception, match=r"source.pt: network differs from the planned one"):
        transfer_weights(wider, str(tmp_path / "source.pt"), NAMES)


@pytest.mark.parametrize("text, expected", [(True, True), ("true", True), ("1", True), (False, False), ("false", False), ("no", False)])
def test_command_line_switches_read_true_and_false(text, expected):
    assert parse_switch(text, "tta") is expected


def test_a_misspelt_switch_is_an_error():
    with pytest.raises(LandmarkConfigError, match=r"--tta 'ture': use true or false"):
        parse_switch("ture", "tta")
