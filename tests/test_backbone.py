"""SCSN backbone: fast-reid's ResNet with RDAM per block (§3.1) and NMFF on stage 4 (§3.2), built from the config."""
import pytest
import torch
import torchvision

from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.backbones.resnet import build_resnet_backbone
from scsn.modeling.attention import ATTENTION_MODES
from scsn.modeling.backbone import SCSNResNet, build_scsn_resnet_backbone

IMAGES = (2, 3, 64, 32)


@pytest.fixture
def r18(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_scsn_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.LAST_STRIDE = 1
    cfg.MODEL.BACKBONE.NMFF.STAGES = [1, 2, 3]
    cfg.MODEL.BACKBONE.NMFF.VALUE_CHANNELS = 16
    cfg.MODEL.BACKBONE.NMFF.KEY_CHANNELS = 8
    return cfg


def build_pair(cfg, seed=0):
    """fast-reid's plain ResNet and the SCSN backbone with the same ResNet weights (same seed, same init order)."""
    torch.manual_seed(seed)
    plain = build_resnet_backbone(cfg)
    torch.manual_seed(seed)
    scsn = build_scsn_resnet_backbone(cfg)
    return plain.eval(), scsn.eval()


@pytest.mark.parametrize("depth,channels", [("18x", [64, 128, 256, 512]), ("50x", [256, 512, 1024, 2048])])
@pytest.mark.parametrize("stage3_stride", [1, 2])
def test_output_shapes(r18, depth, channels, stage3_stride):
    r18.MODEL.BACKBONE.DEPTH = depth
    r18.MODEL.BACKBONE.STAGE3_STRIDE = stage3_stride
    model = build_backbone(r18)  # through fast-reid's registry
    assert isinstance(model, SCSNResNet)
    assert model.stage_channels == channels
    x = torch.randn(*IMAGES)
    features = model.stage_features(x)
    h3 = 8 if stage3_stride == 1 else 4
    assert [tuple(f.shape) for f in features] == [
        (2, channels[0], 16, 8), (2, channels[1], 8, 4), (2, channels[2], h3, h3 // 2), (2, channels[3], h3, h3 // 2)]
    assert model(x).shape == (2, channels[3], h3, h3 // 2)


@pytest.mark.parametrize("depth,ibn_se,nl", [("18x", False, False), ("50x", True, False), ("50x", False, True)])
def test_without_attention_equals_fastreid_resnet(r18, depth, ibn_se, nl):
    """Mode "none" and NMFF at init reproduce fast-reid's forward: the per-block forward is the block's own, and
    fast-reid's non-local blocks (SBS) run after the same blocks."""
    r18.MODEL.BACKBONE.DEPTH = depth
    r18.MODEL.BACKBONE.WITH_IBN = ibn_se
    r18.MODEL.BACKBONE.WITH_SE = ibn_se
    r18.MODEL.BACKBONE.WITH_NL = nl
    r18.MODEL.BACKBONE.RDAM.MODE = "none"
    plain, scsn = build_pair(r18)
    x = torch.randn(*IMAGES)
    if nl:
        assert len(scsn.NL_2) == 2 and len(scsn.NL_3) == 3  # fast-reid's R50 layout
        for model in (plain, scsn):  # non-local blocks start as the identity (zero W): perturb both alike
            torch.manual_seed(1)
            for block in [*model.NL_2, *model.NL_3]:
                torch.nn.init.normal_(block.W[1].weight)
    with torch.no_grad():
        assert torch.allclose(scsn(x), plain(x), atol=1e-5)


def test_parameter_names_of_the_resnet_are_kept(r18):
    plain, scsn = build_pair(r18)
    plain_state, scsn_state = plain.state_dict(), scsn.state_dict()
    for name, value in plain_state.items():
        assert torch.equal(scsn_state[name], value), name
    extra = {name.split(".")[0] for name in scsn_state if name not in plain_state}
    assert extra == {"attention", "nmff"}


def test_attention_sits_on_the_residual_branch_before_the_addition(r18):
    r18.MODEL.BACKBONE.RDAM.MODE = "CAM"
    _, scsn = build_pair(r18)
    block, attention = scsn.layer2[0], scsn.attention[1][0]
    with torch.no_grad():
        attention.channel.mlp[2].weight.zero_()
        attention.channel.mlp[2].bias.fill_(-1e4)  # A_c = 0: the block keeps only its (downsampled) identity
        x = torch.randn(2, 64, 16, 8)
        out, _ = scsn.block_forward(block, attention, x, None)
        assert torch.allclose(out, torch.relu(block.downsample(x)), atol=1e-6)


@pytest.mark.parametrize("mode", list(ATTENTION_MODES))
def test_every_table5_mode_builds_and_runs(r18, mode):
    r18.MODEL.BACKBONE.RDAM.MODE = mode
    r18.MODEL.BACKBONE.NMFF.STAGES = []
    torch.manual_seed(0)
    model = build_scsn_resnet_backbone(r18)
    assert model.nmff is None
    blocks = [att for stage in model.attention for att in stage]
    assert len(blocks) == 8 and all(att.mode == mode for att in blocks)
    expected = ATTENTION_MODES[mode]
    assert all((att.channel is not None) == expected.channel for att in blocks)
    assert all((att.spatial is not None) == expected.spatial for att in blocks)
    assert model(torch.randn(*IMAGES)).shape == (2, 512, 4, 2)  # STAGE3_STRIDE 2, LAST_STRIDE 1


def test_rsam_carry_restarts_at_each_stage(r18):
    r18.MODEL.BACKBONE.DEPTH = "34x"  # 3, 4, 6, 3 blocks: carries through several blocks per stage
    torch.manual_seed(0)
    model = build_scsn_resnet_backbone(r18)
    seen = []

    def record(module, args, output):
        seen.append((module, args[1], output[1]))

    handles = [att.spatial.register_forward_hook(record) for stage in model.attention for att in stage]
    model(torch.randn(*IMAGES))
    for h in handles:
        h.remove()
    index = 0
    for stage in model.attention:
        for j, att in enumerate(stage):
            module, carry_in, carry_out = seen[index]
            assert module is att.spatial
            if j == 0:
                assert carry_in is None  # a_0 = 0
            else:
                assert carry_in is seen[index - 1][2]  # a_{n-1} of the previous block in the same stage
            assert carry_out is not None
            index += 1
    assert index == 16


def test_gradients_reach_every_attention_parameter_and_kappa(r18):
    torch.manual_seed(0)
    model = build_scsn_resnet_backbone(r18).train()
    out = model(torch.randn(*IMAGES))
    (out * torch.randn_like(out)).sum().backward()
    names = [n for n, _ in model.named_parameters() if n.startswith("attention.")]
    assert any(n.endswith("spatial.gamma") for n in names)
    for name, p in model.named_parameters():
        if name.startswith("attention.") or name.startswith("nmff.kappa."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_pretrained_file_loads_into_the_resnet_only(r18, tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)

    torch.manual_seed(0)
    fresh = build_scsn_resnet_backbone(r18)
    r18.MODEL.BACKBONE.PRETRAIN = True
    r18.MODEL.BACKBONE.PRETRAIN_PATH = str(path)
    torch.manual_seed(0)
    loaded = build_scsn_resnet_backbone(r18)

    loaded_state, fresh_state = loaded.state_dict(), fresh.state_dict()
    resnet_keys = [k for k in loaded_state if not k.startswith(("attention.", "nmff."))]
    assert resnet_keys and set(resnet_keys) <= set(reference)  # every conv / bn tensor comes from the file
    for k in resnet_keys:
        assert torch.equal(loaded_state[k], reference[k]), k
    assert not torch.equal(fresh_state["conv1.weight"], reference["conv1.weight"])
    for k in loaded_state:  # attention and NMFF keep their own init
        if k.startswith(("attention.", "nmff.")):
            assert torch.equal(loaded_state[k], fresh_state[k]), k
    assert all(att.spatial.gamma.item() == 1.0 for stage in loaded.attention for att in stage)
    assert loaded.nmff.kappa.weight.abs().sum() == 0


def test_stage3_stride_keeps_the_weights(r18):
    torch.manual_seed(0)
    strided = build_scsn_resnet_backbone(r18)
    r18.MODEL.BACKBONE.STAGE3_STRIDE = 1
    torch.manual_seed(0)
    unstrided = build_scsn_resnet_backbone(r18)
    for (name, a), b in zip(strided.state_dict().items(), unstrided.state_dict().values()):
        assert torch.equal(a, b), name
    assert unstrided.layer3[0].conv1.stride == (1, 1) and unstrided.layer3[0].downsample[0].stride == (1, 1)
    assert strided.layer3[0].conv1.stride == (2, 2) and strided.layer2[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("key,value", [
    ("MODEL.BACKBONE.RDAM.MODE", "CBAM"),
    ("MODEL.BACKBONE.NMFF.STAGES", [4]),
    ("MODEL.BACKBONE.NMFF.POOL_BINS", [0]),
    ("MODEL.BACKBONE.STAGE3_STRIDE", 3),
    ("MODEL.BACKBONE.DEPTH", "152x"),
])
def test_bad_config_names_the_key(r18, key, value):
    r18.merge_from_list([key, value])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_scsn_resnet_backbone(r18)


def test_inference_without_graph_matches_with_graph(cfg):
    """Under no_grad the attention scales in place; the map must be the one autograd mode computes."""
    cfg.MODEL.BACKBONE.DEPTH = "50x"
    cfg.MODEL.BACKBONE.NMFF.STAGES = [1, 2, 3]
    cfg.MODEL.BACKBONE.NMFF.VALUE_CHANNELS = 32
    cfg.MODEL.BACKBONE.NMFF.KEY_CHANNELS = 16
    backbone = build_scsn_resnet_backbone(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(backbone.nmff.kappa.weight, std=0.01)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        fast = backbone(x)
    assert torch.allclose(fast, backbone(x), atol=1e-5)
