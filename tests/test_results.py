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
