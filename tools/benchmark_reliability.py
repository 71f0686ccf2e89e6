#!/usr/bin/env python
"""Reliability measurements for README.md's "Reliability" section; each prints a table and writes JSON.

``distributed``: one training step on 2 CPU processes (fast-reid's ``launch``, gloo, DDP) against one process on
the same global batch. A fixed random batch of P identities x K images (the layout of fast-reid's identity
samplers; process r takes the r-th half, whole identities) goes through SCSN-R18 built from
``configs/Synthetic/scsn_r18.yml`` with the same initial weights; the table gives, per setting (losses, BN or
SyncBN) and precision, the largest difference between the two runs' gradients relative to the largest gradient,
and the tensor where the relative difference is largest.

``kills``: a short training run on SyntheticReIDTiny killed with SIGKILL again and again, and continued with
--resume each time, against the same run never interrupted: are the final weights, optimizer and scheduler
states and metrics equal? Every other kill lands while a checkpoint is being written, the others at a random
moment up to an epoch after the segment's first checkpoint (an iteration, an evaluation or a write); after
each kill the checkpoint that last_checkpoint names must load.

    python tools/benchmark_reliability.py distributed          # results/reliability_distributed.json
    python tools/benchmark_reliability.py kills --kills 6      # results/reliability_kills.json
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

import scsn  # noqa: F401  (before any fastreid import)
import scsn.results
from scsn.analysis.distributed import (ROOT, SCSN_R18, SETTINGS, STAGE3_STRIDE_2, IDENTITIES, INSTANCES,
                                       compare_gradients, distributed_against_one_process)
from scsn.fastreid_patches.checkpoint import load_checkpoint_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def run_distributed(args):
    cases = [(name, dtype) for name in SETTINGS for dtype in ("float64", "float32")]
    with tempfile.TemporaryDirectory() as workdir:
        results = distributed_against_one_process([(SETTINGS[name], dtype) for name, dtype in cases], workdir)
        # Yardsticks for cases 0 and 1 (the first setting in float64 and float32): how far each float32 gradient,
        # of one process and of two, is from the exact (float64) one.
        grads = {f: torch.load(os.path.join(workdir, f"{f}.pt"), weights_only=True)
                 for f in ("one_0", "one_1", "two_1")}
        floors = {"one process": compare_gradients(grads["one_0"], grads["one_1"]),
                  "two processes": compare_gradients(grads["one_0"], grads["two_1"])}
    rows = [{"setting": name, "dtype": dtype, **result} for (name, dtype), result in zip(cases, results)]
    print("| setting | precision | max abs gradient difference / max abs gradient | "
          "worst tensor (its own relative difference) | BN running statistics, max abs difference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['dtype']} | {r['relative']:.1e} | "
              f"{r['worst_tensor']} ({r['worst_tensor_relative']:.1e}) | {r['running_stats_max_abs_diff']:.1e} |")
    for who, floor in floors.items():
        print(f"| {cases[0][0]}: {who} in float32 against one process in float64 | | {floor['relative']:.1e} | "
              f"{floor['worst_tensor']} ({floor['worst_tensor_relative']:.1e}) | |")
    return {"batch": f"{IDENTITIES} identities x {INSTANCES} images, 2 processes x {IDENTITIES * INSTANCES // 2}",
            "rows": rows, "float32_against_float64": floors}


# ---------------------------------------------------------------------------------------------------------------

def train_net_command(output_dir, epochs, *extra):
    return [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *extra,
            "--config-file", SCSN_R18, "DATASETS.NAMES", '("SyntheticReIDTiny",)',
            "DATASETS.TESTS", '("SyntheticReIDTiny",)', "SOLVER.IMS_PER_BATCH", "16", "SOLVER.WARMUP_ITERS", "2",
            "TEST.IMS_PER_BATCH", "32", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "SEED", "5",
            *STAGE3_STRIDE_2,
            "SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "2",
            "OUTPUT_DIR", output_dir]


def same_state(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def writing_since(folder, since):
    """A temporary checkpoint file (scsn/fastreid_patches/checkpoint.py atomic_write) modified after ``since``, or
    None."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        try:
            if name.endswith(".tmp") and os.path.getmtime(os.path.join(folder, name)) > since:
                return name
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return None


def final_metrics(output_dir):
    """The last evaluation's metrics, as tools/train_net.py wrote them."""
    return scsn.results.load(os.path.join(output_dir, "eval_results.json"))


def run_kills(args):
    rng = random.Random(args.seed)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as workdir:
        env.setdefault("FASTREID_DATASETS", os.path.join(workdir, "datasets"))
        whole, part = os.path.join(workdir, "whole"), os.path.join(workdir, "part")
        start = time.time()
        done = subprocess.run(train_net_command(whole, args.epochs), cwd=ROOT, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        uninterrupted_s = time.time() - start
        expected = final_metrics(whole)
        epoch_s = uninterrupted_s / args.epochs
        kills, log = [], ""
        tag = os.path.join(part, "last_checkpoint")
        while True:
            resume = ["--resume"] if os.path.exists(tag) else []
            before, started = (open(tag).read() if resume else None), time.time()
            proc = subprocess.Popen(train_net_command(part, args.epochs, *resume), cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if len(kills) < args.kills:
                # Every other kill lands in a checkpoint write; the others at a random moment up to an epoch
                # after the segment's first checkpoint (so that every such segment makes progress).
                while_saving = len(kills) % 2 == 0
                while proc.poll() is None:
                    if while_saving and writing_since(part, started):
                        break
                    if not while_saving and os.path.exists(tag) and open(tag).read() != before:
                        time.sleep(rng.uniform(0, epoch_s))
                        break
                    time.sleep(0.01)
                writing = writing_since(part, started) if while_saving else None
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate()
                    last = open(tag).read() if os.path.exists(tag) else None
                    if last is not None:  # the checkpoint it names must load
                        load_checkpoint_file(os.path.join(part, last))
                    kills.append({"while_writing": writing, "last_checkpoint_after_kill": last})
                    continue
            log = proc.communicate()[0]
            assert proc.returncode == 0, log[-3000:]
            break
        a = load_checkpoint_file(os.path.join(whole, "model_final.pth"))
        b = load_checkpoint_file(os.path.join(part, "model_final.pth"))
        during_save = sum(k["while_writing"] is not None for k in kills)
        result = {
            "epochs": args.epochs, "kills": len(kills), "kills_while_saving": during_save,
            "kill_points": kills, "same_final_state": same_state(a, b),
            "same_final_metrics": final_metrics(part) == expected,
            "final_metrics": expected, "uninterrupted_run_s": round(uninterrupted_s, 1),
        }
    print("| kills (of which while writing a checkpoint) | final weights, optimizer, schedulers, run seed equal "
          "| final metrics equal |")
    print("|---|---|---|")
    print(f"| {result['kills']} ({during_save}) | {result['same_final_state']} | {result['same_final_metrics']} |")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("distributed")
    kills = sub.add_parser("kills")
    kills.add_argument("--kills", type=int, default=6)
    kills.add_argument("--epochs", type=int, default=8)
    kills.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", default=None, help="JSON path (default results/reliability_<command>.json)")
    args = parser.parse_args()
    result = {"distributed": run_distributed, "kills": run_kills}[args.command](args)
    out = args.out or os.path.join(ROOT, "results", f"reliability_{args.command}.json")
    scsn.results.write(out, scsn.results.record({"benchmark": f"reliability {args.command}", **result}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
