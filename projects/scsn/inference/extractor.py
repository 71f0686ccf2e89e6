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

from fastreid.data import common
from fastreid.data.transforms import build_transforms

from ..engine.cli import list_images
from ..engine.defaults import build_config, load_model
from ..errors import ArgumentError
from .runtime import Runtime

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


def to_pil(image: ImageInput) -> Image.Image:
    """A path, a PIL image or an (H, W, 3) uint8 RGB array -> RGB PIL image, as fast-reid's loader reads it."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ArgumentError(
                f"Arrays must be (H, W, 3) uint8 RGB images, got shape {image.shape} and dtype {image.dtype} "
                "(OpenCV's BGR images: image[:, :, ::-1])."
            )
        return Image.fromarray(image)
    if isinstance(image, (str, os.PathLike)):
        return common.read_image(os.fspath(image), "RGB")  # scsn's guard names the file when it cannot be read
    raise TypeError(f"Expected an image path, a PIL image or a numpy array, got {type(image).__name__}.")


class FeatureExtractor:
    """Embed images with a trained model: ``FeatureExtractor(config_file, weights)(images) -> (N, D)`` float32,
    L2-normalised rows, in the order given.

    ``images``: paths, PIL images or (H, W, 3) uint8 RGB arrays (or one of them). Batches of ``batch_size``
    (default ``TEST.IMS_PER_BATCH``) are read, resized and embedded one at a time, so a folder of any size fits
    in memory; ``progress`` shows a tqdm bar. ``config`` is a config file (with ``opts`` overrides) or a built
    config; ``model`` an already loaded model of that config. The descriptors come from ``TEST.RUNTIME`` (eager
    PyTorch, torch.compile or onnxruntime: scsn/inference/runtime.py).
    """

    def __init__(self, config, weights: Optional[str] = None, opts: Sequence[str] = (),
                 batch_size: Optional[int] = None, progress: bool = True, model: Optional[torch.nn.Module] = None):
        if isinstance(config, (str, os.PathLike)):
            config = build_config(os.fspath(config), list(opts) + (["MODEL.WEIGHTS", weights] if weights else []),
                                  inference=True)
        self.cfg = config
        self.model = model.eval() if model is not None else load_model(self.cfg)
        self.runtime = Runtime(self.model, self.cfg)
        self.transform = build_transforms(self.cfg, is_train=False)
        self.batch_size = batch_size or self.cfg.TEST.IMS_PER_BATCH
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """images -> (B, 3, H, W) float tensor in [0, 255] at INPUT.SIZE_TEST."""
        return torch.stack([self.transform(to_pil(image)) for image in images])

    @torch.no_grad()
    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised descriptors, on the CPU."""
        batch = batch.to(self.device)
        features = self.runtime(batch)
        if self.cfg.TEST.FLIP.ENABLED:  # fast-reid's evaluation averages in the mirrored image
            features = (features + self.runtime(batch.flip(dims=[3]))) / 2
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
            raise ArgumentError("No images to embed.")
        return torch.cat([features for _, features in self.batches(images)]).numpy()

    def embed_folder(self, folder: str) -> Tuple[List[str], np.ndarray]:
        """Every image under ``folder`` -> (sorted paths, (N, D) descriptors)."""
        paths = list_images(folder)
        return paths, self(paths)


__all__ = ["FeatureExtractor", "to_pil"]
