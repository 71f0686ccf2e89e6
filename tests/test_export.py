"""ONNX export: onnxruntime gives PyTorch's descriptors on images other than the export input, at batch 1 and N, with
per-image stripe choices and tied stripe weights (the case that broke the second suppression)."""
import io

import numpy as np
import pytest
import torch

from fastreid.modeling import build_model
from inference_helpers import CONFIG, SMALL, make_checkpoint, run_tool, small_cfg, tiny_images
from scsn.inference.export import ExportError, compare, export_onnx, onnx_session
from scsn.inference.extractor import FeatureExtractor
from scsn.torch_support import DYNAMO_ONNX_EXPORT, DYNAMO_ONNX_EXPORT_BY_DEFAULT, DYNAMO_ONNX_EXPORT_SINCE

HEIGHT, WIDTH = 64, 32
needs_dynamo = pytest.mark.skipif(not DYNAMO_ONNX_EXPORT, reason="the dynamo ONNX route needs torch >= "
                                  f"{'.'.join(map(str, DYNAMO_ONNX_EXPORT_SINCE))}, this is {torch.__version__}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def images(checkpoint):
    """The Tiny query and gallery images as the model sees them, (N, 3, 64, 32) in [0, 255]."""
    extractor = FeatureExtractor(small_cfg("MODEL.WEIGHTS", checkpoint[0]), model=checkpoint[1])
    return extractor.preprocess(tiny_images("query") + tiny_images("gallery")[:10])


def test_checkpoint_chooses_stripes_per_image_with_ties(checkpoint, images):
    """The precondition of the parity tests below: a fresh model would pass them without exporting the choice."""
    model = checkpoint[1]
    with torch.no_grad():
        stages = model.heads.cascade(model.backbone(model.preprocess_image(images)))
    last_kept = stages[-1].kept
    assert len({tuple(row.tolist()) for row in last_kept}) > 2  # the suppressed stripes differ between images
    kept_weights = stages[1].weights.masked_fill(~stages[1].kept, -1)
    ties_at_top = (kept_weights == kept_weights.max(dim=1, keepdim=True).values).sum(dim=1)
    assert bool((ties_at_top > 1).all())  # stage 2 chooses among tied stripes: ties go to the lower index
    first_tied = (kept_weights == kept_weights.max(dim=1, keepdim=True).values).float().argmax(dim=1)
    assert torch.equal(stages[1].kept & ~stages[2].kept, torch.nn.functional.one_hot(first_tied, 4).bool())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the stripe-height check, a constant for one size
def test_torchscript_route_exports_the_cascade_and_names_what_it_cannot(tmp_path, checkpoint, images):
    with pytest.raises(ExportError, match="NMFF's pyramid pooling.*dynamo route"):
        export_onnx(checkpoint[1], str(tmp_path / "nmff.onnx"), HEIGHT, WIDTH, route="torchscript")
    # Without NMFF the legacy tracer exports the whole cascade, the per-image suppression included.
    _, model = make_checkpoint(tmp_path, "MODEL.BACKBONE.NMFF.STAGES", "[]")
    export_onnx(model, str(tmp_path / "model.onnx"), HEIGHT, WIDTH, route="torchscript")
    assert not model.training
    session = onnx_session(str(tmp_path / "model.onnx"))
    for batch in (1, 8):
        result = compare(model, session, images, batch)
        assert result["images"] == len(images) == 16
        assert result["min_cosine"] >= 0.9999 and result["max_abs_diff"] < 1e-3, result


@pytest.mark.skipif(not DYNAMO_ONNX_EXPORT_BY_DEFAULT, reason=f"fast-reid's deploy script: torch {torch.__version__}'s "
                    "default exporter cannot export SCSN")
def test_fastreid_deploy_route_exports_exactly(checkpoint, images):
    """fast-reid's tools/deploy/onnx_export.py: ``torch.onnx.export(model, inputs, f, operator_export_type=
    ONNX_ATEN_FALLBACK)`` under no_grad on one random image, batch fixed at 1 (through dynamo, the default)."""
    from torch.onnx import OperatorExportTypes

    model = checkpoint[1]
    with torch.no_grad(), io.BytesIO() as f:
        torch.onnx.export(model, torch.randn(1, 3, HEIGHT, WIDTH), f,
                          operator_export_type=OperatorExportTypes.ONNX_ATEN_FALLBACK)
        data = f.getvalue()
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with torch.no_grad():
        expected = model(images).numpy()
    got = np.concatenate([session.run(None, {name: images[i:i + 1].numpy()})[0] for i in range(len(images))])
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999 and np.abs(got - expected).max() < 1e-3


@needs_dynamo
def test_export_tool_matches_at_batch_1_and_n_and_times_both(tmp_path, checkpoint, capsys):
    """The default (dynamo) route, checked by the tool itself on 8 Tiny images, none the export input."""
    out = tmp_path / "scsn.onnx"
    argv = ["--config-file", CONFIG, "--output", str(out), "--batch-size", "4", "--repeats", "1",
            "--check-images", *tiny_images("query"), *tiny_images("gallery")[:2], *SMALL,
            "MODEL.WEIGHTS", checkpoint[0]]
    checks, timings = run_tool("export_onnx", *argv)
    printed = capsys.readouterr().out
    assert out.is_file() and [c["batch"] for c in checks] == [1, 4] and checks[0]["images"] == 8
    assert all(c["min_cosine"] >= 0.9999 for c in checks)
    assert "batch   1: max abs difference" in printed and "onnxruntime" in printed and "PyTorch" in printed
    assert [t["batch"] for t in timings] == [1, 4] and all(t["onnxruntime_ms_per_image"] > 0 for t in timings)
    with pytest.raises(SystemExit, match="already exist"):  # the .onnx is not overwritten
        run_tool("export_onnx", *argv)


@needs_dynamo
def test_feature_extractor_on_onnxruntime_gives_pytorch_descriptors(tmp_path, checkpoint, images):
    """TEST.RUNTIME onnxruntime: the graph is exported to TEST.ONNX_FILE, checked against PyTorch, then used; a graph
    of another model is refused by the check."""
    onnx_file = str(tmp_path / "model.onnx")
    eager = FeatureExtractor(small_cfg("MODEL.WEIGHTS", checkpoint[0]), model=checkpoint[1], progress=False)
    ort = FeatureExtractor(small_cfg("MODEL.WEIGHTS", checkpoint[0], "TEST.RUNTIME", "onnxruntime",
                                     "TEST.ONNX_FILE", onnx_file), model=checkpoint[1], progress=False)
    assert (tmp_path / "model.onnx").is_file()
    paths = tiny_images("query")
    expected, out = eager(paths), ort(paths)
    assert np.allclose(out, expected, atol=1e-5)

    torch.manual_seed(7)
    other = build_model(small_cfg()).eval()  # same architecture, other weights
    with pytest.raises(ExportError, match="does not match the PyTorch model"):
        FeatureExtractor(small_cfg("TEST.RUNTIME", "onnxruntime", "TEST.ONNX_FILE", onnx_file), model=other)


@pytest.mark.skipif(DYNAMO_ONNX_EXPORT, reason=f"torch {torch.__version__} has the dynamo ONNX route")
def test_without_the_dynamo_route_the_export_names_the_torch_it_needs(tmp_path, checkpoint):
    with pytest.raises(ExportError, match=r"needs torch >= 2\.13; this is torch 2\."):
        export_onnx(checkpoint[1], str(tmp_path / "model.onnx"), HEIGHT, WIDTH)
    with pytest.raises(ExportError, match="dynamo ONNX route needs"):  # TEST.RUNTIME onnxruntime exports first
        FeatureExtractor(small_cfg("MODEL.WEIGHTS", checkpoint[0], "TEST.RUNTIME", "onnxruntime"), model=checkpoint[1])


def test_compiled_runtime_gives_the_eager_descriptors(checkpoint, images):
    from scsn.inference.runtime import Runtime

    model = checkpoint[1]
    compiled = Runtime(model, small_cfg("TEST.RUNTIME", "compiled"))
    with torch.no_grad():
        expected, out = model(images[:4]), compiled(images[:4])
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
