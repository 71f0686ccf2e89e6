"""Non-local Multi-stage Feature Fusion, NMFF (§3.2, eqs. 3-5, Figs. 3 and 5).

For every fused low-level stage l an asymmetric non-local block (ANN's AFNB, Zhu et al. ICCV 2019) lets each
position of the stage-4 map F_h gather context from the pyramid-pooled stage-l map F_l (eqs. 3-4). The fused maps
of all chosen stages are concatenated and reduced by a 1x1 conv kappa (eq. 5) to F_f.

Eq. 5 defines F_f but not how it joins the stage-4 map the head reads; ANN's AFNB adds its context to F_h. Three
readings, ``MODEL.BACKBONE.NMFF.MERGE``:

* ``add``: ``F_h + F_f``. F_h is a ReLU output (>= 0) but F_f is unbounded, so the sum can go negative; trained
  SCSN-R18 models turn most of their map negative this way (README, "NMFF's sign").
* ``add_relu``: ``ReLU(F_h + F_f)``, ending the block as a residual block ends, so the head reads a non-negative
  map as with no NMFF.
* ``bn_add``: ``F_h + BN(F_f)``, the BN initialised to zero scale and shift (fast-reid's non-local ``W_z``).

``add`` and ``add_relu`` start kappa at zero, ``bn_add`` the BN: every reading is exactly the identity at init and
leaves the pretrained features undisturbed. The default, and every shipped config's, is ``add``: over four seeds
of the synthetic benchmark neither other reading beats it beyond the seeds' spread, with GeM or with average
pooling, and what GeM pools from its map lies on the person as much as with ``add_relu`` (README, "NMFF's sign").
"""
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.config import configurable
from fastreid.layers import get_norm

FUSIBLE_STAGES = (1, 2, 3)
MERGES = ("add", "add_relu", "bn_add")


def check_fusion(stages: Sequence[int], key_channels: int, value_channels: int, pool_bins: Sequence[int],
                 merge: str = "add") -> None:
    """Validate the MODEL.BACKBONE.NMFF keys; ``stages`` may be empty (NMFF off)."""
    if any(s not in FUSIBLE_STAGES for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(
            f"MODEL.BACKBONE.NMFF.STAGES must list distinct low-level ResNet stages out of {list(FUSIBLE_STAGES)} "
            f"(stage 4 is the map they are fused into), got {list(stages)}."
        )
    if key_channels < 1 or value_channels < 1:
        raise ValueError(
            f"MODEL.BACKBONE.NMFF.KEY_CHANNELS and VALUE_CHANNELS must be >= 1, got {key_channels} and "
            f"{value_channels}."
        )
    if not pool_bins or any(b < 1 for b in pool_bins):
        raise ValueError(
            f"MODEL.BACKBONE.NMFF.POOL_BINS must be a non-empty list of sizes >= 1, got {list(pool_bins)}."
        )
    if merge not in MERGES:
        raise ValueError(f"MODEL.BACKBONE.NMFF.MERGE must be one of {list(MERGES)}, got {merge!r}.")


def pyramid_pool(x: torch.Tensor, bins: Sequence[int]) -> torch.Tensor:
    """Fig. 3: average-pool x (B, C, H, W) to every b x b grid and concatenate -> (B, C, S), S = sum(b * b)."""
    return torch.cat([F.adaptive_avg_pool2d(x, b).flatten(2) for b in bins], dim=2)


class AsymmetricNonLocal(nn.Module):
    """Eqs. 3-4: queries from the high-level map, keys and values from the pyramid-pooled low-level map.

    ``M = softmax_S(c^-0.5 F_q^T F_k)`` and ``F^{hl} = M F_v``, reshaped to the high-level map's size. Query and key
    embeddings are 1x1 conv + BN + ReLU and the value embedding a plain 1x1 conv, as in ANN's AFNB.
    """

    def __init__(
            self,
            high_channels: int,
            low_channels: int,
            key_channels: int,
            value_channels: int,
            pool_bins: Sequence[int] = (1, 3, 6, 8),
            norm: str = "BN",
    ):
        super().__init__()
        self.pool_bins = tuple(pool_bins)
        self.scale = key_channels ** -0.5
        self.query = nn.Sequential(  # kappa_q
            nn.Conv2d(high_channels, key_channels, kernel_size=1, bias=False),
            get_norm(norm, key_channels),
            nn.ReLU(inplace=True),
        )
        self.key = nn.Sequential(  # kappa_k
            nn.Conv2d(low_channels, key_channels, kernel_size=1, bias=False),
            get_norm(norm, key_channels),
            nn.ReLU(inplace=True),
        )
        self.value = nn.Conv2d(low_channels, value_channels, kernel_size=1)  # kappa_v

    def attention(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """high: (B, C_h, H_h, W_h), low: (B, C_l, H_l, W_l) -> M^T: (B, N_h, S), each row a softmax over S."""
        query = self.query(high).flatten(2)  # (B, c, N_h)
        key = pyramid_pool(self.key(low), self.pool_bins)  # (B, c, S)
        return torch.softmax(self.scale * query.transpose(1, 2) @ key, dim=2)  # (B, N_h, S)

    def pooled_value(self, low: torch.Tensor) -> torch.Tensor:
        """F_v = pyramid_pool(kappa_v(low)): (B, c_f, S). Average pooling and the affine 1x1 conv commute (each pooled
        cell is a convex combination), so the conv runs on the S pooled cells instead of all H_l x W_l positions."""
        return self.value(pyramid_pool(low, self.pool_bins)[..., None]).squeeze(3)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """-> F^{hl}: (B, c_f, H_h, W_h)."""
        b, _, h, w = high.shape
        similarity = self.attention(high, low)  # (B, N_h, S)
        value = self.pooled_value(low)  # (B, c_f, S)
        return (value @ similarity.transpose(1, 2)).reshape(b, -1, h, w)  # (B, c_f, N_h) -> (B, c_f, H_h, W_h)


class MultiStageFusion(nn.Module):
    """The NMFF block, eq. 5: ``F_f = kappa(cat(F^{hl_1}, ..., F^{hl_n}))`` over the fused stages, merged into F_h as
    ``merge`` says (module docstring)."""

    @configurable
    def __init__(
            self,
            *,
            stage_channels: Sequence[int],
            stages: Sequence[int],
            key_channels: int,
            value_channels: int,
            pool_bins: Sequence[int] = (1, 3, 6, 8),
            merge: str = "add",
            norm: str = "BN",
    ):
        """stage_channels: channels of ResNet stages 1-4; stages: the low-level stages (1-3) fused into stage 4."""
        super().__init__()
        check_fusion(stages, key_channels, value_channels, pool_bins, merge)
        if not stages:
            raise ValueError("MODEL.BACKBONE.NMFF.STAGES is empty: NMFF is off, so build no MultiStageFusion.")
        self.stages = tuple(sorted(stages))
        high_channels = stage_channels[3]
        self.non_local = nn.ModuleList([
            AsymmetricNonLocal(high_channels, stage_channels[s - 1], key_channels, value_channels, pool_bins, norm)
            for s in self.stages
        ])
        self.merge = merge
        # A bias before the BN would be cancelled by it.
        self.kappa = nn.Conv2d(len(self.stages) * value_channels, high_channels, kernel_size=1,
                               bias=merge != "bn_add")
        # Zero kappa, or the zero-scale BN after it: the block starts as the identity on the stage-4 map.
        if merge == "bn_add":
            self.norm = get_norm(norm, high_channels)
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        else:
            nn.init.zeros_(self.kappa.weight)
            nn.init.zeros_(self.kappa.bias)

    @classmethod
    def from_config(cls, cfg, stage_channels: Sequence[int]):
        nmff = cfg.MODEL.BACKBONE.NMFF
        return {
            "stage_channels": stage_channels,
            "stages": list(nmff.STAGES),
            "key_channels": nmff.KEY_CHANNELS,
            "value_channels": nmff.VALUE_CHANNELS,
            "pool_bins": list(nmff.POOL_BINS),
            "merge": nmff.MERGE,
            "norm": cfg.MODEL.BACKBONE.NORM,
        }

    def stage_terms(self, features: List[torch.Tensor]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Per fused stage l, the two factors of its share of F_f (bias aside): ``(K_l F_v,l, M_l^T)``, (B, C_h, S)
        and (B, S, N_h), with K_l kappa's weight columns of stage l.

        kappa is linear, so ``kappa(cat_l(F_v,l M_l^T)) = b + sum_l (K_l F_v,l) M_l^T``: projecting the S pooled values
        before the attention, rather than the H_h x W_h fused positions after it, gives the same map for fewer
        multiply-adds (S = 110 < H_h x W_h = 192 at 384x128).
        """
        high = features[3]
        weights = self.kappa.weight.flatten(1).split(self.kappa.in_channels // len(self.stages), dim=1)  # K_l
        for s, block, weight in zip(self.stages, self.non_local, weights):
            low = features[s - 1]
            yield weight @ block.pooled_value(low), block.attention(high, low).transpose(1, 2)

    def accumulate(self, base: torch.Tensor, features: List[torch.Tensor]) -> torch.Tensor:
        """``base + sum_l (K_l F_v,l) M_l^T`` as a map shaped like stage 4, (B, C_h, H_h, W_h), in stage 4's memory
        format: for a channels_last map the products are taken transposed, (B, N_h, C_h), so that nothing is copied
        back to NCHW."""
        high = features[3]
        b, c, h, w = high.shape
        transposed = not high.is_contiguous() and high.is_contiguous(memory_format=torch.channels_last)
        out = base.permute(0, 2, 3, 1).reshape(b, h * w, c) if transposed else base.reshape(b, c, h * w)
        for projected, attention in self.stage_terms(features):
            out = (torch.baddbmm(out, attention.transpose(1, 2), projected.transpose(1, 2)) if transposed
                   else torch.baddbmm(out, projected, attention))
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2) if transposed else out.reshape(b, c, h, w)

    def fused(self, features: List[torch.Tensor]) -> torch.Tensor:
        """F_f = kappa(cat_l F^{hl_l}) (normalised, for ``bn_add``): (B, C_h, H_h, W_h)."""
        high = features[3]
        bias = self.kappa.bias if self.kappa.bias is not None else high.new_zeros(high.shape[1])
        out = self.accumulate(bias[:, None, None].expand_as(high), features)
        return self.norm(out) if self.merge == "bn_add" else out

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        """features: the maps of stages 1-4, stage 4 = F_h (B, C_h, H_h, W_h) last -> the merged map, same shape."""
        high = features[3]
        if self.merge == "bn_add":
            return high + self.fused(features)
        out = self.accumulate(high + self.kappa.bias[:, None, None], features)  # F_h + b, then F_f's terms
        return torch.relu(out) if self.merge == "add_relu" else out
