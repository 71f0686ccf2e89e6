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
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["CASCADE_LOGITS", "CascadeTeacherHead", "neighbour_log_probs", "similarity_distillation_loss"]

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
