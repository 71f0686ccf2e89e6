"""The fast paths of fastreid's trainer on the hardware it runs on: AMP on the CPU as bf16 autocast, and channels_last.

fast-reid's AMP is CUDA's fp16 (engine/train_loop.py:304 ``AMPTrainer``), which asserts CUDA; on a CPU with bf16 units
(x86 AVX512-BF16 or AMX, Arm BF16) ``SOLVER.AMP.ENABLED True`` means bf16 autocast here, for training and evaluation
(:func:`_patch_cpu_amp`). ``MODEL.MEMORY_FORMAT`` puts the model's 4-d weights, and so its activations, in
channels_last (NHWC) order, which oneDNN's bf16 convolutions and CUDA's tensor cores run fastest
(:func:`_patch_memory_format`). fp32 on the CPU, the default, is unchanged.
"""
import functools
import logging
import sys
import time
import warnings

import torch

from ..errors import ConfigError
from ..hardware import bf16_units, cpu_flags, cpu_model
from ..torch_support import cpu_autocast_enabled

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


CPU_AMP_DTYPE = torch.bfloat16


def fp32_loss(loss):
    """A loss computed outside autocast on fp32 inputs: under bf16 autocast a triplet loss's distances (differences of
    squared norms) and a log-softmax keep 3 significant digits, fewer than the differences they are made of."""
    if getattr(loss, "_scsn_patched", False):
        return loss

    def cast(value):
        return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        if not cpu_autocast_enabled():
            return loss(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return loss(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    wrapper._scsn_patched = True
    return wrapper


def cpu_amp_enabled(cfg) -> bool:
    """Whether ``cfg`` runs under CPU autocast: AMP asked for, on the CPU, which has bf16 units."""
    return bool(cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu" and bf16_units())


class CpuAutocast(torch.nn.Module):
    """``model`` whose forward runs under bf16 CPU autocast; what it is given and everything after it (the evaluator's
    distances and ranking) stay in fp32."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=CPU_AMP_DTYPE):
            return self.model(*args, **kwargs)


def _patch_cpu_amp():
    """(7) engine/train_loop.py:335 ``AMPTrainer`` asserts CUDA (and :325 builds a CUDA GradScaler), so
    ``SOLVER.AMP.ENABLED True`` stopped every CPU run. On the CPU, AMP means bf16 autocast where the CPU has bf16
    units: the forward runs under ``torch.autocast("cpu", torch.bfloat16)``, the weights, optimizer and checkpoints
    stay fp32 (bf16 has fp32's range: no loss scaling), fast-reid's losses run in fp32 (:func:`fp32_loss`), and
    ``DefaultTrainer.test`` (engine/defaults.py:418) evaluates under the same autocast. A CPU without bf16 units
    trains in fp32, with one warning. The trainer logs once which path it took and the CPU flags it found. CUDA runs
    upstream's fp16 AMP unchanged."""
    from fastreid.engine import defaults, train_loop
    from fastreid.modeling import losses
    from fastreid.utils.params import ContiguousParams

    if getattr(train_loop.AMPTrainer.run_step, "_scsn_patched", False):
        return
    for name in ("cross_entropy_loss", "triplet_loss", "pairwise_circleloss", "pairwise_cosface", "focal_loss"):
        patched = fp32_loss(getattr(losses, name))
        for module in [m for n, m in list(sys.modules.items()) if n.startswith("fastreid.modeling") and m]:
            if getattr(module, name, None) is patched.__wrapped__:
                setattr(module, name, patched)

    upstream_init, upstream_step = train_loop.AMPTrainer.__init__, train_loop.AMPTrainer.run_step

    def __init__(self, model, data_loader, optimizer, param_wrapper, grad_scaler=None):
        self.cpu_dtype = None
        if next(model.parameters()).device.type != "cpu":
            return upstream_init(self, model, data_loader, optimizer, param_wrapper, grad_scaler)
        train_loop.SimpleTrainer.__init__(self, model, data_loader, optimizer, param_wrapper)
        units = bf16_units()
        if units:
            self.cpu_dtype = CPU_AMP_DTYPE
            logging.getLogger(train_loop.__name__).info(
                "SOLVER.AMP.ENABLED on the CPU: training and evaluating under bf16 autocast (%s has bf16 units: %s); "
                "weights, optimizer and checkpoints stay fp32.", cpu_model(), ", ".join(units))
        else:
            warnings.warn(f"SOLVER.AMP.ENABLED: {cpu_model()} has no bf16 units (flags found: "
                          f"{', '.join(cpu_flags()) or 'none'}), so bf16 would be emulated at a loss; training in "
                          "fp32.", stacklevel=2)

    def run_step(self):
        if next(self.model.parameters()).device.type != "cpu":
            return upstream_step(self)
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        # dtype bf16 even when off: torch 2.1 refuses any other CPU autocast dtype, enabled or not.
        with torch.autocast("cpu", dtype=CPU_AMP_DTYPE, enabled=self.cpu_dtype is not None):
            loss_dict = self.model(data)
            losses_sum = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses_sum.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
        if isinstance(self.param_wrapper, ContiguousParams):
            self.param_wrapper.assert_buffer_is_valid()

    run_step._scsn_patched = True
    train_loop.AMPTrainer.__init__ = __init__
    train_loop.AMPTrainer.run_step = run_step

    upstream_test = defaults.DefaultTrainer.test.__func__

    def test(cls, cfg, model):
        return upstream_test(cls, cfg, CpuAutocast(model) if cpu_amp_enabled(cfg) else model)

    defaults.DefaultTrainer.test = classmethod(test)


def channels_last(cfg) -> bool:
    """Whether ``cfg``'s model runs in channels_last: ``MODEL.MEMORY_FORMAT channels_last``, or ``auto`` with AMP on."""
    memory_format = cfg.MODEL.MEMORY_FORMAT
    if memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"MODEL.MEMORY_FORMAT must be one of {list(MEMORY_FORMATS)}, got {memory_format!r}.")
    return memory_format == "channels_last" or (memory_format == "auto" and cfg.SOLVER.AMP.ENABLED)


def _patch_memory_format():
    """modeling/meta_arch/build.py:20 ``build_model`` returns the model in channels_last where the config says so
    (:func:`channels_last`); solver/build.py's ``build_optimizer(contiguous=True)`` flattens every parameter into one
    contiguous buffer (utils/params.py:63 ``p.data.view(-1)``, which raises for a channels_last weight), so a model
    with channels_last weights gets fast-reid's per-parameter optimizer instead (same update)."""
    import fastreid.modeling
    import fastreid.modeling.meta_arch
    import fastreid.solver
    from fastreid.engine import defaults
    from fastreid.modeling.meta_arch import build as meta_arch_build
    from fastreid.solver import build as solver_build

    if getattr(meta_arch_build.build_model, "_scsn_memory_format", False):
        return
    upstream_build = meta_arch_build.build_model

    @functools.wraps(upstream_build)
    def build_model(cfg):
        model = upstream_build(cfg)
        return model.to(memory_format=torch.channels_last) if channels_last(cfg) else model

    build_model._scsn_memory_format = True
    upstream_optimizer = solver_build.build_optimizer

    @functools.wraps(upstream_optimizer)
    def build_optimizer(cfg, model, contiguous=True):
        flat = contiguous and all(p.is_contiguous() for p in model.parameters())
        optimizer, param_wrapper = upstream_optimizer(cfg, model, flat)
        if contiguous and not flat and "foreach" in optimizer.defaults:
            # Instead of the one flat buffer: torch's multi-tensor update (its CPU default is a loop over the
            # parameters, 1.7x slower for SCSN-R18's Adam step); the same arithmetic.
            for group in optimizer.param_groups:
                group["foreach"] = True
        return optimizer, param_wrapper

    # Bound by name in each of these modules when they were imported.
    for module in (meta_arch_build, fastreid.modeling.meta_arch, fastreid.modeling, defaults):
        module.build_model = build_model
    for module in (solver_build, fastreid.solver, defaults):
        module.build_optimizer = build_optimizer


def apply():
    _patch_cpu_amp()
    _patch_memory_format()
