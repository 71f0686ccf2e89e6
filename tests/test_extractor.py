"""FeatureExtractor and tools/extract_features.py: the evaluator's descriptors for paths, PIL images and arrays, in
batches; clear errors for missing weights, unreadable images, empty folders and a config that does not fit."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from inference_helpers import CONFIG, SMALL, make_checkpoint, run_tool, small_cfg, tiny_images
from scsn import FeatureExtractor
from scsn.errors import CheckpointError, UnreadableImageError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_paths_pil_and_arrays_give_the_models_normalised_descriptors(checkpoint):
    path, model = checkpoint
    extractor = FeatureExtractor(CONFIG, path, opts=SMALL, batch_size=2, progress=False)
    paths = tiny_images("query")[:5]
    features = extractor(paths)
    assert features.shape == (5, 3 * 512) and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)

    # By hand: fast-reid's test transform (bicubic resize to SIZE_TEST, [0, 255]), the eval forward, L2 norm.
    image = Image.open(paths[0]).convert("RGB").resize((32, 64), Image.BICUBIC)
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = F.normalize(model(batch), dim=1)[0].numpy()
    assert np.allclose(features[0], expected, atol=1e-5)

    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    assert np.allclose(extractor(pil), features, atol=1e-5)
    assert np.allclose(extractor(arrays), features, atol=1e-5)
    assert np.allclose(extractor(paths[3]), features[3:4], atol=1e-5)  # one image; batches of 2 and 1 alike


def test_flip_test_averages_the_mirrored_image(checkpoint):
    path, model = checkpoint
    paths = tiny_images("query")[:2]
    plain = FeatureExtractor(CONFIG, path, opts=SMALL, progress=False)
    flipped = FeatureExtractor(CONFIG, path, opts=SMALL + ["TEST.FLIP.ENABLED", "True"], progress=False)
    batch = plain.preprocess(paths)
    with torch.no_grad():
        expected = F.normalize(model(batch) + model(batch.flip(dims=[3])), dim=1).numpy()
    assert np.allclose(flipped(paths), expected, atol=1e-5)


def test_bad_input_stops_with_a_clear_message(tmp_path, checkpoint):
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS 'nope.pth' is not a file"):
        FeatureExtractor(CONFIG, "nope.pth", opts=SMALL)
    with pytest.raises(CheckpointError, match="No weights given"):
        FeatureExtractor(CONFIG, opts=SMALL)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth' is truncated or corrupt"):
        FeatureExtractor(CONFIG, str(tmp_path / "junk.pth"), opts=SMALL)
    # A config that builds another model: 4 cascade stages where the checkpoint has 3 (the fourth stage's SFE, GeM
    # exponent and BN neck: 10 tensors; its classifier is empty in a config built for inference).
    with pytest.raises(CheckpointError, match=r"(?s)does not match the model built from the config:\n  10 tensors of the "
                                           r"model are not in the checkpoint:.*heads\.sfe\.3.*config\.yaml"):
        FeatureExtractor(CONFIG, path, opts=SMALL + ["MODEL.HEADS.NUM_STAGES", "4"])
    with pytest.raises(CheckpointError, match=r"another shape:\n    heads\.stage_heads\.0\.bottleneck\.0\.weight"):
        FeatureExtractor(CONFIG, path, opts=SMALL + ["MODEL.HEADS.EMBEDDING_DIM", "128"])

    extractor = FeatureExtractor(CONFIG, path, opts=SMALL, progress=False)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UnreadableImageError, match="Cannot read image .*broken.jpg"):
        extractor([str(tmp_path / "broken.jpg")])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        extractor([np.zeros((4, 4), np.uint8)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No images .* under .*empty"):
        extractor.embed_folder(str(tmp_path / "empty"))


def test_extract_features_tool_embeds_a_folder(tmp_path, checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in tiny_images("query")[:3]:
        shutil.copy(p, folder)
    out = tmp_path / "feats.npz"
    argv = ["--config-file", CONFIG, "--input", str(folder), "--output", str(out), *SMALL,
            "MODEL.WEIGHTS", checkpoint[0]]
    run_tool("extract_features", *argv)
    saved = np.load(out)
    assert saved["features"].shape == (3, 1536) and len(saved["paths"]) == 3
    expected = FeatureExtractor(small_cfg("MODEL.WEIGHTS", checkpoint[0]), model=checkpoint[1])(list(saved["paths"]))
    assert np.allclose(saved["features"], expected, atol=1e-5)
    assert "3 descriptors of 1536 dimensions" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="already exist.*--overwrite"):
        run_tool("extract_features", *argv)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="No images"):
        run_tool("extract_features", "--config-file", CONFIG, "--input", str(tmp_path / "empty"), "--output",
                 str(tmp_path / "x.npz"), *SMALL, "MODEL.WEIGHTS", checkpoint[0])
    with pytest.raises(SystemExit, match="is not a file"):
        run_tool("extract_features", "--config-file", CONFIG, "--input", str(folder), "--output",
                 str(tmp_path / "y.npz"), *SMALL, "MODEL.WEIGHTS", str(tmp_path / "missing.pth"))
