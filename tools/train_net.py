#!/usr/bin/env python
"""Train and evaluate SCSN, or any of fast-reid's built-in models, with fast-reid's DefaultTrainer.

This is fast-reid's tools/train_net.py skeleton. ``import scsn`` makes the fastreid wheel run on this
stack (on several CPU processes too, over gloo), registers SCSN's components, and makes fast-reid's checkpoints
atomic to write and safe to load. The Trainer swaps in:

* the chunked evaluator, which gives the stock evaluator's numbers without the whole query x gallery matrix;
* a training loader whose batches and augmentations are a function of (seed, position in the stream), so that
  ``--resume`` continues as the uninterrupted run did and N processes train on the batches one process would
  (scsn/data/sampling.py);
* strict loading when resuming: a checkpoint that does not fill the model stops the run;
* ``TEST.RUNTIME``: evaluation with the compiled model or the exported ONNX graph instead of eager PyTorch.

The last evaluation's metrics also go to ``OUTPUT_DIR/eval_results.json``. Bad input stops with one line
(``scsn.errors.InputError``) instead of a traceback.
"""
import json
import os
import sys

import torch.multiprocessing as mp

import scsn
import scsn.results
from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from scsn.data import sampling
from scsn.engine import build_config, cli
from scsn.evaluation import ChunkedReidEvaluator
from scsn.fastreid_patches.checkpoint import load_weights, restore_best_metric
from scsn.inference.runtime import Runtime


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        sampling.make_resumable(self)

    @classmethod
    def build_train_loader(cls, cfg):
        return sampling.build_train_loader(cfg)

    @classmethod
    def test(cls, cfg, model):
        # TEST.RUNTIME: the descriptors from eager PyTorch, torch.compile or onnxruntime (scsn/inference/runtime.py).
        return super().test(cfg, model if cfg.TEST.RUNTIME == "eager" else Runtime(model, cfg))

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


def setup(args):
    cfg = build_config(args.config_file, args.opts, inference=args.eval_only)
    if not (args.resume or args.eval_only) and os.path.isdir(cfg.OUTPUT_DIR):
        # A new training run would overwrite an earlier run's checkpoints.
        kept = [os.path.join(cfg.OUTPUT_DIR, f) for f in sorted(os.listdir(cfg.OUTPUT_DIR))
                if f.endswith(".pth") or f == "last_checkpoint"]
        cli.refuse_to_overwrite(kept, how=f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds an earlier run's checkpoints: pass "
                                          "--resume to continue that run, or choose another folder with "
                                          "`OUTPUT_DIR path/to/new/dir` at the end of the command")
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="scsn")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED)
    return cfg


def save_results(cfg, results):
    """The last evaluation's metrics as ``OUTPUT_DIR/eval_results.json``, for scripts (fast-reid's metrics.json
    skips the final evaluation: its JSONWriter drops scalars put at an iteration it has already written)."""
    if comm.is_main_process() and results:
        scsn.results.write(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"),
                           json.loads(json.dumps(results, default=float)))
    return results


@cli.run
def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS)  # strict: never evaluate a model that the checkpoint fills in part
        return save_results(cfg, Trainer.test(cfg, model))

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return save_results(cfg, trainer.train())


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
