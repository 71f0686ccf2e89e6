"""Tables in the docs drawn from the committed results (``results/*.json``), so that no figure is copied by hand.

A Markdown file marks each generated table with a pair of comments; the opening one names the table's kind, its JSON
files and options::

    <!-- results accuracy results/accuracy_headline.json -->
    ...table, rewritten by tools/render_results.py...
    <!-- /results -->

:func:`render_file` rewrites every marked block of a file from its JSON; tests/test_results.py fails when a block in
README.md or docs/ differs from what its JSON renders. Every table ends with the command, commit, date and machine
it was measured with.
"""
import glob
import os
import re
import shlex
import statistics
import warnings
from typing import Callable, Dict, List

from .results import ROOT, load

BLOCK = re.compile(r"(<!-- results (.*?) -->\n)(.*?)(<!-- /results -->)", re.S)
RENDERERS: Dict[str, Callable] = {}


def renderer(kind):
    def register(fn):
        RENDERERS[kind] = fn
        return fn
    return register


def table(headers: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance(*records: dict) -> str:
    """One line per distinct (command, commit): how the table's numbers were measured."""
    lines = []
    for r in records:
        m = r["machine"]
        flags = ", ".join(m["cpu_flags"]) or "none of the listed"
        gpu = f", {m['gpu']}" if m.get("gpu") else ""
        line = (f"*`{r['command']}` at commit {r['commit'][:7]}, {r['date']}, on {m['cpu']} ({m['cpu_count']} cores; "
                f"flags: {flags}){gpu}, torch {m['torch']}.*")
        if line not in lines:
            lines.append(line)
    return "\n" + "\n\n".join(lines) + "\n"


def mean_std(values: List[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


@renderer("accuracy")
def accuracy(records, **options):
    """mAP and Rank-1 over seeds, row by row, from one or more accuracy records (rows of later files appended)."""
    rows = []
    for record in records:
        for name, r in record["rows"].items():
            maps = [run["mAP"] for run in r["runs"]]
            rows.append([name, f"`{r['config']}`", mean_std(maps), mean_std([run["Rank-1"] for run in r["runs"]]),
                         ", ".join(f"{v:.2f}" for v in maps)])
    seeds = ", ".join(str(s) for s in records[0]["seeds"])
    return table(["model", "config", f"mAP (seeds {seeds})", "Rank-1", "mAP per seed"], rows) + provenance(*records)


@renderer("paired")
def paired(records, reference, **options):
    """Each row's mAP difference to the ``reference`` row, seed by seed (same seed: same batches and initial
    weights up to the model's own parameters)."""
    rows_by_name = {name: r for record in records for name, r in record["rows"].items()}
    base = {run["seed"]: run["mAP"] for run in rows_by_name[reference]["runs"]}
    rows = []
    for name, r in rows_by_name.items():
        if name == reference:
            continue
        diffs = [run["mAP"] - base[run["seed"]] for run in r["runs"] if run["seed"] in base]
        rows.append([name, ", ".join(f"{d:+.2f}" for d in diffs), mean_std(diffs),
                     f"{sum(d > 0 for d in diffs)} of {len(diffs)}"])
    return table(["model", f"mAP − {reference}, per seed", "mean ± std", "ahead on"], rows) + provenance(*records)


@renderer("precision")
def precision(records, **options):
    """The same rows trained in fp32 (first file) and under bf16 autocast (second file): mAP, the shift, and the
    time of a run (trainings run two at a time, one thread each, in both)."""
    fp32, bf16 = records
    rows = []
    for name, r in bf16["rows"].items():
        ref = fp32["rows"][name]
        a, b = [run["mAP"] for run in ref["runs"]], [run["mAP"] for run in r["runs"]]
        spread = statistics.stdev(a) if len(a) > 1 else 0.0
        shift = statistics.mean(b) - statistics.mean(a)
        minutes = [statistics.mean(run["seconds"] for run in x["runs"]) / 60 for x in (ref, r)]
        rows.append([name, mean_std(a), mean_std(b), f"{shift:+.2f} ({'within' if abs(shift) <= spread else 'beyond'}"
                     f" the fp32 spread)", f"{minutes[0]:.1f} / {minutes[1]:.1f} ({minutes[0] / minutes[1]:.2f}x)"])
    return table(["model", "fp32 mAP", "bf16 mAP", "bf16 − fp32", "minutes a run, fp32 / bf16"], rows) + \
        provenance(*records)


def _cost_rows(record):
    by_model = {}
    for r in record["results"]:
        by_model.setdefault((r["model"], r["size"]), {})[r["path"]] = r
    return by_model


@renderer("cost")
def cost(records, metric="infer", **options):
    """Inference images/s (``metric=infer``) or the training step's seconds (``metric=train``) of every model under
    every path, with the speed-up over the same model's fp32 path."""
    record = records[0]
    key = {"infer": "infer_img_s", "train": "train_step_s"}[metric]
    paths = [p for p in record["paths"] if metric == "infer" or p not in ("compiled", "onnxruntime")]
    rows = []
    for (model, size), by_path in _cost_rows(record).items():
        base = by_path["fp32"][key]
        cells = []
        for p in paths:
            value = by_path.get(p, {}).get(key)
            if value is None:
                cells.append("-")
                continue
            speedup = value / base if metric == "infer" else base / value
            cells.append(f"{value:.{1 if metric == 'infer' else 2}f} ({speedup:.2f}x)")
        rows.append([model, size, f"{by_path['fp32']['gflops_b1']:.1f}"] + cells)
    unit = (f"images/s at batch {record['infer_batch']}" if metric == "infer"
            else f"s per training step at batch {record['train_batch']}")
    return table(["model", "input", "GFLOPs (batch 1)"] + [f"{p}: {unit}" if i == 0 else p
                                                              for i, p in enumerate(paths)], rows) + provenance(record)


@renderer("overhead")
def overhead(records, **options):
    """SCSN's time over the same config with every module off, per path, against their FLOP ratio."""
    record = records[0]
    rows_by_model = _cost_rows(record)
    rows = []
    for (model, size), by_path in rows_by_model.items():
        off_name = model.replace("(3 stages)", "(modules off)").replace(
            "(3 stages; stage-3 stride 2)", "(stage-3 stride 2; modules off)")
        off = rows_by_model.get((off_name, size))
        if off is None or off_name == model:
            continue
        flops = by_path["fp32"]["gflops_b1"] / off["fp32"]["gflops_b1"]
        for path, r in by_path.items():
            infer = off[path]["infer_img_s"] / r["infer_img_s"]
            train = (f"{r['train_step_s'] / off[path]['train_step_s']:.2f}" if r["train_step_s"] else "-")
            rows.append([f"{model} / {off_name}", path, f"{flops:.2f}", f"{infer:.2f}", f"{infer / flops:.2f}", train])
    return table(["models", "path", "FLOP ratio", "inference time ratio", "time ratio / FLOP ratio",
                  "training step time ratio"], rows) + provenance(record)


@renderer("gates")
def gates(records, **options):
    """NMFF's sign and what the head pools, from gate_statistics records grouped by variant (the part of each file's
    name before ``__``), mean over the files (seeds) of each variant."""
    quantities = [("nmff", "negative F_f", "F_f < 0"), ("nmff", "negative X^1", "X^1 < 0"),
                  ("pooling of stage 1", "kept", "stage 1 pooling keeps"),
                  ("on person: F_4 (stage 4 before NMFF)", "energy", "F_4 energy on person"),
                  ("on person: X^1 (what the head reads)", "energy", "X^1 energy on person"),
                  ("on person: X^1 (what the head reads)", "pooled", "X^1 pooled on person"),
                  ("on person: Y^1", "pooled", "Y^1 pooled on person")]
    groups = {}
    for record in records:
        groups.setdefault(record["variant"], []).append({r["row"]: r for r in record["rows"]})
    rows = []
    for variant, runs in groups.items():
        cells = []
        for row, quantity, _ in quantities:
            values = [run[row][quantity]["mean"] for run in runs if row in run and quantity in run[row]]
            cells.append(f"{statistics.mean(values):.2f}" if values else "-")
        rows.append([variant, len(runs)] + cells)
    return table(["variant", "checkpoints"] + [q[2] for q in quantities], rows) + provenance(records[0])


@renderer("teacher")
def teacher(records, **options):
    """What a teacher hands its student (tools/teacher_statistics.py): per teacher BN mode, its logits' top-1 accuracy
    and true-identity probability per KD.CASCADE_LOGITS, and the descriptor loss's mass on same-identity images per
    temperature."""
    record = records[0]
    temperatures = [d["temperature"] for d in record["rows"][0]["descriptor"]]
    rows = [[r["teacher_bn"], x["cascade_logits"], f"{x['top1']:.3f}", f"{x['p_true']:.3f}"]
            + [f"{d['positive_mass']:.3f}" if x is r["logits"][0] else "" for d in r["descriptor"]]
            for r in record["rows"] for x in r["logits"]]
    return table(["teacher BN", "KD.CASCADE_LOGITS", "logits: top-1", "p(true identity)"]
                 + [f"descriptor loss at T = {t}: mass on same identity" for t in temperatures], rows) \
        + \
        provenance(record)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@renderer("eval")
def evaluation(records, **options):
    """Evaluation cost (tools/benchmark_eval.py): per protocol, descriptor width and evaluator, the time of
    ``evaluate()`` (with re-ranking, the exact k-NN search's share), the process's peak RSS, the metrics, and the
    machine's 1-minute load average before and after the case (a loaded machine's times overstate)."""
    record = records[0]
    names = {"stock": "fast-reid's ReidEvaluator", "chunked": "ChunkedReidEvaluator"}
    rows = []
    for r in record["results"]:
        case = [r["protocol"], f"{r['dim']}-d", names[r["evaluator"]], "yes" if r.get("rerank") else "no"]
        if "skipped" in r:
            rows.append(case + ["-", "-", r["skipped"].replace("skipped: ", "not run: "), "-", "-"])
            continue
        search = _minutes(r["knn_seconds"]) if "knn_seconds" in r else "-"
        rows.append(case + [_minutes(r["seconds"]), search, f"{r['peak_rss_GB']:.2f}",
                            f"{r['results']['Rank-1']:.2f} / {r['results']['mAP']:.2f}",
                            " / ".join(f"{v:.1f}" for v in r["load_1min"])])
    return table(["protocol", "descriptor", "evaluator", "re-ranking", "evaluate()", "of which k-NN search",
                  "peak RSS GB", "Rank-1 / mAP", "load before / after"], rows) + provenance(record)


@renderer("compat")
def compat(records, view="table", **options):
    """The ends of the supported range (tools/compat_matrix.py): ``view=line``, one line for README.md (each end's
    Python, torch, torchvision, numpy and test counts, then the provenance); ``view=table``, every declared
    dependency's version at each end, the counts, what a plain ``pip install -e .`` would have replaced of the
    environment's torch, torchvision and numpy, the time of the install and of the suite, the commit each end
    tested, and why tests skipped."""
    record = records[0]
    stacks = record["stacks"]

    def counts(s):
        return f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped"

    if view == "line":
        ends = "; ".join(f"**{name}** Python {s['python']}, torch {s['versions']['torch']}, torchvision "
                         f"{s['versions']['torchvision']}, numpy {s['versions']['numpy']}: {counts(s)} at `{s['commit'][:7]}`"
                         for name, s in stacks.items())
        return (f"Tested ends (`make compat`: the whole suite, a fresh environment each): {ends}. "
                f"{provenance(record).strip()}\n")
    names = sorted({name for s in stacks.values() for name in s["versions"]}, key=str.lower)
    rows = [[f"`{name}`"] + [s["versions"].get(name, "-") for s in stacks.values()] for name in names]
    rows += [["Python"] + [s["python"] for s in stacks.values()],
             ["tests: passed / failed / skipped"] + [f"{s['passed']} / {s['failed']} / {s['skipped']}"
                                                     for s in stacks.values()],
             ["a plain `pip install -e .` would replace"] + [
                 ", ".join(f"{k} {v}" for k, v in s["plain_install_would_replace"].items()) or "nothing"
                 for s in stacks.values()],
             ["install / suite"] + [f"{_minutes(s['install_s'])} / {_minutes(s['tests_s'])}"
                                    for s in stacks.values()],
             ["commit tested"] + [f"`{s['commit'][:7]}`" for s in stacks.values()]]
    skips = [f"{name}: {n} × {reason}" for name, s in stacks.items() for reason, n in s["skip_reasons"].items()]
    return (table(["", *stacks], rows) + ("\nSkipped: " + "; ".join(skips) + ".\n" if skips else "")
            + provenance(record))


def _inference_model(config: str) -> str:
    """The model ``config`` deploys (a Distiller's student alone), as its MODEL config: accuracy rows and cost rows of
    the same network meet on it."""
    from .engine import build_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA config on a CPU machine: the model is the same
        return build_config(os.path.join(ROOT, config), inference=True).MODEL.dump()


def _fastest(cost_record: dict) -> Dict[str, dict]:
    """Per inference model: the cost result of its fastest inference path (highest images/s)."""
    best = {}
    for r in cost_record["results"]:
        key = _inference_model(r["config"])
        if key not in best or r["infer_img_s"] > best[key]["infer_img_s"]:
            best[key] = r
    return best


def front_points(records) -> List[dict]:
    """Every accuracy row with a cost: name, config, mAP mean and std, Rank-1, and the images/s, path and GFLOPs of its
    network's fastest inference path. ``records``: accuracy records (a later row of the same name replaces an earlier)
    and one cost record."""
    cost_record = next(r for r in records if r["benchmark"] == "cost")
    fastest = _fastest(cost_record)
    rows = {name: r for record in records if record["benchmark"] == "accuracy" for name, r in record["rows"].items()}
    points = []
    for name, r in rows.items():
        c = fastest.get(_inference_model(r["config"]))
        if c is None:
            continue
        maps = [run["mAP"] for run in r["runs"]]
        points.append({"name": name, "config": r["config"], "mAP": round(statistics.mean(maps), 2),
                       "mAP_std": round(statistics.stdev(maps) if len(maps) > 1 else 0.0, 2),
                       "img_s": round(c["infer_img_s"], 1), "path": c["path"], "gflops": round(c["gflops_b1"], 2)})
    return sorted(points, key=lambda p: -p["img_s"])


@renderer("distill")
def distill(records, low, high, **options):
    """Students between two ends: each row's mAP over seeds and, paired by seed, the share of the gap from the ``low``
    row to the ``high`` row it closes ((row - low) / (high - low)); with a cost record, the images/s and GFLOPs of each
    row's network on its fastest CPU path."""
    costs = [r for r in records if r["benchmark"] == "cost"]
    fastest = _fastest(costs[0]) if costs else {}
    rows_by_name = {name: r for record in records if record["benchmark"] == "accuracy"
                    for name, r in record["rows"].items()}
    ends = [{run["seed"]: run["mAP"] for run in rows_by_name[name]["runs"]} for name in (low, high)]
    rows = []
    for name, r in rows_by_name.items():
        maps = [run["mAP"] for run in r["runs"]]
        closed = [(run["mAP"] - ends[0][run["seed"]]) / (ends[1][run["seed"]] - ends[0][run["seed"]])
                  for run in r["runs"]]
        cost = fastest.get(_inference_model(r["config"])) if fastest else None
        rows.append([name, mean_std(maps), mean_std([run["Rank-1"] for run in r["runs"]]),
                     "-" if name in (low, high) else ", ".join(f"{c:.2f}" for c in closed),
                     "-" if name in (low, high) else mean_std(closed),
                     f"{cost['infer_img_s']:.1f} ({cost['path']})" if cost else "-",
                     f"{cost['gflops_b1']:.2f}" if cost else "-"])
    seeds = ", ".join(str(s) for s in next(r for r in records if r["benchmark"] == "accuracy")["seeds"])
    return table(["model", f"mAP (seeds {seeds})", "Rank-1", f"share of the {low} -> {high} gap closed, per seed",
                  "mean ± std", "images/s (fastest CPU path)", "GFLOPs"], rows) + provenance(*records)


@renderer("front")
def front(records, png=None, **options):
    """The accuracy-cost front: each model's synthetic mAP against its images/s on its fastest CPU path (the points
    ``png``, drawn by :func:`draw_front`, plots); a model is on the front when no other is both faster and better."""
    points = front_points(records)
    rows = []
    for p in points:
        dominated = any(q["img_s"] >= p["img_s"] and q["mAP"] > p["mAP"] for q in points if q is not p)
        rows.append([p["name"], f"{p['mAP']:.2f} ± {p['mAP_std']:.2f}", f"{p['img_s']:.1f}", p["path"],
                     f"{p['gflops']:.2f}", "" if dominated else "yes"])
    return table(["model", "mAP", "images/s", "fastest path", "GFLOPs (batch 1)", "on the front"], rows) + \
        provenance(*records)


def draw_front(records, path: str) -> None:
    """Draw :func:`front_points` into ``path`` (PNG), with the points as JSON in its ``points`` text chunk (the results
    test compares them with what the JSON gives now)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = front_points(records)
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=110)
    low = min(p["mAP"] - p["mAP_std"] for p in points)
    gap = 0.045 * (max(p["mAP"] + p["mAP_std"] for p in points) - low)  # labels at least this far apart in mAP
    label_y = float("inf")
    for p in sorted(points, key=lambda p: -p["mAP"]):
        student = "student" in p["name"] or "->" in p["name"]
        ax.errorbar(p["img_s"], p["mAP"], yerr=p["mAP_std"], fmt="s" if student else "o", capsize=3,
                    color="tab:green" if student else ("tab:red" if "SCSN" in p["name"] else "tab:blue"))
        label_y = min(p["mAP"], label_y - gap)  # models of one cost sit on one vertical: stack their labels
        ax.annotate(p["name"], (p["img_s"], p["mAP"]), xytext=(p["img_s"] * 1.15, label_y), va="center", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
    ax.set_xscale("log")
    ax.set_xlim(min(p["img_s"] for p in points) / 1.3, max(p["img_s"] for p in points) * 5)
    ax.set_ylim(min(low, label_y) - gap, None)
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(  # 20, 30, 50 of each decade: no crowding
        lambda value, _: f"{value:g}" if f"{value:g}"[0] in "235" else ""))
    ax.set_xlabel("inference images/s, fastest CPU path (log scale)")
    ax.set_ylabel("mAP on SyntheticReID (mean ± std, seeds)")
    ax.set_title("Which model to deploy: accuracy against speed", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"points": json.dumps(points, sort_keys=True)})
    plt.close(fig)


def figure_specs(text: str):
    """(spec, png) of every marked block of ``text`` that also draws a picture (a ``png=`` option)."""
    for match in BLOCK.finditer(text):
        png = re.search(r"\bpng=(\S+)", match.group(2))
        if png:
            yield match.group(2), os.path.join(ROOT, png.group(1))


def block_records(spec: str) -> List[dict]:
    """The records a marker's spec names (files may be globs)."""
    records = []
    for word in shlex.split(spec)[1:]:
        if "=" in word:
            continue
        for path in sorted(glob.glob(os.path.join(ROOT, word))) or [os.path.join(ROOT, word)]:
            record = load(path)
            record.setdefault("variant", os.path.basename(path).split("__")[0])
            records.append(record)
    return records


def render_block(spec: str) -> str:
    """The table of one marker, ``kind file.json [file.json ...] [key=value ...]`` (files may be globs)."""
    words = shlex.split(spec)
    options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    return RENDERERS[words[0]](block_records(spec), **options)


def render_text(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group(2)) + m.group(4), text)


def render_file(path: str, check: bool = False) -> bool:
    """Rewrite the marked tables of ``path`` (or, with ``check``, only compare); True when it was up to date."""
    with open(path) as f:
        text = f.read()
    rendered = render_text(text)
    if rendered != text and not check:
        with open(path, "w") as f:
            f.write(rendered)
    return rendered == text


def figure_points(png: str):
    """The points a picture drawn by :func:`draw_front` holds (its ``points`` text chunk), or None."""
    import json

    from PIL import Image

    if not os.path.isfile(png):
        return None
    with Image.open(png) as image:
        return json.loads(image.text["points"]) if "points" in image.text else None


def render_figures(path: str, check: bool = False) -> List[str]:
    """Draw the pictures the marked blocks of ``path`` name (``png=``); with ``check`` only compare. Returns the
    pictures that were out of date."""
    with open(path) as f:
        text = f.read()
    stale = []
    for spec, png in figure_specs(text):
        records = block_records(spec)
        if figure_points(png) != front_points(records):
            stale.append(png)
            if not check:
                draw_front(records, png)
    return stale


def documents() -> List[str]:
    """README.md and every Markdown page under docs/."""
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
