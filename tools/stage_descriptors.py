#!/usr/bin/env python
"""Which test descriptor of a trained SCSN retrieves best (§3.4 concatenates the T stages' vectors):

- concat: the evaluator's descriptor, the stages' vectors side by side;
- concat of L2-normalised stages: each stage scaled to unit length first, so that no stage outweighs the others;
- each stage alone.

Cosine distance and fast-reid's ranking (``evaluate_rank``), as ``TEST.METRIC cosine`` in the evaluator.

    python tools/stage_descriptors.py --config-file configs/Synthetic/scsn_r18.yml \
        MODEL.WEIGHTS logs/synthetic/scsn_r18/model_final.pth
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_test_loader
from fastreid.evaluation.rank import evaluate_rank
from tabulate import tabulate

from scsn import cli
from scsn.meta_arch import SCSN


def variants(features: torch.Tensor, num_stages: int) -> dict:
    """(N, T x D) descriptors -> name -> (N, *) descriptors of each variant."""
    stages = features.chunk(num_stages, dim=1)
    out = {"concat": features, "concat of L2-normalised stages": torch.cat([F.normalize(s, dim=1) for s in stages], 1)}
    out.update({f"stage {t} alone": s for t, s in enumerate(stages, start=1)})
    return out


def retrieval(features, pids, camids, num_query):
    """mAP and Rank-1 (%) of cosine-distance retrieval, queries first."""
    features = F.normalize(features, dim=1)
    dist = (1 - features[:num_query] @ features[num_query:].t()).numpy()
    cmc, all_ap, _ = evaluate_rank(dist, pids[:num_query], pids[num_query:], camids[:num_query],
                                   camids[num_query:], max_rank=1, use_cython=False)
    return {"mAP": 100 * float(np.mean(all_ap)), "Rank-1": 100 * float(cmc[0])}


@cli.run
def main(args):
    cfg, model = cli.load_trained(args)
    if not isinstance(model, SCSN):
        raise ValueError(f"{args.config_file} does not build an SCSN: there are no stages to compare.")

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
    with open(out, "w") as f:
        json.dump({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "dataset": dataset, "rows": rows}, f,
                  indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(cli.parse_args(cli.dataset_tool_parser(__doc__.split("\n\n")[0])))
