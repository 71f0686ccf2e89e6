"""What the SFE units of a trained SCSN select (§3.3-3.4): per cascade stage, how peaked the stripe weights are and
which stripes the suppression zeroes.

For each stage t: the mean normalised entropy of the weights over the stripes still kept, H(w) / log(kept)
(1 = uniform, 0 = all weight on one stripe), the mean largest weight, and how often each of the K stripes is the
one stage t suppresses (the argmax among its kept stripes), with the entropy of that choice over the images
(0 = the same stripe for every image, log K = spread evenly). Degenerate selection shows as entropies near 0
(one stripe always wins) or weights that never leave 1/kept (the unit learned nothing).
"""
import math

import torch


def stage_statistics(stages, counts, totals):
    """Accumulate one batch of ``CascadedSuppressionHead.cascade`` output into per-stage sums."""
    for t, stage in enumerate(stages):
        kept = stage.kept.sum(dim=1).clamp(min=2).to(stage.weights.dtype)  # (B,): log(1) = 0 has no entropy to norm
        p = stage.weights.clamp(min=1e-12)
        entropy = -(stage.weights * p.log()).sum(dim=1) / kept.log()  # (B,)
        chosen = stage.weights.masked_fill(~stage.kept, -1).argmax(dim=1)  # (B,) the stripe eq. 9 zeroes next
        totals[t]["entropy"] += entropy.sum().item()
        totals[t]["max_weight"] += stage.weights.max(dim=1).values.sum().item()
        totals[t]["images"] += stage.weights.shape[0]
        counts[t] += torch.bincount(chosen, minlength=counts[t].numel())


def summarise(counts, totals):
    rows = []
    for t, (count, total) in enumerate(zip(counts, totals), start=1):
        share = count.double() / count.sum()
        choice_entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
        rows.append({
            "stage": t,
            "images": total["images"],
            "mean_normalised_entropy": total["entropy"] / total["images"],
            "mean_max_weight": total["max_weight"] / total["images"],
            "argmax_share_per_stripe": [round(v, 4) for v in share.tolist()],
            "argmax_entropy": choice_entropy,
            "argmax_entropy_max": math.log(count.numel()),
        })
    return rows
