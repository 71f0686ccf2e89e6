import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import scsn  # noqa: E402,F401  (compat patches and registrations before any fastreid import below)
from fastreid.config import get_cfg  # noqa: E402


@pytest.fixture
def cfg():
    """fast-reid's defaults plus SCSN's keys, on the CPU, without ImageNet weights."""
    c = get_cfg()
    scsn.add_scsn_config(c)
    c.MODEL.DEVICE = "cpu"
    c.MODEL.BACKBONE.PRETRAIN = False
    return c
