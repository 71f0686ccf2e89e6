#!/usr/bin/env python
"""Evaluation cost: fast-reid's ReidEvaluator against scsn's ChunkedReidEvaluator, at Market-1501 and MSMT17 size.

Random descriptors stand in for a model's features: a random prototype per identity times
0.3 * (768 / dim) ** 0.25 plus unit Gaussian noise, a weak identity signal, as hard to rank at every size
(the distances' signal-to-noise ratio goes as the squared scale times sqrt(dim)). --dim 768 is SCSN's
(3 stages x 256), 2048 a BoT-R50's. For each protocol, descriptor size and evaluator, a fresh process builds
the features, feeds them to the evaluator's ``process`` in batches as ``inference_on_dataset`` does and times
``evaluate()`` (the median of --repeats).
Memory: the peak RSS of that process (``resource.getrusage().ru_maxrss``, imports and features included) and
how far ``evaluate()`` raises the RSS above what the process held before it (/proc/self/clear_refs resets the
high-water mark). Torch keeps the machine's default number of threads.

The stock evaluator holds the whole query x gallery float32 matrix and its int64 argsort (12 bytes per pair,
11.5 GB at MSMT17 size); a stock case whose estimate exceeds half of the memory available now is skipped
unless --force-stock.

--rerank evaluates with TEST.RERANK.ENABLED (fast-reid's K1 20, K2 6, LAMBDA 0.3): the stock evaluator's dense
k-reciprocal re-ranking (two (queries + gallery)^2 float32 matrices at once, 79 GB at MSMT17 size) against the
chunked evaluator's (scsn/evaluation/rerank.py), whose exact k-NN search is also timed alone. Each record keeps
the 1-minute load average before and after its case: the machine may be shared, and a loaded machine's times
overstate.

    python tools/benchmark_eval.py                        # 768-d, both protocols
    python tools/benchmark_eval.py --dim 768 2048 --out bench/eval.json
    python tools/benchmark_eval.py --rerank --dim 2048 6144          # writes results/eval_rerank.json
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

PROTOCOLS = {  # test splits: queries, gallery images, identities, cameras
    "market1501": dict(num_query=3368, num_gallery=15913, num_ids=750, num_cams=6),
    "msmt17": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15),
}
EVALUATORS = ("stock", "chunked")
BATCH = 512


def stock_bytes(num_query, num_gallery, dim, rerank=False, **_):
    """Estimated peak RSS of a stock case: float32 distances + their int64 argsort, two copies of the features
    (the predictions and their concatenation) and the ~0.9 GB that importing torch and fastreid takes; re-ranking
    adds two N x N float32 matrices and a boolean one (compute_dist.py:144, :156, :170; N = queries + gallery)."""
    num = num_query + num_gallery
    return 12 * num_query * num_gallery + 2 * 4 * num * dim + 1e9 + (9 * num * num if rerank else 0)


def available_bytes():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def run_case(case):
    """In a fresh process: time one evaluator on one protocol; returns the case's JSON record."""
    import scsn  # noqa: F401  (before any fastreid import)
    from fastreid.evaluation import rank
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    from scsn.engine import build_config
    from scsn.evaluation import ChunkedReidEvaluator

    p = PROTOCOLS[case["protocol"]]
    num, dim = p["num_query"] + p["num_gallery"], case["dim"]
    g = torch.Generator().manual_seed(case["seed"])
    pids = torch.randint(0, p["num_ids"], (num,), generator=g)
    camids = torch.randint(0, p["num_cams"], (num,), generator=g)
    prototypes = torch.randn(p["num_ids"], dim, generator=g) * 0.3 * (768 / dim) ** 0.25
    features = torch.empty(num, dim)
    for start in range(0, num, BATCH):  # batch by batch: no feature-sized temporaries in the peak
        batch = pids[start:start + BATCH]
        features[start:start + BATCH] = prototypes[batch] + torch.randn(batch.numel(), dim, generator=g)

    cfg = build_config(None, ["TEST.METRIC", case["metric"], "TEST.RERANK.ENABLED", case["rerank"]])
    timed = {}
    if case["rerank"] and case["evaluator"] == "chunked":
        from scsn.evaluation import rerank

        search = rerank.nearest_neighbours

        def nearest_neighbours(*args, **kwargs):  # the exact k-NN search's share of the time
            start = time.perf_counter()
            ranks = search(*args, **kwargs)
            timed["knn_seconds"] = time.perf_counter() - start
            return ranks

        rerank.nearest_neighbours = nearest_neighbours
    evaluator_class = ReidEvaluator if case["evaluator"] == "stock" else ChunkedReidEvaluator
    evaluator = evaluator_class(cfg, p["num_query"])
    for start in range(0, num, BATCH):
        end = start + BATCH
        evaluator.process({"targets": pids[start:end], "camids": camids[start:end]}, features[start:end])

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark: VmHWM is now the peak of evaluate() alone
    before_kib = status_kib("VmRSS:")
    seconds = []
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        results = evaluator.evaluate()
        seconds.append(time.perf_counter() - start)
    return {
        **case, **timed, "num_query": p["num_query"], "num_gallery": p["num_gallery"],
        "seconds": statistics.median(seconds), "raw_seconds": seconds,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "evaluate_added_GB": (status_kib("VmHWM:") - before_kib) * 1024 / 1e9,
        "cython": rank.IS_CYTHON_AVAI, "results": {k: float(v) for k, v in results.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, nargs="+", default=[768], help="descriptor sizes (768: SCSN, 2048: BoT)")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--evaluators", nargs="+", default=list(EVALUATORS), choices=EVALUATORS)
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    parser.add_argument("--repeats", type=int, default=1, help="evaluate() calls per case; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force-stock", action="store_true",
                        help="run the stock evaluator whatever its memory estimate")
    parser.add_argument("--rerank", action="store_true",
                        help="evaluate with fast-reid's k-reciprocal re-ranking (TEST.RERANK.ENABLED)")
    parser.add_argument("--out", help="default: results/eval.json, with --rerank results/eval_rerank.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    out = args.out or ("results/eval_rerank.json" if args.rerank else "results/eval.json")
    records = []
    for protocol in args.protocols:
        for dim in args.dim:
            for evaluator in args.evaluators:
                case = {"protocol": protocol, "dim": dim, "evaluator": evaluator, "metric": args.metric,
                        "rerank": args.rerank, "repeats": args.repeats, "seed": args.seed}
                need, free = stock_bytes(dim=dim, rerank=args.rerank, **PROTOCOLS[protocol]), available_bytes()
                if evaluator == "stock" and need > free / 2 and not args.force_stock:
                    case["skipped"] = (f"skipped: needs ~{need / 1e9:.1f} GB, more than half of the "
                                       f"{free / 1e9:.1f} GB available (--force-stock runs it)")
                    print(f"{protocol} {dim}-d {evaluator}: {case['skipped']}", flush=True)
                    records.append(case)
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)]
                load_before = os.getloadavg()[0]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{protocol} {dim}-d {evaluator} failed:\n{done.stderr[-3000:]}")
                record = json.loads(done.stdout.strip().splitlines()[-1])
                record["load_1min"] = [load_before, os.getloadavg()[0]]
                print(f"{protocol} {dim}-d {evaluator}: {record['seconds']:.1f} s, "
                      f"peak RSS {record['peak_rss_GB']:.2f} GB", flush=True)
                records.append(record)

    print_table(records)
    import scsn.results

    scsn.results.write(out, scsn.results.record({"benchmark": "eval", "results": records}))
    print(f"wrote {out}")


def print_table(records):
    from tabulate import tabulate

    rows = []
    for r in records:
        if "skipped" in r:
            rows.append([r["protocol"], r["dim"], r["evaluator"], "-", "-", "-", "-", r["skipped"]])
            continue
        stock = next((s for s in records if s["evaluator"] == "stock" and "skipped" not in s
                      and (s["protocol"], s["dim"]) == (r["protocol"], r["dim"])), None)
        same = "" if stock is None or stock is r else ("yes" if stock["results"] == r["results"] else "NO")
        rows.append([
            r["protocol"], r["dim"], r["evaluator"], f"{r['seconds']:.1f}", f"{r['peak_rss_GB']:.2f}",
            f"{r['evaluate_added_GB']:.2f}", f"{r['results']['Rank-1']:.2f} / {r['results']['mAP']:.2f}", same,
        ])
    headers = ["protocol", "dim", "evaluator", "evaluate() s", "peak RSS GB", "added by evaluate() GB",
               "Rank-1 / mAP", "same results as stock / note"]
    print(tabulate(rows, headers=headers, tablefmt="pipe"))


if __name__ == "__main__":
    main()
