#!/usr/bin/env python
"""Recall@k of the IVF-PQ index against the exact flat index, on a registered dataset: the database is its train and
gallery images, the queries its query images, all embedded by the given model. Prints a table, writes JSON.

    tools/benchmark_search.py --config-file configs/Synthetic/scsn_r18.yml MODEL.WEIGHTS logs/demo/<run>/model_final.pth
"""
import time

import scsn  # noqa: F401  (before any fastreid import: compat patches and registrations)
import scsn.results
from scsn.engine import build_config, cli
from scsn.inference.extractor import FeatureExtractor
from scsn.inference.retrieval import GalleryIndex, neighbour_recall

from tabulate import tabulate


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="a registered dataset (default: the config's first DATASETS.TESTS)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--nlist", type=int)
    p.add_argument("--m", type=int)
    p.add_argument("--nbits", type=int)
    p.add_argument("--json", default="results/search.json")
    return p


@cli.run
def main(args):
    cfg = build_config(args.config_file, args.opts, inference=True)
    dataset = args.dataset or cfg.DATASETS.TESTS[0]
    database = [item[0] for split in ("train", "gallery") for item in cli.dataset_items(dataset, split)]
    queries = [item[0] for item in cli.dataset_items(dataset, "query")]
    extractor = FeatureExtractor(cfg)
    start = time.perf_counter()
    db_features, q_features = extractor(database), extractor(queries)
    embed_s = time.perf_counter() - start

    k_max = max(args.ks)
    exact = GalleryIndex(db_features.shape[1], "flat", use_gpu=False)
    exact.add(db_features, database)
    _, _, exact_ids = exact.search(q_features, k_max)
    approx = GalleryIndex(db_features.shape[1], "ivfpq", nlist=args.nlist, m=args.m, nbits=args.nbits, use_gpu=False)
    approx.add(db_features, database)
    rows = []
    for nprobe in sorted(n for n in args.nprobes if n <= approx.settings["nlist"]):
        approx.index.nprobe = nprobe
        start = time.perf_counter()
        _, _, ids = approx.search(q_features, k_max)
        ms = 1000 * (time.perf_counter() - start) / len(queries)
        rows.append({"nprobe": nprobe, **{f"recall@{k}": neighbour_recall(ids, exact_ids, k) for k in args.ks},
                     "ms_per_query": ms})
    settings = {k: v for k, v in approx.settings.items() if k != "nprobe"}
    print(f"{dataset}: {len(database)} database images (train + gallery), {len(queries)} queries, "
          f"{db_features.shape[1]}-d descriptors (embedded in {embed_s:.1f} s); IVF-PQ {settings} against the "
          "exact flat index")
    print(tabulate(rows, headers="keys", floatfmt=".3f", tablefmt="github"))
    scsn.results.write(args.json, scsn.results.record({
        "benchmark": "search", "config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "dataset": dataset,
        "database": len(database), "queries": len(queries), "dim": int(db_features.shape[1]), "ivfpq": settings,
        "rows": rows}))
    return rows


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
