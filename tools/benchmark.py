#!/usr/bin/env python
"""Cost benchmark: SCSN against fast-reid's BoT, AGW, SBS and MGN, in one run on one machine.

For each model and input size: parameters, forward FLOPs at batch 1 (torch.utils.flop_counter, which counts
2 FLOPs per multiply-add), inference images/s at batch 1 and at --infer-batch, the time of one training step
(forward + backward + optimizer step, fast-reid's optimizer) at --train-batch, and peak memory of a training
step (CUDA: torch.cuda.max_memory_allocated; CPU: how far the step raises the peak RSS of a fresh process per
model, above the RSS of the built model, so that models do not contaminate each other). Timings interleave the models and take the median of --repeats rounds, so a noisy
machine does not decide the ranking; on CUDA each timing synchronises and follows --warmup untimed runs.

    python tools/benchmark.py                       # CPU: all models, 384x128 and 256x128
    python tools/benchmark.py --device cuda --train-batch 64 --repeats 20
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.modeling import build_model
from fastreid.solver import build_optimizer
from fastreid.utils.events import EventStorage
from torch.utils.flop_counter import FlopCounterMode

from scsn.engine import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "BoT-R50": "configs/Market1501/bagtricks_R50.yml",
    "AGW-R50": "configs/Market1501/AGW_R50.yml",
    "SBS-R50": "configs/Market1501/sbs_R50.yml",
    "MGN-R50": "configs/Market1501/mgn_R50.yml",
    "SCSN-R50 (3 stages)": "configs/SCSN/market_r50.yml",
    "SCSN-R50 (4 stages)": "configs/SCSN/market_r50_4stages.yml",
    "SCSN-R50 (3 stages; stage-3 stride 2)": "configs/SCSN/market_r50_stage3stride2.yml",
}
NUM_CLASSES = 751  # Market-1501's training identities


def load_cfg(config, size, device):
    return build_config(os.path.join(ROOT, config), [
        "MODEL.BACKBONE.PRETRAIN", False, "MODEL.DEVICE", device, "MODEL.HEADS.NUM_CLASSES", NUM_CLASSES,
        "INPUT.SIZE_TRAIN", list(size), "INPUT.SIZE_TEST", list(size),
        # SBS and MGN freeze the backbone for their first iterations; time the steps of the whole run instead.
        "MODEL.FREEZE_LAYERS", [], "SOLVER.FREEZE_ITERS", 0,
    ])


class Case:
    """One model at one input size, built once, timed many times."""

    def __init__(self, name, size, args):
        self.name, self.size, self.args = name, size, args
        self.cfg = load_cfg(MODELS[name], size, args.device)
        self.model = build_model(self.cfg)
        self.optimizer, _ = build_optimizer(self.cfg, self.model)
        self.params = sum(p.numel() for p in self.model.parameters())
        generator = torch.Generator().manual_seed(0)
        h, w = size
        self.images = {b: (torch.rand(b, 3, h, w, generator=generator) * 255).to(args.device)
                       for b in {1, args.infer_batch, args.train_batch}}
        self.targets = torch.arange(args.train_batch, device=args.device) // 4 % NUM_CLASSES
        self.times = {"infer_b1": [], "infer_bN": [], "train_step": []}

    def flops(self):
        self.model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.model({"images": self.images[1]})
        return counter.get_total_flops()

    def _sync(self):
        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _timed(self, fn):
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - start

    def infer(self, batch):
        self.model.eval()
        with torch.no_grad():
            return self._timed(lambda: self.model({"images": self.images[batch]}))

    def train_step(self):
        self.model.train()

        def step():
            with EventStorage(0):
                losses = sum(self.model({"images": self.images[self.args.train_batch],
                                         "targets": self.targets}).values())
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()

        return self._timed(step)

    def run_round(self):
        self.times["infer_b1"].append(self.infer(1))
        self.times["infer_bN"].append(self.infer(self.args.infer_batch))
        self.times["train_step"].append(self.train_step())


def peak_train_memory(name, size, args):
    """Peak memory of one training step, in MiB, measured in a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--peak-memory-of", name, "--sizes", "x".join(map(str, size)),
           "--device", args.device, "--train-batch", str(args.train_batch), "--infer-batch", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def measure_peak_memory(args):
    size = parse_sizes(args.sizes)[0]
    case = Case(args.peak_memory_of, size, args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        case.train_step()
        print(torch.cuda.max_memory_allocated() / 2 ** 20)
    else:
        # Reset the RSS high-water mark after imports and model building, and report how far the step
        # raises it: the process's own libraries (about 1.5 GB for a CUDA build of torch) are left out.
        def status_kib(field):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field))

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        idle = status_kib("VmRSS:")
        case.train_step()
        print((status_kib("VmHWM:") - idle) / 1024)


def parse_sizes(text):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def machine(args):
    info = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names from: " + ", ".join(MODELS))
    parser.add_argument("--sizes", default="384x128,256x128", help="input sizes HxW, comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=16, help="16 on CPU; use 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default="bench/cost.json")
    parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_of:
        return measure_peak_memory(args)

    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    results = []
    for size in parse_sizes(args.sizes):
        cases = [Case(name, size, args) for name in names]
        for case in cases:
            for _ in range(args.warmup):
                case.infer(1), case.infer(args.infer_batch), case.train_step()
        for r in range(args.repeats):  # round-robin: every model sees the same machine state in each round
            for case in cases:
                case.run_round()
            print(f"{size[0]}x{size[1]}: round {r + 1}/{args.repeats} done", flush=True)
        for case in cases:
            med = {k: statistics.median(v) for k, v in case.times.items()}
            results.append({
                "model": case.name, "size": f"{size[0]}x{size[1]}", "params_M": case.params / 1e6,
                "gflops_b1": case.flops() / 1e9,
                "infer_b1_img_s": 1 / med["infer_b1"],
                "infer_bN_img_s": args.infer_batch / med["infer_bN"],
                "train_step_s": med["train_step"],
                "peak_train_mem_MiB": peak_train_memory(case.name, size, args),
                "raw_seconds": case.times,
            })
        del cases

    print_table(results, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine(args), "args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {args.out}")


def print_table(results, args):
    from tabulate import tabulate

    rows = []
    for r in results:
        bot = next((b for b in results if b["model"] == "BoT-R50" and b["size"] == r["size"]), None)

        def ratio(key, inverse=False):
            if bot is None:
                return ""
            value = bot[key] / r[key] if inverse else r[key] / bot[key]
            return f" ({value:.2f}x)"

        rows.append([
            r["model"], r["size"], f"{r['params_M']:.1f}", f"{r['gflops_b1']:.1f}{ratio('gflops_b1')}",
            f"{r['infer_b1_img_s']:.1f}", f"{r['infer_bN_img_s']:.1f}{ratio('infer_bN_img_s', inverse=True)}",
            f"{r['train_step_s']:.2f}{ratio('train_step_s')}", f"{r['peak_train_mem_MiB']:.0f}",
        ])
    headers = ["model", "input", "params (M)", "GFLOPs b1 (x BoT)", "img/s b1",
               f"img/s b{args.infer_batch} (time x BoT)", f"train step b{args.train_batch} s (x BoT)",
               "train step peak mem MiB"]
    print(tabulate(rows, headers=headers, tablefmt="pipe"))
    print(f"machine: {machine(args)}")


if __name__ == "__main__":
    main()
