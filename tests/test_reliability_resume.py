"""Exact resume (scsn/sampling.py, scsn/checkpoint.py): a run killed with SIGKILL in the middle of an epoch and
continued with --resume ends with the weights, optimizer and scheduler state and metrics of the run that was
never interrupted."""
import os
import signal
import subprocess
import sys
import time

import torch

from scsn.fastreid_patches.checkpoint import load_checkpoint_file
from test_train_net import ROOT, TINY, metrics, train_net

# Stage 3 at stride 2: half the backbone's cost, and nothing here depends on it.
RUN = ["--config-file", "configs/Synthetic/scsn_r18.yml", *TINY, "MODEL.BACKBONE.STAGE3_STRIDE", "2", "SEED", "3",
       "SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "2"]


def assert_same_state(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    code, log = train_net(data, *RUN, "OUTPUT_DIR", str(tmp_path / "whole"))
    assert code == 0, log[-3000:]
    expected = metrics(tmp_path / "whole")

    part = tmp_path / "part"
    env = dict(os.environ, FASTREID_DATASETS=str(data), OMP_NUM_THREADS="2")
    command = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *RUN, "OUTPUT_DIR", str(part)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (part / "last_checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next epoch's iterations
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (part / "model_final.pth").exists()
    assert (part / "last_checkpoint").read_text() == "model_0000.pth"

    code, log = train_net(data, "--resume", *RUN, "OUTPUT_DIR", str(part))
    assert code == 0, log[-3000:]
    assert "Starting training from epoch 1" in log
    assert metrics(part) == expected

    whole = load_checkpoint_file(str(tmp_path / "whole" / "model_final.pth"))
    resumed = load_checkpoint_file(str(part / "model_final.pth"))
    assert whole.keys() == resumed.keys() >= {"model", "optimizer", "lr_sched", "warmup_sched", "data_sampler"}
    assert_same_state(whole, resumed)


def test_a_resumed_run_does_not_freeze_the_layers_again(cfg):
    """SBS / MGN keep the backbone still for SOLVER.FREEZE_ITERS steps; fast-reid counted them from 0 in every
    process, so a resume froze it again. resume_state sets the count to the resumed iteration."""
    from fastreid.solver import build_optimizer

    cfg.MODEL.FREEZE_LAYERS = ["backbone"]
    cfg.SOLVER.FREEZE_ITERS = 2
    cfg.SOLVER.OPT = "SGD"

    def moved_after_one_step(frozen_steps):
        model = torch.nn.Module()
        model.backbone, model.heads = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        optimizer, _ = build_optimizer(cfg, model)
        if frozen_steps is not None:
            optimizer.frozen_steps = frozen_steps
        before = [p.detach().clone() for p in (model.backbone.weight, model.heads.weight)]
        model.heads(model.backbone(torch.ones(1, 2))).sum().backward()
        optimizer.step()
        return [not torch.equal(b, p) for b, p in zip(before, (model.backbone.weight, model.heads.weight))]

    assert moved_after_one_step(None) == [False, True]  # a fresh run: the backbone is frozen, the head learns
    assert moved_after_one_step(2) == [True, True]  # resumed at iteration 2: the freeze is over
