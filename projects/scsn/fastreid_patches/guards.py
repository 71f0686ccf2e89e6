"""Clear errors for bad input that fastreid reports from deep inside (or not at all), and recoveries where the
input can be read as users mean it.

Each patch names the upstream place it guards, keeps fastreid's behaviour on good input and only replaces its
failure with one message that says what was wrong and what to do (:mod:`scsn.errors`); :func:`apply` runs when
``scsn`` is imported.
"""
import functools
import os
import re

import numpy as np
import torch
from PIL import Image, ImageOps

from fastreid.data import common
from fastreid.data.datasets import bases, msmt17
from fastreid.engine import train_loop
from fastreid.modeling.backbones import resnet
from fastreid.utils.events import get_event_storage
from fastreid.utils.file_io import PathManager

from ..errors import (ConfigError, DatasetNotFoundError, EmptySplitError, NonFiniteLossError, PretrainedWeightsError,
                      UnreadableImageError)


# ---------------------------------------------------------------------------------------------------------------
# Config


def _guard_build_model(upstream):
    """modeling/meta_arch/build.py:20 ``build_model``: a value the model cannot be built from (e.g. a feature-map
    height that MODEL.HEADS.NUM_STRIPES does not divide, an unregistered META_ARCHITECTURE) raises from deep
    inside the model's constructor; the message there names the keys."""

    @functools.wraps(upstream)
    def build_model(cfg):
        try:
            return upstream(cfg)
        except (ValueError, KeyError) as e:
            message = str(e.args[0]) if e.args else str(e)
            raise ConfigError(f"Cannot build the model from the config: {message}") from e

    return build_model


def _guard_cosine_schedule(upstream):
    """solver/build.py:313-328 gives CosineAnnealingLR ``T_max = MAX_EPOCH - max(warm-up epochs, DELAY_EPOCHS)``; a
    short run (a one- or two-epoch smoke test) makes it 0, and torch's scheduler divides by it after the first epoch
    (ZeroDivisionError in lr_scheduler.py). With no epoch left for the cosine, the rate stays where the warm-up
    leaves it: T_max 1, which the run never completes."""

    @functools.wraps(upstream)
    def build_lr_scheduler(cfg, optimizer, iters_per_epoch):
        schedulers = upstream(cfg, optimizer, iters_per_epoch)
        cosine = schedulers.get("lr_sched")
        if isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max < 1:
            cosine.T_max = 1
        return schedulers

    return build_lr_scheduler


# ---------------------------------------------------------------------------------------------------------------
# Datasets and images


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


def _empty(dataset, split, folder_attribute):
    folder = getattr(dataset, folder_attribute, None) or getattr(dataset, "dataset_dir", "")
    return EmptySplitError(
        f"{type(dataset).__name__}: the {split} split has no image (looked in {os.path.abspath(folder)!r}). "
        "Check that the folder holds the dataset's images under their original names (fast-reid parses the "
        "identity and camera from each file name)."
    )


def _guard_show_train(upstream):
    """data/datasets/bases.py:151 ``show_train``, called when the training loader is built (data/build.py:38):
    with no training image the sampler never fills a batch and training hangs or runs empty epochs."""

    @functools.wraps(upstream)
    def show_train(self):
        if not self.train:
            raise _empty(self, "training", "train_dir")
        return upstream(self)

    return show_train


def _guard_show_test(upstream):
    """data/datasets/bases.py:166 ``show_test``, called when a test loader is built (data/build.py:116): with no
    query or no gallery image the evaluator fails on empty arrays."""

    @functools.wraps(upstream)
    def show_test(self):
        if not self.query:
            raise _empty(self, "query", "query_dir")
        if not self.gallery:
            raise _empty(self, "gallery", "gallery_dir")
        return upstream(self)

    return show_test


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


# PIL modes of 16-bit (and 32-bit integer) greyscale images: PIL's convert("RGB") clips them at 255.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_rgb(file_name):
    """The image at ``file_name`` as an 8-bit RGB PIL image, whatever its mode: greyscale is replicated to the
    three channels, alpha is dropped, palette and CMYK are converted, 16-bit greyscale is scaled to 8 bits
    (value / 257). EXIF orientation is applied, as fast-reid's ``read_image`` does."""
    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # fast-reid's read_image ignores broken EXIF data the same way (Pillow issue 3973)
            pass
        if image.mode in HIGH_BIT_DEPTH_MODES:
            image = Image.fromarray(np.round(np.asarray(image, np.float64) / 257).clip(0, 255).astype(np.uint8))
        return image.convert("RGB")


def _guard_read_image(upstream):
    """data/data_utils.py:17 ``read_image``, used without a format by data/common.py:40: PIL's errors (a truncated
    JPEG, a file that is no image) do not name the file; and the image comes in whatever mode the file has, so
    an RGBA, CMYK or 16-bit image reaches the model with 4 channels or fails in numpy, and a palette image is
    read as its palette indices. Without a format it is read as RGB (:func:`read_rgb`); for an RGB or greyscale
    file that is the image upstream returns."""

    @functools.wraps(upstream)
    def read_image(file_name, format=None):
        try:
            return read_rgb(file_name) if format is None else upstream(file_name, format)
        except Exception as e:
            raise UnreadableImageError(
                f"Cannot read image {file_name!r}: {type(e).__name__}: {e}. Re-encode the file or remove it from the "
                "dataset folder."
            ) from e

    return read_image


# ---------------------------------------------------------------------------------------------------------------
# Training


def _by_stage(losses):
    """{'loss_cls_s2': nan, 'loss_triplet': inf} -> 'stage 2: loss_cls_s2 = nan; loss_triplet = inf'."""
    groups = {}
    for name, value in losses.items():
        stage = re.search(r"_s(\d+)$", name)
        groups.setdefault(f"stage {stage.group(1)}: " if stage else "", []).append(f"{name} = {value}")
    return "; ".join(prefix + ", ".join(items) for prefix, items in sorted(groups.items()))


def _guard_write_metrics(upstream):
    """engine/train_loop.py:296-300 raises ``FloatingPointError`` with the dict of all the losses, their values
    averaged over the processes, when their sum is not finite. The message here names the non-finite losses of
    this process by cascade stage (SCSN's ``loss_<name>_s<t>``), and says what to do."""

    @functools.wraps(upstream)
    def _write_metrics(self, loss_dict, data_time):
        try:
            return upstream(self, loss_dict, data_time)
        except FloatingPointError as e:
            bad = {k: v.item() for k, v in loss_dict.items() if not np.isfinite(v.item())}
            epoch = getattr(get_event_storage(), "epoch", None)
            raise NonFiniteLossError(
                f"Loss became NaN or infinite at iteration {self.iter}"
                + (f" (epoch {epoch})" if epoch is not None else "")
                + f": {_by_stage(bad) if bad else 'in another process'}. The weights were not updated with it, and "
                "the checkpoints already written are intact. Lower SOLVER.BASE_LR or enable "
                "SOLVER.CLIP_GRADIENTS.ENABLED, check the training images, then continue with --resume."
            ) from e

    return _write_metrics


def apply():
    import fastreid.modeling
    import fastreid.modeling.meta_arch
    from fastreid.engine import defaults
    import fastreid.solver
    from fastreid.modeling.meta_arch import build as meta_arch_build
    from fastreid.solver import build as solver_build

    if bases.Dataset.check_before_run is not _check_before_run:
        bases.Dataset.check_before_run = _check_before_run
    if not hasattr(msmt17.MSMT17.__init__, "__wrapped__"):
        msmt17.MSMT17.__init__ = _guard_msmt17_init(msmt17.MSMT17.__init__)
    if not hasattr(bases.ImageDataset.show_train, "__wrapped__"):
        bases.ImageDataset.show_train = _guard_show_train(bases.ImageDataset.show_train)
        bases.ImageDataset.show_test = _guard_show_test(bases.ImageDataset.show_test)
    if not hasattr(resnet.init_pretrained_weights, "__wrapped__"):
        resnet.init_pretrained_weights = _guard_pretrained_download(resnet.init_pretrained_weights)
    if not hasattr(common.read_image, "__wrapped__"):
        common.read_image = _guard_read_image(common.read_image)
    if not hasattr(train_loop.SimpleTrainer._write_metrics, "__wrapped__"):
        train_loop.SimpleTrainer._write_metrics = _guard_write_metrics(train_loop.SimpleTrainer._write_metrics)
    if not hasattr(solver_build.build_lr_scheduler, "__wrapped__"):
        build_lr_scheduler = _guard_cosine_schedule(solver_build.build_lr_scheduler)
        for module in (solver_build, fastreid.solver, defaults):
            module.build_lr_scheduler = build_lr_scheduler
    if not hasattr(meta_arch_build.build_model, "__wrapped__"):
        build_model = _guard_build_model(meta_arch_build.build_model)
        # Bound by name in each of these modules when they were imported.
        for module in (meta_arch_build, fastreid.modeling.meta_arch, fastreid.modeling, defaults):
            module.build_model = build_model
