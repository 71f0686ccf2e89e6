#!/usr/bin/env python
"""Search a gallery of your own images with a trained model and faiss.

    tools/search.py build --index gallery.faiss --images GALLERY_DIR --config-file C MODEL.WEIGHTS W
    tools/search.py add   --index gallery.faiss --images NEW_DIR     --config-file C MODEL.WEIGHTS W
    tools/search.py query --index gallery.faiss --images query.jpg --top-k 5 --config-file C MODEL.WEIGHTS W

``build`` embeds every image under the folders (exact ``--kind flat``, or ``ivfpq`` for large galleries) and saves
the index and its paths (``<index>.json``); ``add`` embeds more images into it; ``query`` prints, per query image, the
top-k gallery paths and cosine distances (and writes them as JSON with ``--output``).

``query --rerank`` (``--k1``, ``--k2``, ``--lambda``; fast-reid's TEST.RERANK defaults 20, 6, 0.3) ranks by fast-reid's
k-reciprocal re-ranking instead (Zhong et al., CVPR 2017): the distance of fast-reid's evaluator with TEST.METRIC
cosine and TEST.RERANK.ENABLED, computed by scsn/evaluation/rerank.py. A flat index keeps the ``--neighbours``
nearest gallery images of every gallery image (``<index>.neighbours.npz``, computed at ``build`` and ``add``); at
query time those lists are merged with the queries, so they are the gallery's k1 nearest neighbours among queries +
gallery, as upstream's one search finds them. Limits:

* the query images of one call are re-ranked together, as fast-reid's evaluator re-ranks its query set: a query's
  list can change with the other queries of the call (query one image per call for lists independent of others);
* exact up to ties and float rounding: the kept lists come from other faiss calls than upstream's single search,
  so images at equal distances may be listed in another order;
* ``--k1`` at most the ``--neighbours`` kept (an IVF-PQ index keeps none: re-ranking needs the exact flat index)
  and at most the gallery's size; every query call re-encodes the whole gallery (seconds for 10^5 images), and
  ``add`` searches the new images against the gallery and back, O(new x gallery) distances.
"""
import json
import os
import sys

import scsn  # noqa: F401  (before any fastreid import: compat patches and registrations)
from scsn.engine import cli
from scsn.inference.extractor import FeatureExtractor
from scsn.inference.retrieval import KINDS, GalleryIndex


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0], commands=("build", "add", "query"))
    p.add_argument("--index", required=True, help="index file (its paths go to <index>.json)")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files and / or folders")
    p.add_argument("--kind", choices=KINDS, default="flat", help="build: exact flat, or IVF-PQ")
    p.add_argument("--nlist", type=int, help="IVF-PQ: inverted lists (default ~4 sqrt(N))")
    p.add_argument("--m", type=int, help="IVF-PQ: sub-quantisers (default: 16-d each)")
    p.add_argument("--nbits", type=int, help="IVF-PQ: bits per sub-quantiser (default: 8, less for small galleries)")
    p.add_argument("--nprobe", type=int, help="IVF-PQ: lists visited per query (default nlist / 8)")
    p.add_argument("--neighbours", type=int, default=20,
                   help="build: nearest gallery images kept per gallery image for query --rerank (k1 at most this; 0: "
                        "none); flat index only")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--rerank", action="store_true", help="query: rank by fast-reid's k-reciprocal re-ranking")
    p.add_argument("--k1", type=int, default=20, help="--rerank: k-reciprocal neighbourhood size (TEST.RERANK.K1)")
    p.add_argument("--k2", type=int, default=6, help="--rerank: local query expansion size (TEST.RERANK.K2)")
    p.add_argument("--lambda", dest="lambda_value", type=float, default=0.3,
                   help="--rerank: weight of the original distance against the Jaccard one (TEST.RERANK.LAMBDA)")
    p.add_argument("--output", help="query: write the results as JSON here")
    p.add_argument("--overwrite", action="store_true", help="build: replace an existing index")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default TEST.IMS_PER_BATCH)")
    cli.add_runtime_arguments(p)
    return p


@cli.run
def main(args):
    paths = cli.collect_images(args.images)
    if args.command == "build":
        cli.refuse_to_overwrite([args.index, args.index + ".json", args.index + ".neighbours.npz"], args.overwrite)
    elif args.command == "query" and args.output:
        cli.refuse_to_overwrite([args.output], args.overwrite)
    index = None if args.command == "build" else GalleryIndex.load(args.index)  # fail before the slow part
    if args.command == "query" and args.rerank:
        index.check_rerank(args.k1, args.k2, args.lambda_value)
    extractor = FeatureExtractor(args.config_file, opts=cli.runtime_opts(args) + args.opts,
                                 batch_size=args.batch_size)
    features = extractor(paths)

    if args.command == "query":
        if args.rerank:
            found, distances, _ = index.rerank(features, args.top_k, args.k1, args.k2, args.lambda_value)
        else:
            found, distances, _ = index.search(features, args.top_k)
        results = [{"query": q, "matches": [{"path": p, "distance": float(d)} for p, d in zip(ps, ds)]}
                   for q, ps, ds in zip(paths, found, distances)]
        for r in results:
            print(r["query"])
            for rank, match in enumerate(r["matches"], start=1):
                print(f"  {rank:3d}  {match['distance']:.4f}  {match['path']}")
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=1)
        return results

    if index is None:
        index = GalleryIndex(features.shape[1], args.kind, nlist=args.nlist, m=args.m, nbits=args.nbits,
                             nprobe=args.nprobe, neighbours=args.neighbours)
    index.add(features, [os.path.abspath(p) for p in paths])
    index.save(args.index)
    print(f"{args.index}: {len(index)} images ({index.kind}{', GPU search' if index.use_gpu else ''})",
          file=sys.stderr)
    return index


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
