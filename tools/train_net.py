#!/usr/bin/env python
"""Train and evaluate SCSN, or any of fast-reid's built-in models, with fast-reid's DefaultTrainer.

This is fast-reid's tools/train_net.py skeleton. ``import scsn`` makes the fastreid wheel run on this
stack (on several CPU processes too, over gloo), registers SCSN's components, and makes fast-reid's checkpoints
atomic to write and safe to load. The Trainer swaps in:

* the chunked evaluator, which gives the stock evaluator's numbers without the whole query x gallery matrix;
* a training loader whose batches and augmentations are a function of (seed, position in the stream), so that
  ``--resume`` continues as the uninterrupted run did and N processes train on the batches one process would
  (scsn/sampling.py);
* strict loading when resuming: a checkpoint that does not fill the model stops the run.

Bad input stops with one line (``scsn.checks.InputError``) instead of a traceback.
"""
import json
import os
import sys

import torch.multiprocessing as mp

import scsn
import scsn.results
from fastreid.config import get_cfg
from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from scsn import sampling
from scsn.checkpoint import restore_best_metric
from scsn.checks import InputError, load_config
from scsn.evaluation import ChunkedReidEvaluator


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        sampling.make_resumable(self)

    @classmethod
    def build_train_loader(cls, cfg):
        return sampling.build_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ChunkedReidEvaluator(cfg, num_query, output_dir)

    def resume_or_load(self, resume=True):
        resuming = resume and self.checkpointer.has_checkpoint()
        # Continuing a run needs all of it; fine-tuning from MODEL.WEIGHTS may load part of a model.
        self.checkpointer.strict = resuming
        super().resume_or_load(resume)
        if resuming:
            sampling.resume_state(self)
            restore_best_metric(self)


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
    load_config(cfg, args.config_file, args.opts)
    scsn.compat.resolve_device(cfg)
    refuse_to_overwrite(cfg, args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="scsn")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED)
    return cfg


def save_results(cfg, results):
    """The last evaluation's metrics as ``OUTPUT_DIR/eval_results.json``, for scripts (fast-reid's metrics.json
    skips the final evaluation: its JSONWriter drops scalars put at an iteration it has already written)."""
    if comm.is_main_process() and results:
        scsn.results.write(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), json.loads(json.dumps(
            results, default=float)))
    return results


def main(args):
    try:
        cfg = setup(args)

        if args.eval_only:
            if not os.path.isfile(cfg.MODEL.WEIGHTS):
                sys.exit(f"--eval-only needs a checkpoint: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} is not a file.")
            cfg.defrost()
            cfg.MODEL.BACKBONE.PRETRAIN = False
            model = Trainer.build_model(cfg)
            checkpointer = Checkpointer(model)
            checkpointer.strict = True  # never evaluate a model that the checkpoint fills only in part
            checkpointer.load(cfg.MODEL.WEIGHTS)
            return save_results(cfg, Trainer.test(cfg, model))

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return save_results(cfg, trainer.train())
    except InputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except mp.ProcessExitedException as e:  # a worker process stopped with its own message, printed above
        sys.exit(f"error: {e}")
