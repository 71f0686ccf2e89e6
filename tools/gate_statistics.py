#!/usr/bin/env python
"""What the backbone modules of a trained SCSN do to its features (§3.1-3.2), over a dataset's test images.

Per ResNet stage: the mean and spread (std over images, channels or positions) of RDAM's channel gates A_c (eq. 1)
and spatial gates A_n (eq. 2), the mean share of the residual branch that passes both, mean(A_c) x mean(A_n) per
image (1 = the branch untouched, 0.25 = both gates at CBAM's initial 0.5), and RSAM's gamma. For NMFF, how much the
fusion changes the stage-4 map, ||F_f - F_4|| / ||F_4|| per image (eq. 5; 0 at initialisation, where kappa is 0).

    python tools/gate_statistics.py --config-file configs/Synthetic/scsn_r18.yml \
        MODEL.WEIGHTS logs/synthetic/scsn_r18/model_final.pth
"""
import json
import os
from collections import defaultdict

import torch

import scsn  # noqa: F401  (before any fastreid import)
from fastreid.data import build_reid_test_loader
from tabulate import tabulate

from scsn import cli
from scsn.saliency import record_attention, spatial_attention_blocks


class GateStatistics:
    """Forward hooks that accumulate the gate and fusion statistics of every forward of ``model``."""

    def __init__(self, model):
        self.model = model
        self.sums = defaultdict(lambda: defaultdict(float))  # stage -> quantity -> sum
        self.blocks = spatial_attention_blocks(model)
        self._channel = {}
        self._handles = []
        for i, blocks in enumerate(getattr(model.backbone, "attention", None) or []):
            for j, block in enumerate(blocks):
                if block.channel is not None:
                    self._handles.append(block.channel.mlp.register_forward_hook(self._channel_hook(i + 1, j)))
        if model.backbone.nmff is not None:
            self._handles.append(model.backbone.nmff.register_forward_hook(self._fusion_hook))

    def _channel_hook(self, stage, block):
        def hook(module, inputs, output):  # output: (2, B, C), the MLP of M_avg and M_max; eq. 1 sums them
            gates = torch.sigmoid(output.sum(dim=0))
            self._channel[(stage, block)] = gates
            self._add(stage, "channel", gates)
        return hook

    def _fusion_hook(self, module, inputs, output):
        high = inputs[0][3]
        ratio = (output - high).flatten(1).norm(dim=1) / high.flatten(1).norm(dim=1).clamp(min=1e-12)
        self._add("nmff", "ratio", ratio)

    def _add(self, key, name, values):
        sums = self.sums[key]
        sums[f"{name}_n"] += values.numel()
        sums[f"{name}_sum"] += values.sum().item()
        sums[f"{name}_sq"] += values.double().pow(2).sum().item()

    def forward(self, images):
        """Run the backbone on a batch and accumulate; the spatial maps come from saliency.record_attention."""
        self._channel.clear()
        with record_attention(self.model, list(self.blocks)) as maps:
            self.model.backbone(images)
        for name, spatial in maps.items():
            stage, block = (int(n) for n in name[1:].split("b"))
            self._add(stage, "spatial", spatial)
            channel = self._channel.get((stage, block))
            passed = spatial.mean(dim=(1, 2)) * (channel.mean(dim=1) if channel is not None else 1)
            self._add(stage, "passed", passed)

    def remove(self):
        for handle in self._handles:
            handle.remove()

    def summary(self):
        rows = []
        for key, sums in sorted(self.sums.items(), key=lambda kv: str(kv[0])):
            row = {"stage": key}
            for name in ("channel", "spatial", "passed", "ratio"):
                n = sums.get(f"{name}_n", 0)
                if n:
                    mean = sums[f"{name}_sum"] / n
                    row[f"{name}_mean"] = mean
                    row[f"{name}_std"] = max(sums[f"{name}_sq"] / n - mean * mean, 0.0) ** 0.5
            if key != "nmff":
                gammas = [m.gamma.item() for b, m in self.blocks.items() if b.startswith(f"s{key}b")
                          and m.gamma is not None]
                row["gamma_mean"] = sum(gammas) / len(gammas) if gammas else None
            rows.append(row)
        return rows


def _fmt(row, name):
    return f"{row[name + '_mean']:.3f} ± {row[name + '_std']:.3f}" if name + "_mean" in row else ""


@cli.run
def main(args):
    cfg, model = cli.load_trained(args)
    if not hasattr(model.backbone, "nmff"):
        raise ValueError(f"{args.config_file} does not build SCSN's backbone: there are no gates to read.")

    dataset = args.dataset or cfg.DATASETS.TESTS[0]
    loader, _ = build_reid_test_loader(cfg, dataset_name=dataset)
    stats = GateStatistics(model)
    with torch.no_grad():
        for batch in loader:
            stats.forward(model.preprocess_image(batch))
    stats.remove()
    rows = stats.summary()
    print(tabulate(
        [[r["stage"], _fmt(r, "channel"), _fmt(r, "spatial"), _fmt(r, "passed"),
          "" if r.get("gamma_mean") is None else f"{r['gamma_mean']:.3f}", _fmt(r, "ratio")] for r in rows],
        headers=["ResNet stage", "channel gate A_c", "spatial gate A_n", "share passed", "RSAM gamma",
                 "NMFF ||F_f - F_4|| / ||F_4||"], tablefmt="pipe"))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "gate_statistics.json")
    with open(out, "w") as f:
        json.dump({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "dataset": dataset, "stages": rows},
                  f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(cli.parse_args(cli.dataset_tool_parser(__doc__.split("\n\n")[0])))
