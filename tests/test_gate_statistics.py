"""tools/gate_statistics.py: RDAM gate and NMFF statistics against gates set by hand."""
import os
import sys

import pytest
import torch

import scsn
from fastreid.config import get_cfg
from fastreid.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gate_statistics  # noqa: E402


def small_scsn():
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", 4, "MODEL.HEADS.NUM_STRIPES", 4])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_gates_set_by_hand_and_nmff_identity_at_init():
    model = small_scsn()
    with torch.no_grad():
        for blocks in model.backbone.attention:
            for block in blocks:
                block.channel.mlp[2].weight.zero_()
                block.channel.mlp[2].bias.fill_(30.0)  # A_c = sigmoid(2 x 30) = 1
                block.spatial.conv.weight.zero_()
                block.spatial.conv.bias.fill_(1.0)  # w_n = 1 everywhere; gamma = 1, so a_n = 1
    stats = gate_statistics.GateStatistics(model)
    with torch.no_grad():
        stats.forward(torch.rand(2, 3, 64, 32) * 255)
    rows = {r["stage"]: r for r in stats.summary()}
    assert set(rows) == {1, 2, 3, 4, "nmff"}
    a_n = torch.sigmoid(torch.tensor(1.0)).item()
    for stage in (1, 2, 3, 4):
        assert rows[stage]["channel_mean"] == pytest.approx(1.0) and rows[stage]["channel_std"] < 1e-4
        assert rows[stage]["spatial_mean"] == pytest.approx(a_n, abs=1e-6)
        assert rows[stage]["passed_mean"] == pytest.approx(a_n, abs=1e-6)
        assert rows[stage]["gamma_mean"] == pytest.approx(1.0)
    assert rows["nmff"]["ratio_mean"] == 0.0  # kappa starts at zero: NMFF is the identity

    with torch.no_grad():
        model.backbone.nmff.kappa.weight.normal_()
    stats.forward(torch.rand(2, 3, 64, 32) * 255)
    assert stats.summary()[-1]["ratio_mean"] > 0
    stats.remove()
    assert not model.backbone.nmff._forward_hooks
