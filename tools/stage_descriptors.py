#!/usr/bin/env python
"""Which test descriptor of a trained SCSN retrieves best over a dataset's test split (scsn/analysis/stages.py):
the stages' concatenation (the evaluator's), the concatenation of L2-normalised stages, each stage alone.

    python tools/stage_descriptors.py --config-file configs/Synthetic/scsn_r18.yml \
        MODEL.WEIGHTS logs/synthetic/scsn_r18/model_final.pth
"""
import os

import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_test_loader
from tabulate import tabulate

import scsn.results
from scsn.analysis.stages import retrieval, variants
from scsn.engine import cli
from scsn.errors import ConfigError
from scsn.modeling.meta_arch import SCSN


@cli.run
def main(args):
    cfg, model = cli.load_trained(args)
    if not isinstance(model, SCSN):
        raise ConfigError(f"{args.config_file} does not build an SCSN: there are no stages to compare.")

    dataset = args.dataset or cfg.DATASETS.TESTS[0]
    loader, num_query = build_reid_test_loader(cfg, dataset_name=dataset)
    features, pids, camids = [], [], []
    with torch.no_grad():
        for batch in loader:
            features.append(model(batch).cpu())
            pids.append(batch["targets"])
            camids.append(batch["camids"])
    features, pids, camids = torch.cat(features), torch.cat(pids).numpy(), torch.cat(camids).numpy()
    rows = {name: retrieval(f, pids, camids, num_query)
            for name, f in variants(features, model.heads.num_stages).items()}
    print(tabulate([[name, f"{r['mAP']:.2f}", f"{r['Rank-1']:.2f}"] for name, r in rows.items()],
                   headers=["descriptor", "mAP", "Rank-1"], tablefmt="pipe"))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "stage_descriptors.json")
    scsn.results.write(out, scsn.results.record({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                                                 "dataset": dataset, "rows": rows}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(cli.parse_args(cli.dataset_tool_parser(__doc__.split("\n\n")[0])))
