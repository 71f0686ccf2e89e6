#!/usr/bin/env python
"""What the SFE units of a trained SCSN select over a dataset's test images (scsn/analysis/stripes.py): per cascade
stage, how peaked the stripe weights are and which stripes the suppression zeroes.

    python tools/stripe_statistics.py --config-file configs/Synthetic/scsn_r18.yml \
        MODEL.WEIGHTS logs/synthetic/scsn_r18/model_final.pth
"""
import os

import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_test_loader
from tabulate import tabulate

import scsn.results
from scsn.analysis.stripes import stage_statistics, summarise
from scsn.engine import cli
from scsn.errors import ConfigError
from scsn.modeling.meta_arch import SCSN


@cli.run
def main(args):
    cfg, model = cli.load_trained(args)
    if not (isinstance(model, SCSN) and model.heads.sfe is not None):
        raise ConfigError(f"{args.config_file} does not build an SCSN with SFE units: there are no stripe weights to read.")

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
    scsn.results.write(out, scsn.results.record({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                                                 "dataset": dataset, "stages": rows}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(cli.parse_args(cli.dataset_tool_parser(__doc__.split("\n\n")[0])))
