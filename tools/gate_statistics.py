#!/usr/bin/env python
"""What the backbone modules of a trained SCSN do to its features, over a dataset's test images
(scsn/analysis/gates.py): RDAM's gates, NMFF's share of the stage-4 map and the sign of what it adds, the share of
each stage's map its pooling keeps, and, on the synthetic datasets, how much of each map lies on the person.

    python tools/gate_statistics.py --config-file configs/Synthetic/scsn_r18.yml \
        MODEL.WEIGHTS logs/synthetic/scsn_r18/model_final.pth
"""
import os

import numpy as np
import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_test_loader
from tabulate import tabulate

import scsn.results
from scsn.analysis.gates import GateStatistics
from scsn.engine import cli
from scsn.errors import ConfigError


def fmt(row, name):
    return f"{row[name]['mean']:.3f} ± {row[name]['std']:.3f}" if name in row else ""


def person_masks(dataset, paths):
    """(B, H, W) bool person masks of a batch's images where the dataset draws them (the synthetic sets)."""
    if not hasattr(dataset, "person_mask"):
        return None
    return torch.from_numpy(np.stack([dataset.person_mask(p) for p in paths]))


@cli.run
def main(args):
    cfg, model = cli.load_trained(args)
    if not hasattr(model.backbone, "nmff") or not hasattr(model.heads, "cascade"):
        raise ConfigError(f"{args.config_file} does not build an SCSN: there are no gates to read.")
    dataset_name = args.dataset or cfg.DATASETS.TESTS[0]
    loader, _ = build_reid_test_loader(cfg, dataset_name=dataset_name)
    dataset = cli.registered_dataset(dataset_name)
    stats = GateStatistics(model)
    with torch.no_grad():
        for batch in loader:
            stats.forward(model.preprocess_image(batch), person_masks(dataset, batch["img_paths"]))
    stats.remove()
    rows = stats.summary()
    stages = [r for r in rows if isinstance(r["row"], int)]
    print(tabulate([[r["row"], fmt(r, "channel"), fmt(r, "spatial"), fmt(r, "passed"),
                     "" if r.get("gamma_mean") is None else f"{r['gamma_mean']:.3f}"] for r in stages],
                   headers=["ResNet stage", "channel gate A_c", "spatial gate A_n", "share passed", "RSAM gamma"],
                   tablefmt="pipe"))
    others = [(r["row"], name, f"{v['mean']:.3f} ± {v['std']:.3f}") for r in rows if not isinstance(r["row"], int)
              for name, v in r.items() if isinstance(v, dict)]
    print(tabulate(others, headers=["", "quantity", "mean ± std over images"], tablefmt="pipe"))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "gate_statistics.json")
    scsn.results.write(out, scsn.results.record({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                                                 "dataset": dataset_name, "rows": rows}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(cli.parse_args(cli.dataset_tool_parser(__doc__.split("\n\n")[0])))
