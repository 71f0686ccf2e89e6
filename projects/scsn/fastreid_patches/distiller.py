"""SCSN models as teachers in fast-reid's own ``Distiller`` (modeling/meta_arch/distiller.py), whose logic stays
upstream's: ``MODEL.META_ARCHITECTURE Distiller`` with ``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS`` (one or several
teachers) and ``KD.EMA``, from tools/train_net.py or fast-reid's projects/FastDistill/train_net.py with the README's
two lines. What upstream cannot do, and the patch for each:

- :28 ``get_cfg()`` then ``merge_from_file``: fast-reid's defaults lack SCSN's keys, so an SCSN teacher's config
  stopped with "Non-existent config key". The teacher's config gets SCSN's keys (:func:`teacher_config`).
- :37 ``build_model(cfg_t)``: the teacher's own ``MODEL.BACKBONE.PRETRAIN`` fetched ImageNet weights that its
  checkpoint replaces at once (offline: a failure), and its ``MODEL.DEVICE`` could name a device this machine lacks.
  Teachers are built without them, then moved to the student's device and memory format.
- :44 ``Checkpointer(model_t).load``: not strict, so a checkpoint that does not fit its config left the teacher in
  part at random initialisation with a logged note. Teachers load strictly (as does :66, the EMA copy's
  ``MODEL.WEIGHTS``).
- :104 ``model_t.heads(t_feat, targets)``: a cascade head returns one dict per stage; the teacher's head is wrapped
  in :class:`~scsn.modeling.distillation.CascadeTeacherHead` (``KD.CASCADE_LOGITS``).
- :46 teachers are plain list entries, never switched out of training mode, so their BatchNorm layers normalise
  with each batch's statistics (and keep updating running statistics nobody reads). With ``KD.TEACHER_BN_EVAL``
  (the default, chosen by measurement: README, "Distillation") they use their running statistics, the teacher as
  it was evaluated; the EMA copy of the student keeps upstream's batch statistics (its running statistics are
  never updated).
- :114 ``losses``: ``KD.LOGIT_WEIGHT`` scales upstream's ``loss_jsdiv`` (0 leaves it out: it needs the teachers'
  identities to be the student's), and ``KD.DESCRIPTOR.WEIGHT`` adds ``loss_kd_descriptor``
  (:func:`~scsn.modeling.distillation.similarity_distillation_loss`), averaged over the teachers as upstream
  averages its logit loss.
- :85-104 ``forward`` runs the student's and the teachers' backbones and keeps only their last maps. With
  ``KD.ATTENTION.WEIGHT`` each backbone gets a :class:`~scsn.modeling.distillation.StageTap` and ``losses`` adds
  ``loss_kd_attention`` (:func:`~scsn.modeling.distillation.attention_transfer_loss`), averaged over the teachers.
- :22 the student starts at random (or ImageNet) initialisation. With ``KD.INIT_FROM_TEACHER`` its backbone starts
  from the first teacher's (:func:`inherit_backbone`; no ImageNet weights are fetched for it), and :68's EMA copy
  from that student.

Bad settings stop before anything is built, with one message (:func:`check_kd_config`).
"""
import functools
import logging
import os

import torch
from torch import nn

from fastreid.config import get_cfg
from fastreid.modeling.heads import REID_HEADS_REGISTRY
from fastreid.modeling.meta_arch import Baseline, build, distiller
from fastreid.utils.checkpoint import Checkpointer

from ..config import add_scsn_config
from ..engine.defaults import merge_config, resolve_device, runnable_device
from ..errors import CheckpointError, ConfigError
from ..modeling.distillation import (CASCADE_LOGITS, CascadeTeacherHead, StageTap, attention_transfer_loss,
                                     similarity_distillation_loss)
from ..modeling.suppression import CascadedSuppressionHead
from .precision import channels_last

logger = logging.getLogger(__name__)

__all__ = ["apply", "check_kd_config", "inherit_backbone", "teacher_config"]


def teacher_config():
    """fast-reid's defaults with SCSN's keys: what upstream's ``get_cfg()`` at :28 gives a teacher's config."""
    return add_scsn_config(get_cfg())


def check_kd_config(cfg):
    """The KD settings of a Distiller config, checked before any model is built: one :class:`ConfigError` (or
    :class:`CheckpointError`) that names the key and says what to do."""
    kd = cfg.KD
    configs, weights = list(kd.MODEL_CONFIG), list(kd.MODEL_WEIGHTS)
    if len(configs) != len(weights):
        raise ConfigError(
            f"KD.MODEL_CONFIG lists {len(configs)} teacher configs but KD.MODEL_WEIGHTS {len(weights)} checkpoints: "
            "give one checkpoint per config, in the same order.")
    if not configs and not kd.EMA.ENABLED:
        raise ConfigError("MODEL.META_ARCHITECTURE Distiller needs a teacher: set KD.MODEL_CONFIG and "
                          "KD.MODEL_WEIGHTS (e.g. '(\"<run>/config.yaml\",)' and '(\"<run>/model_final.pth\",)'), or "
                          "KD.EMA.ENABLED True.")
    if kd.INIT_FROM_TEACHER and not configs:
        raise ConfigError("KD.INIT_FROM_TEACHER starts the student from its first teacher: set KD.MODEL_CONFIG and "
                          "KD.MODEL_WEIGHTS, or KD.INIT_FROM_TEACHER False.")
    if issubclass(REID_HEADS_REGISTRY.get(cfg.MODEL.HEADS.NAME), CascadedSuppressionHead):
        raise ConfigError("MODEL.META_ARCHITECTURE Distiller trains a single-head student (fast-reid's Baseline: BoT, "
                          "AGW, SBS); SCSN's cascade can be a teacher (KD.MODEL_CONFIG), not the student.")
    loss_weights = {"KD.LOGIT_WEIGHT": kd.LOGIT_WEIGHT, "KD.DESCRIPTOR.WEIGHT": kd.DESCRIPTOR.WEIGHT,
                    "KD.ATTENTION.WEIGHT": kd.ATTENTION.WEIGHT}
    negative = {k: v for k, v in loss_weights.items() if v < 0}
    if negative:
        raise ConfigError(f"KD loss weights must be >= 0, got {negative}.")
    if not any(loss_weights.values()) and not kd.INIT_FROM_TEACHER:
        raise ConfigError(f"{', '.join(loss_weights)} are all 0 and KD.INIT_FROM_TEACHER is False: the teachers would "
                          "teach nothing.")
    if kd.DESCRIPTOR.TEMPERATURE <= 0:
        raise ConfigError(f"KD.DESCRIPTOR.TEMPERATURE must be > 0, got {kd.DESCRIPTOR.TEMPERATURE}.")
    if kd.CASCADE_LOGITS not in CASCADE_LOGITS:
        raise ConfigError(f"KD.CASCADE_LOGITS must be one of {CASCADE_LOGITS}, got {kd.CASCADE_LOGITS!r}.")
    for i, (config_file, weights_file) in enumerate(zip(configs, weights)):
        where = f"teacher {i} (KD.MODEL_CONFIG[{i}] {config_file!r})"
        if not os.path.isfile(config_file):
            raise ConfigError(f"KD.MODEL_CONFIG[{i}] {config_file!r} is not a file: give the teacher's config.yaml, "
                              "in the OUTPUT_DIR of its training run.")
        try:
            cfg_t = merge_config(teacher_config(), config_file)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        if not os.path.isfile(weights_file):
            raise CheckpointError(f"KD.MODEL_WEIGHTS[{i}] {weights_file!r} is not a file: give the checkpoint the "
                                  f"teacher was trained to (model_final.pth in the OUTPUT_DIR of {config_file!r}).")
        teacher_classes, student_classes = cfg_t.MODEL.HEADS.NUM_CLASSES, cfg.MODEL.HEADS.NUM_CLASSES
        if kd.LOGIT_WEIGHT > 0 and teacher_classes and student_classes and teacher_classes != student_classes:
            raise ConfigError(
                f"{where} was trained on {teacher_classes} identities, the student's training set has "
                f"{student_classes}: the logit loss (KD.LOGIT_WEIGHT, fast-reid's loss_jsdiv) compares the two "
                "models class by class and cannot be used. Set KD.LOGIT_WEIGHT 0 and KD.DESCRIPTOR.WEIGHT 1: the "
                "descriptor loss needs no shared identities.")
        for key in ("PIXEL_MEAN", "PIXEL_STD"):
            if list(cfg_t.MODEL[key]) != list(cfg.MODEL[key]):
                raise ConfigError(
                    f"{where} normalises its input with MODEL.{key} {list(cfg_t.MODEL[key])}, the student with "
                    f"{list(cfg.MODEL[key])}; Distiller feeds the teacher the student's normalised images. Train the "
                    "student with the teacher's MODEL.PIXEL_MEAN and MODEL.PIXEL_STD.")
        if list(cfg_t.INPUT.SIZE_TEST) != list(cfg.INPUT.SIZE_TRAIN):
            logger.warning("%s was evaluated at INPUT.SIZE_TEST %s; it sees the student's %s training images.",
                           where, list(cfg_t.INPUT.SIZE_TEST), list(cfg.INPUT.SIZE_TRAIN))


def inherit_backbone(student: nn.Module, teacher: nn.Module) -> None:
    """Copy ``teacher``'s backbone into ``student``'s, tensor by tensor by name. SCSN's backbone is fast-reid's
    ResNet plus RDAM and NMFF: a BoT or SBS student of its depth finds every tensor of its own there. A student
    tensor that the teacher lacks or holds at another shape (another depth or width, AGW's non-local blocks, IBN)
    stops the run: half a copied network is no initialisation anyone measured."""
    theirs, ours = teacher.state_dict(), student.state_dict()
    unfit = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if unfit:
        raise ConfigError(
            "KD.INIT_FROM_TEACHER needs a teacher backbone of the student's depth and width (SCSN-R18 -> BoT-R18, "
            f"SCSN-R50 -> BoT-R50): {len(unfit)} of the student's {len(ours)} backbone tensors are missing from the "
            f"teacher's or have another shape there (first: {unfit[0]}). Set KD.INIT_FROM_TEACHER False for this "
            "pair.")
    student.load_state_dict({k: theirs[k] for k in ours})


def _build_teacher(cfg_t):
    """:37 and :60 ``build_model``: without ImageNet weights (the checkpoint loaded next replaces them), on a device
    this machine has (:meth:`Distiller.__init__` then moves it to the student's)."""
    cfg_t.MODEL.BACKBONE.PRETRAIN = False
    resolve_device(cfg_t)
    return build.build_model(cfg_t)  # looked up now: guards.py and precision.py wrap it


class _StrictCheckpointer(Checkpointer):
    """:44 and :66: a checkpoint that does not fill the teacher stops the run (scsn/fastreid_patches/checkpoint.py)."""

    strict = True


def _set_bn_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _patch_init(upstream):
    @functools.wraps(upstream)
    def __init__(self, cfg):
        check_kd_config(cfg)
        if cfg.KD.INIT_FROM_TEACHER and cfg.MODEL.BACKBONE.PRETRAIN:  # the teacher's backbone replaces ImageNet's
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.BACKBONE.PRETRAIN = False
        try:
            upstream(self, cfg)
        except CheckpointError as e:
            raise type(e)(f"A KD teacher checkpoint (KD.MODEL_WEIGHTS {list(cfg.KD.MODEL_WEIGHTS)}): {e}") from e
        # build_model moves the student after this constructor: teachers go where it will be.
        device = torch.device(runnable_device(cfg.MODEL.DEVICE))
        memory_format = torch.channels_last if channels_last(cfg) else torch.contiguous_format
        first_teacher = 1 if self.ema_enabled else 0  # upstream puts the EMA copy first
        for i, model_t in enumerate(self.model_ts):
            model_t.to(device=device, memory_format=memory_format)
            if i < first_teacher:
                continue
            if isinstance(model_t.heads, CascadedSuppressionHead):
                model_t.heads = CascadeTeacherHead(model_t.heads, cfg.KD.CASCADE_LOGITS)
            if cfg.KD.TEACHER_BN_EVAL:
                _set_bn_eval(model_t)
        if cfg.KD.INIT_FROM_TEACHER:
            inherit_backbone(self.backbone, self.model_ts[first_teacher].backbone)
            logger.info("KD.INIT_FROM_TEACHER: the student's backbone starts from teacher 0's.")
            if self.ema_enabled and not cfg.MODEL.WEIGHTS:  # :68, the EMA copy starts as the student: momentum 0
                self._momentum_update_key_encoder(0.0)
        self.kd_logit_weight = cfg.KD.LOGIT_WEIGHT
        self.kd_descriptor_weight = cfg.KD.DESCRIPTOR.WEIGHT
        self.kd_temperature = cfg.KD.DESCRIPTOR.TEMPERATURE
        self.kd_attention_weight = cfg.KD.ATTENTION.WEIGHT
        if self.kd_attention_weight > 0:  # the student's tap first, then one per teacher (the EMA copy's first)
            self.kd_taps = [StageTap(self.backbone, "student")] + [
                StageTap(model_t.backbone, f"teacher {i}") for i, model_t in enumerate(self.model_ts)]

    return __init__


def _patch_losses(upstream):
    @functools.wraps(upstream)
    def losses(self, s_outputs, t_outputs, gt_labels):
        if self.kd_logit_weight > 0:
            loss_dict = upstream(self, s_outputs, t_outputs, gt_labels)
            if self.kd_logit_weight != 1:
                loss_dict["loss_jsdiv"] = loss_dict["loss_jsdiv"] * self.kd_logit_weight
        else:
            loss_dict = Baseline.losses(self, s_outputs, gt_labels)
        if self.kd_descriptor_weight > 0:
            loss = sum(similarity_distillation_loss(s_outputs["features"], t["features"], self.kd_temperature)
                       for t in t_outputs)
            loss_dict["loss_kd_descriptor"] = loss * (self.kd_descriptor_weight / len(t_outputs))
        if self.kd_attention_weight > 0:
            student_maps = self.kd_taps[0].take()
            loss = sum(attention_transfer_loss(student_maps, tap.take(), self.kd_attention_weight)
                       for tap in self.kd_taps[1:])
            loss_dict["loss_kd_attention"] = loss / len(t_outputs)
        return loss_dict

    return losses


def apply():
    """Patch fast-reid's Distiller in place (idempotent)."""
    if hasattr(distiller.Distiller.__init__, "__wrapped__"):
        return
    distiller.get_cfg = teacher_config
    distiller.build_model = _build_teacher
    distiller.Checkpointer = _StrictCheckpointer
    distiller.Distiller.__init__ = _patch_init(distiller.Distiller.__init__)
    distiller.Distiller.losses = _patch_losses(distiller.Distiller.losses)
