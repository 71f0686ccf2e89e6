#!/usr/bin/env python
"""Rewrite every results table of README.md and docs/*.md from the committed JSON under results/ (scsn/reporting.py).

    python tools/render_results.py            # rewrite the tables
    python tools/render_results.py --check    # only compare: exit 1 and name the files whose tables differ
"""
import argparse
import os
import sys

from scsn.reporting import documents, render_file


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only")
    args = parser.parse_args()
    stale = [path for path in documents() if not render_file(path, check=args.check)]
    for path in stale:
        print(f"{os.path.relpath(path)}: {'tables differ from their JSON' if args.check else 'tables rewritten'}")
    if args.check and stale:
        sys.exit("run `python tools/render_results.py` and commit the result")


if __name__ == "__main__":
    main()
