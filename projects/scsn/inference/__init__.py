"""After training: descriptors of images (``extractor``), ONNX export and its parity check (``export``), a faiss
gallery (``retrieval``)."""
from .extractor import FeatureExtractor  # noqa: F401
