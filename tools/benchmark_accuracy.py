#!/usr/bin/env python
"""Accuracy benchmark on the synthetic dataset: SCSN against fast-reid's baselines, plus SCSN's ablation ladder.

Every run goes through tools/train_net.py with the same budget (ResNet18 from scratch, 128x64 input, P x I
batch, epochs, Adam + cosine: the shared block of configs/Synthetic/*.yml) and differs only in the model.
The comparison pairs each SCSN with the recipe it is built on: SCSN-R18 (the paper's recipe) with BoT-R18, and
SCSN-R18 on SBS (configs/Synthetic/scsn_sbs_r18.yml) with SBS-R18 and with SBS-R18 at the paper's strides (the
same config with every SCSN module off). fast-reid's MGN is left out: its
meta-architecture hard-codes ResNet50's bottleneck widths (meta_arch/mgn.py), so it cannot run at ResNet18.

Runs are deterministic for a given SEED and thread count on one machine (not across machines: README,
"Reproducibility"); every run uses --threads torch threads (default 1)
whatever --jobs is, so the numbers do not depend on how many run at once. --jobs runs that many trainings side by
side (default: one per CPU core), which on a 2-core CPU finishes the default set (6 models x 4 seeds, plus the
ladder's baseline x 4 seeds: 28 trainings of 4-45 minutes each, the longest those at the paper's strides) in
about 3.8 hours on the machine of 2026-12-02 and 6.7 hours on the earlier one (the sums of the measured run
times, two at a time); a finished run found in --work-dir is reused. Four seeds, not three: with three, BoT-R18's spread (3.2 mAP) is as large as the gaps
the table is for.

    python tools/benchmark_accuracy.py
    python tools/benchmark_accuracy.py --only ablation --full-ladder --ablation-seeds 0,1,2,3,4
    python tools/benchmark_accuracy.py --only ablation --full-ladder --ladder-recipe sbs
    python tools/benchmark_accuracy.py --epochs 60 --dataset SyntheticReIDBench --jobs 1 --threads 8 \
        MODEL.DEVICE cuda                                                  # on a GPU
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

from scsn.evaluation import logged_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCSN = "configs/Synthetic/scsn_r18.yml"
SCSN_SBS = "configs/Synthetic/scsn_sbs_r18.yml"
# SCSN's config with every module off: the SCSN backbone without attention and fusion, one head stage without SFE.
_PLAIN = ["MODEL.BACKBONE.RDAM.MODE", "none", "MODEL.HEADS.WITH_SFE", "False", "MODEL.HEADS.NUM_STAGES", "1",
          "MODEL.BACKBONE.NMFF.STAGES", "[]"]
_RDAM = _PLAIN + ["MODEL.BACKBONE.RDAM.MODE", "RDAM"]
_NMFF = _RDAM + ["MODEL.BACKBONE.NMFF.STAGES", "[1,2,3]"]
COMPARISON = {
    "BoT-R18": ("configs/Synthetic/bagtricks_r18.yml", []),
    "AGW-R18": ("configs/Synthetic/agw_r18.yml", []),
    "SBS-R18": ("configs/Synthetic/sbs_r18.yml", []),
    "SCSN-R18": (SCSN, []),
    "SCSN-R18 on SBS": (SCSN_SBS, []),
    # SBS with the paper's strides and none of SCSN's modules: what SCSN on SBS adds beyond its stride.
    "SBS-R18 (paper strides)": (SCSN_SBS, _PLAIN),
}
# Table 5's ladder at the synthetic budget, every row with SCSN's head: the overrides of each row to the recipe's
# SCSN config. By default its two ends: the baseline (the SCSN backbone without attention and fusion, one head
# stage without SFE: fast-reid's BoT but for that head) and the full SCSN; --full-ladder adds the rows between,
# each adding one component to the row above it. The recipe is SCSN-R18's (BoT's) unless --ladder-recipe sbs
# builds every row on SCSN's SBS config: its ends are then SBS-R18 (paper strides) and SCSN-R18 on SBS.
LADDER = {
    "baseline (global branch)": _PLAIN,
    "+ RDAM": _RDAM,
    "+ RDAM + NMFF": _NMFF,
    "+ RDAM + NMFF + SFE x1": _NMFF + ["MODEL.HEADS.WITH_SFE", "True"],
    "+ RDAM + NMFF + SFE x2": _NMFF + ["MODEL.HEADS.WITH_SFE", "True", "MODEL.HEADS.NUM_STAGES", "2"],
    "+ RDAM + NMFF + SFE x3 (= SCSN-R18)": [],
}
ENDS = ("baseline (global branch)", "+ RDAM + NMFF + SFE x3 (= SCSN-R18)")
LADDER_RECIPES = {"bot": SCSN, "sbs": SCSN_SBS}
# Rows outer, seeds inner, headline rows first: an interrupted benchmark still has every seed of those.
PRIORITY = ["BoT-R18", "SCSN-R18", "baseline (global branch)", "SBS-R18", "AGW-R18", "SCSN-R18 on SBS",
            "SBS-R18 (paper strides)"]


def run(name, config, opts, seed, args):
    out_dir = os.path.join(args.work_dir, name.replace(" ", "_").replace("/", "-"), f"seed{seed}")
    cmd = [
        sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config, *opts,
        "DATASETS.NAMES", f'("{args.dataset}",)', "DATASETS.TESTS", f'("{args.dataset}",)', "SEED", str(seed),
        "SOLVER.MAX_EPOCH", str(args.epochs), "SOLVER.CHECKPOINT_PERIOD", str(args.epochs),
        "TEST.EVAL_PERIOD", str(args.epochs), "OUTPUT_DIR", out_dir, *args.opts,
    ]
    log_file = os.path.join(out_dir, "log.txt")
    if os.path.isfile(os.path.join(out_dir, "model_final.pth")):  # finished by an earlier, interrupted invocation
        result = last_metrics(log_file, args.dataset)
        result["seconds"] = None
        print(f"  {name:36s} seed {seed}: mAP {result['mAP']:.2f}  Rank-1 {result['Rank-1']:.2f}  "
              f"(reused {out_dir})", flush=True)
        return result
    if os.path.isdir(out_dir):
        cmd.insert(2, "--resume")  # a run cut off mid-way continues from its last checkpoint, if any
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} (seed {seed}) failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = last_metrics(log_file, args.dataset)
    result["seconds"] = time.time() - start
    print(f"  {name:36s} seed {seed}: mAP {result['mAP']:.2f}  Rank-1 {result['Rank-1']:.2f}  "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def last_metrics(log_file, dataset):
    """The last metrics table fast-reid logged for ``dataset`` in ``log_file``."""
    with open(log_file) as f:
        table = logged_metrics(f.read(), dataset)[-1]
    return {k: table[k] for k in ("Rank-1", "Rank-5", "mAP", "mINP")}


def summarise(runs):
    rows = {}
    for name, per_seed in runs.items():
        m = [r["mAP"] for r in per_seed]
        r1 = [r["Rank-1"] for r in per_seed]
        rows[name] = {
            "mAP_mean": statistics.mean(m), "mAP_std": statistics.stdev(m) if len(m) > 1 else 0.0,
            "R1_mean": statistics.mean(r1), "R1_std": statistics.stdev(r1) if len(r1) > 1 else 0.0,
            "seeds": len(m), "runs": per_seed,
        }
    return rows


def print_table(title, rows):
    from tabulate import tabulate

    print(f"\n{title}")
    print(tabulate(
        [[n, f"{r['mAP_mean']:.2f} ± {r['mAP_std']:.2f}", f"{r['R1_mean']:.2f} ± {r['R1_std']:.2f}",
          ", ".join(f"{run['mAP']:.2f}" for run in r["runs"]), r["seeds"]] for n, r in rows.items()],
        headers=["model", "mAP (mean ± std)", "Rank-1 (mean ± std)", "mAP per seed", "seeds"], tablefmt="pipe"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--ablation-seeds", default="0,1,2,3")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--dataset", default="SyntheticReID")
    parser.add_argument("--only", choices=["comparison", "ablation"], help="run one of the two parts")
    parser.add_argument("--full-ladder", action="store_true", help="every row of the ablation ladder, not its ends")
    parser.add_argument("--ladder-recipe", choices=list(LADDER_RECIPES), default="bot",
                        help="the recipe the ladder's rows are built on: the paper's (BoT's, default) or fast-reid's SBS")
    parser.add_argument("--models", help="comma-separated rows to run, of either part (default: all), "
                                         "e.g. BoT-R18,SCSN-R18")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trainings run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every training")
    parser.add_argument("--work-dir", default=os.path.join("bench", "accuracy", time.strftime("%Y%m%d-%H%M%S")),
                        help="where the runs go; pass an earlier invocation's folder to reuse its finished runs")
    parser.add_argument("--out", default="bench/accuracy.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, e.g. MODEL.DEVICE cuda")
    args = parser.parse_args()
    seeds = {"comparison": [int(s) for s in args.seeds.split(",")],
             "ablation": [int(s) for s in args.ablation_seeds.split(",")]}

    ladder = {name: (LADDER_RECIPES[args.ladder_recipe], opts) for name, opts in LADDER.items()
              if args.full_ladder or name in ENDS}
    parts = {"comparison": COMPARISON, "ablation": ladder}
    if args.only:
        parts = {args.only: parts[args.only]}
    if args.models:
        names = args.models.split(",")
        unknown = [n for n in names if not any(n in part for part in parts.values())]
        if unknown:
            parser.error(f"unknown models {unknown}; choose from {[n for part in parts.values() for n in part]}")
        parts = {title: {n: part[n] for n in names if n in part} for title, part in parts.items()}
        parts = {title: part for title, part in parts.items() if part}
    # The full SCSN is the same run in both parts: train it once per seed.
    rows = sorted(((name, config, tuple(opts), seeds[title]) for title, part in parts.items()
                   for name, (config, opts) in part.items()),
                  key=lambda row: PRIORITY.index(row[0]) if row[0] in PRIORITY else len(PRIORITY))
    jobs = {}
    for name, config, opts, row_seeds in rows:
        for seed in row_seeds:
            jobs.setdefault((config, opts, seed), name)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {key: pool.submit(run, name, key[0], list(key[1]), key[2], args) for key, name in jobs.items()}
        runs = {key: future.result() for key, future in futures.items()}

    report = {"machine": {"cpu_count": os.cpu_count()}, "args": vars(args)}
    for title, part in parts.items():
        rows = summarise({name: [runs[(config, tuple(opts), seed)] for seed in seeds[title]]
                          for name, (config, opts) in part.items()})
        report[title] = rows
        recipe = f", {args.ladder_recipe} recipe" if title == "ablation" else ""
        print_table(f"{title} ({args.dataset}, {args.epochs} epochs, seeds {seeds[title]}{recipe})", rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
