"""scsn/analysis/gates.py: RDAM gate statistics against gates set by hand; NMFF's sign and the pooling's kept share
against hand-built maps; the share of a map on the person."""
import os

import pytest
import torch
from torch import nn

from fastreid.layers.pooling import GeneralizedMeanPoolingP
from fastreid.modeling import build_model
from scsn.analysis.gates import GateStatistics, mask_share, negative_share
from scsn.engine import build_config
from scsn.visualization.saliency import kept_share, pooled_view

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_scsn(*opts):
    cfg = build_config(os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", 4, "MODEL.HEADS.NUM_STRIPES", 4, *opts])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def rows_of(stats):
    return {r["row"]: r for r in stats.summary()}


def test_gates_set_by_hand_and_nmff_identity_at_init():
    model = small_scsn()
    with torch.no_grad():
        for blocks in model.backbone.attention:
            for block in blocks:
                block.channel.mlp[2].weight.zero_()
                block.channel.mlp[2].bias.fill_(30.0)  # A_c = sigmoid(2 x 30) = 1
                block.spatial.conv.weight.zero_()
                block.spatial.conv.bias.fill_(1.0)  # w_n = 1 everywhere; gamma = 1, so a_n = 1
    stats = GateStatistics(model)
    with torch.no_grad():
        stats.forward(torch.rand(2, 3, 64, 32) * 255)
    rows = rows_of(stats)
    assert {1, 2, 3, 4, "nmff", "pooling of stage 1", "pooling of stage 3"} <= set(rows)
    a_n = torch.sigmoid(torch.tensor(1.0)).item()
    for stage in (1, 2, 3, 4):
        assert rows[stage]["channel"]["mean"] == pytest.approx(1.0) and rows[stage]["channel"]["std"] < 1e-4
        assert rows[stage]["spatial"]["mean"] == pytest.approx(a_n, abs=1e-6)
        assert rows[stage]["passed"]["mean"] == pytest.approx(a_n, abs=1e-6)
        assert rows[stage]["gamma_mean"] == pytest.approx(1.0)
    nmff = rows["nmff"]
    assert nmff["ratio"]["mean"] == 0.0  # kappa starts at zero: NMFF is the identity
    # F_4 is a ReLU output and F_f is 0 at init: nothing negative anywhere, the pooling keeps everything.
    assert nmff["negative F_4"]["mean"] == nmff["negative X^1"]["mean"] == nmff["negative F_f"]["mean"] == 0.0
    assert rows["pooling of stage 1"]["kept"]["mean"] == pytest.approx(1.0)

    with torch.no_grad():
        model.backbone.nmff.kappa.bias.fill_(-1e4)  # F_f = -1e4 everywhere: X^1 = F_4 + F_f is negative everywhere
    stats.forward(torch.rand(2, 3, 64, 32) * 255)
    nmff = rows_of(stats)["nmff"]
    assert nmff["ratio"]["mean"] > 0
    assert nmff["negative X^1"]["mean"] == pytest.approx(0.5, abs=1e-6)  # batches 1 (none) and 2 (all)
    assert nmff["negative F_f"]["mean"] == pytest.approx(0.5, abs=1e-6)
    assert set(nmff) >= {"negative term of stage 1", "negative term of stage 2", "negative term of stage 3"}
    stats.remove()
    assert not model.backbone.nmff._forward_hooks


def test_negative_share_and_kept_share_by_hand():
    x = torch.tensor([[[[1.0, -2.0], [2.0, -1.0]]]])  # (1, 1, 2, 2)
    assert negative_share(x).item() == 0.5
    gem = GeneralizedMeanPoolingP(norm=3)
    # GeM keeps max(x, 0)^3: (1 + 8) of the |x|^3 mass 1 + 8 + 8 + 1.
    assert kept_share(x, gem).item() == pytest.approx(9 / 18)
    assert kept_share(x, nn.AdaptiveAvgPool2d(1)).item() == pytest.approx(3 / 6)
    assert kept_share(x, nn.AdaptiveMaxPool2d(1)).item() == 1.0  # the channel's maximum is positive
    assert kept_share(-x.abs(), nn.AdaptiveMaxPool2d(1)).item() == 0.0


def test_pooled_view_is_cold_where_the_map_is_negative():
    """A person (positive, weak) on a background of large negative activations: the energy view draws the
    background hottest, the pooled view (what GeM averages) draws it cold."""
    x = torch.full((1, 4, 8, 4), -5.0)
    x[:, :, 2:6, 1:3] = 1.0  # the person
    gem = GeneralizedMeanPoolingP(norm=3)
    view = pooled_view(x, gem)[0]
    assert view[3, 1] > 1e3 * view[0, 0]
    assert view[0, 0] == pytest.approx(4 * gem.eps ** 3)
    assert torch.allclose(pooled_view(x, nn.AdaptiveAvgPool2d(1))[0, 3, 1], torch.tensor(4.0))
    energy = x.pow(2).sum(1)[0]
    assert energy[0, 0] > energy[3, 1]


def test_mask_share_weighs_cells_by_the_part_the_mask_covers():
    values = torch.tensor([[[1.0, 3.0]]])  # (1, 1, 2): two cells
    masks = torch.tensor([[[True, False, True, True]]])  # (1, 1, 4): half of cell 1, all of cell 2
    assert mask_share(values, masks).item() == pytest.approx((0.5 * 1 + 1.0 * 3) / 4)


def test_on_person_shares_with_masks_and_bn_add():
    model = small_scsn("MODEL.BACKBONE.NMFF.MERGE", "bn_add")
    stats = GateStatistics(model)
    masks = torch.zeros(2, 64, 32, dtype=torch.bool)
    masks[:, 16:48, 8:24] = True
    with torch.no_grad():
        stats.forward(torch.rand(2, 3, 64, 32) * 255, masks)
    rows = rows_of(stats)
    for name in ("F_4 (stage 4 before NMFF)", "X^1 (what the head reads)", "Y^1", "Y^3"):
        row = rows[f"on person: {name}"]
        assert 0 < row["energy"]["mean"] < 1 and 0 < row["pooled"]["mean"] < 1
    assert rows["nmff"]["negative F_f"]["mean"] == 0.0  # BN at zero scale and shift: F_f = 0 at init
