"""What this machine has that decides which path is fast: the CPU model and its flags (AVX-512, bf16 units, AMX), read
from /proc/cpuinfo, and its memory. No dependency beyond the standard library."""
import platform
from typing import Dict, List

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


# Flags of CPU units that compute in bf16 natively: x86 AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX-BF16
# (Sapphire Rapids and later), Arm's BF16 extension. Without them oneDNN emulates bf16 in fp32 units, at a loss.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def bf16_units() -> List[str]:
    """The flags of this CPU's bf16 units; empty where it has none."""
    return [flag for flag in cpu_flags() if flag in BF16_FLAGS]
