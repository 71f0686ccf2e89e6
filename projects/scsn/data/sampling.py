"""Training batches as a function of (run seed, position in the stream): exact ``--resume``, and the same
batches whatever the number of processes.

fast-reid's training samplers (data/samplers) are infinite streams seeded once, when the loader is built, and
drawn from the global numpy (and torch) RNG; the training transforms (flip, padding and crop, random erasing,
...) draw from the global RNGs of whichever worker process or loading thread reads the image. A run resumed
from an epoch checkpoint therefore restarts the stream at its first batch and augments with other random
numbers than the uninterrupted run did, and a run on W processes samples other batches than a run on one.
Here, reusing fast-reid's samplers unchanged:

* :class:`ResumableSampler` runs a fast-reid sampler's generator as it runs in one process with the global batch
  ``SOLVER.IMS_PER_BATCH``, on RNG states of its own; it starts at a given global batch (after a resume from the
  checkpoint of epoch e, at batch (e + 1) x iterations per epoch), and gives process r of W the r-th contiguous
  W-th of every global batch: whole identities when IMS_PER_BATCH / W is a multiple of ``NUM_INSTANCE``.
* Each index comes with a seed derived from (run seed, position in the stream); :class:`SeededDataset` seeds
  python's, numpy's and torch's CPU RNGs with it before the image's transforms run, so an image's augmentation
  depends neither on the worker count, nor on the order the workers run in, nor on what ran before.
* :class:`ReseedHook` seeds the training process's RNGs with (run seed, epoch) before every epoch, for models
  whose training step draws random numbers (dropout, drop-path).
* The run seed is ``SEED``, or when ``SEED`` < 0 one drawn at the start and shared by all processes; every
  checkpoint stores it and ``--resume`` restores it.

Limit: with ``DATALOADER.NUM_WORKERS 0`` images are loaded in a thread of the training process, which reseeds
the process-wide RNGs per image, so a training step that draws random numbers (dropout: some of fast-reid's
backbones; not ResNet's, SCSN's or fast-reid's heads) is exact only with ``NUM_WORKERS`` >= 1.
"""
import itertools
import logging
import os
import random
import threading

import numpy as np
import torch

from fastreid.data import build_reid_train_loader, samplers
from fastreid.data.common import CommDataset
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["ResumableSampler", "SeededDataset", "ReseedHook", "build_train_loader", "make_resumable",
           "resume_state", "derive_seed", "SUPPORTED_SAMPLERS"]

SUPPORTED_SAMPLERS = ("TrainingSampler", "NaiveIdentitySampler", "BalancedIdentitySampler",
                      "ImbalancedDatasetSampler")
IDENTITY_SAMPLERS = ("NaiveIdentitySampler", "BalancedIdentitySampler")
# Key of the run seed in fast-reid's checkpoints (Checkpointer checkpointables).
CHECKPOINT_KEY = "data_sampler"

# Taken by whoever sets or swaps the process-wide RNG states: the sampler, the per-image seeding and the
# per-epoch reseeding may run in different threads of one process (NUM_WORKERS 0).
_rng_lock = threading.Lock()


def _new_lock_after_fork():
    # A worker forked while another thread held the lock would inherit it held for ever.
    global _rng_lock
    _rng_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def derive_seed(run_seed, *position):
    """A 32-bit seed that depends on (run_seed, *position) only."""
    return int(np.random.SeedSequence([int(run_seed), *map(int, position)]).generate_state(1)[0])


class ResumableSampler(torch.utils.data.Sampler):
    """This process's share of the global batches of a fast-reid sampler, from global batch ``start`` on.

    ``base`` is one of fast-reid's infinite samplers built for the global batch and one process; its stream
    of indices is cut into global batches of ``batch_size``, of which process ``rank`` of ``world_size``
    yields ``(index, seed)`` for the items ``[rank * m, (rank + 1) * m)``, m = batch_size / world_size, seed
    derived from (run seed, position in the stream). fast-reid's sampler draws from the global numpy / torch
    RNG; it runs here on states of its own, swapped in for each global batch.
    """

    def __init__(self, base, batch_size, seed, rank=0, world_size=1):
        if batch_size % world_size:
            raise ConfigError(f"SOLVER.IMS_PER_BATCH {batch_size} must be divisible by the number of processes "
                             f"({world_size}).")
        self.base = base
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start = 0

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        if state["seed"] != self.seed:
            logger.info("Resuming with the run seed stored in the checkpoint, %d (this run drew %d).",
                        state["seed"], self.seed)
        self.seed = int(state["seed"])
        self.base._seed = self.seed

    def global_batches(self):
        """The global batches (lists of ``batch_size`` dataset indices) of the one-process stream, from 0."""
        stream = self.base._infinite_indices()
        np_state, torch_state = None, torch.Generator().manual_seed(self.seed).get_state()
        while True:
            with _rng_lock:
                outer_np, outer_torch = np.random.get_state(), torch.get_rng_state()
                torch.set_rng_state(torch_state)
                if np_state is not None:  # before the first batch fast-reid's generator seeds numpy itself
                    np.random.set_state(np_state)
                try:
                    batch = [int(i) for i in itertools.islice(stream, self.batch_size)]
                finally:
                    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
                    np.random.set_state(outer_np)
                    torch.set_rng_state(outer_torch)
            yield batch

    def __iter__(self):
        share = self.batch_size // self.world_size
        first = self.rank * share
        for t, batch in enumerate(itertools.islice(self.global_batches(), self.start, None), start=self.start):
            for j in range(first, first + share):
                yield batch[j], derive_seed(self.seed, t * self.batch_size + j)


class SeededDataset(CommDataset):
    """fast-reid's CommDataset whose items are requested as ``(index, seed)``: python's, numpy's and torch's CPU
    RNGs are seeded with ``seed`` before the image is read and transformed."""

    def __getitem__(self, key):
        index, seed = key
        with _rng_lock:
            random.seed(seed)
            np.random.seed(seed)
            torch.random.default_generator.manual_seed(seed)
            return super().__getitem__(index)


class ReseedHook(HookBase):
    """Seeds the training process's python, numpy and torch (CPU and CUDA) RNGs with (run seed, epoch) before
    every epoch, so that what the training step draws after a resume is what it drew in the uninterrupted run."""

    def __init__(self, sampler):
        self.sampler = sampler

    def before_epoch(self):
        with _rng_lock:
            seed_all_rng(derive_seed(self.sampler.seed, self.trainer.epoch, 1))


def _base_sampler(cfg, train_set, seed):
    name = cfg.DATALOADER.SAMPLER_TRAIN
    batch_size, instances = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    if name == "TrainingSampler":
        base = samplers.TrainingSampler(len(train_set), seed=seed)
    elif name == "ImbalancedDatasetSampler":
        base = samplers.ImbalancedDatasetSampler(train_set.img_items, seed=seed)
    else:
        base = getattr(samplers, name)(train_set.img_items, batch_size, instances, seed=seed)
        base.batch_size = batch_size
    # Built for the global batch in one process whatever the world size: ResumableSampler shards the batches.
    base._rank, base._world_size = 0, 1
    return base


def _check_batch(cfg, train_set, world_size):
    name = cfg.DATALOADER.SAMPLER_TRAIN
    batch_size, instances = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    if len(train_set) < batch_size:
        raise ConfigError(
            f"The training set has {len(train_set)} images, fewer than SOLVER.IMS_PER_BATCH {batch_size}: an epoch "
            "would have no iteration. Lower SOLVER.IMS_PER_BATCH."
        )
    if name not in IDENTITY_SAMPLERS:
        return
    if batch_size % (instances * world_size):
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch_size} must be a multiple of DATALOADER.NUM_INSTANCE {instances} x "
            f"{world_size} process(es), so that every process gets whole identities of {instances} images."
        )
    identities = batch_size // instances
    if train_set.num_classes < identities:
        raise ConfigError(
            f"A batch of SOLVER.IMS_PER_BATCH {batch_size} = {identities} identities x DATALOADER.NUM_INSTANCE "
            f"{instances} needs {identities} identities, but the training set has {train_set.num_classes}: "
            f"{name} would never fill a batch. Lower IMS_PER_BATCH or raise NUM_INSTANCE."
        )


def build_train_loader(cfg):
    """fast-reid's training loader (``build_reid_train_loader``: datasets, transforms, DataLoaderX) with a
    :class:`ResumableSampler` over a :class:`SeededDataset`."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name not in SUPPORTED_SAMPLERS:
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported (fast-reid 1.4.0's SetReWeightSampler never "
            f"fills a batch); use one of {', '.join(SUPPORTED_SAMPLERS)}."
        )
    train_set = build_reid_train_loader(cfg, combineall=cfg.DATASETS.COMBINEALL).dataset
    world_size = comm.get_world_size()
    _check_batch(cfg, train_set, world_size)
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    train_set = SeededDataset(train_set.img_items, train_set.transform, relabel=train_set.relabel)
    sampler = ResumableSampler(_base_sampler(cfg, train_set, seed), cfg.SOLVER.IMS_PER_BATCH, seed,
                               comm.get_rank(), world_size)
    return build_reid_train_loader(train_set=train_set, sampler=sampler, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
                                   num_workers=cfg.DATALOADER.NUM_WORKERS)


def make_resumable(trainer):
    """Checkpoint the run seed with the trainer's other state and reseed the training process every epoch."""
    sampler = trainer.data_loader.batch_sampler.sampler
    trainer.checkpointer.checkpointables[CHECKPOINT_KEY] = sampler
    trainer.register_hooks([ReseedHook(sampler)])


def resume_state(trainer):
    """After ``resume_or_load`` from a checkpoint: restart the training batches at the resumed epoch's first
    global batch (the loader's prefetching thread started at batch 0 when the trainer was built), and count
    the iterations before it as done towards SOLVER.FREEZE_ITERS (scsn/fastreid_patches/compat.py)."""
    start = trainer.start_epoch * trainer.iters_per_epoch
    loader = trainer.data_loader
    loader.batch_sampler.sampler.start = start
    loader.shutdown()
    trainer._trainer._data_loader_iter = iter(loader)
    if hasattr(trainer.optimizer, "frozen_steps"):
        trainer.optimizer.frozen_steps = start
