#!/usr/bin/env python
"""What an SCSN teacher hands its student in fast-reid's Distiller (scsn/analysis/teacher.py), with the teacher's
BatchNorm as upstream leaves it (training mode: each batch's statistics) and as KD.TEACHER_BN_EVAL sets it (running
statistics): the top-1 accuracy and true-class probability of the logits loss_jsdiv reads, per KD.CASCADE_LOGITS, and
the share of the descriptor loss's neighbour distribution on same-identity images, per temperature; on the same
training batches of the student's loader.

    python tools/teacher_statistics.py --config-file configs/Synthetic/distill/scsn_r18-bot_r18.yml \
        --out results/distill_teacher.json \
        KD.MODEL_CONFIG '("<scsn run>/config.yaml",)' KD.MODEL_WEIGHTS '("<scsn run>/model_final.pth",)'
"""
import itertools

import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_train_loader
from fastreid.modeling import build_model

import scsn.results
from scsn.analysis.teacher import teacher_statistics
from scsn.engine import build_config, cli
from scsn.reporting import RENDERERS
from scsn.errors import ConfigError

BN_MODES = {"running statistics (KD.TEACHER_BN_EVAL True)": True,
            "batch statistics (fast-reid's Distiller)": False}


@cli.run
def main(args):
    cli.check_positive(batches=args.batches)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    if min(temperatures) <= 0:
        raise ConfigError(f"--temperatures must be > 0, got {args.temperatures}.")
    cfg = build_config(args.config_file, [*args.opts, "DATALOADER.NUM_WORKERS", "0", "MODEL.BACKBONE.PRETRAIN", "False",
                                          "SEED", str(args.seed)])
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ConfigError(f"{args.config_file} is not a Distiller config (MODEL.META_ARCHITECTURE Distiller).")
    torch.manual_seed(args.seed)
    loader = build_reid_train_loader(cfg)
    batches = list(itertools.islice(iter(loader), args.batches))
    rows = []
    for mode, bn_eval in BN_MODES.items():
        # The student's classes as fast-reid's trainer sets them (auto_scale_hyperparams): the training set's.
        model = build_model(build_config(args.config_file, [
            *args.opts, "KD.TEACHER_BN_EVAL", str(bn_eval), "MODEL.BACKBONE.PRETRAIN", "False",
            "MODEL.HEADS.NUM_CLASSES", str(loader.dataset.num_classes)]))
        rows.append({"teacher_bn": mode, **teacher_statistics(model.train(), batches, temperatures)})

    record = scsn.results.record({"benchmark": "teacher", "config": args.config_file, "seed": args.seed,
                                  "teachers": list(cfg.KD.MODEL_WEIGHTS), "batches": args.batches, "rows": rows})
    print(RENDERERS["teacher"]([record]))
    scsn.results.write(args.out, record)
    print(f"wrote {args.out}")
    return record


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=16, help="training batches of the student's loader")
    p.add_argument("--temperatures", default="0.05,0.1,0.2", help="descriptor-loss temperatures, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="the run seed that draws the batches (SEED)")
    p.add_argument("--out", required=True, help="JSON file to write")
    return p


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
