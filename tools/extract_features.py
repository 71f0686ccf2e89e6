#!/usr/bin/env python
"""Embed every image of a folder (and / or given files) with a trained model: an .npz with ``features`` (N, D)
float32, L2-normalised, and ``paths`` (N,), in the same order.

    tools/extract_features.py --config-file configs/Synthetic/scsn_r18.yml --input my_images/ --output feats.npz \
        MODEL.WEIGHTS logs/demo/<run>/model_final.pth
"""
import numpy as np

import scsn  # noqa: F401  (before any fastreid import: compat patches and registrations)
from scsn.engine import cli
from scsn.inference.extractor import FeatureExtractor


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image files and / or folders")
    p.add_argument("--output", required=True, help="the .npz to write")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default TEST.IMS_PER_BATCH)")
    cli.add_runtime_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


@cli.run
def main(args):
    output = args.output if args.output.endswith(".npz") else args.output + ".npz"  # np.savez appends it anyway
    cli.refuse_to_overwrite([output], args.overwrite)
    paths = cli.collect_images(args.input)
    features = FeatureExtractor(args.config_file, opts=cli.runtime_opts(args) + args.opts,
                                batch_size=args.batch_size)(paths)
    np.savez(output, features=features, paths=np.asarray(paths))
    print(f"{output}: {features.shape[0]} descriptors of {features.shape[1]} dimensions")
    return output


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
