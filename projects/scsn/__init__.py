"""SCSN for fast-reid: the Salience-Guided Cascaded Suppression Network (Chen et al., CVPR 2020).

Importing this package is the registration manifest: it first makes the fastreid 1.4.0 wheel run on
today's stack (``compat``), then registers every SCSN component in fast-reid's registries.
"""
from . import compat

compat.apply()

from . import checks  # noqa: E402

checks.apply()

from . import checkpoint  # noqa: E402

checkpoint.apply()

from .config import add_scsn_config  # noqa: E402,F401
from .suppression import CascadedSuppressionHead  # noqa: E402,F401
from .meta_arch import SCSN  # noqa: E402,F401
from .synthetic import SyntheticReID, SyntheticReIDTiny, SyntheticReIDBench  # noqa: E402,F401
from .datasets import CUHK03Detected  # noqa: E402,F401
from .extractor import FeatureExtractor  # noqa: E402,F401
from .backbone import build_scsn_resnet_backbone  # noqa: E402,F401
