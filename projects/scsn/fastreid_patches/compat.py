"""Make the fastreid 1.4.0 wheel run on Python 3.11, torch 2.x, numpy 1.24-2.x, torchvision >= 0.16 and on
machines without CUDA.

Every patch below names the upstream place it mends (paths inside the installed ``fastreid/``), is as
narrow as the breakage, and does nothing where upstream is already right (newer fastreid, CUDA present).
:func:`apply` runs when ``scsn`` is imported: the two import-time shims must be in place before any
``fastreid.data`` / ``fastreid.engine`` / ``fastreid.evaluation`` module loads.

docs/fastreid_1.4.0.md lists every breakage measured on this stack, numbered as the patches below cite them.
"""
import collections
import collections.abc
import functools
import logging
import os
import subprocess
import sys
import types

import torch

logger = logging.getLogger(__name__)

def _install_import_shims():
    # (1) data/build.py:11 `from torch._six import string_classes`: torch >= 2 removed torch._six.
    try:
        import torch._six  # noqa: F401
    except ImportError:
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
    # (2) data/build.py:12, evaluation/testing.py:5 `from collections import Mapping`: gone in Python 3.10.
    if not hasattr(collections, "Mapping"):
        collections.Mapping = collections.abc.Mapping


def _patch_zero_grad():
    """(4, silent) engine/train_loop.py:248,346 call ``optimizer.zero_grad()``; torch >= 2 defaults to
    ``set_to_none=True``, which drops the ``.grad`` of the flat buffers built by ``ContiguousParams``
    (solver/build.py ``build_optimizer(contiguous=True)``), so every ``step()`` skips every parameter."""
    import fastreid.solver
    import fastreid.solver.build as solver_build

    upstream = solver_build.build_optimizer
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def build_optimizer(cfg, model, contiguous=True):
        optimizer, param_wrapper = upstream(cfg, model, contiguous)
        optimizer.zero_grad = functools.partial(optimizer.zero_grad, set_to_none=False)
        return optimizer, param_wrapper

    build_optimizer._scsn_patched = True
    solver_build.build_optimizer = build_optimizer
    fastreid.solver.build_optimizer = build_optimizer
    defaults = sys.modules.get("fastreid.engine.defaults")  # imported before scsn: rebind its copy too
    if defaults is not None:
        defaults.build_optimizer = build_optimizer


def _patch_cpu_data_loader():
    """(3) data/data_utils.py:151 ``DataLoaderX`` creates a CUDA stream, :127 its background thread calls
    ``torch.cuda.set_device`` (see :func:`_patch_loader_thread_errors`) and :182-190 copy batches to the GPU;
    all fail without a CUDA driver. Without CUDA the batches stay on the CPU, unpinned; with CUDA upstream runs
    unchanged."""
    if torch.cuda.is_available():
        return
    from fastreid.data import data_utils

    def loader_init(self, local_rank, **kwargs):
        kwargs["pin_memory"] = False
        torch.utils.data.DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank

    def preload(self):
        self.batch = next(self.iter, None)

    def next_batch(self):
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch

    data_utils.DataLoaderX.__init__ = loader_init
    data_utils.DataLoaderX.preload = preload
    data_utils.DataLoaderX.__next__ = next_batch


class _LoaderFailure:
    """An exception raised in the prefetching thread, queued for the thread that consumes the batches."""

    def __init__(self, error):
        self.error = error


def _patch_loader_thread_errors():
    """data/data_utils.py:126-131 ``BackgroundGenerator.run``, the thread that prefetches every training and test
    batch: an exception from the loader (an unreadable image, a sampler that cannot fill a batch) ends the
    thread without its end marker, and the training loop waits in ``queue.get()`` (:135) for ever. The thread
    queues the exception and the consumer re-raises it. (:127 ``torch.cuda.set_device`` only with CUDA.)"""
    from fastreid.data import data_utils

    if getattr(data_utils.BackgroundGenerator.run, "_scsn_patched", False):
        return

    def run(self):
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        try:
            for item in self.generator:
                if self.exit_event.is_set():
                    break
                self.queue.put(item)
        except Exception as e:
            self.queue.put(_LoaderFailure(e))
        self.queue.put(None)

    def next_item(self):
        item = self.queue.get()
        if item is None:
            raise StopIteration
        if isinstance(item, _LoaderFailure):
            raise item.error
        return item

    run._scsn_patched = True
    data_utils.BackgroundGenerator.run = run
    data_utils.BackgroundGenerator.next = next_item


def _patch_random_affine():
    """(9) data/transforms/build.py:81 ``T.RandomAffine(..., resample=False, fillcolor=0)``: torchvision
    0.13 removed both keywords (``interpolation`` / ``fill`` replace them)."""
    import inspect

    import torchvision.transforms as T
    from fastreid.data.transforms import build as transforms_build

    if "resample" in inspect.signature(T.RandomAffine.__init__).parameters:
        return

    class RandomAffine(T.RandomAffine):
        def __init__(self, *args, resample=None, fillcolor=None, **kwargs):
            if fillcolor is not None:
                kwargs.setdefault("fill", fillcolor)
            super().__init__(*args, **kwargs)

    transforms_build.T = types.SimpleNamespace(**{**vars(T), "RandomAffine": RandomAffine})


def _patch_to_tensor():
    """(10) data/transforms/functional.py:38-46: ``np.array(pic, dtype, copy=False)`` raises on numpy 2 for PIL
    modes ``I;16`` and ``1``, and ``torch.ByteStorage.from_buffer`` raises a TypedStorage deprecation warning
    for every RGB image. Same tensors as upstream (CHW, uint8 images as float in [0, 255])."""
    import numpy as np
    from fastreid.data.transforms import functional
    from fastreid.data.transforms import transforms as fastreid_transforms

    upstream = functional.to_tensor
    if getattr(upstream, "_scsn_patched", False):
        return
    mode_dtypes = {"I": np.int32, "I;16": np.int16, "F": np.float32}

    @functools.wraps(upstream)
    def to_tensor(pic):
        if isinstance(pic, np.ndarray):
            return upstream(pic)
        array = np.array(pic, mode_dtypes.get(pic.mode, np.uint8))
        if pic.mode == "1":
            array = array * np.uint8(255)
        img = torch.from_numpy(array).view(pic.size[1], pic.size[0], -1).permute(2, 0, 1).contiguous()
        return img.float() if img.dtype == torch.uint8 else img

    to_tensor._scsn_patched = True
    functional.to_tensor = to_tensor
    fastreid_transforms.to_tensor = to_tensor


def _patch_cython_evaluator():
    """(5) evaluation/rank_cylib/__init__.py:15-20 runs ``make`` with whatever ``python3`` is on PATH and
    calls ``sys.exit(1)`` when that fails, from evaluation/reid_evaluation.py:138 at the first evaluation.
    The evaluator is compiled at install time instead (:func:`build_cython_evaluator`); at run time a
    missing build costs one warning and the Python ranking, never the process."""
    from fastreid.evaluation import reid_evaluation

    def compile_helper():
        logger.warning(
            "fastreid's Cython ranking is not built: evaluating with the slower Python ranking. "
            "Build it once with `python -c 'import scsn.fastreid_patches.compat as c; c.build_cython_evaluator()'`."
        )

    reid_evaluation.compile_helper = compile_helper


def _patch_python_rank_padding():
    """(12) evaluation/rank.py:142,156: the Python ranking stacks per-query CMC rows of unequal length
    (``ValueError: inhomogeneous shape``) when a query keeps fewer than ``max_rank`` gallery items.
    ``max_rank`` never-matching gallery items are appended at infinite distance: they rank last, so CMC,
    AP and INP are unchanged and every row reaches ``max_rank``, as in the Cython ranking."""
    import numpy as np
    from fastreid.evaluation import rank

    upstream = rank.eval_market1501
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
        max_rank = min(max_rank, distmat.shape[1])  # upstream's own cap, before the padding hides it
        never = min(q_pids.min(), g_pids.min()) - 1
        distmat = np.pad(distmat, ((0, 0), (0, max_rank)), constant_values=np.inf)
        g_pids = np.concatenate([g_pids, np.full(max_rank, never, dtype=g_pids.dtype)])
        g_camids = np.concatenate([g_camids, np.full(max_rank, never, dtype=g_camids.dtype)])
        return upstream(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)

    eval_market1501._scsn_patched = True
    rank.eval_market1501 = eval_market1501


def _patch_numpy_bool():
    """(13) evaluation/rank.py:69 ``np.zeros(..., dtype=np.bool)`` in ``eval_cuhk03``, the Python CUHK03 metric
    (``evaluate_rank(use_metric_cuhk03=True)`` without the Cython ranking): numpy 1.24 removed the alias, numpy 2
    brought it back, so numpy 1.24-1.26 raise AttributeError. rank.py's ``np`` gets the alias (Python's ``bool``, as
    before 1.24); numpy itself is left alone."""
    import numpy as np
    from fastreid.evaluation import rank

    if "bool" in vars(np):  # not hasattr: numpy 1.24-1.26 warn on the lookup of the removed alias
        return
    rank.np = types.SimpleNamespace(**vars(np), bool=bool)


def _patch_cpu_rerank():
    """(6) utils/compute_dist.py:53 calls ``compute_jaccard_distance(..., search_option=0)``, which moves the
    features to CUDA (:68) and needs ``faiss.StandardGpuResources`` (:76, absent from faiss-cpu). Without
    CUDA or faiss-gpu the k-NN search uses faiss's CPU index (``search_option=3``); same algorithm."""
    import faiss
    from fastreid.utils import compute_dist

    if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"):
        return
    upstream = compute_dist.compute_jaccard_distance
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        return upstream(features.cpu(), k1=k1, k2=k2, search_option=3, fp16=fp16)

    compute_jaccard_distance._scsn_patched = True
    compute_dist.compute_jaccard_distance = compute_jaccard_distance


def _cpu_distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args):
    """engine/launch.py:76 ``_distributed_worker`` for machines without CUDA: the same process group and
    per-machine groups, joined over gloo instead of NCCL (:81), without the CUDA assertion (:77) or GPU
    pinning (:88-89). Each of the ``num_gpus_per_machine`` processes of a machine gets an equal share of its
    cores unless OMP_NUM_THREADS says otherwise (torch's default, all cores per process, oversubscribes them)."""
    import multiprocessing

    import torch.distributed as dist
    from fastreid.utils import comm

    # mp.spawn makes "spawn" this process's start method, so its DataLoader workers would each import torch,
    # fastreid and scsn again (over a minute on 2 cores); without CUDA they can be forked, as in one process.
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank)
    comm.synchronize()
    for machine in range(world_size // num_gpus_per_machine):
        group = dist.new_group(list(range(machine * num_gpus_per_machine, (machine + 1) * num_gpus_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    main_func(*args)


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """engine/defaults.py:216 wraps the model as ``DistributedDataParallel(model, device_ids=[local_rank])``,
    which DDP refuses for a module on the CPU; a CPU module is wrapped without device ids. DDP also refuses
    SyncBatchNorm layers in a CPU module (nn/parallel/distributed.py:2454), whose kernels are CUDA-only:
    :func:`_sync_batch_norm_cpu` runs them here."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, device_ids=None, **kwargs)

    def _passing_sync_batchnorm_handle(self, module):
        pass


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of ``group``; the backward sums the incoming gradients the same way."""

    @staticmethod
    def forward(ctx, tensor, group):
        import torch.distributed as dist

        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None


def _sync_batch_norm_cpu(bn, x):
    """torch.nn.SyncBatchNorm's training forward on CPU tensors, where torch raises (nn/modules/batchnorm.py:845;
    its kernels, ``batch_norm_stats`` and friends, exist only for CUDA). Mean and biased variance over the
    batches of every process of ``bn.process_group`` (two passes, so that the variance is centred), summed by
    an all-reduce whose backward sums the gradients over the processes, as torch's CUDA SyncBatchNorm backward
    does. x: (N, C, *) -> (N, C, *); running statistics updated as ``F.batch_norm`` does (unbiased variance,
    momentum or cumulative average)."""
    import torch.distributed as dist

    group = bn.process_group or dist.group.WORLD
    dims = [0] + list(range(2, x.dim()))
    shape = [1, x.size(1)] + [1] * (x.dim() - 2)
    count = torch.tensor(float(x.numel() // x.size(1)), dtype=x.dtype)
    dist.all_reduce(count, group=group)
    mean = _AllReduceSum.apply(x.sum(dims), group) / count
    centred = x - mean.view(shape)
    var = _AllReduceSum.apply(centred.pow(2).sum(dims), group) / count
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var * count / (count - 1).clamp(min=1), alpha=factor)
    return out


def _patch_cpu_distributed():
    """(8) engine/launch.py:77 asserts CUDA in every spawned worker and :81 asks for NCCL; engine/defaults.py:216
    gives DDP GPU device ids; torch's SyncBatchNorm (fast-reid's ``NORM: syncBN``, layers/batch_norm.py:26)
    raises for CPU tensors. Without CUDA, fast-reid's own ``launch`` (mp.spawn, ``--num-machines``,
    ``--machine-rank``, ``--dist-url``) starts gloo workers, DDP wraps the CPU model, and SyncBatchNorm
    synchronises CPU batches. With CUDA upstream runs unchanged."""
    if torch.cuda.is_available():
        return
    import importlib

    from fastreid.engine import defaults

    # `fastreid.engine.launch` is the function (engine/__init__.py star-imports it), not the module.
    launch_module = importlib.import_module("fastreid.engine.launch")
    launch_module._distributed_worker = _cpu_distributed_worker
    defaults.DistributedDataParallel = CpuDistributedDataParallel

    upstream = torch.nn.SyncBatchNorm.forward
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def forward(self, x):
        import torch.distributed as dist

        if (x.device.type == "cpu" and self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group or dist.group.WORLD) > 1):
            return _sync_batch_norm_cpu(self, x)
        return upstream(self, x)

    forward._scsn_patched = True
    torch.nn.SyncBatchNorm.forward = forward


def _patch_freeze_layer_count():
    """solver/build.py:120-154: the optimizer that keeps MODEL.FREEZE_LAYERS still for the first
    SOLVER.FREEZE_ITERS steps (the SBS and MGN recipes: the backbone, 1000 iterations) counts those steps in a
    closure, from 0 in every process, so a run resumed at any iteration froze the layers again for
    FREEZE_ITERS steps. The count is the optimizer's ``frozen_steps`` attribute here, which a resume sets to
    the iteration it starts at (scsn/data/sampling.py ``resume_state``); the step is upstream's otherwise."""
    from fastreid.solver import build as solver_build

    upstream = solver_build._generate_optimizer_class_with_freeze_layer
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def generate(optimizer, *, freeze_iters=0):
        assert freeze_iters > 0, "No layers need to be frozen or freeze iterations is 0"

        @torch.no_grad()
        def step(self, closure=None):
            if self.frozen_steps >= freeze_iters:
                return optimizer.step(self, closure)
            self.frozen_steps += 1
            frozen = [p for group in self.param_groups if group["freeze_status"] == "freeze"
                      for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in frozen]
            for p in frozen:
                p.grad = None
            optimizer.step(self, closure)
            for p, g in zip(frozen, grads):
                p.grad = g

        return type(optimizer.__name__ + "WithFreezeLayer", (optimizer,), {"step": step, "frozen_steps": 0})

    generate._scsn_patched = True
    solver_build._generate_optimizer_class_with_freeze_layer = generate


def _patch_out_of_place_normalisation():
    """modeling/meta_arch/baseline.py:130 ``preprocess_image`` normalises the caller's image tensor in place, so a
    second forward on the same tensor normalises it twice: fast-reid's own flip test (evaluation/evaluator.py:39-40
    flips ``inputs["images"]`` after the first forward and runs the model again), an ONNX parity check that feeds
    the same images to both runtimes, any caller that reuses its batch. The images are normalised into a new tensor
    (every meta-architecture built on Baseline: BoT, AGW, SBS, SCSN)."""
    from fastreid.modeling.meta_arch import baseline

    upstream = baseline.Baseline.preprocess_image
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def preprocess_image(self, batched_inputs):
        images = batched_inputs["images"] if isinstance(batched_inputs, dict) else batched_inputs
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"batched_inputs must be a dict or a torch.Tensor, got {type(batched_inputs)}")
        return (images.to(self.device) - self.pixel_mean) / self.pixel_std  # (B, 3, H, W)

    preprocess_image._scsn_patched = True
    baseline.Baseline.preprocess_image = preprocess_image


def _patch_metric_printer():
    """utils/events.py:218-221 ``CommonMetricPrinter.write`` estimates the time per iteration as the time since
    its last line over the iterations since; until IterationTimer has recorded a time (its first 3 iterations)
    a second line at the same iteration divides by zero. PeriodicWriter writes after the last step and again
    after the epoch, so a run whose epochs are one iteration long died with ZeroDivisionError after training,
    evaluating and saving. That second line would repeat the first; it is skipped."""
    from fastreid.utils import events

    upstream = events.CommonMetricPrinter.write
    if getattr(upstream, "_scsn_patched", False):
        return

    @functools.wraps(upstream)
    def write(self):
        if self._last_write is not None and self._last_write[0] == events.get_event_storage().iter:
            return
        upstream(self)

    write._scsn_patched = True
    events.CommonMetricPrinter.write = write


def build_cython_evaluator():
    """Compile fastreid's Cython ranking (evaluation/rank_cylib) with *this* interpreter. Called once at
    install time; returns True when the compiled module imports."""
    from fastreid.evaluation import rank_cylib

    path = os.path.dirname(rank_cylib.__file__)
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=path, capture_output=True, text=True
    )
    if result.returncode != 0:
        logger.warning("Building fastreid's Cython ranking failed:\n%s", result.stderr[-2000:])
        return False
    try:
        from fastreid.evaluation.rank_cylib import rank_cy  # noqa: F401
    except ImportError:
        return False
    return True


def apply():
    """Apply every patch (each also checks that it is not applied twice)."""
    _install_import_shims()
    _patch_zero_grad()
    _patch_cpu_data_loader()
    _patch_loader_thread_errors()
    _patch_random_affine()
    _patch_to_tensor()
    _patch_cython_evaluator()
    _patch_python_rank_padding()
    _patch_numpy_bool()
    _patch_cpu_rerank()
    _patch_cpu_distributed()
    _patch_metric_printer()
    _patch_out_of_place_normalisation()
    _patch_freeze_layer_count()
