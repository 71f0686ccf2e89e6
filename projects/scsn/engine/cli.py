"""The tools' shared command line (``tools/*.py``): fast-reid's ``--config-file ... KEY VALUE`` arguments, image
inputs, the one wrapper that turns a :class:`~scsn.errors.InputError` into one line and exit status 1, and the one
guard against overwriting what an earlier run or the user wrote.
"""
import argparse
import functools
import os
import re
import sys
from typing import Iterable, List, Sequence, Tuple

from ..errors import ArgumentError, InputError, InputNotFoundError, OutputExistsError
from .defaults import build_config, load_model

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parser(description: str, commands: Sequence[str] = ()) -> argparse.ArgumentParser:
    """``--config-file`` plus trailing ``KEY VALUE`` config overrides (``MODEL.WEIGHTS path``), as fast-reid's tools;
    ``commands``: a first positional argument choosing one of them."""
    p = argparse.ArgumentParser(description=description)
    if commands:
        p.add_argument("command", choices=tuple(commands))
    p.add_argument("--config-file", required=True, metavar="FILE", help="the config the checkpoint was trained with")
    p.add_argument("opts", nargs="*", default=[],
                   help="config overrides as KEY VALUE pairs, last, e.g. MODEL.WEIGHTS logs/run/model_final.pth")
    return p


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--onnx-file``: the config's TEST.RUNTIME and TEST.ONNX_FILE (scsn/inference/runtime.py)."""
    p.add_argument("--runtime", choices=("eager", "compiled", "onnxruntime"),
                   help="what computes the descriptors (default: the config's TEST.RUNTIME, eager PyTorch)")
    p.add_argument("--onnx-file", help="with --runtime onnxruntime: the ONNX graph, exported there first if missing")


def runtime_opts(args: argparse.Namespace) -> List[str]:
    """The config overrides of :func:`add_runtime_arguments`, to go before the command line's own."""
    return ((["TEST.RUNTIME", args.runtime] if args.runtime else [])
            + (["TEST.ONNX_FILE", args.onnx_file] if args.onnx_file else []))


def dataset_tool_parser(description: str) -> argparse.ArgumentParser:
    """``parser`` plus the options of the tools that read a trained model over a dataset's test split."""
    p = parser(description)
    p.add_argument("--dataset", help="test split to read (default: the config's first DATASETS.TESTS)")
    p.add_argument("--out", help="JSON file to write (default: next to MODEL.WEIGHTS)")
    return p


def load_trained(args: argparse.Namespace):
    """(frozen inference cfg, eval-mode model with MODEL.WEIGHTS loaded strictly) from a tool's command line."""
    cfg = build_config(args.config_file, args.opts, inference=True)
    return cfg, load_model(cfg)


CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(p: argparse.ArgumentParser, argv: Sequence[str] = None) -> argparse.Namespace:
    """The overrides start at the first ``KEY.SUB`` token: split there, so that an option taking several values
    (``--input a b``) does not swallow them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, token in enumerate(argv) if CONFIG_KEY.match(token)), len(argv))
    args = p.parse_args(argv[:split])
    args.opts = args.opts + argv[split:]
    return args


def run(main):
    """Decorator for a tool's ``main``: an :class:`~scsn.errors.InputError` ends the process with its message and
    exit status 1, without a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as e:
            sys.exit(f"error: {e}")

    return wrapper


def list_images(folder: str) -> List[str]:
    """Image files under ``folder`` (recursively), sorted; a clear error for a missing or image-less folder."""
    if not os.path.isdir(folder):
        raise InputNotFoundError(f"{folder!r} is not a folder.")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise InputNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}.")
    return paths


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image files and folders (searched recursively) -> image paths, in the order given, folders sorted."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(list_images(item))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise InputNotFoundError(f"{item!r} is neither an image file nor a folder.")
    if not paths:
        raise InputNotFoundError("No input images given.")
    return paths


def registered_dataset(name: str):
    """The dataset registered as ``name``, read from under $FASTREID_DATASETS as fast-reid's loaders read it."""
    from fastreid.data.build import _root
    from fastreid.data.datasets import DATASET_REGISTRY

    if name not in DATASET_REGISTRY._obj_map:  # fast-reid 1.4.0's Registry has no __contains__
        raise ArgumentError(
            f"No dataset {name!r} is registered; known: {', '.join(sorted(DATASET_REGISTRY._obj_map))}.")
    return DATASET_REGISTRY.get(name)(root=_root)


def dataset_items(name: str, split: str) -> List[Tuple[str, object, int]]:
    """(path, pid, camid) of the 'train', 'query' or 'gallery' split of a registered dataset."""
    if split not in ("train", "query", "gallery"):
        raise ArgumentError(f"Split must be train, query or gallery, got {split!r}.")
    return list(getattr(registered_dataset(name), split))


def evenly_spaced(items: Sequence, count: int) -> list:
    """``count`` items spread over the sequence (all of them when it is shorter): a varied sample, reproducible."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def check_positive(**values: int) -> None:
    """A tool's count arguments, e.g. ``check_positive(num_images=args.num_images)``, must be >= 1."""
    bad = {name: value for name, value in values.items() if value < 1}
    if bad:
        raise ArgumentError(", ".join(f"--{name.replace('_', '-')} must be >= 1, got {value}"
                                      for name, value in bad.items()) + ".")


def refuse_to_overwrite(paths: Iterable[str], overwrite: bool = False,
                        how: str = "pass --overwrite to replace, or choose another output") -> None:
    """Existing outputs stay untouched unless the user passed --overwrite; ``how`` says what to do instead."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]!r}{f' and {len(existing) - 1} more' if len(existing) > 1 else ''} already exist(s); "
            f"{how}."
        )
