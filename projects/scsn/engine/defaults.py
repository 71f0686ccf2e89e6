"""The front door every tool, test and benchmark goes through: one config builder and one trained-model loader.

:func:`build_config` is fast-reid's ``setup`` (defaults, SCSN's keys, the config file, ``KEY VALUE`` overrides) with
a :class:`~scsn.errors.ConfigError` naming the key instead of yacs' traceback, and the device resolved for this
machine; :func:`load_model` builds the config's model and loads its weights with the one strict loader
(:func:`scsn.fastreid_patches.checkpoint.load_weights`).
"""
import difflib
import os
import re
import warnings
from typing import Optional, Sequence

import torch
import yaml

from fastreid.config import get_cfg
from fastreid.modeling import build_model

from ..config import add_scsn_config
from ..errors import ConfigError
from ..fastreid_patches.checkpoint import check_weights_path, load_weights

__all__ = ["build_config", "load_model", "recipe_teachers", "resolve_device", "runnable_device"]


def _config_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _config_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _explain_config_error(cfg, error, where):
    message = str(error.args[0]) if error.args else str(error)
    unknown = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, list(_config_keys(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return f"Unknown config key {key} in {where}.{hint}"
    mismatch = re.search(r"Type mismatch \((.+?) vs\. (.+?)\) with values \((.*) vs\. (.*)\) for config key: (\S+)",
                         message, re.S)
    if mismatch:
        expected, got, default, value, key = mismatch.groups()
        return (f"Config key {key} in {where} expects a value of {expected} (its default is {default}), "
                f"got {value!s} of {got}.")
    if "odd length" in message:
        return f"Config overrides in {where} come in KEY VALUE pairs; got an odd number of words: {message}"
    return f"Invalid config in {where}: {message}"


def merge_config(cfg, config_file: Optional[str], opts: Sequence[str] = ()):
    """``cfg.merge_from_file(config_file)`` (unless None) then ``cfg.merge_from_list(opts)``, with a
    :class:`ConfigError` naming the key, where it came from and what it expects."""
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise ConfigError(f"--config-file {config_file!r} is not a file.")
        try:
            cfg.merge_from_file(config_file)
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {config_file} (or a _BASE_ it names) is not valid YAML: {e}") from e
        except OSError as e:
            raise ConfigError(f"Cannot read config file {config_file} or a _BASE_ it names: {e}") from e
        except (KeyError, ValueError, AssertionError) as e:
            raise ConfigError(_explain_config_error(cfg, e, f"config file {config_file}")) from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(_explain_config_error(cfg, e, "the command line")) from e
    return cfg


def runnable_device(device: str) -> str:
    """``device``, or "cpu" where it names CUDA and this machine has none."""
    return "cpu" if device.startswith("cuda") and not torch.cuda.is_available() else device


def resolve_device(cfg):
    """Every ``.to("cuda")`` fails without CUDA: on such a machine a config that asks for ``MODEL.DEVICE: cuda`` runs on
    the CPU, with one warning (``SOLVER.AMP.ENABLED`` then means bf16 autocast where the CPU has bf16 units:
    scsn/fastreid_patches/compat.py). ``cfg`` must be mutable; it is returned for chaining."""
    if runnable_device(cfg.MODEL.DEVICE) != cfg.MODEL.DEVICE:
        cfg.MODEL.DEVICE = "cpu"
        warnings.warn("CUDA is not available; running on the CPU: MODEL.DEVICE cuda -> cpu", stacklevel=2)
    return cfg


def build_config(config_file: Optional[str], opts: Sequence[str] = (), *, inference: bool = False,
                 freeze: bool = True):
    """fast-reid's defaults + SCSN's keys + ``config_file`` (None: the defaults alone) + ``KEY VALUE`` overrides, the
    device resolved for this machine. ``inference``: the checkpoint will hold every weight, so no ImageNet weights
    are fetched, and a Distiller's student is built alone."""
    cfg = get_cfg()
    add_scsn_config(cfg)
    merge_config(cfg, config_file, opts)
    if inference:
        cfg.MODEL.BACKBONE.PRETRAIN = False
        if cfg.MODEL.META_ARCHITECTURE == "Distiller":
            # A distilled student is fast-reid's Baseline (Distiller.forward in eval mode, the same state dict: the
            # teachers are not in it); inference needs neither the teachers nor their files.
            cfg.MODEL.META_ARCHITECTURE = "Baseline"
    resolve_device(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def load_model(cfg) -> torch.nn.Module:
    """``build_model(cfg)`` in eval mode with ``cfg.MODEL.WEIGHTS`` loaded strictly."""
    check_weights_path(cfg.MODEL.WEIGHTS)  # before building: an R50 takes seconds
    return load_weights(build_model(cfg), cfg.MODEL.WEIGHTS).eval()


def recipe_teachers(cfg, config_files: Sequence[str]):
    """The configs among ``config_files`` whose runs a Distiller ``cfg`` learns from, one per KD.MODEL_CONFIG entry:
    the config whose OUTPUT_DIR holds that ``config.yaml`` (the two-step recipe of configs/*/distill/: train the
    teacher's config, then the student's). [] for another meta-architecture; a :class:`ConfigError` for an entry that
    no config's OUTPUT_DIR holds."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        return []
    by_output = {build_config(path).OUTPUT_DIR: path for path in config_files}
    found = [by_output.get(os.path.dirname(path)) for path in cfg.KD.MODEL_CONFIG]
    if None in found:
        raise ConfigError(f"KD.MODEL_CONFIG {list(cfg.KD.MODEL_CONFIG)}: each entry must be <OUTPUT_DIR>/config.yaml "
                          "of one of the given configs.")
    return found
