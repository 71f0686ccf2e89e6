"""Re-ID evaluation that scales to MSMT17 on a CPU (fast-reid's metrics, a block of queries at a time)."""
from .chunked import ChunkedReidEvaluator  # noqa: F401
