"""End to end through tools/train_net.py on the CPU: train, evaluate, checkpoint, --resume, --eval-only."""
import os
import re
import subprocess
import sys

import pytest

import fastreid.data.build
import scsn.results
from fastreid.engine import DefaultTrainer
from scsn.engine import build_config, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "DATASETS.NAMES", '("SyntheticReIDTiny",)', "DATASETS.TESTS", '("SyntheticReIDTiny",)',
    "SOLVER.IMS_PER_BATCH", "16", "SOLVER.WARMUP_ITERS", "2", "TEST.IMS_PER_BATCH", "32",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
]


def train_net(datasets, *args):
    env = dict(os.environ, FASTREID_DATASETS=str(datasets), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


def metrics(output_dir):
    """The last evaluation's metrics, as tools/train_net.py wrote them into OUTPUT_DIR."""
    return scsn.results.load(os.path.join(output_dir, "eval_results.json"))


@pytest.mark.parametrize("config", ["configs/Synthetic/bagtricks_r18.yml", "configs/Synthetic/scsn_r18.yml"])
def test_train_resume_and_eval_only(tmp_path, monkeypatch, config):
    out = tmp_path / "out"
    common = ["--config-file", config, *TINY, "OUTPUT_DIR", str(out)]

    code, log = train_net(tmp_path / "data", *common, "SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
                          "TEST.EVAL_PERIOD", "2")
    assert code == 0, log[-3000:]
    trained = metrics(out)
    assert set(trained) >= {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}
    assert (out / "model_final.pth").is_file() and (out / "last_checkpoint").is_file()

    # A new run into the same folder would overwrite its checkpoints: refused, files untouched.
    stamp = (out / "model_final.pth").stat().st_mtime_ns
    code, log = train_net(tmp_path / "data", *common, "SOLVER.MAX_EPOCH", "2")
    assert code != 0 and "--resume" in log
    assert (out / "model_final.pth").stat().st_mtime_ns == stamp

    code, log = train_net(tmp_path / "data", "--resume", *common, "SOLVER.MAX_EPOCH", "3",
                          "TEST.EVAL_PERIOD", "3")
    assert code == 0, log[-3000:]
    assert re.search(r"Starting training from epoch 2", log), log[-3000:]
    resumed = metrics(out)
    (out / "eval_results.json").unlink()

    code, log = train_net(tmp_path / "data", "--eval-only", *common, "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert code == 0, log[-3000:]
    assert metrics(out) == resumed

    if config.endswith("scsn_r18.yml"):
        # TEST.RERANK.ENABLED: the chunked evaluator's re-ranking gives fast-reid's dense ReidEvaluator's result.
        weights = ["MODEL.WEIGHTS", str(out / "model_final.pth"), "TEST.RERANK.ENABLED", "True"]
        code, log = train_net(tmp_path / "data", "--eval-only", *common, *weights)
        assert code == 0 and "Test with rerank setting" in log, log[-3000:]
        reranked = metrics(out)
        monkeypatch.setattr(fastreid.data.build, "_root", str(tmp_path / "data"))  # read at import otherwise
        cfg = build_config(config, [*TINY, "OUTPUT_DIR", str(tmp_path / "stock"), *weights], inference=True)
        expected = DefaultTrainer.test(cfg, load_model(cfg))  # fast-reid's own trainer: ReidEvaluator
        assert reranked != resumed and set(reranked) == set(expected)
        assert all(abs(reranked[key] - expected[key]) <= 0.05 for key in expected), (reranked, expected)
