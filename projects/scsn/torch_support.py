"""What the installed torch offers, where this project's code needs more than the lowest torch setup.cfg admits (2.1).

Each is decided once, at import: by a feature test where torch's API tells, by the version where only a measurement
does (the dynamo ONNX route). Where a feature is missing the code takes torch's older spelling of the same thing, or
stops with one error naming the torch it needs. docs/install.md lists the features and the torch versions measured.
"""
import inspect
import re

import torch

TORCH_VERSION = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())


def _autocast_query_takes_a_device() -> bool:
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # older torch: torch.is_autocast_enabled() is CUDA's, the CPU has is_autocast_cpu_enabled()
        return False
    return True


AUTOCAST_QUERY_TAKES_A_DEVICE = _autocast_query_takes_a_device()
# torch.onnx.export(..., dynamo=...): without the argument (torch 2.1) the legacy tracer is the only exporter.
ONNX_EXPORT_TAKES_DYNAMO = "dynamo" in inspect.signature(torch.onnx.export).parameters
# The dynamo route (torch.export), the one that exports NMFF's pyramid pooling, has exported SCSN from torch 2.13 on;
# before, torch 2.5.1 crashed in torch.export (segmentation fault) and 2.9.1 and 2.12.0 had no ONNX function for the
# adaptive max pooling of RDAM's channel attention.
DYNAMO_ONNX_EXPORT_SINCE = (2, 13)
DYNAMO_ONNX_EXPORT = ONNX_EXPORT_TAKES_DYNAMO and TORCH_VERSION >= DYNAMO_ONNX_EXPORT_SINCE
# ... and it is torch.onnx.export's default, so fast-reid's own tools/deploy/onnx_export.py gets it.
DYNAMO_ONNX_EXPORT_BY_DEFAULT = (
    DYNAMO_ONNX_EXPORT and inspect.signature(torch.onnx.export).parameters["dynamo"].default is True)
# Lists the globals a checkpoint would make torch.load(weights_only=True) unpickle, without loading it.
LISTS_UNSAFE_GLOBALS = hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")


def cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is on here (the newer torch.is_autocast_enabled("cpu") deprecates the older spelling)."""
    return torch.is_autocast_enabled("cpu") if AUTOCAST_QUERY_TAKES_A_DEVICE else torch.is_autocast_cpu_enabled()
