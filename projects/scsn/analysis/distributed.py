"""Does training on several CPU processes compute what one process computes? (fast-reid's ``launch``, gloo, DDP and
SyncBatchNorm on the CPU: scsn/fastreid_patches/compat.py.)

One training step of SCSN-R18 (``configs/Synthetic/scsn_r18.yml``, seed-0 weights) on a fixed random batch of P
identities x K images, the layout of fast-reid's identity samplers, in one process and in 2 processes (process r
takes the r-th half: whole identities); :func:`compare_gradients` gives the largest difference of the two runs'
gradients relative to the largest gradient, and the tensor where the relative difference is largest.
"""
import os

import torch

from ..engine.defaults import build_config
from ..fastreid_patches.compat import CpuDistributedDataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCSN_R18 = os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml")
CE = ["MODEL.LOSSES.NAME", '("CrossEntropyLoss",)']
SYNC_BN = ["MODEL.BACKBONE.NORM", "syncBN", "MODEL.HEADS.NORM", "syncBN"]
# Half the backbone's cost of the paper's stride 1, and nothing measured here depends on it.
STAGE3_STRIDE_2 = ["MODEL.BACKBONE.STAGE3_STRIDE", "2"]
SETTINGS = {  # name: config overrides on top of scsn_r18.yml
    "cross-entropy, SyncBN": CE + SYNC_BN,
    "cross-entropy, BN": CE,
    "cross-entropy + triplet, SyncBN": SYNC_BN,
    "cross-entropy + triplet, BN (the recipe's losses)": [],
}
IDENTITIES, INSTANCES = 4, 4


def step_gradients(jobs):
    """In every process: for each job (overrides, dtype name, output path), build SCSN-R18 (seed 0), wrap it in
    DDP when there are several processes, run forward and backward on this process's share of a fixed random
    global batch, and on rank 0 save the parameters' gradients to the job's path."""
    from fastreid.modeling import build_model
    from fastreid.utils import comm
    from fastreid.utils.events import EventStorage

    world, rank = comm.get_world_size(), comm.get_rank()
    for opts, dtype_name, out in jobs:
        dtype = getattr(torch, dtype_name)
        cfg = build_config(SCSN_R18, ["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", str(IDENTITIES),
                                      *STAGE3_STRIDE_2, *opts])
        torch.manual_seed(0)
        model = build_model(cfg).to(dtype).train()
        batch = IDENTITIES * INSTANCES
        # Drawn in float32 for every dtype, so that the float64 runs see the same images.
        images = torch.rand(batch, 3, *cfg.INPUT.SIZE_TRAIN, generator=torch.Generator().manual_seed(1))
        images = (images * 255).to(dtype)
        targets = torch.arange(IDENTITIES).repeat_interleave(INSTANCES)
        share = slice(rank * batch // world, (rank + 1) * batch // world)
        wrapped = CpuDistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
        with EventStorage(0):
            losses = wrapped({"images": images[share].clone(), "targets": targets[share]})
        sum(losses.values()).backward()
        if rank == 0:
            torch.save({"grad": {k: p.grad for k, p in model.named_parameters() if p.grad is not None},
                        "running": {k: b for k, b in model.named_buffers() if "running" in k}}, out)


def compare_gradients(reference, distributed):
    """{relative, max_abs_diff, max_grad, worst_tensor, worst_tensor_relative} of two gradient dicts, and
    running_stats_max_abs_diff of the BN running statistics after the step's forward pass."""
    running = max((reference["running"][k] - distributed["running"][k]).abs().max().item()
                  for k in reference["running"])
    reference, distributed = reference["grad"], distributed["grad"]
    per_tensor = {k: ((reference[k] - distributed[k]).abs().max().item(), reference[k].abs().max().item())
                  for k in reference}
    max_diff = max(d for d, _ in per_tensor.values())
    max_grad = max(g for _, g in per_tensor.values())
    worst = max(per_tensor, key=lambda k: per_tensor[k][0] / (per_tensor[k][1] or 1.0))
    return {
        "relative": max_diff / max_grad,
        "max_abs_diff": max_diff,
        "max_grad": max_grad,
        "worst_tensor": worst,
        "worst_tensor_relative": per_tensor[worst][0] / (per_tensor[worst][1] or 1.0),
        "running_stats_max_abs_diff": running,
    }


def distributed_against_one_process(cases, workdir):
    """cases: [(overrides, dtype name)] -> one compare_gradients dict per case: each case's gradients in this
    process (one process, no process group) and in 2 processes launched by fast-reid's ``launch``."""
    from fastreid.engine import launch

    reference_jobs, distributed_jobs = [], []
    for i, (opts, dtype) in enumerate(cases):
        reference_jobs.append((opts, dtype, os.path.join(workdir, f"one_{i}.pt")))
        distributed_jobs.append((opts, dtype, os.path.join(workdir, f"two_{i}.pt")))
    step_gradients(reference_jobs)
    launch(step_gradients, 2, dist_url="auto", args=(distributed_jobs,))
    return [compare_gradients(torch.load(one, weights_only=True), torch.load(two, weights_only=True))
            for (_, _, one), (_, _, two) in zip(reference_jobs, distributed_jobs)]
