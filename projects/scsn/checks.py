"""Clear errors for bad input that fastreid reports from deep inside (or not at all).

Each patch keeps fastreid's behaviour and only replaces its failure with one message that says what was
wrong and what to do; :func:`apply` runs when ``scsn`` is imported.
"""
import functools
import os

from fastreid.data import common
from fastreid.data.datasets import bases, msmt17
from fastreid.modeling.backbones import resnet


class DatasetNotFoundError(FileNotFoundError):
    pass


class PretrainedWeightsError(RuntimeError):
    pass


class UnreadableImageError(OSError):
    pass


def _check_before_run(self, required_files):
    """data/datasets/bases.py:129 raises ``RuntimeError('"<path>" is not found')``."""
    if isinstance(required_files, str):
        required_files = [required_files]
    missing = [f for f in required_files if not os.path.exists(f)]
    if missing:
        raise _not_found(type(self).__name__, repr(os.path.abspath(missing[0])))


def _not_found(dataset, where):
    return DatasetNotFoundError(
        f"{dataset}: dataset folder {where} does not exist. "
        f"Datasets are looked for under $FASTREID_DATASETS "
        f"(now {os.environ.get('FASTREID_DATASETS', 'unset; default ./datasets')!r}), which must be set "
        "before fastreid or scsn is imported. See README.md, 'Datasets', for each dataset's layout."
    )


def _guard_msmt17_init(upstream):
    """data/datasets/msmt17.py:58 asserts ``'Dataset folder not found'`` before check_before_run can name it."""

    @functools.wraps(upstream)
    def __init__(self, root="datasets", **kwargs):
        candidates = [os.path.join(os.path.abspath(root), v) for v in msmt17.VERSION_DICT]
        if not any(os.path.isdir(c) for c in candidates):
            raise _not_found("MSMT17", " or ".join(repr(c) for c in candidates))
        return upstream(self, root, **kwargs)

    return __init__


def _guard_pretrained_download(upstream):
    """modeling/backbones/resnet.py:241 downloads ImageNet weights with gdown; offline that fails with a raw
    network traceback (or a missing gdown, or a truncated file)."""

    @functools.wraps(upstream)
    def init_pretrained_weights(key):
        try:
            return upstream(key)
        except Exception as e:
            raise PretrainedWeightsError(
                f"Could not fetch the ImageNet weights for ResNet '{key}' ({type(e).__name__}: {e}). "
                "Download them on a machine with internet access (e.g. torchvision's resnet50 weights) and set "
                "MODEL.BACKBONE.PRETRAIN_PATH /path/to/weights.pth, or set MODEL.BACKBONE.PRETRAIN False to "
                "train from scratch."
            ) from e

    return init_pretrained_weights


def _guard_read_image(upstream):
    """data/data_utils.py:17 ``read_image``, used by data/common.py:40: PIL's error does not name the file."""

    @functools.wraps(upstream)
    def read_image(file_name, format=None):
        try:
            return upstream(file_name, format)
        except Exception as e:
            raise UnreadableImageError(f"Cannot read image {file_name!r}: {type(e).__name__}: {e}") from e

    return read_image


def apply():
    if bases.Dataset.check_before_run is not _check_before_run:
        bases.Dataset.check_before_run = _check_before_run
    if not hasattr(msmt17.MSMT17.__init__, "__wrapped__"):
        msmt17.MSMT17.__init__ = _guard_msmt17_init(msmt17.MSMT17.__init__)
    if not hasattr(resnet.init_pretrained_weights, "__wrapped__"):
        resnet.init_pretrained_weights = _guard_pretrained_download(resnet.init_pretrained_weights)
    if not hasattr(common.read_image, "__wrapped__"):
        common.read_image = _guard_read_image(common.read_image)
