"""The README is a contract: at most ~400 lines, its table of modules matches the package, and every document that a
comment, a docstring, a test or the README cites is in the repository."""
import glob
import os
import re

from scsn.results import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


def sources():
    for pattern in ("projects/scsn/**/*.py", "tools/*", "tests/*.py", "Makefile", "README.md", "docs/*.md"):
        yield from glob.glob(os.path.join(ROOT, pattern), recursive=True)


def test_readme_is_short():
    assert README.count("\n") <= 400


def test_every_module_the_readme_names_exists():
    section = README.split("## What is implemented, and where")[1].split("\n## ")[0]
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*\.py)`", section))
    assert len(named) >= 20
    package = os.path.join(ROOT, "projects", "scsn")
    missing = [m for m in named if not glob.glob(os.path.join(package, "**", m), recursive=True)]
    assert not missing
    packages = {os.path.basename(os.path.dirname(p))
                for p in glob.glob(os.path.join(ROOT, "projects", "scsn", "*", "__init__.py"))}
    assert all(f"`{package}/" in section for package in packages), packages


def test_every_cited_document_exists():
    cited = set()
    for path in sources():
        with open(path, errors="replace") as f:
            cited |= set(re.findall(r"\b((?:docs|configs)/[\w./-]+\.(?:md|png|yml))", f.read()))
    missing = [c for c in cited if "*" not in c and "<" not in c and not glob.glob(os.path.join(ROOT, c))]
    assert not missing, missing
