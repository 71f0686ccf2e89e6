#!/usr/bin/env python
"""Saliency pictures (the paper's Fig. 6), one PNG per image: the input, the backbone map X^1, each cascade stage's
boosted map Y^t with its stripe weights, the stripes already suppressed (hatched) and the one it suppresses next
(red frame), and the RDAM spatial attention of chosen residual blocks. The maps are drawn as what each stage's
pooling draws from them (``--view energy``: their energy sum_c x^2 instead); a legend under the row says so.

    tools/visualize_saliency.py --config-file configs/Synthetic/scsn_r18.yml --dataset SyntheticReID --split query \
        --num-images 8 --output logs/demo/saliency MODEL.WEIGHTS logs/demo/<run>/model_final.pth
    tools/visualize_saliency.py --config-file ... --input my_images/ person.jpg MODEL.WEIGHTS ...
"""
import os

import scsn  # noqa: F401  (before any fastreid import: compat patches and registrations)
from scsn.engine import cli
from scsn.inference.extractor import to_pil
from scsn.visualization.saliency import check_saliency_model, compute_saliency, parse_blocks
from scsn.visualization.pictures import VIEWS, saliency_picture, save_png

import torch
from fastreid.data.transforms import build_transforms


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="image files and / or folders")
    source.add_argument("--dataset", metavar="NAME", help="a registered dataset, e.g. SyntheticReID or Market1501")
    p.add_argument("--split", default="query", choices=("train", "query", "gallery"), help="with --dataset")
    p.add_argument("--num-images", type=int, default=8, help="images spread over the split / the inputs")
    p.add_argument("--blocks", nargs="+", default=[], metavar="sXbY",
                   help="residual blocks whose spatial attention to show, e.g. s3b1 s4b2, or all / none "
                        "(default: the last block of each ResNet stage)")
    p.add_argument("--view", choices=VIEWS, default="pooled",
                   help="pooled: what each stage's pooling draws from each position (default); energy: sum_c x^2")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace PNGs of the same names")
    return p


@cli.run
def main(args):
    cli.check_positive(num_images=args.num_images)
    if args.dataset:
        paths = [item[0] for item in cli.evenly_spaced(cli.dataset_items(args.dataset, args.split), args.num_images)]
    else:
        paths = cli.evenly_spaced(cli.collect_images(args.input), args.num_images)
    outputs = [os.path.join(args.output, f"{i:03d}_{os.path.splitext(os.path.basename(p))[0]}.png")
               for i, p in enumerate(paths)]
    cli.refuse_to_overwrite(outputs, args.overwrite)

    cfg, model = cli.load_trained(args)
    check_saliency_model(model)
    blocks = parse_blocks(args.blocks, model)
    transform = build_transforms(cfg, is_train=False)
    images = torch.stack([transform(to_pil(p)) for p in paths])  # (N, 3, H, W) in [0, 255], the model's input
    saliency = compute_saliency(model, images.to(model.device), blocks)

    os.makedirs(args.output, exist_ok=True)
    for i, out in enumerate(outputs):
        picture, _ = saliency_picture(images, saliency, i, args.view)
        save_png(picture, out)
    print(f"{len(outputs)} saliency pictures in {os.path.abspath(args.output)}")
    return outputs


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
