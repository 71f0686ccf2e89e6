"""SCSN's model (§3), one module per component of the paper, each registered in fast-reid's registries on import:

- ``attention``: RDAM, CAM + RSAM in every residual block (§3.1, eqs. 1-2);
- ``fusion``: NMFF, the non-local multi-stage fusion into stage 4 (§3.2, eqs. 3-5);
- ``backbone``: fast-reid's ResNet with both (``build_scsn_resnet_backbone``);
- ``suppression``: the SFE unit and the cascaded suppression head (§3.3-3.4, eqs. 6-9; ``CascadedSuppressionHead``);
- ``meta_arch``: the meta-architecture and its per-stage losses (§3.4, eqs. 10-12; ``SCSN``).
"""
from .backbone import SCSNResNet, build_scsn_resnet_backbone  # noqa: F401
from .meta_arch import SCSN  # noqa: F401
from .suppression import CascadedSuppressionHead  # noqa: F401
