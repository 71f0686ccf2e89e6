"""SCSN meta-architecture (§3.4, Fig. 2) and its losses (eqs. 10-12 with intermediate supervision).

fast-reid's Baseline contract (backbone -> heads -> losses); the head is the cascaded suppression head, whose T
stages are each supervised by label-smoothed cross-entropy (eq. 10) and batch-hard triplet loss (eq. 11), and the
total loss is their stage-weighted sum (eq. 12).
"""
from typing import List, Optional

import torch

from fastreid.config import configurable
from fastreid.modeling.heads import REID_HEADS_REGISTRY
from fastreid.modeling.losses import cross_entropy_loss, log_accuracy, pairwise_circleloss, pairwise_cosface, \
    triplet_loss
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY, Baseline

from .suppression import CascadedSuppressionHead, check_cascade

LOSS_NAMES = ("CrossEntropyLoss", "TripletLoss", "CircleLoss", "Cosface")



def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def resnet_feature_height(image_height: int, stage3_stride: int, last_stride: int) -> int:
    """Height of fast-reid's ResNet stage-4 map for an input of ``image_height`` rows."""
    h = _conv_out(image_height, 7, 2, 3)  # stem conv
    h = -(-(h - 3) // 2) + 1  # 3x3/2 max pool with ceil_mode=True, no padding
    for stride in (2, stage3_stride, last_stride):  # layer2..layer4; each strides with a 3x3, pad-1 conv
        h = _conv_out(h, 3, stride, 1)
    return h


def _stage3_stride(backbone) -> Optional[int]:
    """layer3's stride for the ResNet backbones whose output height is derived arithmetically, else None."""
    if backbone.NAME == "build_scsn_resnet_backbone":
        return backbone.STAGE3_STRIDE
    if backbone.NAME == "build_resnet_backbone":
        return 2  # fast-reid's ResNet fixes it
    return None


def _input_height(cfg, train: bool):
    """(image height, the config key that sets it), or (None, key) when the height depends on each image."""
    if cfg.INPUT.CROP.ENABLED:
        return cfg.INPUT.CROP.SIZE[0], "INPUT.CROP.SIZE"
    key = "SIZE_TRAIN" if train else "SIZE_TEST"
    size = cfg.INPUT[key]
    # One number resizes the shorter side and keeps each image's aspect ratio; <= 0 does not resize.
    return (size[0] if len(size) == 2 and size[0] > 0 else None), f"INPUT.{key}"


def check_stripe_heights(cfg) -> None:
    """Fail at build time when the train or test feature map cannot be split into NUM_STRIPES equal stripes."""
    backbone = cfg.MODEL.BACKBONE
    stage3_stride = _stage3_stride(backbone)
    if stage3_stride is None:
        return  # other backbones: the head checks the actual height on the first forward
    num_stripes = cfg.MODEL.HEADS.NUM_STRIPES
    for train in (True, False):
        image_height, key = _input_height(cfg, train)
        if image_height is None:
            continue
        height = resnet_feature_height(image_height, stage3_stride, backbone.LAST_STRIDE)
        if height % num_stripes:
            raise ValueError(
                f"{key} height {image_height} gives a {height}-row feature map with MODEL.BACKBONE.NAME "
                f"{backbone.NAME} (MODEL.BACKBONE.STAGE3_STRIDE={stage3_stride}, "
                f"MODEL.BACKBONE.LAST_STRIDE={backbone.LAST_STRIDE}), which does not split into "
                f"MODEL.HEADS.NUM_STRIPES={num_stripes} equal stripes. Change the input height, the strides or "
                "NUM_STRIPES."
            )


def _stage_weights(cfg) -> List[float]:
    weights = list(cfg.MODEL.LOSSES.STAGE_WEIGHTS)
    num_stages = cfg.MODEL.HEADS.NUM_STAGES
    if not weights:
        return [1.0] * num_stages
    if len(weights) != num_stages:
        raise ValueError(
            f"MODEL.LOSSES.STAGE_WEIGHTS has {len(weights)} entries but MODEL.HEADS.NUM_STAGES is {num_stages}; "
            "give one weight per stage or [] for 1.0 each."
        )
    return [float(w) for w in weights]


@META_ARCH_REGISTRY.register()
class SCSN(Baseline):
    """Backbone (RDAM + NMFF ResNet) -> cascaded suppression head; per-stage losses weighted by STAGE_WEIGHTS."""

    @configurable
    def __init__(self, *, stage_weights: List[float], **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.heads, CascadedSuppressionHead):
            raise ValueError("SCSN needs MODEL.HEADS.NAME CascadedSuppressionHead (one output per stage).")
        if len(stage_weights) != self.heads.num_stages:
            raise ValueError(
                f"{len(stage_weights)} MODEL.LOSSES.STAGE_WEIGHTS for {self.heads.num_stages} MODEL.HEADS.NUM_STAGES."
            )
        self.stage_weights = list(stage_weights)

    @classmethod
    def from_config(cls, cfg):
        # Validate everything cheap before building the backbone.
        head_cls = REID_HEADS_REGISTRY.get(cfg.MODEL.HEADS.NAME)
        if not issubclass(head_cls, CascadedSuppressionHead):
            raise ValueError(
                f"MODEL.META_ARCHITECTURE SCSN needs MODEL.HEADS.NAME CascadedSuppressionHead, "
                f"got {cfg.MODEL.HEADS.NAME}."
            )
        heads = cfg.MODEL.HEADS
        check_cascade(heads.NUM_STAGES, heads.NUM_STRIPES, heads.SUPPRESS_STRIPES, heads.WITH_SFE)
        unknown = [name for name in cfg.MODEL.LOSSES.NAME if name not in LOSS_NAMES]
        if unknown or not cfg.MODEL.LOSSES.NAME:
            raise ValueError(
                f"MODEL.LOSSES.NAME must be a non-empty subset of {LOSS_NAMES}, got {cfg.MODEL.LOSSES.NAME}."
            )
        stage_weights = _stage_weights(cfg)
        check_stripe_heights(cfg)
        return {**super().from_config(cfg), "stage_weights": stage_weights}

    def losses(self, outputs, gt_labels):
        """outputs: the head's per-stage dicts -> {loss_<name>_s<t>: weighted loss} for t = 1..T (eq. 12)."""
        log_accuracy(outputs[0]["pred_class_logits"].detach(), gt_labels)
        loss_names = self.loss_kwargs["loss_names"]
        ce, tri = self.loss_kwargs["ce"], self.loss_kwargs["tri"]
        circle, cosface = self.loss_kwargs["circle"], self.loss_kwargs["cosface"]
        loss_dict = {}
        for t, (stage, weight) in enumerate(zip(outputs, self.stage_weights), start=1):
            logits, features = stage["cls_outputs"], stage["features"]
            if "CrossEntropyLoss" in loss_names:  # eq. 10
                loss_dict[f"loss_cls_s{t}"] = weight * ce["scale"] * cross_entropy_loss(
                    logits, gt_labels, ce["eps"], ce["alpha"])
            if "TripletLoss" in loss_names:  # eq. 11
                loss_dict[f"loss_triplet_s{t}"] = weight * tri["scale"] * triplet_loss(
                    features, gt_labels, tri["margin"], tri["norm_feat"], tri["hard_mining"])
            if "CircleLoss" in loss_names:
                loss_dict[f"loss_circle_s{t}"] = weight * circle["scale"] * pairwise_circleloss(
                    features, gt_labels, circle["margin"], circle["gamma"])
            if "Cosface" in loss_names:
                loss_dict[f"loss_cosface_s{t}"] = weight * cosface["scale"] * pairwise_cosface(
                    features, gt_labels, cosface["margin"], cosface["gamma"])
        return loss_dict
