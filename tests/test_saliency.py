"""Saliency pictures: hooks record eq. 2's A_n, the picture is the right grid, and tools/visualize_saliency.py writes
one PNG per image."""
import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import CONFIG, ROOT, SMALL, make_checkpoint, run_tool, tiny_images
from scsn.inference.extractor import FeatureExtractor
from scsn.visualization.saliency import compute_saliency, default_blocks, record_attention, suppressed_after
from scsn.visualization.pictures import CAPTION, GAP, GREY, LEGEND, RED, heat_overlay, saliency_picture, stage_heat


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def images(checkpoint):
    return FeatureExtractor(CONFIG, checkpoint[0], opts=SMALL).preprocess(tiny_images("query")[:3])


def test_hooks_record_the_attention_maps_of_eq_2(checkpoint, images):
    model = checkpoint[1]
    assert default_blocks(model) == ["s1b1", "s2b1", "s3b1", "s4b1"]  # R18: two blocks per stage
    # By hand for block s2b0: RSAM's A_0 = sigmoid(a_0), a_0 = gamma * w_0 (a_{-1} = 0), w_0 = conv([mean; max]).
    spatial = model.backbone.attention[1][0].spatial
    inputs = []
    handle = spatial.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    with torch.no_grad(), record_attention(model, ["s2b0", "s4b1"]) as maps:
        model(images)
    handle.remove()
    x = inputs[0]
    w = spatial.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))
    assert torch.allclose(maps["s2b0"], torch.sigmoid(spatial.gamma * w)[:, 0], atol=1e-5)
    # 64x32 input, stages 3 and 4 at stride 1 (the paper's, configs/Synthetic/scsn_r18.yml): an 8x4 stage-4 map.
    assert maps["s4b1"].shape == (3, 8, 4) and bool(((maps["s4b1"] > 0) & (maps["s4b1"] < 1)).all())
    assert not spatial._forward_hooks  # removed again
    with pytest.raises(ValueError, match=r"No spatial attention in block\(s\) \['s9b0'\]"):
        with record_attention(model, ["s9b0"]):
            pass


def test_picture_is_one_row_of_stage_and_attention_tiles(checkpoint, images):
    saliency = compute_saliency(checkpoint[1], images, ["s3b1", "s4b1"])
    assert [s.weights.shape for s in saliency.stages] == [(3, 4)] * 3
    picture, grid = saliency_picture(images, saliency, 0)
    # input, backbone X1, three stages, two attention maps; tiles of the 64x32 input drawn 4x (256 / 64); two legend
    # lines (maps, attention).
    assert (grid.rows, grid.cols, grid.height, grid.width) == (1, 7, 256, 128)
    assert picture.size == (7 * 128 + 6 * GAP, CAPTION + 256 + 2 * LEGEND)
    pixels = np.asarray(picture)
    # Stage 3's tile: its two suppressed stripes hatched grey; stage 1's: the stripe it suppresses framed red.
    stage1_x, stage3_x = grid.origin(0, 2)[0], grid.origin(0, 4)[0]
    for k in range(4):
        top = CAPTION + 64 * k
        stripe = pixels[top:top + 64, stage3_x:stage3_x + 128]
        hatched = bool((stripe == GREY).all(axis=2).any())
        assert hatched == (not bool(saliency.stages[2].kept[0, k]))
        framed = tuple(pixels[top + 1, stage1_x + 64]) == RED
        assert framed == bool(suppressed_after(saliency.stages, 0)[0, k])


def test_tool_writes_one_png_per_image(tmp_path, checkpoint, capsys):
    argv = ["--config-file", CONFIG, "--dataset", "SyntheticReIDTiny", "--split", "query", "--num-images", "2",
            "--blocks", "s4b1", "--output", str(tmp_path / "out"), *SMALL, "MODEL.WEIGHTS", checkpoint[0]]
    outputs = run_tool("visualize_saliency", *argv)
    assert len(outputs) == 2 and "2 saliency pictures in" in capsys.readouterr().out
    for out in outputs:
        # input, X1, 3 stages, 1 attention map, 2 legend lines
        assert Image.open(out).size == (6 * 128 + 5 * GAP, CAPTION + 256 + 2 * LEGEND)
    with pytest.raises(SystemExit, match="already exist"):
        run_tool("visualize_saliency", *argv)
    with pytest.raises(SystemExit, match="need an SCSN model.*builds Baseline"):
        run_tool("visualize_saliency", "--config-file", f"{ROOT}/configs/Synthetic/bagtricks_r18.yml", "--input",
                 tiny_images("query")[0], "--output", str(tmp_path / "bot"), "MODEL.DEVICE", "cpu",
                 "MODEL.WEIGHTS", bot_checkpoint(tmp_path))


def bot_checkpoint(directory):
    from fastreid.modeling import build_model
    from scsn.engine import build_config

    cfg = build_config(f"{ROOT}/configs/Synthetic/bagtricks_r18.yml", ["MODEL.DEVICE", "cpu"], inference=True)
    path = str(directory / "bot.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def test_a_stage_tile_is_cold_where_the_map_is_negative():
    """A map with a weak positive person on a strongly negative background (what NMFF's ``add`` can produce): the
    pooled view draws the background cold and the person hot; the energy view draws it the other way round."""
    from fastreid.layers.pooling import GeneralizedMeanPoolingP

    x = torch.full((1, 8, 16, 8), -4.0)
    x[:, :, 4:12, 2:6] = 0.5  # the person
    image = np.zeros((128, 64, 3), np.uint8)
    pooled = heat_overlay(image, stage_heat(x, GeneralizedMeanPoolingP(norm=3), "pooled")[0], alpha=1.0)
    energy = heat_overlay(image, stage_heat(x, GeneralizedMeanPoolingP(norm=3), "energy")[0], alpha=1.0)
    background, person = (4, 4), (64, 32)  # pixel (row, col) of each, far from their border

    def warm(pixel):  # jet: red high, blue low
        return int(pixel[0]) - int(pixel[2])

    assert warm(pooled[background]) < -100 < 100 < warm(pooled[person])
    assert warm(energy[background]) > 100 > -100 > warm(energy[person])


def test_attention_tiles_use_a_fixed_scale():
    image = np.zeros((8, 8, 3), np.uint8)
    half = heat_overlay(image, torch.full((2, 2), 0.5), alpha=1.0, scale=(0.0, 1.0))
    ones = heat_overlay(image, torch.full((2, 2), 0.99), alpha=1.0, scale=(0.0, 1.0))
    assert not np.array_equal(half, ones)  # a uniform map keeps its level instead of collapsing to the min colour
