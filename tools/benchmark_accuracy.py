#!/usr/bin/env python
"""Accuracy benchmark on the synthetic dataset: SCSN against fast-reid's baselines, its ablation ladder, and the
readings of NMFF's eq. 5, each row a config under configs/Synthetic/ trained by tools/train_net.py over seeds.

Every config shares the CPU budget of configs/Synthetic/ (ResNet18 from scratch, 128x64, P x I batch, 12 epochs,
Adam + cosine; a test keeps the copies equal) and differs only in the model. A suite is a list of rows (name ->
config); ``--models`` picks rows of the chosen suites. fast-reid's MGN is left out: its meta-architecture
hard-codes ResNet50's bottleneck widths (meta_arch/mgn.py), so it cannot run at ResNet18.

A Distiller row (configs/Synthetic/distill/) learns from the runs of its teachers: its KD.MODEL_CONFIG names each
teacher's ``<OUTPUT_DIR>/config.yaml`` (the two-step recipe), the benchmark trains the config with that OUTPUT_DIR
for the same seed first (or reuses its run) and points the student at it.

Runs are deterministic for a SEED and thread count on one machine (not across machines); every run uses --threads
torch threads whatever --jobs is, so a number does not depend on how many run at once. --jobs runs that many
trainings side by side (default: one per CPU core). Each run's metrics are read from the ``eval_results.json`` that
tools/train_net.py writes; a finished run found in --work-dir is reused. The summary goes to
``results/accuracy_<suite>.json`` (``--out`` for another file), with the command, commit and machine, from which
tools/render_results.py draws the tables of README.md and docs/.

    python tools/benchmark_accuracy.py                                  # the headline suite, seeds 0-3
    python tools/benchmark_accuracy.py --suite ladder
    python tools/benchmark_accuracy.py --suite headline --models BoT-R18,SCSN-R18 --bf16
    python tools/benchmark_accuracy.py --epochs 60 --dataset SyntheticReIDBench --jobs 1 --threads 8 \\
        MODEL.DEVICE cuda                                               # on a GPU
"""
import argparse
import concurrent.futures
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import scsn.results

S = "configs/Synthetic/"
A = S + "ablations/"
D = S + "distill/"
SUITES = {
    # SCSN against fast-reid's built-ins, and the model SCSN's modules sit on (BoT with SCSN's head and strides).
    "headline": {
        "BoT-R18": S + "bagtricks_r18.yml",
        "AGW-R18": S + "agw_r18.yml",
        "SBS-R18": S + "sbs_r18.yml",
        "SCSN-R18": S + "scsn_r18.yml",
        "baseline (global branch)": A + "baseline.yml",
    },
    # Table 5's ladder at the synthetic budget, each row adding one component to the row above it.
    "ladder": {
        "baseline (global branch)": A + "baseline.yml",
        "+ RDAM": A + "rdam.yml",
        "+ RDAM + NMFF": A + "rdam_nmff.yml",
        "+ RDAM + NMFF + SFE x1": A + "rdam_nmff_sfe1.yml",
        "+ RDAM + NMFF + SFE x2": A + "rdam_nmff_sfe2.yml",
        "+ RDAM + NMFF + SFE x3 (= SCSN-R18)": S + "scsn_r18.yml",
    },
    # The same ladder on fast-reid's SBS recipe; its first row is SBS-R18 at the paper's strides.
    "ladder-sbs": {
        "SBS-R18 (paper strides)": A + "sbs/baseline.yml",
        "+ RDAM": A + "sbs/rdam.yml",
        "+ RDAM + NMFF": A + "sbs/rdam_nmff.yml",
        "+ RDAM + NMFF + SFE x1": A + "sbs/rdam_nmff_sfe1.yml",
        "+ RDAM + NMFF + SFE x2": A + "sbs/rdam_nmff_sfe2.yml",
        "+ RDAM + NMFF + SFE x3 (= SCSN-R18 on SBS)": S + "scsn_sbs_r18.yml",
    },
    # How NMFF's F_f joins the stage-4 map (MODEL.BACKBONE.NMFF.MERGE), with GeM and with average pooling.
    "nmff-merge": {
        "add, GeM": S + "scsn_r18.yml",
        "add_relu, GeM": A + "nmff_add_relu.yml",
        "bn_add, GeM": A + "nmff_bn_add.yml",
        "add, average pooling": A + "avgpool.yml",
        "add_relu, average pooling": A + "avgpool_nmff_add_relu.yml",
        "bn_add, average pooling": A + "avgpool_nmff_bn_add.yml",
    },
    # SCSN-R18 at fast-reid's cheaper stride in stage 3 (the accuracy-cost front's other SCSN point).
    "stage3-stride2": {
        "SCSN-R18 (stage-3 stride 2)": A + "stage3stride2.yml",
    },
    # SCSN-R18 as the teacher of BoT-R18 in fast-reid's Distiller, each loss, against both ends (same seed: the
    # student learns from the teacher trained with that seed).
    "distill": {
        "BoT-R18": S + "bagtricks_r18.yml",
        "SCSN-R18": S + "scsn_r18.yml",
        "SCSN-R18 -> BoT-R18: logits": D + "scsn_r18-bot_r18.yml",
        "SCSN-R18 -> BoT-R18: descriptor": D + "scsn_r18-bot_r18_descriptor.yml",
        "SCSN-R18 -> BoT-R18: logits + descriptor": D + "scsn_r18-bot_r18_logits_descriptor.yml",
        "SCSN-R18 -> BoT-R18: attention maps": D + "scsn_r18-bot_r18_attention.yml",
        "SCSN-R18 -> BoT-R18: logits; backbone from the teacher": D + "scsn_r18-bot_r18_inherit.yml",
        "SCSN-R18 -> BoT-R18: backbone from the teacher; no KD loss": D + "scsn_r18-bot_r18_inherit_only.yml",
        # A student that starts from its teacher has trained for the teacher's epochs and its own: BoT-R18 as long,
        # and SCSN-R18 as long (the gap at the longer budget).
        "BoT-R18 (2x epochs)": (S + "bagtricks_r18.yml", 2),
        "SCSN-R18 (2x epochs)": (S + "scsn_r18.yml", 2),
        "SBS-R18": S + "sbs_r18.yml",
        "SCSN-R18 -> SBS-R18: logits + descriptor": D + "scsn_r18-sbs_r18_logits_descriptor.yml",
    },
    # The choices behind the Distiller defaults: what the logit loss takes from a cascade teacher, the teacher's BN
    # mode, the descriptor loss's temperature.
    "distill-choices": {
        "logits: stage mean; teacher BN running statistics": D + "scsn_r18-bot_r18.yml",
        "logits: stage mean; teacher BN batch statistics (fast-reid)": D + "choices/teacher_bn_batch.yml",
        "logits: stage 1; teacher BN running statistics": D + "choices/stage1_logits.yml",
        "descriptor: T = 0.1": D + "scsn_r18-bot_r18_descriptor.yml",
        "descriptor: T = 0.05": D + "choices/descriptor_t005.yml",
    },
}
ROOT = scsn.results.ROOT
METRICS = ("Rank-1", "Rank-5", "mAP", "mINP")


def pick(text, known):
    """The row names in comma-separated ``text`` (a name may hold commas: "add, GeM"), and the first unknown piece
    (None when every piece is a row)."""
    names, rest = [], text
    while rest:
        name = next((n for n in sorted(known, key=len, reverse=True) if rest == n or rest.startswith(n + ",")), None)
        if name is None:
            return names, rest.split(",")[0]
        names.append(name)
        rest = rest[len(name) + 1:]
    return names, None


def spec(row):
    """(config, epoch factor) of a suite row: a config, or (config, factor) for a row trained factor x --epochs."""
    return row if isinstance(row, tuple) else (row, 1)


def run_dir(config, seed, args, factor=1):
    name = os.path.splitext(os.path.relpath(config, S))[0]
    suffix = ("_bf16" if args.bf16 else "") + (f"_x{factor}" if factor != 1 else "")
    return os.path.join(args.work_dir, name + suffix, f"seed{seed}")


def teachers(config):
    """The synthetic configs whose runs a Distiller ``config`` learns from ([] for other configs)."""
    from scsn.engine import build_config
    from scsn.engine.defaults import recipe_teachers

    candidates = sorted(glob.glob(os.path.join(ROOT, S, "*.yml")))
    return [os.path.relpath(p, ROOT) for p in recipe_teachers(build_config(os.path.join(ROOT, config)), candidates)]


def kd_overrides(config, seed, args):
    """KD.MODEL_CONFIG / KD.MODEL_WEIGHTS pointing a Distiller row at its teachers' runs of ``seed``."""
    dirs = [run_dir(teacher, seed, args) for teacher in teachers(config)]
    if not dirs:
        return []

    def listed(name):
        return "(" + "".join(f'"{os.path.join(d, name)}",' for d in dirs) + ")"

    return ["KD.MODEL_CONFIG", listed("config.yaml"), "KD.MODEL_WEIGHTS", listed("model_final.pth")]


def read_metrics(out_dir, dataset):
    with open(os.path.join(out_dir, "eval_results.json")) as f:
        results = json.load(f)
    results = results.get(dataset, results)  # several test sets: one dict per dataset
    return {k: results[k] for k in METRICS}


def run(name, config, factor, seed, args):
    out_dir, epochs = run_dir(config, seed, args, factor), args.epochs * factor
    cmd = [
        sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
        "DATASETS.NAMES", f'("{args.dataset}",)', "DATASETS.TESTS", f'("{args.dataset}",)', "SEED", str(seed),
        "SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", str(epochs),
        "TEST.EVAL_PERIOD", str(epochs), "SOLVER.AMP.ENABLED", str(args.bf16), "OUTPUT_DIR", out_dir,
        *kd_overrides(config, seed, args), *args.opts,
    ]
    record_file = os.path.join(out_dir, "run.json")
    if os.path.isfile(record_file):  # finished by an earlier, interrupted invocation
        with open(record_file) as f:
            result = json.load(f)
        print(f"  {name:36s} seed {seed}: mAP {result['mAP']:.2f}  Rank-1 {result['Rank-1']:.2f}  (reused {out_dir})",
              flush=True)
        return result
    if os.path.isdir(out_dir):
        cmd.insert(2, "--resume")  # a run cut off mid-way continues from its last checkpoint, if any
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} (seed {seed}) failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = {**read_metrics(out_dir, args.dataset), "seed": seed, "seconds": round(time.time() - start),
              "threads": args.threads, "commit": scsn.results.git_commit(),
              "run_dir": os.path.relpath(out_dir, args.work_dir)}
    scsn.results.write(record_file, result)
    print(f"  {name:36s} seed {seed}: mAP {result['mAP']:.2f}  Rank-1 {result['Rank-1']:.2f}  "
          f"({result['seconds']} s)", flush=True)
    return result


def summarise(runs, epochs):
    def mean_std(values):
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    rows = {}
    for name, ((config, factor), per_seed) in runs.items():
        m, r1 = mean_std([r["mAP"] for r in per_seed]), mean_std([r["Rank-1"] for r in per_seed])
        rows[name] = {"config": config, "mAP_mean": m[0], "mAP_std": m[1], "R1_mean": r1[0], "R1_std": r1[1],
                      "runs": per_seed, **({"epochs": epochs * factor} if factor != 1 else {})}
    return rows


def print_table(title, rows):
    from tabulate import tabulate

    print(f"\n{title}")
    print(tabulate(
        [[n, f"{r['mAP_mean']:.2f} ± {r['mAP_std']:.2f}", f"{r['R1_mean']:.2f} ± {r['R1_std']:.2f}",
          ", ".join(f"{run['mAP']:.2f}" for run in r["runs"])] for n, r in rows.items()],
        headers=["model", "mAP (mean ± std)", "Rank-1 (mean ± std)", "mAP per seed"], tablefmt="pipe"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="headline", help="comma-separated, from: " + ", ".join(SUITES))
    parser.add_argument("--models", help="comma-separated rows of the suites to run (default: all)")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--dataset", default="SyntheticReID")
    parser.add_argument("--bf16", action="store_true",
                        help="train and evaluate with SOLVER.AMP.ENABLED True: bf16 autocast on a CPU with bf16 units")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trainings run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every training")
    parser.add_argument("--work-dir", default=os.path.join("bench", "accuracy"),
                        help="where the runs go; finished runs found there are reused")
    parser.add_argument("--out", help="results JSON (default: results/accuracy_<suite>[_bf16].json)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, e.g. MODEL.DEVICE cuda")
    args = parser.parse_args()
    suites = args.suite.split(",")
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {list(SUITES)}")
    if args.out and len(suites) > 1:
        parser.error("--out names one file: give one --suite with it")
    rows = {suite: dict(SUITES[suite]) for suite in suites}
    if args.models:
        known = [n for r in rows.values() for n in r]
        names, unknown = pick(args.models, known)
        if unknown:
            parser.error(f"unknown model {unknown!r}; choose from {known}")
        rows = {suite: {n: c for n, c in r.items() if n in names} for suite, r in rows.items()}
    seeds = [int(s) for s in args.seeds.split(",")]

    # Rows outer, seeds inner: an interrupted benchmark still has every seed of the first rows. A config in several
    # suites is trained once per seed. Teachers first, then the students that learn from them.
    jobs, students = {}, {}
    for suite_rows in rows.values():
        for name, row in suite_rows.items():
            config, factor = spec(row)
            found = teachers(config)
            for seed in seeds:
                for teacher in found:
                    jobs.setdefault((teacher, 1, seed), f"{os.path.basename(teacher)} (teacher)")
                (students if found else jobs).setdefault((config, factor, seed), name)
    runs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for phase in (jobs, students):
            futures = {key: pool.submit(run, name, *key, args) for key, name in phase.items()}
            runs.update({key: future.result() for key, future in futures.items()})

    for suite, suite_rows in rows.items():
        summary = summarise({name: (spec(row), [runs[(*spec(row), seed)] for seed in seeds])
                             for name, row in suite_rows.items()}, args.epochs)
        title = f"{suite} ({args.dataset}, {args.epochs} epochs, seeds {seeds}{', bf16' if args.bf16 else ''})"
        print_table(title, summary)
        out = args.out or os.path.join(ROOT, "results", f"accuracy_{suite}{'_bf16' if args.bf16 else ''}.json")
        scsn.results.write(out, scsn.results.record({
            "benchmark": "accuracy", "suite": suite, "dataset": args.dataset, "epochs": args.epochs, "seeds": seeds,
            "bf16": args.bf16, "threads_per_run": args.threads, "jobs": args.jobs, "rows": summary}))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
