#!/usr/bin/env python
"""Export a trained model to ONNX (images (B, 3, H, W) in [0, 255] -> descriptors (B, D), dynamic batch), then check
onnxruntime against PyTorch on images other than the export input, at batch 1 and batch N, and time both on the CPU.

    tools/export_onnx.py --config-file configs/Synthetic/scsn_r18.yml --output scsn_r18.onnx \
        MODEL.WEIGHTS logs/demo/<run>/model_final.pth
"""
import json
import sys

import scsn  # noqa: F401  (before any fastreid import: compat patches and registrations)
from scsn.engine import cli
from scsn.inference.export import MIN_COSINE, OPSETS, ROUTES, compare, export_onnx, latency, onnx_session
from scsn.engine import build_config, load_model
from scsn.inference.extractor import to_pil

import torch


def get_parser():
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="the .onnx file")
    p.add_argument("--route", choices=ROUTES, default="dynamo", help="torch.onnx.export's exporter")
    p.add_argument("--opset", type=int, help=f"ONNX opset (default: the route's, {OPSETS})")
    p.add_argument("--check-images", nargs="+", metavar="PATH",
                   help="image files / folders for the parity check (default: 16 random images)")
    p.add_argument("--batch-size", type=int, default=8, help="N of the batch-N check and timing")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per batch size (median)")
    p.add_argument("--json", help="also write the checks and timings here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing .onnx")
    return p


def check_images(args, cfg) -> torch.Tensor:
    height, width = cfg.INPUT.SIZE_TEST
    if not args.check_images:
        generator = torch.Generator().manual_seed(1)  # not the export input (seed 0)
        return torch.rand(2 * args.batch_size, 3, height, width, generator=generator) * 255
    from fastreid.data.transforms import build_transforms

    transform = build_transforms(cfg, is_train=False)
    return torch.stack([transform(to_pil(p)) for p in cli.collect_images(args.check_images)])


@cli.run
def main(args):
    cli.refuse_to_overwrite([args.output] + ([args.json] if args.json else []), args.overwrite)
    cfg = build_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"], inference=True)
    model = load_model(cfg)
    height, width = cfg.INPUT.SIZE_TEST
    export_onnx(model, args.output, height, width, route=args.route, opset=args.opset)
    session = onnx_session(args.output)

    images = check_images(args, cfg)
    checks = [compare(model, session, images, b) for b in (1, args.batch_size)]
    print(f"{args.output} ({args.route} route): onnxruntime against PyTorch on {len(images)} images other than "
          "the export input")
    for c in checks:
        print(f"  batch {c['batch']:3d}: max abs difference {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.6f}")
    timings = latency(model, session, images, (1, min(args.batch_size, len(images))), args.repeats)
    print(f"CPU latency ({torch.get_num_threads()} torch threads, median of {args.repeats}):")
    for t in timings:
        print(f"  batch {t['batch']:3d}: PyTorch {t['pytorch_ms_per_image']:.2f} ms/image, "
              f"onnxruntime {t['onnxruntime_ms_per_image']:.2f} ms/image")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"route": args.route, "checks": checks, "latency": timings}, f, indent=1)
    if min(c["min_cosine"] for c in checks) < MIN_COSINE:
        sys.exit(f"error: the exported model does not match PyTorch (cosine < {MIN_COSINE}); see above.")
    return checks, timings


if __name__ == "__main__":
    main(cli.parse_args(get_parser()))
