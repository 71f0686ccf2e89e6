#!/usr/bin/env python
"""Rewrite every results table of README.md and docs/*.md, and the pictures their blocks name (``png=``), from the
committed JSON under results/ (scsn/reporting.py).

    python tools/render_results.py            # rewrite the tables and pictures
    python tools/render_results.py --check    # only compare: exit 1 and name the files that differ
"""
import argparse
import os
import sys

from scsn.reporting import documents, render_figures, render_file


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only")
    args = parser.parse_args()
    stale = [path for path in documents() if not render_file(path, check=args.check)]
    stale += [png for path in documents() for png in render_figures(path, check=args.check)]
    for path in stale:
        print(f"{os.path.relpath(path)}: {'differs from its JSON' if args.check else 'rewritten'}")
    if args.check and stale:
        sys.exit("run `python tools/render_results.py` and commit the result")


if __name__ == "__main__":
    main()
