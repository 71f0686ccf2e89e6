"""SCSN as a teacher: what fast-reid's ``Distiller`` reads from a cascade, and a distillation loss for retrieval.

fast-reid's ``Distiller`` (modeling/meta_arch/distiller.py) calls each teacher's head and reads one output dict
from it: ``pred_class_logits`` for its logit loss (the JS divergence of Hinton et al.'s softened class
distributions). SCSN's cascaded suppression head (§3.4) returns one dict per stage, and its descriptor is the
concatenation of the T stages' embeddings. :class:`CascadeTeacherHead` gives ``Distiller`` one dict: the stages'
logits combined (their mean, or stage 1's) and the concatenated descriptor under ``features``.

Logits need the teacher and the student to share their identities, class for class; a retrieval model is judged by
how its descriptors rank a gallery instead. :func:`similarity_distillation_loss` teaches the student's descriptor
the teacher's geometry on each batch: for every image, the softmax over its cosine similarities to the other images
of the batch (a distribution over its in-batch neighbours, sharper at a lower temperature), and the KL divergence
from the teacher's distribution to the student's. It needs no shared identity set and no equal width.

Where SCSN looks is what its salience guidance (§3.2-3.3, RDAM) learns. :func:`attention_transfer_loss` is attention
transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017): each ResNet stage's spatial
attention map, the channel mean of the squared activations, L2-normalised, and the student's maps pulled towards the
teacher's. It needs no shared identities and no equal width; SCSN's stages at stride 1 give larger maps than a BoT
student's, which are average-pooled to the student's size. :class:`StageTap` reads the stage maps during the forward
fast-reid's ``Distiller`` already runs.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["CASCADE_LOGITS", "CascadeTeacherHead", "StageTap", "attention_map", "attention_transfer_loss",
           "neighbour_log_probs", "similarity_distillation_loss"]

CASCADE_LOGITS = ("mean", "stage1")


def neighbour_log_probs(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, D) -> (B, B - 1): each row's log-softmax over its cosine similarities to the other B - 1 images."""
    normed = F.normalize(features, dim=1)
    b = normed.shape[0]
    similarity = normed @ normed.t()
    others = similarity.masked_select(~torch.eye(b, dtype=torch.bool, device=similarity.device)).view(b, b - 1)
    return F.log_softmax(others / temperature, dim=1)


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_i KL(p_i || q_i), p_i and q_i the softmax over j != i of cos(t_i, t_j) / T and cos(s_i, s_j) / T.

    student: (B, D_s) descriptors, teacher: (B, D_t) (no gradient flows into it); B >= 2. Computed in fp32 outside
    autocast: 1 / T magnifies the rounding of fp16 or bf16 cosines.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[0] < 2:
        raise ValueError(f"Need the same batch of >= 2 images, got {tuple(student.shape)} and {tuple(teacher.shape)}.")
    with torch.autocast(student.device.type, enabled=False):
        log_q = neighbour_log_probs(student.float(), temperature)
        log_p = neighbour_log_probs(teacher.detach().float(), temperature)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def attention_map(feature: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) stage map -> (B, h * w): the channel mean of its squared activations, average-pooled to ``size``
    = (h, w) where it differs, flattened and L2-normalised (Zagoruyko and Komodakis's Q / ||Q||_2 with p = 2)."""
    energy = feature.float().pow(2).mean(dim=1, keepdim=True)
    if tuple(energy.shape[-2:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy, size)
    return F.normalize(energy.flatten(1), dim=1)


def attention_transfer_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                            beta: float) -> torch.Tensor:
    """beta / 2 * sum over stages j of the mean over images and positions of (a_s^j - a_t^j)^2, with a^j the
    :func:`attention_map` of stage j, the teacher's at the student's size (the loss as the paper's code computes it;
    its beta is 1000). Only the student receives a gradient; fp32 outside autocast."""
    if len(student) != len(teacher):
        raise ValueError(f"Need one teacher map per student map, got {len(student)} and {len(teacher)}.")
    with torch.autocast(student[0].device.type, enabled=False):
        return beta / 2 * sum(
            (attention_map(s, s.shape[-2:]) - attention_map(t.detach(), s.shape[-2:])).pow(2).mean()
            for s, t in zip(student, teacher))


class StageTap:
    """The output maps of a ResNet backbone's four stages (``layer1`` .. ``layer4``), kept from its last training
    forward. A forward hook on the ReLU of each stage's last block keeps that module's last output: fast-reid's
    BasicBlock and Bottleneck and SCSN's blocks (:meth:`~scsn.modeling.backbone.SCSNResNet.block_forward`) end with
    it. Nothing is kept in eval mode."""

    def __init__(self, backbone: nn.Module, name: str):
        stages = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
        if any(not isinstance(s, nn.Sequential) or not isinstance(getattr(s[-1], "relu", None), nn.ReLU)
               for s in stages):
            raise ConfigError(f"KD.ATTENTION reads the four ResNet stages (layer1 .. layer4) of each backbone; the "
                              f"{name}'s {type(backbone).__name__} has none. Set KD.ATTENTION.WEIGHT 0.")
        self.maps: List[torch.Tensor] = [None] * 4
        for i, stage in enumerate(stages):
            stage[-1].relu.register_forward_hook(self._keeper(i))

    def _keeper(self, i: int):
        def keep(module, inputs, output):
            if module.training:
                self.maps[i] = output
        return keep

    def take(self) -> List[torch.Tensor]:
        """The four maps of the last training forward, released here (they hold the student's graph)."""
        maps, self.maps = self.maps, [None] * 4
        if any(m is None for m in maps):
            raise RuntimeError("StageTap.take() before a training forward of the backbone.")
        return maps


class CascadeTeacherHead(nn.Module):
    """A :class:`~scsn.modeling.suppression.CascadedSuppressionHead` as ``Distiller`` reads a teacher's head.

    ``logits``: ``"mean"`` of the T stages' ``pred_class_logits``, or ``"stage1"``'s (the stage that sees the whole
    map). ``features``: the T stages' training-time ``features`` concatenated, as the evaluation descriptor is.
    The wrapped head must be in training mode (it then returns one dict per stage).
    """

    def __init__(self, head: nn.Module, logits: str = "mean"):
        super().__init__()
        if logits not in CASCADE_LOGITS:
            raise ConfigError(f"KD.CASCADE_LOGITS must be one of {CASCADE_LOGITS}, got {logits!r}.")
        self.head = head
        self.logits = logits

    def forward(self, features: torch.Tensor, targets: torch.Tensor = None) -> dict:
        stages: List[dict] = self.head(features, targets)
        logits = [stage["pred_class_logits"] for stage in stages]
        return {
            "pred_class_logits": torch.stack(logits).mean(dim=0) if self.logits == "mean" else logits[0],
            "features": torch.cat([stage["features"] for stage in stages], dim=1),
        }
