"""A script written the way fast-reid's own tools are (its imports, DefaultTrainer, DefaultPredictor, launch) trains,
evaluates and embeds with SCSN once it has the README's two lines: ``import scsn`` first, and
``scsn.add_scsn_config(cfg)`` after ``get_cfg()``."""
import os
import re
import subprocess
import sys
import textwrap


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fast-reid's setup() with the second line; shared with the FastDistill-style script of tests/test_distillation.py.
SETUP = textwrap.dedent('''
    def setup(args):
        cfg = get_cfg()
        scsn.add_scsn_config(cfg)  # the second: SCSN's config keys, before merging an SCSN config
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        cfg.freeze()
        default_setup(cfg, args)
        return cfg
''')

SCRIPT = textwrap.dedent('''
    import scsn  # the first of the two lines: before any fastreid import

    import os
    import sys

    import torch

    from fastreid.config import get_cfg
    from fastreid.engine import DefaultPredictor, DefaultTrainer, default_argument_parser, default_setup, launch
''') + SETUP + textwrap.dedent('''

    def main(args):
        cfg = setup(args)
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        predictor = DefaultPredictor(cfg)
        features = predictor(torch.rand(2, 3, *cfg.INPUT.SIZE_TEST) * 255)
        print("PREDICTOR", type(predictor.model).__name__, tuple(features.shape))


    if __name__ == "__main__":
        args = default_argument_parser().parse_args()
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
''')


def test_stock_fastreid_script_with_the_two_lines(tmp_path):
    script = tmp_path / "train_net.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, FASTREID_DATASETS=os.environ.get("FASTREID_DATASETS", str(tmp_path / "data")),
               OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, str(script), "--config-file", os.path.join(ROOT, "configs/Synthetic/scsn_r18.yml"),
         "DATASETS.NAMES", '("SyntheticReIDTiny",)', "DATASETS.TESTS", '("SyntheticReIDTiny",)',
         "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "2",
         "TEST.EVAL_PERIOD", "2", "TEST.IMS_PER_BATCH", "32", "DATALOADER.NUM_WORKERS", "0",
         "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "SCSN" in log and (tmp_path / "out" / "model_final.pth").is_file()
    # fast-reid's print_csv_format table of the final evaluation
    assert re.search(r"\| Dataset .*Rank-1.*mAP.*\|\n\|[-:| ]+\|\n\| SyntheticReIDTiny ", log), log[-3000:]
    assert "PREDICTOR SCSN (2, 1536)" in log
