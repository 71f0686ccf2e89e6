#!/usr/bin/env python
"""Cost benchmark: SCSN against fast-reid's BoT, AGW, SBS and MGN, under every execution path, in one run.

For each model: parameters and forward FLOPs at batch 1 (torch.utils.flop_counter: 2 FLOPs per multiply-add;
elementwise work is not counted); then, for each path, inference images/s at --infer-batch and the time of one
training step at --train-batch (forward + backward + fast-reid's optimizer step, 751 classes). Paths:

- ``fp32``: eager PyTorch, NCHW: the default;
- ``channels_last``: ``MODEL.MEMORY_FORMAT channels_last``;
- ``AMP`` / ``AMP + channels_last``: ``SOLVER.AMP.ENABLED True``: bf16 autocast on a CPU with bf16 units (skipped on
  one without), fast-reid's fp16 on CUDA; ``MODEL.MEMORY_FORMAT auto`` makes it channels_last;
- ``compiled``: the fastest eager path under torch.compile (``TEST.RUNTIME compiled``), inference only (its
  compilation is not timed);
- ``onnxruntime``: the exported ONNX graph on onnxruntime's CPU provider (``TEST.RUNTIME onnxruntime``, fp32, after
  the export's parity check), inference only, CPU only.

Each model's paths are timed round-robin (--repeats rounds, the median kept), so a noisy machine does not decide
a ratio. "x fp32" is a speed-up over the fp32 path of the same model; "modules off" is the same SCSN config with
RDAM, NMFF, SFE and the cascade off (one stage): SCSN's own overhead is its time over that model's, to be read
against its FLOP ratio. Peak memory of a training step (fp32 and the fastest path) is measured in a fresh process
each. The JSON (default results/cost.json) holds the command, commit, CPU model and flags.

    python tools/benchmark.py                  # the README's models: R50 at 384x128, the synthetic R18s at 128x64
    python tools/benchmark.py --models "SCSN-R50 (3 stages),SCSN-R50 (modules off)" --repeats 3
    python tools/benchmark.py --r18 --out results/cost_r18.json   # the synthetic benchmark's models
    python tools/benchmark.py --device cuda --train-batch 64 --infer-batch 128
"""
import argparse
import atexit
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import scsn  # noqa: F401  (before any fastreid import)
import scsn.results
from fastreid.modeling import build_model
from fastreid.solver import build_optimizer
from fastreid.utils.events import EventStorage
from torch.utils.flop_counter import FlopCounterMode

from scsn.engine import build_config
from scsn.engine.defaults import recipe_teachers
from scsn.hardware import bf16_units
from scsn.inference.runtime import Runtime

ROOT = scsn.results.ROOT
MODULES_OFF = ["MODEL.BACKBONE.RDAM.MODE", "none", "MODEL.BACKBONE.NMFF.STAGES", "[]", "MODEL.HEADS.WITH_SFE", "False",
               "MODEL.HEADS.NUM_STAGES", "1"]
# name: (config, overrides, input size: None for --sizes)
MODELS = {
    "BoT-R50": ("configs/Market1501/bagtricks_R50.yml", [], None),
    "AGW-R50": ("configs/Market1501/AGW_R50.yml", [], None),
    "SBS-R50": ("configs/Market1501/sbs_R50.yml", [], None),
    "MGN-R50": ("configs/Market1501/mgn_R50.yml", [], None),
    "SCSN-R50 (3 stages)": ("configs/SCSN/market_r50.yml", [], None),
    "SCSN-R50 (modules off)": ("configs/SCSN/market_r50.yml", MODULES_OFF, None),
    "SCSN-R50 (4 stages)": ("configs/SCSN/market_r50_4stages.yml", [], None),
    "SCSN-R50 (3 stages; stage-3 stride 2)": ("configs/SCSN/market_r50_stage3stride2.yml", [], None),
    "SCSN-R50 (stage-3 stride 2; modules off)": ("configs/SCSN/market_r50_stage3stride2.yml", MODULES_OFF, None),
    # The synthetic benchmark's models, at its input size.
    "BoT-R18": ("configs/Synthetic/bagtricks_r18.yml", [], (128, 64)),
    "AGW-R18": ("configs/Synthetic/agw_r18.yml", [], (128, 64)),
    "SBS-R18": ("configs/Synthetic/sbs_r18.yml", [], (128, 64)),
    "SCSN-R18": ("configs/Synthetic/scsn_r18.yml", [], (128, 64)),
    "SCSN-R18 (stage-3 stride 2)": ("configs/Synthetic/ablations/stage3stride2.yml", [], (128, 64)),
    "baseline (global branch)": ("configs/Synthetic/ablations/baseline.yml", [], (128, 64)),
    # BoT-R18 learning from SCSN-R18 in fast-reid's Distiller: BoT-R18 at inference; its training step runs the teacher.
    "BoT-R18 student of SCSN-R18": ("configs/Synthetic/distill/scsn_r18-bot_r18.yml", [], (128, 64)),
}
DEFAULT_MODELS = ("BoT-R50", "SCSN-R50 (3 stages)", "SCSN-R50 (modules off)", "SCSN-R50 (3 stages; stage-3 stride 2)",
                  "SCSN-R50 (stage-3 stride 2; modules off)", "BoT-R18", "SCSN-R18")
# The models of the synthetic accuracy benchmark: the accuracy-cost front (results/cost_r18.json).
R18_MODELS = ("BoT-R18", "AGW-R18", "SBS-R18", "SCSN-R18", "SCSN-R18 (stage-3 stride 2)", "baseline (global branch)",
              "BoT-R18 student of SCSN-R18")
# path: (MODEL.MEMORY_FORMAT, SOLVER.AMP.ENABLED, TEST.RUNTIME, trains)
PATHS = {
    "fp32": ("contiguous", False, "eager", True),
    "channels_last": ("channels_last", False, "eager", True),
    "AMP": ("contiguous", True, "eager", True),
    "AMP + channels_last": ("channels_last", True, "eager", True),
    "compiled": (None, None, "compiled", False),
    "onnxruntime": ("contiguous", False, "onnxruntime", False),
}
NUM_CLASSES = 751  # Market-1501's training identities


def available_paths(device, wanted=tuple(PATHS)):
    """The ``wanted`` paths this machine runs, and the fastest eager one, which the compiled path compiles."""
    amp = device.startswith("cuda") or bool(bf16_units())
    paths = [p for p in wanted if (amp or not PATHS[p][1]) and not (p == "onnxruntime" and device != "cpu")]
    return paths, ("AMP + channels_last" if amp else "channels_last")


def teacher_runs(config, size, args):
    """KD.MODEL_CONFIG / KD.MODEL_WEIGHTS of a Distiller ``config``: its recipe's teachers (the configs whose runs it
    learns from), untrained, at ``size``, in a temporary folder: a teacher costs the same whatever its weights."""
    cfg = build_config(os.path.join(ROOT, config))
    found = recipe_teachers(cfg, sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yml"))))
    runs = []
    for teacher in found:
        key = (teacher, size)
        if key not in _TEACHERS:
            folder = tempfile.mkdtemp(prefix="teacher-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            cfg_t = build_config(teacher, ["MODEL.BACKBONE.PRETRAIN", False, "MODEL.DEVICE", args.device,
                                           "MODEL.HEADS.NUM_CLASSES", NUM_CLASSES, "INPUT.SIZE_TRAIN", list(size),
                                           "INPUT.SIZE_TEST", list(size)])
            torch.save({"model": build_model(cfg_t).state_dict()}, os.path.join(folder, "model_final.pth"))
            with open(os.path.join(folder, "config.yaml"), "w") as f:
                f.write(cfg_t.dump())
            _TEACHERS[key] = folder
        runs.append(_TEACHERS[key])
    if not runs:
        return []
    return ["KD.MODEL_CONFIG", [os.path.join(r, "config.yaml") for r in runs],
            "KD.MODEL_WEIGHTS", [os.path.join(r, "model_final.pth") for r in runs]]


_TEACHERS = {}


def load_cfg(name, size, path, args):
    config, opts, _ = MODELS[name]
    memory_format, amp, runtime, _ = PATHS[path]
    if runtime == "compiled":
        memory_format, amp, _, _ = PATHS[args.fastest]
    return build_config(os.path.join(ROOT, config), [
        *opts, *teacher_runs(config, size, args), "MODEL.BACKBONE.PRETRAIN", False, "MODEL.DEVICE", args.device,
        "MODEL.HEADS.NUM_CLASSES", NUM_CLASSES,
        "INPUT.SIZE_TRAIN", list(size), "INPUT.SIZE_TEST", list(size), "MODEL.MEMORY_FORMAT", memory_format,
        "SOLVER.AMP.ENABLED", amp, "TEST.RUNTIME", runtime,
        # SBS and MGN freeze the backbone for their first iterations; time the steps of the whole run instead.
        "MODEL.FREEZE_LAYERS", [], "SOLVER.FREEZE_ITERS", 0,
    ])


class Case:
    """One model under one path at one input size, built once, timed many times."""

    def __init__(self, name, size, path, args, images, targets):
        self.path, self.args, self.images, self.targets = path, args, images, targets
        self.cfg = load_cfg(name, size, path, args)
        torch.manual_seed(0)
        self.model = build_model(self.cfg)
        self.trains = PATHS[path][3]
        if self.trains:
            self.optimizer, _ = build_optimizer(self.cfg, self.model)
        self.runtime = Runtime(self.model.eval(), self.cfg)
        self.amp_dtype = torch.bfloat16 if args.device == "cpu" else torch.float16
        self.times = {"infer": [], "train_step": []}

    def _timed(self, fn):
        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def infer(self):
        with torch.no_grad():
            return self._timed(lambda: self.runtime(self.images["infer"]))

    def train_step(self):
        self.model.train()

        def step():
            with EventStorage(0), torch.autocast(self.args.device.split(":")[0], dtype=self.amp_dtype,
                                                 enabled=self.cfg.SOLVER.AMP.ENABLED):
                losses = sum(self.model({"images": self.images["train"], "targets": self.targets}).values())
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()

        seconds = self._timed(step)
        self.model.eval()
        return seconds

    def run_round(self, record=True):
        times = {"infer": self.infer()}
        if self.trains:
            times["train_step"] = self.train_step()
        if record:
            for key, seconds in times.items():
                self.times[key].append(seconds)


def flops_and_params(name, size, args):
    cfg = load_cfg(name, size, "fp32", args)
    model = build_model(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, *size, device=args.device) * 255)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def peak_train_memory(name, size, path, args):
    """Peak memory of one training step, in MiB, measured in a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--peak-memory-of", name, "--path", path,
           "--sizes", "x".join(map(str, size)), "--device", args.device, "--train-batch", str(args.train_batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def measure_peak_memory(args):
    size = parse_sizes(args.sizes)[0]
    args.fastest = available_paths(args.device)[1]
    images = {"infer": None, "train": torch.rand(args.train_batch, 3, *size, device=args.device) * 255}
    targets = torch.arange(args.train_batch, device=args.device) // 4 % NUM_CLASSES
    case = Case(args.peak_memory_of, size, args.path, args, images, targets)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        case.train_step()
        print(torch.cuda.max_memory_allocated() / 2 ** 20)
        return

    # Reset the RSS high-water mark after imports and model building, and report how far the step raises it: the
    # process's own libraries (about 1.5 GB for a CUDA build of torch) are left out.
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


def measure(names, args):
    paths, args.fastest = available_paths(args.device, args.paths.split(","))
    results = []
    targets = torch.arange(args.train_batch, device=args.device) // 4 % NUM_CLASSES
    for name in names:
        for size in [MODELS[name][2]] if MODELS[name][2] else parse_sizes(args.sizes):
            images = {"infer": torch.rand(args.infer_batch, 3, *size, device=args.device) * 255,
                      "train": torch.rand(args.train_batch, 3, *size, device=args.device) * 255}
            flops, params = flops_and_params(name, size, args)
            torch._dynamo.reset()  # each model compiles afresh, not against the previous models' recompile limit
            cases = [Case(name, size, path, args, images, targets) for path in paths]
            # Warm-up: the first call of a compiled model compiles, and fast-reid's ResNet, which sets its NL_*_idx
            # lists on its first forward (modeling/backbones/resnet.py:188), makes it recompile once.
            for case in cases:
                for _ in range(args.warmup + (case.path == "compiled")):
                    case.run_round(record=False)
            for _ in range(args.repeats):  # round-robin: every path sees the same machine state in each round
                for case in cases:
                    case.run_round()
            for case in cases:
                med = {k: statistics.median(v) for k, v in case.times.items() if v}
                results.append({
                    "model": name, "config": MODELS[name][0], "size": f"{size[0]}x{size[1]}", "path": case.path, "params_M": params / 1e6,
                    "gflops_b1": flops / 1e9, "infer_img_s": args.infer_batch / med["infer"],
                    "train_step_s": med.get("train_step"),
                    "peak_train_mem_MiB": (peak_train_memory(name, size, case.path, args)
                                           if case.path in ("fp32", args.fastest) else None),
                    "raw_seconds": case.times,
                })
            print(f"{size[0]}x{size[1]} {name}: done", flush=True)
            del cases
    return paths, results


def print_tables(results, paths):
    from tabulate import tabulate

    def cell(r, key, base):
        if r is None or r.get(key) is None:
            return "-"
        speedup = r[key] / base[key] if key == "infer_img_s" else base[key] / r[key]
        return f"{r[key]:.{1 if key == 'infer_img_s' else 2}f} ({speedup:.2f}x)"

    for key, title in (("infer_img_s", "inference img/s (x fp32)"), ("train_step_s", "training step s (x fp32)")):
        rows = []
        for (model, size) in dict.fromkeys((r["model"], r["size"]) for r in results):
            by_path = {r["path"]: r for r in results if (r["model"], r["size"]) == (model, size)}
            base = by_path["fp32"]
            rows.append([model, size, f"{base['gflops_b1']:.1f}"] + [
                cell(by_path.get(p), key, base) for p in paths])
        print(f"\n{title}")
        print(tabulate(rows, headers=["model", "input", "GFLOPs b1"] + paths, tablefmt="pipe"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated names from: " + ", ".join(MODELS))
    parser.add_argument("--r18", action="store_true", help="the synthetic accuracy benchmark's models: "
                        + ", ".join(R18_MODELS))
    parser.add_argument("--sizes", default="384x128", help="input sizes HxW, comma-separated")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, from: " + ", ".join(PATHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=16, help="16 on CPU; use 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "cost.json"))
    parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_of:
        return measure_peak_memory(args)
    names = list(R18_MODELS) if args.r18 else args.models.split(",")
    unknown = [n for n in names if n not in MODELS] + [p for p in args.paths.split(",") if p not in PATHS]
    if unknown or "fp32" not in args.paths.split(","):
        parser.error(f"unknown models or paths {unknown} (the fp32 path is the reference: keep it); choose from "
                     f"{list(MODELS)} and {list(PATHS)}")
    paths, results = measure(names, args)
    print_tables(results, paths)
    record = scsn.results.record({"benchmark": "cost", "paths": paths, "fastest_eager_path": args.fastest,
                                  "infer_batch": args.infer_batch, "train_batch": args.train_batch,
                                  "repeats": args.repeats, "device": args.device, "results": results})
    print(f"machine: {record['machine']}")
    scsn.results.write(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
