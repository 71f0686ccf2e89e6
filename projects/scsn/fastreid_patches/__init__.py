"""Every change this project makes to the installed fastreid 1.4.0 wheel, applied once by :func:`apply` when ``scsn``
is imported. Each patch names the upstream file:line it addresses and does nothing where upstream is already right:

- ``compat``: the wheel on Python 3.11, torch 2, numpy 2, torchvision >= 0.16 and machines without CUDA
  (docs/fastreid_1.4.0.md lists each breakage);
- ``guards``: clear errors (:mod:`scsn.errors`) where fastreid fails from deep inside on bad input;
- ``checkpoint``: checkpoints written atomically, loaded without unpickling code, strictly where it matters;
- ``precision``: the fast paths: AMP on the CPU as bf16 autocast, channels_last (``MODEL.MEMORY_FORMAT``);
- ``distiller``: SCSN models as teachers in fast-reid's ``Distiller`` (``KD.*``).
"""

_applied = False


def apply():
    """Apply every patch, in order (the import shims first: ``guards`` imports fastreid's data and engine);
    idempotent."""
    global _applied
    if _applied:
        return
    from . import compat

    compat.apply()
    from . import checkpoint, guards, precision

    guards.apply()
    checkpoint.apply()
    precision.apply()
    from . import distiller  # binds build_model and registers SCSN's modules: after the patches above

    distiller.apply()
    _applied = True
