"""What the backbone modules of a trained SCSN do to its features (§3.1-3.2), and what the head pools of them.

Per ResNet stage: the mean and spread (std over images, channels or positions) of RDAM's channel gates A_c (eq. 1)
and spatial gates A_n (eq. 2), the mean share of the residual branch that passes both, mean(A_c) x mean(A_n) per
image (1 = the branch untouched, 0.25 = both gates at CBAM's initial 0.5), and RSAM's gamma.

For NMFF (eq. 5), with F_4 the stage-4 map, F_f = kappa(cat_l F^{hl_l}) the fused context and X^1 the merged map the
head reads (``MODEL.BACKBONE.NMFF.MERGE``): how much the fusion changes the map, ||X^1 - F_4|| / ||F_4||; the share of
negative entries of each fused stage's term of F_f, of F_f and of X^1 (F_4, a ReLU output, has none); and per cascade
stage t, the share of Y^t's pooled mass that its pooling keeps (:func:`kept_share`: GeM clamps negative entries to
eps, so a map that is mostly negative is pooled from its few positive entries).

With person masks (the synthetic datasets draw them: ``SyntheticReID.person_mask``), the share of each map's
energy (sum_c X^2, what the old pictures drew) and of its pooled mass (what the descriptor is made of) that lies on
the person, for F_4, X^1 and every Y^t.
"""
from collections import defaultdict
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..visualization.saliency import kept_share, pooled_view, record_attention, spatial_attention_blocks


class Moments:
    """Running count, sum and sum of squares of scalars, for a mean and standard deviation."""

    def __init__(self):
        self.n, self.sum, self.sq = 0, 0.0, 0.0

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().double()
        self.n += values.numel()
        self.sum += values.sum().item()
        self.sq += values.pow(2).sum().item()

    def summary(self) -> Dict[str, float]:
        mean = self.sum / self.n
        return {"mean": mean, "std": max(self.sq / self.n - mean * mean, 0.0) ** 0.5}


def negative_share(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) share of entries < 0 per image."""
    return (x.flatten(1) < 0).double().mean(dim=1)


def mask_share(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """values (B, h, w) >= 0, masks (B, H, W) bool -> (B,) share of each image's values on the mask, each cell weighted
    by the part of it the mask covers (area-averaged to the map's size)."""
    cover = F.adaptive_avg_pool2d(masks[:, None].double(), values.shape[-2:])[:, 0]
    return (values.double() * cover).flatten(1).sum(1) / values.double().flatten(1).sum(1).clamp(min=1e-30)


class GateStatistics:
    """Forward hooks that accumulate the gate, fusion and pooling statistics of every forward of ``model``, an SCSN
    (its backbone and cascaded suppression head, whatever modules they have on)."""

    def __init__(self, model):
        self.model = model
        self.stats = defaultdict(lambda: defaultdict(Moments))  # row -> quantity -> moments
        self.blocks = spatial_attention_blocks(model)
        self._channel = {}
        self._handles = []
        self._stage4: Optional[torch.Tensor] = None  # F_4 of the current batch, read by the NMFF hook
        for i, blocks in enumerate(getattr(model.backbone, "attention", None) or []):
            for j, block in enumerate(blocks):
                if block.channel is not None:
                    self._handles.append(block.channel.mlp.register_forward_hook(self._channel_hook(i + 1, j)))
        if model.backbone.nmff is not None:
            self._handles.append(model.backbone.nmff.register_forward_hook(self._fusion_hook))

    def _channel_hook(self, stage, block):
        def hook(module, inputs, output):  # output: (2, B, C), the MLP of M_avg and M_max; eq. 1 sums them
            gates = torch.sigmoid(output.sum(dim=0))
            self._channel[(stage, block)] = gates
            self.stats[stage]["channel"].add(gates)
        return hook

    def _fusion_hook(self, module, inputs, output):
        features = inputs[0]
        high = features[3]
        nmff = self.stats["nmff"]
        nmff["ratio"].add((output - high).flatten(1).norm(dim=1) / high.flatten(1).norm(dim=1).clamp(min=1e-12))
        nmff["negative F_4"].add(negative_share(high))
        nmff["negative F_f"].add(negative_share(module.fused(features)))
        nmff["negative X^1"].add(negative_share(output))
        for s, (projected, attention) in zip(module.stages, module.stage_terms(features)):
            nmff[f"negative term of stage {s}"].add(negative_share(projected @ attention))
        self._stage4 = high

    def _on_person(self, name, x, pool, masks):
        row = self.stats[f"on person: {name}"]
        row["energy"].add(mask_share(x.pow(2).sum(dim=1), masks))  # what the pictures drew before
        row["pooled"].add(mask_share(pooled_view(x, pool), masks))

    def forward(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None) -> None:
        """Run the model on a batch of normalised images (B, 3, H, W) and accumulate; ``masks`` (B, H, W) bool: the
        person's pixels of each image, for the shares that lie on the person."""
        self._channel.clear()
        self._stage4 = None
        with record_attention(self.model, list(self.blocks)) as maps:
            features = self.model.backbone(images)
        for name, spatial in maps.items():
            stage, block = (int(n) for n in name[1:].split("b"))
            self.stats[stage]["spatial"].add(spatial)
            channel = self._channel.get((stage, block))
            self.stats[stage]["passed"].add(spatial.mean(dim=(1, 2)) * (channel.mean(dim=1) if channel is not None
                                                                         else 1))
        heads = self.model.heads
        if masks is not None:
            first_pool = heads.stage_heads[0].pool_layer
            if self._stage4 is not None:
                self._on_person("F_4 (stage 4 before NMFF)", self._stage4, first_pool, masks)
            self._on_person("X^1 (what the head reads)", features, first_pool, masks)
        for t, (stage, head) in enumerate(zip(heads.cascade(features), heads.stage_heads), start=1):
            self.stats[f"pooling of stage {t}"]["kept"].add(kept_share(stage.y, head.pool_layer))
            if masks is not None:
                self._on_person(f"Y^{t}", stage.y, head.pool_layer, masks)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def summary(self) -> List[dict]:
        """One row per ResNet stage (1-4), then "nmff", the cascade stages' pooling and the on-person shares."""
        rows = []
        for key, quantities in sorted(self.stats.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0]))):
            row = {"row": key, **{name: moments.summary() for name, moments in quantities.items()}}
            if isinstance(key, int):
                gammas = [m.gamma.item() for b, m in self.blocks.items()
                          if b.startswith(f"s{key}b") and m.gamma is not None]
                row["gamma_mean"] = sum(gammas) / len(gammas) if gammas else None
            rows.append(row)
        return rows
