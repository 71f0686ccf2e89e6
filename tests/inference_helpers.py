"""Shared by the inference-tool tests: a small SCSN checkpoint whose stripe choices differ between images, the
SyntheticReIDTiny images, and the tools' ``main`` run in-process."""
import importlib.util
import os

import torch

from scsn.engine import build_config
from fastreid.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml")
# 64x32 inputs give an 8-row stage-4 map (stride 1 in stages 3 and 4): four stripes of two rows; the Tiny
# dataset's 128x64 images are resized to it.
SMALL = ["INPUT.SIZE_TEST", "[64, 32]", "INPUT.SIZE_TRAIN", "[64, 32]", "MODEL.HEADS.NUM_STRIPES", "4",
         "MODEL.DEVICE", "cpu", "TEST.IMS_PER_BATCH", "16", "DATASETS.TESTS", "('SyntheticReIDTiny',)"]


def small_cfg(*opts):
    return build_config(CONFIG, SMALL + list(opts), inference=True)


def perturb_stripe_choices(model, seed=0):
    """Give the SFE units weights under which stripe rankings differ between images (a fresh model ranks every
    image alike), and make stage 2's descriptor zero everywhere: all its kept stripes tie, the case a runtime's
    own order of ties decided before."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sfe in model.heads.sfe:
            conv = sfe.descriptor[0]
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
            sfe.descriptor[1].bias.fill_(0.5)
        model.heads.sfe[1].descriptor[1].weight.zero_()
        model.heads.sfe[1].descriptor[1].bias.fill_(-1.0)  # ReLU(-1) = 0: equal weights over the kept stripes
    return model


def make_checkpoint(directory, *opts, seed=0):
    """A fast-reid style checkpoint ({"model": state_dict}) of the small SCSN, with NUM_CLASSES 0 in its config as
    fast-reid's saved config.yaml has it; returns (path, model)."""
    torch.manual_seed(seed)
    cfg = small_cfg(*opts)
    model = perturb_stripe_choices(build_model(cfg).eval(), seed)
    path = os.path.join(str(directory), "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path, model


def tiny_images(split="query"):
    from scsn.engine.cli import dataset_items

    return [item[0] for item in dataset_items("SyntheticReIDTiny", split)]


def load_tool(name):
    """tools/<name>.py as a module (its ``main`` and ``get_parser``)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name, *argv):
    from scsn.engine.cli import parse_args

    tool = load_tool(name)
    return tool.main(parse_args(tool.get_parser(), argv))
