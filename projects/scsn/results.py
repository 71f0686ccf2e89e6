"""Results as data: every benchmark writes one JSON record with the command, the commit and the machine inside.

``record(payload)`` adds what a reader needs to trust a number and rerun it: the command line, the git commit (with
``-dirty`` when tracked files differ from it), the date, and the machine: CPU model, core count, the CPU flags that
decide the speed of this project's paths (AVX-512, bf16 units, AMX), memory, GPU, torch and Python versions.
"""
import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# CPU flags (Linux /proc/cpuinfo names) that set the speed of fp32, bf16 and channels_last convolutions.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")


def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n")[0]
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    """The SPEED_FLAGS this CPU has (x86 ``flags``, Arm ``Features``)."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [flag for flag in SPEED_FLAGS if flag in flags]


def memory_gib() -> int:
    try:
        with open("/proc/meminfo") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("MemTotal:")) / 2**20)
    except (OSError, StopIteration):
        return 0


def machine() -> dict:
    info = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(), "memory_gib": memory_gib(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def record(payload: dict, argv: List[str] = None) -> dict:
    """``payload`` with the command, commit, date and machine it was measured with."""
    argv = sys.argv if argv is None else argv
    command = " ".join([os.path.relpath(argv[0], ROOT) if os.path.isabs(argv[0]) else argv[0], *argv[1:]])
    return {"command": f"python {command}", "commit": git_commit(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(), **payload}


def write(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
