"""Salient Feature Extraction unit (§3.3, eqs. 6-7) and the cascaded suppression head (§3.4, eqs. 8-9).

Stage t of the head boosts its input by the SFE unit, ``Y^t = X^t + Sal(X^t)`` (eq. 8), embeds ``Y^t`` with its own
pooling, FC reduction, BNNeck and classifier, and zeroes the most salient stripes of ``X^t`` to give the next stage's
input, ``X^{t+1} = X^t * B(X^t)`` (eq. 9). The re-id descriptor is the concatenation of all stages' embeddings.

Eq. 6, ``Sal(X^t) = W . X^t``, is the saliency selector's "element-wise multiplication" (§3.3): stripe k of X^t scaled
by its weight w_k, so that eq. 8 is ``Y^t = X^t (1 + W)`` stripe-wise. (Read as a dot product over the stripes, one
stripe-sized feature added to every stripe, it scored no better at the synthetic budget; README, "Accuracy".)
"""
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.config import configurable
from fastreid.layers import get_norm
from fastreid.modeling.heads import REID_HEADS_REGISTRY, EmbeddingHead


def stripe_height(height: int, num_stripes: int) -> int:
    """Rows per horizontal stripe; the feature map must split into ``num_stripes`` equal stripes."""
    if height % num_stripes:
        raise ValueError(
            f"The feature map height {height} is not divisible by MODEL.HEADS.NUM_STRIPES={num_stripes}. Choose "
            "INPUT.SIZE_TRAIN / INPUT.SIZE_TEST (and MODEL.BACKBONE.LAST_STRIDE / STAGE3_STRIDE) so that the "
            "backbone's output height is a multiple of the number of stripes."
        )
    return height // num_stripes


def expand_stripes(values: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-stripe values (B, K) -> per-row values broadcastable over a (B, C, K * rows, W) map."""
    return values.repeat_interleave(rows, dim=1)[:, None, :, None]  # (B, 1, H, 1)


def check_cascade(num_stages: int, num_stripes: int, suppress_stripes: int, with_sfe: bool) -> None:
    """Reject cascades that cannot run: every stage must keep at least one stripe of the feature map."""
    if num_stages < 1:
        raise ValueError(f"MODEL.HEADS.NUM_STAGES must be >= 1, got {num_stages}.")
    if num_stripes < 1:
        raise ValueError(f"MODEL.HEADS.NUM_STRIPES must be >= 1, got {num_stripes}.")
    if not 1 <= suppress_stripes < num_stripes:
        raise ValueError(
            f"MODEL.HEADS.SUPPRESS_STRIPES must be in [1, MODEL.HEADS.NUM_STRIPES), got {suppress_stripes} "
            f"with NUM_STRIPES={num_stripes}."
        )
    if (num_stages - 1) * suppress_stripes >= num_stripes:
        raise ValueError(
            f"MODEL.HEADS.NUM_STAGES={num_stages} stages suppressing MODEL.HEADS.SUPPRESS_STRIPES={suppress_stripes} "
            f"stripes each would zero all MODEL.HEADS.NUM_STRIPES={num_stripes} stripes before the last stage; "
            "need (NUM_STAGES - 1) * SUPPRESS_STRIPES < NUM_STRIPES."
        )
    if num_stages > 1 and not with_sfe:
        # B(X^t) zeroes the stripes the SFE weights rank most salient (eq. 9); without SFE there is no ranking.
        raise ValueError(
            f"MODEL.HEADS.NUM_STAGES={num_stages} needs MODEL.HEADS.WITH_SFE True: the suppression mask of eq. 9 "
            "is chosen by the SFE salience weights. Use NUM_STAGES 1 for the plain global branch."
        )


class SalientFeatureExtraction(nn.Module):
    """SFE unit (§3.3): a salience descriptor weighs K horizontal stripes; ``Sal(X) = W . X`` (eqs. 6-7)."""

    @configurable
    def __init__(self, channels: int, num_stripes: int, norm: str = "BN"):
        super().__init__()
        self.num_stripes = num_stripes
        # A 1x1 conv keeps each stripe's 1 x (H/K) x W descriptor computed from that stripe alone.
        self.descriptor = nn.Sequential(
            nn.Conv2d(channels, 1, kernel_size=1, bias=False),
            get_norm(norm, 1),
            nn.ReLU(inplace=True),
        )

    @classmethod
    def from_config(cls, cfg):
        return {
            "channels": cfg.MODEL.BACKBONE.FEAT_DIM,
            "num_stripes": cfg.MODEL.HEADS.NUM_STRIPES,
            "norm": cfg.MODEL.HEADS.NORM,
        }

    def weights(self, x: torch.Tensor, kept: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, H, W), kept: (B, K) bool or None for all -> the stripe weights W: (B, K), eq. 7.

        The softmax runs over the kept stripes only: a suppressed stripe of X^t is all zero, so it holds no feature
        to select (eq. 6 gives it Sal = 0 whatever its weight), and its descriptor ReLU(BN(0)) is a constant that
        would otherwise take softmax mass from the stripes stage t is meant to choose among (§3.4).
        """
        b, _, h, w = x.shape
        rows = stripe_height(h, self.num_stripes)
        descriptor = self.descriptor(x)  # (B, 1, H, W)
        z = descriptor.reshape(b, self.num_stripes, rows * w).mean(dim=2)  # (B, K): per-stripe average pooling
        if kept is not None:
            z = z.masked_fill(~kept, float("-inf"))
        return z.softmax(dim=1)

    def forward(self, x: torch.Tensor, kept: Optional[torch.Tensor] = None):
        """x: (B, C, H, W) -> Sal(x): (B, C, H, W) and the stripe weights W: (B, K)."""
        weights = self.weights(x, kept)
        return x * expand_stripes(weights, x.shape[2] // self.num_stripes), weights  # eq. 6: stripe k scaled by w_k


class StageEmbeddingHead(EmbeddingHead):
    """One cascade stage's embedding (§3.4): global pooling of Y^t, an FC reduction of the pooled vector
    (``embedding_dim``; 0 keeps it), fast-reid's BNNeck and classifier.

    Same modules and parameters as fast-reid's ``EmbeddingHead``; only the feature the metric losses read differs
    when there is a reduction: ``neck_feat="before"`` is the vector just before the BN neck, i.e. the reduced
    embedding (BoT's f_t: triplet before the BN neck, softmax and retrieval after it), where ``EmbeddingHead``
    would hand the triplet loss the pooled vector from before the FC. Without reduction both are the pooled vector.
    """

    @configurable
    def __init__(self, *, with_bnneck: bool, **kwargs):
        super().__init__(with_bnneck=with_bnneck, **kwargs)
        if kwargs["neck_feat"] not in ("before", "after"):
            raise ValueError(f"MODEL.HEADS.NECK_FEAT must be 'before' or 'after', got {kwargs['neck_feat']!r}.")
        self.num_reduction = len(self.bottleneck) - int(with_bnneck)  # bottleneck = [FC reduction], [BN neck]

    def forward(self, features: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """features: (B, C, H, W) -> (B, D) neck feature (eval) or fast-reid's head output dict (training)."""
        embedding = self.bottleneck[:self.num_reduction](self.pool_layer(features))  # (B, D, 1, 1)
        neck_feat = self.bottleneck[self.num_reduction:](embedding)[..., 0, 0]  # (B, D)
        if not self.training:
            return neck_feat
        if self.cls_layer.__class__.__name__ == "Linear":
            logits = F.linear(neck_feat, self.weight)
        else:
            logits = F.linear(F.normalize(neck_feat), F.normalize(self.weight))
        return {
            "cls_outputs": self.cls_layer(logits.clone(), targets),  # clone: the margin layers work in place
            "pred_class_logits": logits.mul(self.cls_layer.s),
            "features": embedding[..., 0, 0] if self.neck_feat == "before" else neck_feat,
        }


class CascadeStage(NamedTuple):
    """One stage's tensors: input X^t (B, C, H, W), boosted Y^t (B, C, H, W), SFE weights (B, K) or None, and
    kept (B, K) bool, the stripes of X^t not yet suppressed."""

    x: torch.Tensor
    y: torch.Tensor
    weights: Optional[torch.Tensor]
    kept: torch.Tensor


@REID_HEADS_REGISTRY.register()
class CascadedSuppressionHead(nn.Module):
    """T cascaded stages (§3.4): SFE boost (eq. 8), own embedding head, salience suppression (eq. 9).

    Training returns one fast-reid head output dict per stage; evaluation returns the (B, T * D) concatenation
    of the stages' embeddings, the descriptor the evaluator ranks.
    """

    @configurable
    def __init__(
            self,
            *,
            feat_dim: int,
            num_stages: int,
            num_stripes: int,
            suppress_stripes: int,
            with_sfe: bool,
            pool_type: str,
            suppressed_pool_type: str,
            embedding_dim: int,
            num_classes: int,
            neck_feat: str,
            cls_type: str,
            scale: float,
            margin: float,
            with_bnneck: bool,
            norm_type: str,
    ):
        super().__init__()
        check_cascade(num_stages, num_stripes, suppress_stripes, with_sfe)
        self.num_stripes = num_stripes
        self.suppress_stripes = suppress_stripes
        self.sfe = nn.ModuleList(
            [SalientFeatureExtraction(feat_dim, num_stripes, norm_type) for _ in range(num_stages)]
        ) if with_sfe else None
        # Stage 1 sees the whole map; after suppression the zeroed stripes bias the mean, so later stages use
        # SUPPRESSED_POOL_LAYER (max pooling in §3.4).
        self.stage_heads = nn.ModuleList([
            StageEmbeddingHead(
                feat_dim=feat_dim,
                embedding_dim=embedding_dim,
                num_classes=num_classes,
                neck_feat=neck_feat,
                pool_type=pool_type if t == 0 else suppressed_pool_type,
                cls_type=cls_type,
                scale=scale,
                margin=margin,
                with_bnneck=with_bnneck,
                norm_type=norm_type,
            )
            for t in range(num_stages)
        ])

    @classmethod
    def from_config(cls, cfg):
        heads = cfg.MODEL.HEADS
        return {
            "feat_dim": cfg.MODEL.BACKBONE.FEAT_DIM,
            "num_stages": heads.NUM_STAGES,
            "num_stripes": heads.NUM_STRIPES,
            "suppress_stripes": heads.SUPPRESS_STRIPES,
            "with_sfe": heads.WITH_SFE,
            "pool_type": heads.POOL_LAYER,
            "suppressed_pool_type": heads.SUPPRESSED_POOL_LAYER,
            "embedding_dim": heads.EMBEDDING_DIM,
            "num_classes": heads.NUM_CLASSES,
            "neck_feat": heads.NECK_FEAT,
            "cls_type": heads.CLS_LAYER,
            "scale": heads.SCALE,
            "margin": heads.MARGIN,
            "with_bnneck": heads.WITH_BNNECK,
            "norm_type": heads.NORM,
        }

    @property
    def num_stages(self) -> int:
        return len(self.stage_heads)

    def cascade(self, features: torch.Tensor) -> List[CascadeStage]:
        """features: (B, C, H, W) backbone map = X^1 -> the T stages' tensors (eqs. 8-9)."""
        b, _, h, _ = features.shape
        rows = stripe_height(h, self.num_stripes)
        kept = torch.ones(b, self.num_stripes, dtype=torch.bool, device=features.device)  # (B, K)
        x = features
        stages = []
        for t in range(self.num_stages):
            if self.sfe is None:
                y, weights = x, None
            else:
                weights = self.sfe[t].weights(x, kept)
                y = x * (1 + expand_stripes(weights, rows))  # eq. 8, X + Sal(X), in one pass over the map
            stages.append(CascadeStage(x, y, weights, kept))
            if t + 1 < self.num_stages:
                suppressed = self._most_salient(weights, kept)  # (B, K)
                kept = kept & ~suppressed
                x = x * expand_stripes((~suppressed).to(x.dtype), rows)  # eq. 9, B(X^t) a constant 0/1 mask
        return stages

    def _most_salient(self, weights: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The SUPPRESS_STRIPES largest-weight stripes among those still kept, as a (B, K) bool mask.

        Equal weights are common (the descriptor's ReLU can zero several stripes), and ``topk`` leaves the order of
        ties unspecified: an ONNX TopK (lower index first) then picked other stripes than PyTorch. Ranking by pairwise
        comparison with ties to the lower index is the same choice in every runtime, and exports as elementwise ops.
        """
        w = weights.detach()
        index = torch.arange(w.shape[1], device=w.device)
        first = (w[:, :, None] > w[:, None, :]) | ((w[:, :, None] == w[:, None, :]) & (index[:, None] < index[None, :]))
        ahead = (first & kept[:, :, None]).to(torch.int64).sum(dim=1)  # (B, K): kept stripes ranked before stripe k
        return kept & (ahead < self.suppress_stripes)

    def forward(self, features: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """features: (B, C, H, W) -> list of T output dicts (training) or (B, T * D) descriptor (eval)."""
        outputs = [head(stage.y, targets) for head, stage in zip(self.stage_heads, self.cascade(features))]
        if self.training:
            return outputs
        return torch.cat(outputs, dim=1)
