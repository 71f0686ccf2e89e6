"""Results are data: every table of README.md and docs/ is what its committed JSON renders (tools/render_results.py),
and each results file names its command, commit and machine."""
import glob
import os

import pytest

from scsn.reporting import BLOCK, documents, render_figures, render_text
from scsn.results import ROOT, load

RESULTS = sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.json"), recursive=True))


@pytest.mark.parametrize("path", documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_tables_match_their_json(path):
    with open(path) as f:
        text = f.read()
    assert render_text(text) == text, f"run `python tools/render_results.py` ({os.path.relpath(path, ROOT)})"


@pytest.mark.parametrize("path", documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_pictures_match_their_json(path):
    assert not render_figures(path, check=True), "run `python tools/render_results.py`"


def test_the_docs_hold_results_tables():
    assert sum(len(BLOCK.findall(open(p).read())) for p in documents()) >= 5


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_results_name_their_command_commit_and_machine(path):
    record = load(path)
    assert record["command"].startswith("python tools/") and len(record["commit"]) >= 40
    assert record["machine"]["cpu"] and "cpu_flags" in record["machine"]


def test_a_changed_number_is_caught(tmp_path):
    """The check fails when a table is edited by hand."""
    text, match = next((text, m) for text in map(lambda p: open(p).read(), documents())
                       for m in BLOCK.finditer(text) if "|" in m.group(3))
    edited = text[:match.start(3)] + match.group(3).replace("|", "| 0", 1) + text[match.end(3):]
    assert render_text(edited) != edited


def test_benchmark_rows_name_configs_and_train_their_epochs(tmp_path):
    """Every row of tools/benchmark_accuracy.py names a config and can be picked by --models, whose commas separate
    names that may hold commas; a (config, factor) row trains factor x --epochs in a folder of its own."""
    from inference_helpers import load_tool

    tool = load_tool("benchmark_accuracy")
    rows = [(name, tool.spec(row)) for suite in tool.SUITES.values() for name, row in suite.items()]
    assert all(os.path.isfile(os.path.join(ROOT, config)) for _, (config, _) in rows)
    known = [name for name, _ in rows]
    assert tool.pick(",".join(known), known) == (known, None)
    assert tool.pick("add, GeM,BoT-R18,add", known) == (["add, GeM", "BoT-R18"], "add")
    args = type("Args", (), {"work_dir": str(tmp_path), "bf16": False})
    once, twice = (tool.run_dir("configs/Synthetic/bagtricks_r18.yml", 0, args, f) for f in (1, 2))
    assert once.endswith(os.path.join("bagtricks_r18", "seed0")) and twice.endswith(os.path.join("bagtricks_r18_x2",
                                                                                                "seed0"))
    assert dict(rows)["BoT-R18 (2x epochs)"] == ("configs/Synthetic/bagtricks_r18.yml", 2)
