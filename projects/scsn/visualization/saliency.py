"""What SCSN looks at (the paper's Fig. 6): each cascade stage's boosted map, stripe weights and suppressed stripes, and
the RDAM spatial attention of chosen residual blocks, recorded with forward hooks (the model code is unchanged).

A stage's map is drawn as what its pooling draws from each position (:func:`pooled_view`): the descriptor is made of
that, not of the map's energy. NMFF can turn most of the map negative (``MODEL.BACKBONE.NMFF.MERGE add``), and then
the energy sum_c x^2 is largest where the descriptor draws nothing (README, "NMFF's sign").
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Sequence, Tuple

import torch
from torch import nn

from fastreid.layers.pooling import GeneralizedMeanPooling

from ..errors import ArgumentError, ConfigError
from ..modeling.suppression import CascadeStage


class Saliency(NamedTuple):
    """One batch: ``stages`` as returned by ``model.heads.cascade`` (B first in every tensor), ``attention`` maps
    block name -> A_n (B, h, w) in (0, 1)."""

    stages: List[CascadeStage]
    attention: Dict[str, torch.Tensor]
    pools: List[nn.Module]  # each stage head's pooling layer, stage 1 first


def block_name(stage: int, block: int) -> str:
    """ResNet stage 1-4 and block index 0.. -> the name the pictures and ``--blocks`` use, e.g. ``s4b2``."""
    return f"s{stage}b{block}"


def spatial_attention_blocks(model: nn.Module) -> Dict[str, nn.Module]:
    """Block name -> the SpatialAttention (SAM or RSAM) of that residual block, for every block that has one."""
    attention = getattr(model.backbone, "attention", None)
    if attention is None:
        return {}
    return {
        block_name(i + 1, j): blocks[j].spatial
        for i, blocks in enumerate(attention)
        for j in range(len(blocks))
        if blocks[j].spatial is not None
    }


def default_blocks(model: nn.Module) -> List[str]:
    """The last block with spatial attention in each ResNet stage: the map each stage hands on."""
    last = {}
    for name in spatial_attention_blocks(model):
        last[name.split("b")[0]] = name
    return list(last.values())


def check_saliency_model(model: nn.Module) -> None:
    if not hasattr(getattr(model, "heads", None), "cascade"):
        raise ConfigError(
            f"Saliency pictures need an SCSN model (MODEL.META_ARCHITECTURE SCSN with MODEL.HEADS.NAME "
            f"CascadedSuppressionHead); this config builds {type(model).__name__} with "
            f"{type(getattr(model, 'heads', None)).__name__}."
        )


@contextmanager
def record_attention(model: nn.Module, blocks: Sequence[str]) -> Iterator[Dict[str, torch.Tensor]]:
    """Within the block, every forward fills the dict with block name -> A_n (B, h, w) of the named blocks.

    RSAM returns ``(x * A_n, a_n)`` with ``A_n = sigmoid(a_n)``; plain SAM returns ``(x * A_n, None)`` with
    ``A_n = sigmoid(conv(...))``, so its map is read from its conv.
    """
    available = spatial_attention_blocks(model)
    unknown = [b for b in blocks if b not in available]
    if unknown:
        raise ArgumentError(
            f"No spatial attention in block(s) {unknown}; this model has it in {list(available) or 'no block'} "
            "(names s<ResNet stage>b<block index>; MODEL.BACKBONE.RDAM.MODE with SAM or RSAM adds it)."
        )
    maps: Dict[str, torch.Tensor] = {}

    def rsam_hook(name):
        return lambda module, inputs, output: maps.__setitem__(name, torch.sigmoid(output[1])[:, 0].detach().clone())

    def sam_hook(name):
        return lambda module, inputs, output: maps.__setitem__(name, torch.sigmoid(output)[:, 0].detach().clone())

    handles = []
    for name in blocks:
        module = available[name]
        if module.gamma is not None:
            handles.append(module.register_forward_hook(rsam_hook(name)))
        else:
            handles.append(module.conv.register_forward_hook(sam_hook(name)))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def compute_saliency(model: nn.Module, images: torch.Tensor, blocks: Sequence[str]) -> Saliency:
    """images: (B, 3, H, W) floats in [0, 255] -> the cascade's stages and the attention maps of ``blocks``, on the
    CPU."""
    check_saliency_model(model)
    with record_attention(model, blocks) as maps:
        features = model.backbone(model.preprocess_image(images))
    stages = [CascadeStage(*(None if v is None else v.cpu() for v in stage)) for stage in model.heads.cascade(features)]
    return Saliency(stages=stages, attention={name: a.cpu() for name, a in maps.items()},
                    pools=[head.pool_layer for head in model.heads.stage_heads])


def activation_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) mean of squared activations over channels: where the map carries energy, whatever
    its sign (the pictures' ``--view energy``)."""
    return x.pow(2).mean(dim=1)


def pooling_exponent(pool: nn.Module) -> float:
    """p of a stage head's pooling: GeM's (learned, for fast-reid's GeneralizedMeanPoolingP), 1 for the others."""
    if not isinstance(pool, GeneralizedMeanPooling):
        return 1.0
    return float(pool.p.detach()) if torch.is_tensor(pool.p) else float(pool.p)


def pooled_view(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): what the pooling ``pool`` draws from each position, summed over channels.

    GeM pools ``(mean_HW max(x, eps)^p)^(1/p)`` per channel, so a position weighs ``max(x, eps)^p`` and a negative
    entry nothing; average and max pooling are drawn as the positive part ``max(x, 0)``, what a max can pick and the
    part of a mean that a BN neck and ReLU-fed stages build on."""
    if isinstance(pool, GeneralizedMeanPooling):
        return x.clamp(min=pool.eps).pow(pooling_exponent(pool)).sum(dim=1)
    return x.clamp(min=0).sum(dim=1)


def kept_share(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """(B, C, H, W) -> (B,): the share of each image's map that its pooling keeps.

    GeM: ``sum max(x, 0)^p / sum |x|^p``, the part of the map's p-th power mass left after the clamp (1: no negative
    entry; 0.1: nine tenths of it clamped away). Average pooling: the same with p = 1, the positive entries' share of
    the mean's absolute mass (the negative ones enter the mean with their sign). Max pooling: the share of channels
    whose maximum is positive."""
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        return (x.flatten(2).amax(dim=2) > 0).double().mean(dim=1)
    p = pooling_exponent(pool)
    magnitude = x.abs().double().pow(p).flatten(1).sum(1)
    return x.clamp(min=0).double().pow(p).flatten(1).sum(1) / magnitude.clamp(min=1e-30)


def suppressed_after(stages: Sequence[CascadeStage], t: int) -> torch.Tensor:
    """(B, K) bool: the stripes stage t (0-based) zeroes for stage t + 1; all False for the last stage."""
    if t + 1 >= len(stages):
        return torch.zeros_like(stages[t].kept)
    return stages[t].kept & ~stages[t + 1].kept


def parse_blocks(spec: Sequence[str], model: nn.Module) -> Tuple[str, ...]:
    """``--blocks`` values (``s4b2`` names, ``all``, ``none``) -> block names; empty spec -> :func:`default_blocks`."""
    if not spec:
        return tuple(default_blocks(model))
    if list(spec) == ["none"]:
        return ()
    if list(spec) == ["all"]:
        return tuple(spatial_attention_blocks(model))
    return tuple(spec)
