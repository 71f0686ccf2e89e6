"""ONNX export of a fast-reid model (SCSN included): images (B, 3, H, W) floats in [0, 255] -> descriptors (B, D), as
the PyTorch model in eval mode returns them (not L2-normalised), with a dynamic batch axis; and the check that
onnxruntime gives the same descriptors on other images, at batch 1 and batch N.

Two routes of ``torch.onnx.export``: ``dynamo`` (torch.export; ``dynamo=True``, the default of newer torch, and so what
fast-reid's ``tools/deploy/onnx_export.py`` gets there) and ``torchscript`` (the legacy tracer, ``dynamo=False``; the
only exporter of older torch, which has no ``dynamo`` argument). The dynamo route needs torch >= 2.13
(:data:`scsn.torch_support.DYNAMO_ONNX_EXPORT`: older releases crash or lack an ONNX function SCSN needs). The
legacy exporter cannot express ``adaptive_avg_pool2d`` to a grid that does not divide the map, which NMFF's pyramid
pooling (bins 3, 6, 8) needs: it exports SCSN without NMFF only.
"""
import time
from typing import Callable, Dict, Sequence

import numpy as np
import torch

from ..errors import ArgumentError, ExportError
from ..torch_support import DYNAMO_ONNX_EXPORT, DYNAMO_ONNX_EXPORT_SINCE, ONNX_EXPORT_TAKES_DYNAMO

ROUTES = ("dynamo", "torchscript")
# Each route's default opset. The legacy tracer's is 17, the last whose Reduce ops take their axes as an attribute:
# torch 2.1's tracer writes them so at 18 too, which the ONNX checker refuses (RSAM's ReduceMax).
OPSETS = {"dynamo": 18, "torchscript": 17}
INPUT, OUTPUT = "images", "features"
# The smallest cosine similarity between PyTorch's and onnxruntime's descriptor of an image that passes the check.
MIN_COSINE = 0.9999


def example_input(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """The (2, 3, H, W) images traced for the export; parity is then checked on other images. Two, not one: torch.export
    specialises a dimension whose example size is 1, and a reshape traced at batch 1 (NMFF's pooled cells, CAM's
    MLP input) then failed at every other batch size in onnxruntime."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, height, width, generator=generator) * 255


def export_onnx(model: torch.nn.Module, path: str, height: int, width: int, route: str = "dynamo",
                opset: int = None) -> None:
    """Write ``model`` (eval mode, on the CPU) to ``path`` with a dynamic batch axis (opset: the route's default)."""
    if route not in ROUTES:
        raise ArgumentError(f"Export route must be one of {ROUTES}, got {route!r}.")
    opset = opset or OPSETS[route]
    model = model.eval().cpu()
    example = example_input(height, width)
    if route == "dynamo":
        if not DYNAMO_ONNX_EXPORT:
            since = ".".join(map(str, DYNAMO_ONNX_EXPORT_SINCE))
            raise ExportError(
                f"The dynamo ONNX route needs torch >= {since}; this is torch {torch.__version__} (docs/install.md: "
                f"which torch exports what). Install torch >= {since}, or use the torchscript route, which exports "
                "SCSN without NMFF only (MODEL.BACKBONE.NMFF.STAGES [])."
            )
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        program.save(path, external_data=False)
        return
    legacy = {"dynamo": False} if ONNX_EXPORT_TAKES_DYNAMO else {}  # without the argument, the tracer is the exporter
    try:
        torch.onnx.export(
            model, (example,), path, input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, **legacy,
        )
    except torch.onnx.errors.SymbolicValueError as e:
        if "adaptive_avg_pool2d" not in str(e):
            raise
        raise ExportError(
            "The torchscript (legacy) exporter cannot export NMFF's pyramid pooling: adaptive_avg_pool2d to "
            "MODEL.BACKBONE.NMFF.POOL_BINS grids that do not divide the feature map. Use the dynamo route, which "
            "exports it exactly, or a config without NMFF (MODEL.BACKBONE.NMFF.STAGES [])."
        ) from e
    finally:
        model.eval()  # the legacy exporter restores the module's own training flag, not its children's


def onnx_session(path: str):
    """An onnxruntime CPU session of the exported file. Its worker threads sleep between runs instead of spinning
    (onnxruntime's default), which took the cores from PyTorch and the data loader in the same process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor) -> np.ndarray:
    return session.run([OUTPUT], {INPUT: images.numpy()})[0]


@torch.no_grad()
def compare(model: torch.nn.Module, session, images: torch.Tensor, batch_size: int) -> Dict[str, float]:
    """Descriptors of ``images`` (N, 3, H, W) from PyTorch and onnxruntime, in batches of ``batch_size`` ->
    max abs difference and the smallest cosine similarity of an image's two descriptors."""
    ours, theirs = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        ours.append(model(batch).numpy())
        theirs.append(run_onnx(session, batch))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return {"batch": batch_size, "images": len(images), "max_abs_diff": float(np.abs(ours - theirs).max()),
            "min_cosine": float(cosine.min())}


def check_parity(model: torch.nn.Module, session, images: torch.Tensor, batch_size: int) -> list:
    """:func:`compare` at batch 1 and ``batch_size``; an :class:`ExportError` where an image's cosine < MIN_COSINE."""
    checks = [compare(model, session, images, b) for b in (1, batch_size)]
    worst = min(c["min_cosine"] for c in checks)
    if worst < MIN_COSINE:
        raise ExportError(f"The ONNX graph does not match the PyTorch model: an image's descriptors have cosine "
                          f"{worst:.6f} < {MIN_COSINE} ({checks}). Export it again from this checkpoint and config.")
    return checks


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@torch.no_grad()
def latency(model: torch.nn.Module, session, images: torch.Tensor, batch_sizes: Sequence[int],
            repeats: int) -> list:
    """CPU ms per image of PyTorch and onnxruntime, interleaved, per batch size."""
    rows = []
    for b in batch_sizes:
        batch = images[:b]
        torch_s = median_seconds(lambda: model(batch), repeats)
        onnx_s = median_seconds(lambda: run_onnx(session, batch), repeats)
        rows.append({"batch": b, "pytorch_ms_per_image": 1000 * torch_s / b,
                     "onnxruntime_ms_per_image": 1000 * onnx_s / b})
    return rows
