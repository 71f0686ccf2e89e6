"""SCSN for fast-reid: the Salience-Guided Cascaded Suppression Network (Chen et al., CVPR 2020).

Importing this package does two things, in this order:
1. patch the fastreid 1.4.0 wheel so that it runs on today's stack (``fastreid_patches``);
2. register SCSN's backbone, head, meta-architecture and datasets in fast-reid's registries.
"""
from . import fastreid_patches

fastreid_patches.apply()

from .config import add_scsn_config  # noqa: E402,F401
from .data import CUHK03Detected, SyntheticReID, SyntheticReIDBench, SyntheticReIDTiny  # noqa: E402,F401
from .inference import FeatureExtractor  # noqa: E402,F401
from .modeling import SCSN, CascadedSuppressionHead, build_scsn_resnet_backbone  # noqa: E402,F401
