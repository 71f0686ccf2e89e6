"""SCSN backbone (§3.1-3.2, Fig. 2): fast-reid's ResNet with RDAM in every residual block and NMFF after stage 4.

The ResNet, its ImageNet (or PRETRAIN_PATH) weights, IBN, SE and non-local blocks (WITH_NL, used by the SCSN-on-SBS
configs) come from fast-reid's ``build_resnet_backbone``;
its submodules are adopted under their own names (conv1, bn1, layer1-4), so pretrained files and fast-reid
checkpoints map onto them, and the attention modules (eqs. 1-2) and the fusion block (eqs. 3-5) are new
submodules with their own init. Each block is run explicitly so that the attention sits on the residual branch
after its last BN and SE and before the identity addition, for BasicBlock (R18/34) and Bottleneck (R50/101) alike.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from fastreid.config import configurable
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.backbones.resnet import BasicBlock, Bottleneck, ResNet, build_resnet_backbone

from .attention import Carry, DualAttention, check_attention
from .fusion import MultiStageFusion, check_fusion

DEPTHS = ("18x", "34x", "50x", "101x")


def residual_branch(block: nn.Module) -> List[Tuple[nn.Conv2d, nn.Module]]:
    """The (conv, norm) pairs of a fast-reid residual block's branch, in order."""
    if isinstance(block, Bottleneck):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
    if isinstance(block, BasicBlock):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    raise TypeError(f"Expected a fast-reid BasicBlock or Bottleneck, got {type(block).__name__}.")


def set_stage_stride(stage: nn.Sequential, stride: int) -> None:
    """Re-stride a stage in place: its first block's strided 3x3 conv and its downsample conv (weights unchanged)."""
    first = stage[0]
    # Both fast-reid blocks stride with the branch's 3x3 conv (BasicBlock conv1, Bottleneck conv2).
    strided = next(conv for conv, _ in residual_branch(first) if conv.kernel_size == (3, 3))
    strided.stride = (stride, stride)
    first.downsample[0].stride = (stride, stride)
    first.stride = stride


def check_scsn_backbone(stage3_stride: int, attention_mode: str, reduction: int, spatial_kernel: int,
                        fusion_stages: Sequence[int], key_channels: int, value_channels: int,
                        pool_bins: Sequence[int], fusion_merge: str) -> None:
    """Validate the SCSN backbone keys before anything is built (or ImageNet weights are fetched)."""
    if stage3_stride not in (1, 2):
        raise ValueError(f"MODEL.BACKBONE.STAGE3_STRIDE must be 1 or 2, got {stage3_stride}.")
    check_attention(attention_mode, reduction, spatial_kernel)
    check_fusion(fusion_stages, key_channels, value_channels, pool_bins, fusion_merge)


class SCSNResNet(nn.Module):
    """ResNet stem and stages 1-4 with per-block attention (RDAM modes, Table 5) and optional NMFF on stage 4."""

    @configurable
    def __init__(
            self,
            *,
            resnet: ResNet,
            stage3_stride: int = 2,
            attention_mode: str = "RDAM",
            reduction: int = 16,
            spatial_kernel: int = 7,
            fusion_stages: Sequence[int] = (3,),
            key_channels: int = 256,
            value_channels: int = 2048,
            pool_bins: Sequence[int] = (1, 3, 6, 8),
            fusion_merge: str = "add",
            norm: str = "BN",
    ):
        """resnet: a fast-reid ResNet (already holding its pretrained weights), adopted module by module."""
        super().__init__()
        check_scsn_backbone(stage3_stride, attention_mode, reduction, spatial_kernel, fusion_stages, key_channels,
                            value_channels, pool_bins, fusion_merge)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        set_stage_stride(self.layer3, stage3_stride)
        # fast-reid's non-local blocks (WITH_NL, the SBS recipe), under fast-reid's names, after the same blocks.
        self.non_local_after: List[dict] = []
        for i in range(1, 5):
            if hasattr(resnet, f"NL_{i}"):
                setattr(self, f"NL_{i}", getattr(resnet, f"NL_{i}"))
            positions = [j for j in getattr(resnet, f"NL_{i}_idx") if j >= 0]
            self.non_local_after.append({block: k for k, block in enumerate(positions)})

        # One attention module per residual block; attention[i][j] serves block j of stage i + 1.
        self.attention = nn.ModuleList([
            nn.ModuleList([
                DualAttention(residual_branch(block)[-1][0].out_channels, attention_mode, reduction, spatial_kernel)
                for block in stage
            ])
            for stage in self.stages
        ])
        self.nmff: Optional[MultiStageFusion] = MultiStageFusion(
            stage_channels=self.stage_channels,
            stages=fusion_stages,
            key_channels=key_channels,
            value_channels=value_channels,
            pool_bins=pool_bins,
            merge=fusion_merge,
            norm=norm,
        ) if fusion_stages else None

    @classmethod
    def from_config(cls, cfg):
        backbone = cfg.MODEL.BACKBONE
        check_scsn_backbone(backbone.STAGE3_STRIDE, backbone.RDAM.MODE, backbone.RDAM.REDUCTION,
                            backbone.RDAM.SPATIAL_KERNEL, backbone.NMFF.STAGES, backbone.NMFF.KEY_CHANNELS,
                            backbone.NMFF.VALUE_CHANNELS, backbone.NMFF.POOL_BINS, backbone.NMFF.MERGE)
        if backbone.DEPTH not in DEPTHS:
            raise ValueError(f"MODEL.BACKBONE.DEPTH must be one of {list(DEPTHS)}, got {backbone.DEPTH!r}.")
        return {
            "resnet": build_resnet_backbone(cfg),  # loads PRETRAIN / PRETRAIN_PATH weights
            "stage3_stride": backbone.STAGE3_STRIDE,
            "attention_mode": backbone.RDAM.MODE,
            "reduction": backbone.RDAM.REDUCTION,
            "spatial_kernel": backbone.RDAM.SPATIAL_KERNEL,
            "fusion_stages": list(backbone.NMFF.STAGES),
            "key_channels": backbone.NMFF.KEY_CHANNELS,
            "value_channels": backbone.NMFF.VALUE_CHANNELS,
            "pool_bins": list(backbone.NMFF.POOL_BINS),
            "fusion_merge": backbone.NMFF.MERGE,
            "norm": backbone.NORM,
        }

    @property
    def stages(self) -> Tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    @property
    def stage_channels(self) -> List[int]:
        """Output channels of stages 1-4, e.g. [64, 128, 256, 512] for R18, [256, 512, 1024, 2048] for R50."""
        return [residual_branch(stage[-1])[-1][0].out_channels for stage in self.stages]

    @staticmethod
    def block_forward(block: nn.Module, attention: DualAttention, x: torch.Tensor,
                      carry: Carry) -> Tuple[torch.Tensor, Carry]:
        """One residual block with its attention on the branch, after the last BN and SE, before the addition."""
        branch = residual_branch(block)
        out = x
        for i, (conv, norm) in enumerate(branch):
            out = norm(conv(out))
            if i < len(branch) - 1:
                out = block.relu(out)
        out, carry = attention(block.se(out), carry)
        identity = x if block.downsample is None else block.downsample(x)
        out += identity  # in place, as fast-reid's blocks do: no backward needs the attention's output
        return block.relu(out), carry

    def stage_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, 3, H, W) images -> the maps of stages 1-4, each (B, C_i, H_i, W_i), before NMFF."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i, (stage, attentions) in enumerate(zip(self.stages, self.attention), start=1):
            carry = None  # a_0 = 0: the residual spatial attention restarts at each stage (eq. 2)
            for j, (block, attention) in enumerate(zip(stage, attentions)):
                x, carry = self.block_forward(block, attention, x, carry)
                if j in self.non_local_after[i - 1]:
                    x = getattr(self, f"NL_{i}")[self.non_local_after[i - 1][j]](x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> stage-4 map after NMFF, (B, C4, H4, W4)."""
        features = self.stage_features(x)
        return features[3] if self.nmff is None else self.nmff(features)


@BACKBONE_REGISTRY.register()
def build_scsn_resnet_backbone(cfg):
    """Build the SCSN ResNet (RDAM + NMFF) from MODEL.BACKBONE; see :class:`SCSNResNet`."""
    return SCSNResNet(cfg)
