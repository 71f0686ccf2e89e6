"""Several processes on the CPU through fast-reid's launcher and torch.distributed (gloo): the identity sampler
shards every global batch without overlap, SyncBatchNorm and DDP give one process's gradient on the same global
batch, and evaluation ranks the features of every process (scsn/fastreid_patches/compat.py, scsn/data/sampling.py)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastreid.data import samplers

from scsn.fastreid_patches.checkpoint import load_checkpoint_file
from scsn.data.sampling import ResumableSampler
from scsn.analysis.distributed import CE, STAGE3_STRIDE_2, SYNC_BN, distributed_against_one_process
from test_train_net import ROOT, metrics, train_net

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) path")


def identity_items(num_ids=8, per_id=6):
    return [(f"{pid}_{i}.jpg", pid, i % 2) for pid in range(num_ids) for i in range(per_id)]


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("name", ["NaiveIdentitySampler", "BalancedIdentitySampler"])
def test_each_process_gets_its_own_whole_identities_of_every_global_batch(name):
    items, batch, instances, world = identity_items(), 16, 4, 2
    base = lambda: getattr(samplers, name)(items, batch, instances, seed=7)  # noqa: E731
    one = take(ResumableSampler(base(), batch, seed=7), 3 * batch)
    shards = [take(ResumableSampler(base(), batch, seed=7, rank=r, world_size=world), 3 * batch // world)
              for r in range(world)]
    share = batch // world
    for t in range(3):
        global_batch = one[t * batch:(t + 1) * batch]
        parts = [shard[t * share:(t + 1) * share] for shard in shards]
        assert parts[0] + parts[1] == global_batch  # same indices and per-image seeds, split in two
        pids = [{items[i][1] for i, _ in part} for part in parts]
        assert not pids[0] & pids[1]  # whole identities: none split across processes
        assert all(len(p) == share // instances for p in pids)


def test_stream_restarts_at_a_global_batch_and_leaves_the_global_rng_alone():
    items, batch = identity_items(), 16
    sampler = ResumableSampler(samplers.NaiveIdentitySampler(items, batch, 4, seed=3), batch, seed=3)
    np.random.seed(123)
    torch.manual_seed(123)
    first = take(sampler, 5 * batch)
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(123)))
    sampler.start = 2
    assert take(sampler, 3 * batch) == first[2 * batch:]


@no_cuda
def test_two_processes_compute_the_one_process_gradient_where_the_loss_decomposes(tmp_path):
    """float64, so that float32 rounding (measured in README.md) cannot hide a real difference: with
    cross-entropy and SyncBN every term of the step is per image or synchronised, and the gradients and the BN
    running statistics agree to rounding; the batch-hard triplet loss mines each process's half only (fast-reid
    1.4.0's triplet_loss does not gather), so with it they do not."""
    decomposes, triplet = distributed_against_one_process([(CE + SYNC_BN, "float64"), (SYNC_BN, "float64")],
                                                          str(tmp_path))
    assert decomposes["relative"] < 1e-10 and decomposes["running_stats_max_abs_diff"] < 1e-10
    assert triplet["relative"] > 1e-3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ONE_STEP = [
    "--config-file", "configs/Synthetic/scsn_r18.yml", "DATASETS.NAMES", '("SyntheticReIDTiny",)',
    "DATASETS.TESTS", '("SyntheticReIDTiny",)', "SOLVER.IMS_PER_BATCH", "32", "TEST.IMS_PER_BATCH", "32",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "SEED", "0", "SOLVER.MAX_EPOCH", "1",
    "SOLVER.OPT", "SGD", "SOLVER.BASE_LR", "1.0", "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
    *CE, *SYNC_BN, *STAGE3_STRIDE_2,
]


def initial_weights(path):
    """SCSN-R18 as ONE_STEP builds it for SyntheticReIDTiny (8 identities), saved for MODEL.WEIGHTS."""
    from fastreid.modeling import build_model
    from scsn.engine import build_config

    cfg = build_config(os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", "8", *SYNC_BN, *STAGE3_STRIDE_2])
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, path)
    return model.state_dict()


def rounded(results):
    """Metrics to the 2 decimals fast-reid logs: the features of 2 processes may differ from one process's in the
    last bits (other batch sizes in the convolutions)."""
    return {k: round(v, 2) for k, v in results.items()}


@no_cuda
def test_train_net_on_two_machines_then_evaluation_gathers_both_processes(tmp_path):
    """One SGD step (48 images, batch 32: an epoch of one iteration) on two "machines" of one process each
    (--num-machines 2 --machine-rank r --dist-url tcp://...) against one process, from the same weights; the
    two-process evaluation at the end gives the metrics one process computes for the same weights: the
    evaluator ranked the features of both processes."""
    data = tmp_path / "data"
    initial = initial_weights(tmp_path / "initial.pth")
    run = [*ONE_STEP, "MODEL.WEIGHTS", str(tmp_path / "initial.pth")]
    code, log = train_net(data, *run, "OUTPUT_DIR", str(tmp_path / "one"))
    assert code == 0, log[-3000:]
    assert "not found in the checkpoint" not in log and "not used by the model" not in log

    env = dict(os.environ, FASTREID_DATASETS=str(data))
    url = f"tcp://127.0.0.1:{free_port()}"
    machines = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--num-machines", "2",
                                  "--machine-rank", str(rank), "--dist-url", url, *run,
                                  "OUTPUT_DIR", str(tmp_path / "two")],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in range(2)]
    logs = [m.communicate(timeout=900)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "World size: 2" in logs[0] and "on 2 devices" in logs[0]

    one = load_checkpoint_file(str(tmp_path / "one" / "model_final.pth"))["model"]
    two = load_checkpoint_file(str(tmp_path / "two" / "model_final.pth"))["model"]
    trained = [k for k in initial if initial[k].is_floating_point() and "running" not in k and initial[k].numel()]
    step = max((one[k] - initial[k]).abs().max().item() for k in trained)
    difference = max((one[k] - two[k]).abs().max().item() for k in trained)
    assert step > 1e-3
    assert difference < 1e-2 * step  # float32 rounding, amplified through the network: README.md, Reliability

    gathered = metrics(tmp_path / "two")
    code, log = train_net(data, "--eval-only", *ONE_STEP, "MODEL.WEIGHTS", str(tmp_path / "two" / "model_final.pth"),
                          "OUTPUT_DIR", str(tmp_path / "eval"))
    assert code == 0, log[-3000:]
    assert rounded(metrics(tmp_path / "eval")) == rounded(gathered)
