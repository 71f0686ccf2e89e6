"""What every tool shares: the config builder and model loader (``defaults``), the command line and its one error
wrapper (``cli``)."""
from .defaults import build_config, load_model, resolve_device  # noqa: F401
