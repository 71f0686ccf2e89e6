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
from typing import List

import torch

from .hardware import cpu_flags, cpu_model, memory_gib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
