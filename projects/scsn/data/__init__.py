"""Datasets fast-reid lacks (the embedded synthetic set, CUHK03's detected boxes; registered on import) and the
resumable training loader."""
from .datasets import CUHK03Detected  # noqa: F401
from .synthetic import SyntheticReID, SyntheticReIDBench, SyntheticReIDTiny  # noqa: F401
