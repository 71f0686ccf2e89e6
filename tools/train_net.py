#!/usr/bin/env python
"""Train and evaluate SCSN, or any of fast-reid's built-in models, with fast-reid's DefaultTrainer.

This is fast-reid's tools/train_net.py skeleton. ``import scsn`` makes the fastreid wheel run on this
stack and registers SCSN's components; the Trainer swaps in the chunked evaluator, which gives the stock
evaluator's numbers without materialising the whole query x gallery matrix.
"""
import os
import sys

import scsn
from fastreid.config import get_cfg
from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from scsn.evaluation import ChunkedReidEvaluator


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ChunkedReidEvaluator(cfg, num_query, output_dir)


def refuse_to_overwrite(cfg, args):
    """A new training run in an OUTPUT_DIR that holds checkpoints would overwrite them."""
    if args.resume or args.eval_only or not os.path.isdir(cfg.OUTPUT_DIR):
        return
    kept = sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth") or f == "last_checkpoint")
    if kept:
        sys.exit(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} already holds checkpoints of an earlier run ({', '.join(kept[:3])}"
            f"{', ...' if len(kept) > 3 else ''}). Pass --resume to continue that run, or choose another folder "
            "with `OUTPUT_DIR path/to/new/dir` at the end of the command."
        )


def setup(args):
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    scsn.compat.resolve_device(cfg)
    refuse_to_overwrite(cfg, args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="scsn")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED)
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            sys.exit(f"--eval-only needs a checkpoint: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} is not a file.")
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
        model = Trainer.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
