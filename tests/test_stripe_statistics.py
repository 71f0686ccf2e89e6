"""scsn/analysis/stripes.py and tools/stripe_statistics.py: the per-stage entropy and suppression counts, by hand and end to end."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastreid.modeling import build_model
from fastreid.utils.checkpoint import Checkpointer
from scsn.analysis import stripes as stripe_statistics
from scsn.modeling.suppression import CascadeStage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_entropy_and_argmax_counts_by_hand():
    uniform = torch.full((2, 4), 0.25)
    peaked = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    kept = torch.ones(2, 4, dtype=torch.bool)
    # Stage 2: stripe 0 suppressed; its weight 0 takes no part, the three kept share 1/3 each.
    second = torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3], [0.0, 1 / 3, 1 / 3, 1 / 3]])
    kept2 = torch.tensor([[False, True, True, True]] * 2)
    stages = [CascadeStage(None, None, uniform, kept), CascadeStage(None, None, peaked, kept),
              CascadeStage(None, None, second, kept2)]
    counts = [torch.zeros(4, dtype=torch.long) for _ in stages]
    totals = [{"entropy": 0.0, "max_weight": 0.0, "images": 0} for _ in stages]
    stripe_statistics.stage_statistics(stages, counts, totals)
    rows = stripe_statistics.summarise(counts, totals)
    assert rows[0]["mean_normalised_entropy"] == pytest.approx(1.0)
    assert rows[1]["mean_normalised_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert rows[2]["mean_normalised_entropy"] == pytest.approx(1.0)
    assert rows[0]["mean_max_weight"] == pytest.approx(0.25) and rows[1]["mean_max_weight"] == pytest.approx(1.0)
    assert rows[1]["argmax_share_per_stripe"] == [0.0, 0.5, 0.0, 0.5]
    assert rows[1]["argmax_entropy"] == pytest.approx(math.log(2))
    assert rows[2]["argmax_share_per_stripe"][0] == 0.0  # a suppressed stripe is never chosen again


def test_cli_reads_a_checkpoint_and_writes_one_row_per_stage(cfg, tmp_path):
    from fastreid.config import get_cfg

    import scsn

    config = os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml")
    c = get_cfg()
    scsn.add_scsn_config(c)
    c.merge_from_file(config)
    c.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", 8])
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    Checkpointer(build_model(c), save_dir=str(tmp_path)).save("model")
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "stripe_statistics.py"), "--config-file", config,
         "--dataset", "SyntheticReIDTiny", "MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", "8",
         "MODEL.WEIGHTS", str(weights), "TEST.IMS_PER_BATCH", "16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "stripe_statistics.json").read_text())
    assert [r["stage"] for r in report["stages"]] == [1, 2, 3]
    assert all(r["images"] == 36 for r in report["stages"])  # 6 queries + 30 gallery images
    assert all(sum(r["argmax_share_per_stripe"]) == pytest.approx(1.0, abs=1e-3) for r in report["stages"])
    assert "H(w) / log(kept)" in proc.stdout


def test_cli_refuses_a_missing_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "stripe_statistics.py"), "--config-file",
         os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml"), "MODEL.WEIGHTS", str(tmp_path / "none.pth")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "is not a file" in proc.stderr
