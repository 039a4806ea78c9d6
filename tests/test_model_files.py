"""Zoo-ready weights (scripts.model_files): a plain state dict of network_def plus a sidecar naming its landmarks and the
hash of what the weights mean; every loader checks the sidecar; no sidecar loads only where the channel count matches
(one warning); the wrapped files of 0.3.x still load (one note) and convert to the same tensors."""

import json
import logging

import pytest
import torch
from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged

from scripts.engines import weights_hash
from scripts.errors import LandmarkConfigError, LandmarkDataError
from scripts.model_files import check_member, convert_wrapped, load_member, main as model_files_main, read_checkpoint, sidecar_path, write_sidecar
from scripts.network import LandmarkHeatmapNet
from scripts.pretrained import transfer_weights

NAMES = ["AC", "PC", "ICS"]


def small_net(out_channels=3, seed=0, filters=(4, 8, 8)):
    torch.manual_seed(seed)
    return LandmarkHeatmapNet(1, out_channels, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], list(filters))


def test_plain_state_dict_with_sidecar_round_trips(tmp_path):
    path = tmp_path / "model.pt"
    net = small_net(seed=1)
    torch.save(net.state_dict(), path)
    write_sidecar(str(path), {"landmark_names": NAMES, "plans_hash": "abc"})
    assert sidecar_path(str(path)) == str(tmp_path / "model.json")
    state, identity = read_checkpoint(str(path))
    assert identity == {"landmark_names": NAMES, "plans_hash": "abc"} and state.keys() == net.state_dict().keys()
    loaded = load_member(small_net(seed=2), str(path), NAMES, "abc")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    write_sidecar(str(path), {"landmark_names": ["AC", "ICS", "PC"], "plans_hash": "abc"})
    with pytest.raises(LandmarkConfigError, match=r"model.pt: checkpoint landmarks do not match the config \(same names in another order\)"):
        check_member(str(path), NAMES)


def test_without_a_sidecar_only_a_matching_channel_count_loads_with_a_warning(tmp_path, caplog):
    path = tmp_path / "model.pt"
    torch.save(small_net().state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="scripts.model_files"):
        load_member(small_net(), str(path), NAMES)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no sidecar model.json: landmark names unchecked" in warnings[0]
    with pytest.raises(LandmarkConfigError, match=r"no sidecar model.json names its landmarks, and its 3 output channels are not the config's 2"):
        load_member(small_net(out_channels=2), str(path), ["AC", "PC"])
    # fine-tuning from it: the channels are taken as the config's, in order
    report = transfer_weights(small_net(seed=5), str(path), NAMES)
    assert report["kept"] == NAMES and not report["added"] and not report["dropped"]


def test_wrapped_checkpoints_load_with_a_note_and_convert_to_the_same_tensors(tmp_path, caplog):
    path = tmp_path / "model.pt"
    net = small_net(seed=3)
    torch.save({"model": net.state_dict(), "landmark_info": {"landmark_names": NAMES, "plans_hash": "0ab0760c4f536d12"}}, path)
    with caplog.at_level(logging.INFO, logger="scripts.model_files"):
        load_member(small_net(), str(path), NAMES, plans_hash="46b25fc0e2a6d625")  # the old hash is of plans.json: not compared
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "note: a wrapped checkpoint" in messages[0] and "trained with other plans" not in messages[0]
    assert model_files_main([str(path)]) == 0
    converted = torch.load(path, map_location="cpu", weights_only=True)
    assert converted.keys() == net.state_dict().keys() and all(torch.equal(converted[k], v) for k, v in net.state_dict().items())
    assert json.loads((tmp_path / "model.json").read_text()) == {"landmark_names": NAMES, "plans_hash": ""}
    assert convert_wrapped(str(path)) is False  # already a state dict
    (tmp_path / "foreign.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(LandmarkDataError, match="foreign.pt: not a readable model checkpoint"):
        read_checkpoint(str(tmp_path / "foreign.pt"))


def test_weights_hash_follows_what_the_weights_mean():
    mr = [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    base = weights_hash(small_net(), [1.0, 1.0, 1.0], [4.0, 4.0, 4.0], mr)
    assert base == weights_hash(small_net(seed=9), [1.0, 1.0, 1.0], 4.0, mr), "weights themselves and a scalar sigma: same meaning"
    assert len(base) == 16
    changed = {
        "spacing": weights_hash(small_net(), [1.5, 1.5, 1.5], [4.0] * 3, mr),
        "sigma": weights_hash(small_net(), [1.0] * 3, [3.0] * 3, mr),
        "filters": weights_hash(small_net(filters=(4, 8, 16)), [1.0] * 3, [4.0] * 3, mr),
        "channels": weights_hash(small_net(out_channels=4), [1.0] * 3, [4.0] * 3, mr),
        "normalisation": weights_hash(small_net(), [1.0] * 3, [4.0] * 3,
                                      [ScaleIntensityRanged(keys="image", a_min=-100, a_max=300, b_min=-1.2, b_max=2.1, clip=True)]),
        "CT window": weights_hash(small_net(), [1.0] * 3, [4.0] * 3,
                                  [ScaleIntensityRanged(keys="image", a_min=-100, a_max=400, b_min=-1.2, b_max=2.1, clip=True)]),
    }
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def test_shipped_sidecars_match_the_shipped_configs_and_overrides_change_the_hash():
    """models/model.json and coarse_model.json name the configs' landmarks and carry the hash the configs compute, so the
    shipped model loads without a warning; --spacing or --sigma on the command line reaches the hash."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    project = Path(__file__).resolve().parent.parent

    def parsed(files, **overrides):
        parser = ConfigParser()
        parser.read_config([str(project / "configs" / f) for f in files])
        parser.update({"bundle_root": str(project), **overrides})
        return parser

    fine = json.loads((project / "models" / "model.json").read_text())
    coarse = json.loads((project / "models" / "coarse_model.json").read_text())
    inference = parsed(["inference.json"])
    assert fine["landmark_names"] == coarse["landmark_names"] == inference.get_parsed_content("landmark_names")
    assert inference.get_parsed_content("weights_hash") == fine["plans_hash"]
    assert parsed(["train.json"]).get_parsed_content("weights_hash") == fine["plans_hash"]
    assert parsed(["train.json", "train_coarse.json"]).get_parsed_content("weights_hash") == coarse["plans_hash"] != fine["plans_hash"]
    assert parsed(["inference.json"], spacing=[1.5, 1.5, 1.5]).get_parsed_content("weights_hash") != fine["plans_hash"]
    assert parsed(["inference.json"], sigma=[3.0, 3.0, 3.0]).get_parsed_content("weights_hash") != fine["plans_hash"]
    for weights in ("model.pt", "coarse_model.pt"):
        state = torch.load(project / "models" / weights, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values()), "a plain state dict, as the model zoo ships"
