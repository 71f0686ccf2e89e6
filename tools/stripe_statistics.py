#!/usr/bin/env python
"""What the SFE units of a trained SCSN select (§3.3-3.4): per cascade stage, over a dataset's test images, how
peaked the stripe weights are and which stripes the suppression zeroes.

For each stage t: the mean normalised entropy of the weights over the stripes still kept, H(w) / log(kept)
(1 = uniform, 0 = all weight on one stripe), the mean largest weight, and how often each of the K stripes is the
one stage t suppresses (the argmax among its kept stripes), with the entropy of that choice over the images
(0 = the same stripe for every image, log K = spread evenly). Degenerate selection shows as entropies near 0
(one stripe always wins) or weights that never leave 1/kept (the unit learned nothing).

    python tools/stripe_statistics.py --config-file configs/Synthetic/scsn_r18.yml \
        MODEL.WEIGHTS logs/synthetic/scsn_r18/model_final.pth
"""
import json
import math
import os

import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_test_loader
from tabulate import tabulate

from scsn import cli
from scsn.meta_arch import SCSN


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


@cli.run
def main(args):
    cfg, model = cli.load_trained(args)
    if not (isinstance(model, SCSN) and model.heads.sfe is not None):
        raise ValueError(f"{args.config_file} does not build an SCSN with SFE units: there are no stripe weights to read.")

    dataset = args.dataset or cfg.DATASETS.TESTS[0]
    loader, _ = build_reid_test_loader(cfg, dataset_name=dataset)
    num_stripes = model.heads.num_stripes
    counts = [torch.zeros(num_stripes, dtype=torch.long) for _ in range(model.heads.num_stages)]
    totals = [{"entropy": 0.0, "max_weight": 0.0, "images": 0} for _ in range(model.heads.num_stages)]
    with torch.no_grad():
        for batch in loader:
            stages = model.heads.cascade(model.backbone(model.preprocess_image(batch)))
            stage_statistics(stages, counts, totals)
    rows = summarise(counts, totals)

    print(tabulate(
        [[r["stage"], r["images"], f"{r['mean_normalised_entropy']:.3f}", f"{r['mean_max_weight']:.3f}",
          f"{r['argmax_entropy']:.2f} / {r['argmax_entropy_max']:.2f}",
          " ".join(f"{v:.2f}" for v in r["argmax_share_per_stripe"])] for r in rows],
        headers=["stage", "images", "H(w) / log(kept)", "max w", "H(argmax) / log K",
                 "share of images whose most salient kept stripe is k = 1..K (top to bottom)"],
        tablefmt="pipe"))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "stripe_statistics.json")
    with open(out, "w") as f:
        json.dump({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "dataset": dataset, "stages": rows},
                  f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(cli.parse_args(cli.dataset_tool_parser(__doc__.split("\n\n")[0])))
