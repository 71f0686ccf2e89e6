"""Residual Dual Attention Module (§3.1, eqs. 1-2) and the per-block attention variants of Table 5.

Every residual block of the backbone re-weights its residual branch, after the branch's last BN (and fast-reid's
optional SE) and before the identity addition, as CBAM does: channel attention first (CAM, eq. 1), then spatial
attention (SAM, or its residual form RSAM, eq. 2). The RSAM logit is carried from block to block of one ResNet stage
explicitly, ``forward(x, carry) -> (out, carry)``, so that the module holds no state between forwards.
"""
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.config import configurable

Carry = Optional[torch.Tensor]  # RSAM logit a_{n-1} (B, 1, H, W) of the previous block; None means a_0 = 0


class AttentionMode(NamedTuple):
    channel: bool  # apply CAM
    spatial: bool  # apply a spatial attention
    residual: bool  # the spatial attention is RSAM (eq. 2) rather than plain SAM


# MODEL.BACKBONE.RDAM.MODE -> attention of every residual block; one entry per Table 5 row.
ATTENTION_MODES: Dict[str, AttentionMode] = {
    "none": AttentionMode(channel=False, spatial=False, residual=False),
    "CAM": AttentionMode(channel=True, spatial=False, residual=False),
    "SAM": AttentionMode(channel=False, spatial=True, residual=False),
    "RSAM": AttentionMode(channel=False, spatial=True, residual=True),
    "CAM+SAM": AttentionMode(channel=True, spatial=True, residual=False),
    "RDAM": AttentionMode(channel=True, spatial=True, residual=True),
}


def check_attention(mode: str, reduction: int, spatial_kernel: int) -> AttentionMode:
    """Validate the MODEL.BACKBONE.RDAM keys; returns the parsed mode."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"MODEL.BACKBONE.RDAM.MODE must be one of {list(ATTENTION_MODES)}, got {mode!r}.")
    if reduction < 1:
        raise ValueError(f"MODEL.BACKBONE.RDAM.REDUCTION must be >= 1, got {reduction}.")
    if spatial_kernel < 1 or spatial_kernel % 2 == 0:
        # An even kernel with padding k // 2 would grow the map by one row and column.
        raise ValueError(f"MODEL.BACKBONE.RDAM.SPATIAL_KERNEL must be a positive odd number, got {spatial_kernel}.")
    return ATTENTION_MODES[mode]


def scale(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x * weights``, in place when no graph is recorded: the attention input is a block-internal temporary, and on
    the CPU a fresh feature-map-sized result costs more (allocation, page faults) than the product itself."""
    return x * weights if torch.is_grad_enabled() else x.mul_(weights)


class ChannelMax(torch.autograd.Function):
    """``x.amax(dim=1, keepdim=True)`` whose backward hands the gradient to the maximal channels. amax's own backward
    splits it evenly over ties, a count and a division over the whole map that made it the costliest op of a CPU
    training step; ties between float activations have measure zero, so the gradients agree."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 1, H, W)."""
        maxima = x.amax(dim=1, keepdim=True)
        ctx.save_for_backward(x, maxima)
        return maxima

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, maxima = ctx.saved_tensors
        return torch.where(x == maxima, grad, 0.0)


class ChannelAttention(nn.Module):
    """CAM, eq. 1: ``A_c = sigmoid(W2 relu(W1 M_avg) + W2 relu(W1 M_max))``; output ``x * A_c`` channel-wise.

    One two-layer MLP (W1: C -> C/r, W2: C/r -> C, with biases as in CBAM) is shared by both descriptors.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)  # keeps narrow layers (C < r) usable
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        # Sum then divide: mean's backward divides a whole map-sized gradient, sum's only broadcasts. Max pooling with
        # indices: its backward scatters, where amax's even split over ties counts and divides.
        average = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
        descriptors = torch.stack([average, F.adaptive_max_pool2d(x, 1).flatten(1)])  # (2, B, C): M_avg, M_max
        weights = torch.sigmoid(self.mlp(descriptors).sum(dim=0))  # (B, C)
        return scale(x, weights[:, :, None, None])


class SpatialAttention(nn.Module):
    """SAM, or with ``residual`` the RSAM of eq. 2.

    A k x k conv over the [channel-mean; channel-max] maps gives the logits ``w_n`` (B, 1, H, W) of block n.
    The extracted eq. 2 is garbled; we read it as a learned interpolation of attention *logits*:

        a_n = a_{n-1} + gamma * (w_n - a_{n-1}),   A_n = sigmoid(a_n),   a_0 = 0 at the first block of each stage,

    with gamma a trainable scalar initialised to 1, so that at init RSAM equals plain SAM and training can let the
    spatial map of earlier blocks persist (gamma < 1). Plain SAM ("without residual", Table 5) is
    ``A_n = sigmoid(w_n)`` with nothing carried. Output ``x * A_n``.
    """

    def __init__(self, kernel_size: int = 7, residual: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gamma = nn.Parameter(torch.ones(())) if residual else None

    def forward(self, x: torch.Tensor, carry: Carry = None) -> Tuple[torch.Tensor, Carry]:
        """x: (B, C, H, W), carry: a_{n-1} (B, 1, H, W) or None for a_0 = 0 -> (x * A_n, a_n or None for SAM)."""
        average = x.sum(dim=1, keepdim=True) / x.shape[1]  # channel mean; see ChannelAttention.forward
        pooled = torch.cat([average, ChannelMax.apply(x)], dim=1)  # (B, 2, H, W)
        logits = self.conv(pooled)  # (B, 1, H, W): w_n
        if self.gamma is None:
            return scale(x, torch.sigmoid(logits)), None
        previous = torch.zeros_like(logits) if carry is None else carry
        logits = previous + self.gamma * (logits - previous)  # a_n
        return scale(x, torch.sigmoid(logits)), logits


class DualAttention(nn.Module):
    """Attention of one residual block: CAM then SAM / RSAM, as selected by MODEL.BACKBONE.RDAM.MODE.

    "RDAM" is CAM + RSAM (§3.1); "none" passes the branch through. The RSAM logit ``carry`` goes in and out
    explicitly; the backbone resets it to None (a_0 = 0) at the first block of each stage.
    """

    @configurable
    def __init__(self, channels: int, mode: str = "RDAM", reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        parsed = check_attention(mode, reduction, spatial_kernel)
        self.mode = mode
        self.channel = ChannelAttention(channels, reduction) if parsed.channel else None
        self.spatial = SpatialAttention(spatial_kernel, parsed.residual) if parsed.spatial else None

    @classmethod
    def from_config(cls, cfg, channels: int):
        rdam = cfg.MODEL.BACKBONE.RDAM
        return {
            "channels": channels,
            "mode": rdam.MODE,
            "reduction": rdam.REDUCTION,
            "spatial_kernel": rdam.SPATIAL_KERNEL,
        }

    def forward(self, x: torch.Tensor, carry: Carry = None) -> Tuple[torch.Tensor, Carry]:
        """x: (B, C, H, W) residual branch, carry: RSAM logit of the previous block -> (out, carry)."""
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x, carry = self.spatial(x, carry)
        return x, carry

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
