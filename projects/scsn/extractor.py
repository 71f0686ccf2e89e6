"""Config + checkpoint -> L2-normalised re-id descriptors, for image files, PIL images or RGB arrays.

The model is fast-reid's ``build_model`` of the config (SCSN or any fast-reid model), the images go through fast-reid's
test transforms (``INPUT.SIZE_TEST`` resize, pixel values in [0, 255]) and, with ``TEST.FLIP.ENABLED``, the flipped
image's descriptor is averaged in, as fast-reid's evaluation does; the descriptors are the evaluator's, L2-normalised.
"""
import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fastreid.config import get_cfg
from fastreid.data import common
from fastreid.data.transforms import build_transforms
from fastreid.modeling import build_model

from . import compat
from .checks import UnreadableImageError
from .config import add_scsn_config

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class WeightsError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model its config builds."""


def setup_cfg(config_file: str, opts: Sequence[str] = ()):
    """fast-reid's defaults + SCSN's keys + the config file + ``KEY VALUE`` overrides, for inference (frozen)."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file!r} does not exist.")
    cfg = get_cfg()
    add_scsn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint holds every weight; no ImageNet download
    compat.resolve_device(cfg)
    cfg.freeze()
    return cfg


def check_weights_file(path: str) -> None:
    if not path:
        raise WeightsError("No weights given: add `MODEL.WEIGHTS path/to/model_final.pth` to the command.")
    if not os.path.isfile(path):
        raise WeightsError(f"MODEL.WEIGHTS {path!r} is not a file.")


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a fast-reid checkpoint (``{"model": state_dict, ...}``) or a bare state dict, strictly.

    fast-reid's Checkpointer only logs missing or mis-shaped keys and goes on with random weights; here a checkpoint
    that does not fit the config stops with the keys that differ.
    """
    check_weights_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"Cannot read the checkpoint {path!r} ({type(e).__name__}: {e}).") from e
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path!r} is not a fast-reid checkpoint: expected a state dict under 'model'.")
    expected = model.state_dict()
    # fast-reid sizes the classifier from the training set (MODEL.HEADS.NUM_CLASSES 0 in the config, set by the
    # trainer), so a config builds it empty: it only serves training, and is left empty here.
    unsized = {k for k, v in expected.items() if v.numel() == 0 and k in state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in state and k not in unsized and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        details = "; ".join(filter(None, [
            f"missing {len(missing)} (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
            f"{len(shapes)} with another shape (e.g. {'; '.join(shapes[:2])})" if shapes else "",
        ]))
        raise WeightsError(
            f"The checkpoint {path!r} does not fit the model this config builds: {details}. Use the config the "
            "checkpoint was trained with (fast-reid saves it as config.yaml in the run's OUTPUT_DIR)."
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in unsized}, strict=False)


def load_model(cfg) -> torch.nn.Module:
    """``build_model(cfg)`` in eval mode with ``cfg.MODEL.WEIGHTS`` loaded strictly."""
    check_weights_file(cfg.MODEL.WEIGHTS)  # before building: an R50 takes seconds
    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS)
    return model.eval()


def list_images(folder: str) -> List[str]:
    """Image files under ``folder`` (recursively), sorted; a clear error for a missing or image-less folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a folder.")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}.")
    return paths


def to_pil(image: ImageInput) -> Image.Image:
    """A path, a PIL image or an (H, W, 3) uint8 RGB array -> RGB PIL image, as fast-reid's loader reads it."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"Arrays must be (H, W, 3) uint8 RGB images, got shape {image.shape} and dtype {image.dtype} "
                "(OpenCV's BGR images: image[:, :, ::-1])."
            )
        return Image.fromarray(image)
    if isinstance(image, (str, os.PathLike)):
        return common.read_image(os.fspath(image), "RGB")  # scsn.checks names the file when it cannot be read
    raise TypeError(f"Expected an image path, a PIL image or a numpy array, got {type(image).__name__}.")


class FeatureExtractor:
    """Embed images with a trained model: ``FeatureExtractor(config_file, weights)(images) -> (N, D)`` float32,
    L2-normalised rows, in the order given.

    ``images``: paths, PIL images or (H, W, 3) uint8 RGB arrays (or one of them). Batches of ``batch_size``
    (default ``TEST.IMS_PER_BATCH``) are read, resized and embedded one at a time, so a folder of any size fits
    in memory; ``progress`` shows a tqdm bar. ``config`` is a config file (with ``opts`` overrides) or a built
    config; ``model`` an already loaded model of that config.
    """

    def __init__(self, config, weights: Optional[str] = None, opts: Sequence[str] = (),
                 batch_size: Optional[int] = None, progress: bool = True, model: Optional[torch.nn.Module] = None):
        if isinstance(config, (str, os.PathLike)):
            config = setup_cfg(os.fspath(config), list(opts) + (["MODEL.WEIGHTS", weights] if weights else []))
        self.cfg = config
        self.model = model.eval() if model is not None else load_model(self.cfg)
        self.transform = build_transforms(self.cfg, is_train=False)
        self.batch_size = batch_size or self.cfg.TEST.IMS_PER_BATCH
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.model.device

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """images -> (B, 3, H, W) float tensor in [0, 255] at INPUT.SIZE_TEST."""
        return torch.stack([self.transform(to_pil(image)) for image in images])

    @torch.no_grad()
    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised descriptors, on the CPU."""
        batch = batch.to(self.device)
        features = self.model(batch)
        if self.cfg.TEST.FLIP.ENABLED:  # fast-reid's evaluation averages in the mirrored image
            features = (features + self.model(batch.flip(dims=[3]))) / 2
        return F.normalize(features.float(), dim=1).cpu()

    def batches(self, images: Sequence[ImageInput]) -> Iterable[Tuple[int, torch.Tensor]]:
        """(start index, (B, D) descriptors) per batch of ``images``."""
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not self.progress or len(starts) < 2):
            yield start, self.embed_batch(self.preprocess(images[start:start + self.batch_size]))

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> np.ndarray:
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("No images to embed.")
        return torch.cat([features for _, features in self.batches(images)]).numpy()

    def embed_folder(self, folder: str) -> Tuple[List[str], np.ndarray]:
        """Every image under ``folder`` -> (sorted paths, (N, D) descriptors)."""
        paths = list_images(folder)
        return paths, self(paths)


__all__ = ["FeatureExtractor", "WeightsError", "UnreadableImageError", "setup_cfg", "load_model", "load_weights",
           "list_images", "to_pil"]
