"""Instance-norm affine parameters added at weight 1 / bias 0 leave the network's function unchanged."""

import torch

from scripts.network import LandmarkHeatmapNet, norm_affine_missing

ARCHITECTURE = dict(in_channels=1, out_channels=3, kernel_size=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], filters=[4, 8, 16])
AFFINE = ("instance", {"affine": True})


def test_affine_at_identity_computes_the_same_heatmaps():
    torch.manual_seed(0)
    plain = LandmarkHeatmapNet(**ARCHITECTURE).eval()
    affine = LandmarkHeatmapNet(**ARCHITECTURE, norm_name=AFFINE).eval()
    state = plain.state_dict()
    added = norm_affine_missing(affine, state)
    # 3 levels: input block and 2 down blocks with 3 norms each (residual), 2 up blocks with 2: 13 norms, weight + bias,
    # each reachable under two state-dict names (DynUNet's skip_layers aliases): 52 keys
    assert len(added) == 52
    assert all(v.eq(1).all() for k, v in added.items() if k.endswith(".weight"))
    assert all(v.eq(0).all() for k, v in added.items() if k.endswith(".bias"))
    affine.load_state_dict({**state, **added}, strict=True)
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        assert torch.equal(plain(x), affine(x))


def test_nothing_missing_for_the_same_norm():
    plain = LandmarkHeatmapNet(**ARCHITECTURE)
    affine = LandmarkHeatmapNet(**ARCHITECTURE, norm_name=AFFINE)
    assert norm_affine_missing(plain, plain.state_dict()) == {}
    assert norm_affine_missing(affine, affine.state_dict()) == {}
