"""What a teacher hands its student in fast-reid's Distiller (scsn/fastreid_patches/distiller.py, docs/distillation.md):
on the student's training batches, the logits ``loss_jsdiv`` reads (``KD.CASCADE_LOGITS``) and the neighbour
distribution of the descriptor loss (``KD.DESCRIPTOR.TEMPERATURE``), with the teacher run as ``Distiller.forward``
runs it in training (its BatchNorm as ``KD.TEACHER_BN_EVAL`` leaves it)."""
from typing import Dict, List, Sequence

import torch

from ..modeling.distillation import CASCADE_LOGITS, CascadeTeacherHead, neighbour_log_probs

__all__ = ["teacher_statistics"]


def _teachers(distiller) -> list:
    return distiller.model_ts[1:] if distiller.ema_enabled else distiller.model_ts  # upstream puts the EMA copy first


def positive_mass(features: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B,): the share of each image's descriptor-loss distribution (softmax over its cosine similarities to the other
    images of the batch, / ``temperature``) that falls on images of its own identity."""
    b = targets.numel()
    others = ~torch.eye(b, dtype=torch.bool, device=targets.device)
    same = (targets[:, None] == targets[None, :]).masked_select(others).view(b, b - 1)
    return (neighbour_log_probs(features, temperature).exp() * same).sum(dim=1)


def teacher_statistics(distiller, batches: Sequence[dict], temperatures: Sequence[float]) -> Dict[str, List[dict]]:
    """Over ``batches`` (training batches of the student's loader), for the first teacher of ``distiller`` (a built
    fast-reid Distiller): ``logits``, per ``KD.CASCADE_LOGITS`` choice (a cascade teacher) the top-1 accuracy of its
    logits on the batch's identities and the mean probability of the true identity; ``descriptor``, per temperature,
    the mean of :func:`positive_mass`."""
    model_t = _teachers(distiller)[0]
    choices = CASCADE_LOGITS if isinstance(model_t.heads, CascadeTeacherHead) else ("head",)
    sums = {c: {"top1": 0.0, "p_true": 0.0} for c in choices}
    mass = {t: 0.0 for t in temperatures}
    images = 0
    kept = getattr(model_t.heads, "logits", None)
    with torch.no_grad():
        for batch in batches:
            targets = batch["targets"].to(distiller.device)
            feats = model_t.backbone(distiller.preprocess_image(batch))
            for choice in choices:
                if choice != "head":
                    model_t.heads.logits = choice
                out = model_t.heads(feats, targets)
                logits = out["pred_class_logits"].float()
                sums[choice]["top1"] += (logits.argmax(dim=1) == targets).sum().item()
                sums[choice]["p_true"] += logits.softmax(dim=1).gather(1, targets[:, None]).sum().item()
            for t in temperatures:
                mass[t] += positive_mass(out["features"].float(), targets, t).sum().item()
            images += targets.numel()
    if kept is not None:
        model_t.heads.logits = kept
    return {
        "logits": [{"cascade_logits": c, "top1": s["top1"] / images, "p_true": s["p_true"] / images}
                   for c, s in sums.items()],
        "descriptor": [{"temperature": t, "positive_mass": m / images} for t, m in mass.items()],
        "images": images,
    }
