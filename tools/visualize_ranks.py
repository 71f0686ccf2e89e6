#!/usr/bin/env python
"""Ranked lists of a test set, for SCSN or any fast-reid model: one PNG per query with its top-k gallery images,
framed green (same identity) or red, and a summary PNG with every chosen query, plus the Rank-1 / mAP they come from.

    tools/visualize_ranks.py --config-file configs/Synthetic/scsn_r18.yml --num-queries 6 --output logs/demo/ranks \
        MODEL.WEIGHTS logs/demo/<run>/model_final.pth
"""
import os

import scsn  # noqa: F401  (before any fastreid import: compat patches and registrations)
from scsn.engine import build_config, cli
from scsn.inference.extractor import FeatureExtractor
from scsn.visualization.pictures import display_scale, ranked_list_picture, ranked_lists, save_png

import numpy as np
from fastreid.evaluation.rank import evaluate_rank

ORDERS = {
    "worst": lambda aps: np.argsort(aps, kind="stable"),  # fast-reid's default: the failures first
    "best": lambda aps: np.argsort(-aps, kind="stable"),
    "spread": lambda aps: np.argsort(aps, kind="stable"),  # then evenly spaced over the AP range
}


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="a registered test dataset (default: the config's first DATASETS.TESTS)")
    p.add_argument("--num-queries", type=int, default=8)
    p.add_argument("--order", choices=tuple(ORDERS), default="worst", help="which queries, by their AP")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace PNGs of the same names")
    return p


def choose_queries(aps: np.ndarray, order: str, count: int) -> list:
    ranked = list(ORDERS[order](aps))
    return cli.evenly_spaced(ranked, count) if order == "spread" else ranked[:count]


@cli.run
def main(args):
    cli.check_positive(num_queries=args.num_queries, top_k=args.top_k)
    cfg = build_config(args.config_file, args.opts, inference=True)
    dataset = args.dataset or cfg.DATASETS.TESTS[0]
    query, gallery = cli.dataset_items(dataset, "query"), cli.dataset_items(dataset, "gallery")
    cli.refuse_to_overwrite([os.path.join(args.output, "summary.png")], args.overwrite)  # before the slow part

    extractor = FeatureExtractor(cfg)
    features = extractor([item[0] for item in query + gallery])
    distmat = 1 - features[:len(query)] @ features[len(query):].T  # cosine distance, as fast-reid's evaluator
    q_pids, g_pids = np.asarray([q[1] for q in query]), np.asarray([g[1] for g in gallery])
    q_camids, g_camids = np.asarray([q[2] for q in query]), np.asarray([g[2] for g in gallery])
    cmc, aps, _ = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    print(f"{dataset}: {len(query)} queries, {len(gallery)} gallery images; Rank-1 {100 * cmc[0]:.2f}, "
          f"mAP {100 * np.mean(aps):.2f}")

    chosen = choose_queries(np.asarray(aps), args.order, args.num_queries)
    lists = ranked_lists(distmat, query, gallery, aps, chosen, args.top_k)
    height, width = (display_scale(cfg.INPUT.SIZE_TEST[0]) * size for size in cfg.INPUT.SIZE_TEST)
    os.makedirs(args.output, exist_ok=True)
    outputs = [os.path.join(args.output, f"{i:03d}_{os.path.splitext(os.path.basename(r.query))[0]}.png")
               for i, r in enumerate(lists)]
    cli.refuse_to_overwrite(outputs, args.overwrite)
    for out, ranked in zip(outputs, lists):
        save_png(ranked_list_picture([ranked], height, width)[0], out)
    save_png(ranked_list_picture(lists, height, width)[0], os.path.join(args.output, "summary.png"))
    print(f"{len(lists)} ranked lists ({args.order} AP first) and summary.png in {os.path.abspath(args.output)}")
    return lists


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
