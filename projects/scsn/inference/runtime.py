"""The runtimes a trained model's descriptors can come from (``TEST.RUNTIME``), behind one module: images
(B, 3, H, W) floats in [0, 255], or fast-reid's batch dict -> (B, D) float32 descriptors, as the model returns them
in eval mode.

- ``eager``: the PyTorch model, under bf16 CPU autocast where ``SOLVER.AMP.ENABLED`` and the CPU has bf16 units
  (scsn/fastreid_patches/precision.py), in the config's ``MODEL.MEMORY_FORMAT``;
- ``compiled``: the same under ``torch.compile`` (inductor: fused C++ kernels on the CPU, Triton on CUDA); the first
  batch of each size compiles (about a minute for SCSN-R50 on 2 CPU cores);
- ``onnxruntime``: the exported ONNX graph (``TEST.ONNX_FILE``, exported there first when it does not exist) on
  onnxruntime's CPU provider, in fp32, run only after it matched the PyTorch model on random images at batch 1 and
  batch N (:func:`scsn.inference.export.check_parity`).
"""
import os
import tempfile

import torch
from torch import nn

from ..errors import ConfigError
from ..fastreid_patches.precision import CPU_AMP_DTYPE, cpu_amp_enabled
from .export import check_parity, export_onnx, onnx_session, run_onnx

RUNTIMES = ("eager", "compiled", "onnxruntime")
PARITY_BATCH = 8


class Runtime(nn.Module):
    """``model`` (eval mode, weights loaded) run by ``cfg.TEST.RUNTIME``; see the module docstring."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        self.kind = cfg.TEST.RUNTIME
        if self.kind not in RUNTIMES:
            raise ConfigError(f"TEST.RUNTIME must be one of {list(RUNTIMES)}, got {self.kind!r}.")
        self.model = model.eval()
        self.autocast = cpu_amp_enabled(cfg)
        self.train(False)
        if self.kind == "compiled":
            self.compiled = torch.compile(model)
        if self.kind == "onnxruntime":
            self.session = self._onnx_session(cfg)

    def _onnx_session(self, cfg):
        height, width = cfg.INPUT.SIZE_TEST
        path = cfg.TEST.ONNX_FILE or os.path.join(tempfile.mkdtemp(prefix="scsn-onnx-"), "model.onnx")
        if not os.path.isfile(path):
            export_onnx(self.model, path, height, width)
        session = onnx_session(path)
        generator = torch.Generator().manual_seed(1)  # not the export's example input (seed 0)
        images = torch.rand(2 * PARITY_BATCH, 3, height, width, generator=generator) * 255
        with torch.no_grad():
            check_parity(self.model.cpu(), session, images, PARITY_BATCH)
        return session

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.kind == "onnxruntime" else self.model.device

    def forward(self, inputs):
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        if self.kind == "onnxruntime":
            return torch.from_numpy(run_onnx(self.session, images.float().cpu().contiguous()))
        with torch.autocast("cpu", dtype=CPU_AMP_DTYPE, enabled=self.autocast):
            return (self.compiled if self.kind == "compiled" else self.model)(images).float()
