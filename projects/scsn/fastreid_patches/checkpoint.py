"""Checkpoints that survive a kill while being written, load without running code, and never load half.

fast-reid's ``Checkpointer`` (utils/checkpoint.py) writes ``<name>.pth`` in place (:95-96), then the
``last_checkpoint`` tag (:196-197): a kill during either write leaves a truncated file, which ``--resume``
then reads. :func:`atomic_write` writes to a temporary file in the same folder, flushes it to disk and renames
it over the old file (``os.replace``, atomic on POSIX): a reader sees the old file or the new one, never part
of one. A kill while saving leaves at most a ``.<name>.tmp`` file, which the next save of that name replaces.

Loading (:216) goes through :func:`load_checkpoint_file`: ``torch.load(weights_only=True)``, whose unpickler
builds only tensors, numbers, strings, lists, dicts and OrderedDicts. That is all fast-reid's checkpointer
stores (the model's state_dict; the optimizer's and LR schedulers' state_dicts; epoch, metric; here also the
run seed), so the allow-list of other globals is empty (a test loads a real training checkpoint this way).
Any other object (a pickled model, a legacy raw pickle, a file crafted so that unpickling runs code) is refused
with :class:`UnsafeCheckpointError`, before anything in the file is executed; a truncated file with
:class:`CorruptCheckpointError`.

A checkpointer with ``strict = True`` (``--resume`` in tools/train_net.py, and :func:`load_weights`, the one loader
of trained weights for ``--eval-only``, inference and analysis) refuses a checkpoint that does not fill the model
(:class:`CheckpointMismatchError`, naming the missing, unexpected and reshaped keys) instead of logging fast-reid's note and going on with part of the model at its initial values. Empty tensors
of the model are exempt: the classifier of a model built with ``MODEL.HEADS.NUM_CLASSES 0`` for evaluation has
no rows to load.
"""
import logging
import os
import pickle
import zipfile

import torch

from fastreid.utils import checkpoint as fastreid_checkpoint
from fastreid.utils.checkpoint import Checkpointer

from ..errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointError, UnsafeCheckpointError
from ..torch_support import LISTS_UNSAFE_GLOBALS

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "load_checkpoint_file", "check_weights_path", "load_weights", "load_best_metric",
           "mismatched_keys", "restore_best_metric", "apply"]

# Keys listed per kind in a mismatch report before "... and N more".
MAX_LISTED = 12


def atomic_write(path, write, mode="wb"):
    """Call ``write(f)`` on a temporary file next to ``path``, flush it to disk, then rename it to ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename is an entry of the folder: sync it too, so that it survives a power cut.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _others(path):
    folder = os.path.dirname(os.path.abspath(path))
    return sorted(f for f in os.listdir(folder) if f.endswith(".pth") and f != os.path.basename(path))


def load_checkpoint_file(path, **kwargs):
    """``torch.load(path, map_location="cpu", weights_only=True, **kwargs)`` with clear errors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if not _is_pickle_or_archive(path):
            raise _corrupt(path, e) from e  # garbage, or a file cut at its first bytes
        if not zipfile.is_zipfile(path):  # not a torch.save archive
            what = "a raw or legacy pickle, not a torch.save archive of tensors and plain values"
        elif LISTS_UNSAFE_GLOBALS:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            what = f"Python objects besides tensors and plain values ({', '.join(found)})"
        else:  # older torch cannot list them: its error names the first one it refused
            what = f"Python objects besides tensors and plain values ({str(e).split('WeightsUnpickler error: ')[-1]})"
        raise UnsafeCheckpointError(
            f"Refusing to load checkpoint {path!r}: it holds {what}, and unpickling it could run arbitrary code. "
            "Nothing in it was run. fast-reid and SCSN checkpoints hold only tensors, numbers, strings, lists and "
            "dicts. If you made this file yourself and trust it, convert it once with "
            f"`python -c \"import torch; torch.save(torch.load('{path}', weights_only=False), 'converted.pth')\"` "
            "and load converted.pth."
        ) from e
    except (RuntimeError, EOFError) as e:
        raise _corrupt(path, e) from e


def _is_pickle_or_archive(path):
    """A torch.save zip archive, or a pickle (protocol 2+ starts with the PROTO opcode 0x80)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80" or zipfile.is_zipfile(path)


def _corrupt(path, error):
    others = _others(path)
    return CorruptCheckpointError(
        f"Checkpoint {path!r} is truncated or corrupt ({type(error).__name__}: {str(error).splitlines()[0]}). "
        "This version writes checkpoints to a temporary file and renames it only once complete, so the file "
        "was damaged after it was written or by another program. "
        + (f"Other checkpoints in its folder: {', '.join(others)}; to resume from one, write its name into "
           "the folder's last_checkpoint file (or pass it as MODEL.WEIGHTS)." if others else "")
    )


def load_best_metric(path):
    """The ``metric`` stored in the checkpoint at ``path`` (read memory-mapped: the tensors are not read)."""
    return load_checkpoint_file(path, mmap=True).get("metric", -1)


def mismatched_keys(model, incompatible):
    """fast-reid's ``_IncompatibleKeys`` without the model's empty tensors -> (missing, unexpected, shapes)."""
    empty = {k for k, v in model.state_dict().items() if v.numel() == 0}
    missing = [k for k in fastreid_checkpoint._filter_reused_missing_keys(model, incompatible.missing_keys)
               if k not in empty]
    shapes = [(k, tuple(c), tuple(m)) for k, c, m in incompatible.incorrect_shapes if k not in empty]
    return sorted(missing), sorted(incompatible.unexpected_keys), shapes


def _listed(keys):
    groups = fastreid_checkpoint._group_checkpoint_keys(keys)
    lines = [k + fastreid_checkpoint._group_to_str(v) for k, v in sorted(groups.items())]
    more = f"\n    ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return "".join(f"\n    {line}" for line in lines[:MAX_LISTED]) + more


def _mismatch_message(path, missing, unexpected, shapes):
    parts = [f"Checkpoint {path!r} does not match the model built from the config:"]
    if missing:
        parts.append(f"  {len(missing)} tensors of the model are not in the checkpoint:{_listed(missing)}")
    if unexpected:
        parts.append(f"  {len(unexpected)} tensors of the checkpoint are not in the model:{_listed(unexpected)}")
    if shapes:
        listed = "".join(f"\n    {k}: {c} in the checkpoint, {m} in the model" for k, c, m in shapes[:MAX_LISTED])
        parts.append(f"  {len(shapes)} tensors have another shape:{listed}")
    parts.append("It was written for another model (e.g. another MODEL.META_ARCHITECTURE, MODEL.BACKBONE.DEPTH or "
                 "MODEL.HEADS.NUM_STAGES): pass the config it was trained with (config.yaml in its OUTPUT_DIR).")
    return "\n".join(parts)


def apply():
    """Atomic saving, safe loading and the ``strict`` switch on fast-reid's Checkpointer; idempotent."""
    if getattr(Checkpointer.save, "_scsn_patched", False):
        return
    upstream_load_model = Checkpointer._load_model

    def save(self, name, **kwargs):
        """utils/checkpoint.py:74, written with :func:`atomic_write`."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        """utils/checkpoint.py:188, written with :func:`atomic_write`."""
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename),
                     mode="w")

    def _load_file(self, f):
        self._scsn_path = f
        checkpoint = load_checkpoint_file(f)
        if isinstance(checkpoint, dict) and "model" not in checkpoint and checkpoint \
                and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return {"model": checkpoint}  # a bare state dict, as torch.save(model.state_dict()) writes
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
            raise CheckpointError(f"{f!r} is not a fast-reid checkpoint: expected a state dict under 'model'.")
        return checkpoint

    def _load_model(self, checkpoint):
        incompatible = upstream_load_model(self, checkpoint)
        if self.strict:
            missing, unexpected, shapes = mismatched_keys(self.model, incompatible)
            if missing or unexpected or shapes:
                path = getattr(self, "_scsn_path", "(in memory)")
                raise CheckpointMismatchError(_mismatch_message(path, missing, unexpected, shapes))
        return incompatible

    save._scsn_patched = True
    Checkpointer.save = save
    Checkpointer.tag_last_checkpoint = tag_last_checkpoint
    Checkpointer._load_file = _load_file
    Checkpointer._load_model = _load_model
    Checkpointer.strict = False


def check_weights_path(path):
    if not path:
        raise CheckpointError("No weights given: add `MODEL.WEIGHTS path/to/model_final.pth` to the command.")
    if not os.path.isfile(path):
        raise CheckpointError(f"MODEL.WEIGHTS {path!r} is not a file.")


def load_weights(model, path):
    """The one strict loader of trained weights (``--eval-only``, inference, analysis): ``path``, a fast-reid
    checkpoint or a bare state dict, into ``model``, or a :class:`CheckpointError` that says why not."""
    check_weights_path(path)
    checkpointer = Checkpointer(model)
    checkpointer.strict = True
    checkpointer.load(path)
    return model


def restore_best_metric(trainer):
    """After a resume: fast-reid's PeriodicCheckpointer hook starts every process with a best metric of -1
    (utils/checkpoint.py:288), so the first evaluation after a resume overwrote the earlier run's
    ``model_best.pth`` however it compared. It starts from the metric stored in that file instead."""
    from fastreid.engine.hooks import PeriodicCheckpointer

    best = os.path.join(trainer.cfg.OUTPUT_DIR, "model_best.pth")
    for hook in trainer._hooks:
        if isinstance(hook, PeriodicCheckpointer) and os.path.isfile(best):
            hook.best_metric = load_best_metric(best)
