#!/usr/bin/env python
"""The ends of the supported range: the whole test suite in a fresh virtual environment for the lowest and for the
newest stack that setup.cfg admits, and the check that installing the plugin keeps a user's torch.

    python tools/compat_matrix.py                      # both stacks -> results/compat.json (`make compat`)
    python tools/compat_matrix.py --stacks lowest --venvs /tmp/compat --keep

The suite runs on a clean copy of the commit at HEAD (git archive), so that the record's commit is what was tested.
Each stack installs as a fast-reid user's environment would be built, then the plugin into it:

1. ``torch``, ``torchvision`` and ``numpy`` alone: the environment a user already has;
2. ``pip install --no-deps fastreid==1.4.0`` (its metadata pins torch 1.13.1);
3. what a plain ``pip install -e '.[dev,deploy]'`` would replace of step 1 (``--dry-run``): recorded, and a replaced
   torch or torchvision fails the stack;
4. the install README.md gives for an existing environment: that command with step 1's versions as constraints;
5. fastreid's Cython ranking, built as ``make install`` builds it; then ``pytest tests``.

``lowest``: every dependency of setup.cfg (install_requires and the dev and deploy extras) at its lower bound (step 1
names the first three; a constraints file holds the others); packages setup.cfg does not name resolve as pip
resolves them. ``newest``: nothing held, so every package is the newest release the registry serves. Either way the
stack's constraints file replaces pip's configured one (PIP_CONSTRAINT): a machine's cap on torch would otherwise
keep the newest release out. The record names each stack's versions, its passed/failed/skipped counts (with the
reasons of the skips and the names of the failures), the commit tested and the time the install and the suite took.
A run of some stacks replaces theirs in an existing record and keeps the others'.
"""
import argparse
import configparser
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter

from packaging.requirements import Requirement

import scsn.results

ROOT = scsn.results.ROOT
EXTRAS = ("dev", "deploy")
# The user's environment, installed before the plugin (step 1).
PREINSTALLED = ("torch", "torchvision", "numpy")
FASTREID = "fastreid==1.4.0"
STACKS = ("lowest", "newest")


def requirements():
    """setup.cfg's install_requires and the EXTRAS' requirements."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config["options"]["install_requires"].splitlines()
    for extra in EXTRAS:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def lower_bounds():
    """{name: version} of every requirement's ``>=`` bound."""
    bounds = {}
    for req in requirements():
        floor = [s.version for s in req.specifier if s.operator == ">="]
        if not floor:
            raise SystemExit(f"setup.cfg: {req} has no lower bound")
        bounds[req.name] = floor[0]
    return bounds


def pins(stack):
    return lower_bounds() if stack == "lowest" else {}


def run(cmd, log, env=None):
    """Run ``cmd``, appending its output to ``log``; raise with the log's tail when it fails."""
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {result.returncode}); {log}:\n{tail}")


def installed(python):
    """{name: version} of every distribution in the environment of ``python``."""
    out = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out.stdout)}


def junit_counts(path):
    """passed / failed / skipped counts of a pytest junit XML file, the names of the failures and the skip reasons."""
    cases = ElementTree.parse(path).getroot().iter("testcase")
    failed, skipped = [], Counter()
    passed = 0
    for case in cases:
        outcome = [child for child in case if child.tag in ("failure", "error", "skipped")]
        name = f"{case.get('classname')}::{case.get('name')}"
        if not outcome:
            passed += 1
        elif outcome[0].tag == "skipped":
            skipped[outcome[0].get("message", "")] += 1
        else:
            failed.append(name)
    return {"passed": passed, "failed": len(failed), "skipped": sum(skipped.values()), "failures": failed,
            "skip_reasons": dict(skipped)}


def freeze(python, names):
    """``name==version`` lines of ``names`` as installed in the environment of ``python`` (pip's freeze format)."""
    out = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.split("==")[0].lower() in names]


def build_and_test(stack, venvs, src, python, commit):
    """Steps 1-5 of the module docstring for ``stack`` in ``venvs/stack``, with the plugin from ``src`` -> its part of
    the record."""
    venv = os.path.join(venvs, stack)
    log = os.path.join(venvs, f"{stack}.log")
    shutil.rmtree(venv, ignore_errors=True)
    if os.path.exists(log):
        os.remove(log)
    held = pins(stack)
    floors = os.path.join(venvs, f"{stack}-floors.txt")
    with open(floors, "w") as f:  # not the preinstalled ones: step 3 is free to replace them
        f.writelines(f"{name}=={v}\n" for name, v in sorted(held.items()) if name not in PREINSTALLED)
    env = {**os.environ, "PIP_CONSTRAINT": floors, "FASTREID_DATASETS": os.environ.get(
        "FASTREID_DATASETS", os.path.join(ROOT, "datasets"))}
    py = os.path.join(venv, "bin", "python")
    pip = [py, "-m", "pip", "install", "--progress-bar", "off"]
    plugin = f"{src}[{','.join(EXTRAS)}]"
    times = {}

    start = time.time()
    run([python, "-m", "venv", venv], log)
    run(pip + [f"{name}=={held[name]}" if name in held else name for name in PREINSTALLED], log, env)
    before = {name: installed(py)[name] for name in PREINSTALLED}
    run(pip + ["--no-deps", FASTREID], log, env)
    # What a plain `pip install -e .` would do to the user's torch, torchvision and numpy.
    report = os.path.join(venvs, f"{stack}-plain-install.json")
    run(pip + ["--dry-run", "--report", report, "-e", plugin], log, env)
    with open(report) as f:
        plain = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(f)["install"]}
    replaced = {name: f"{before[name]} -> {plain[name]}" for name in PREINSTALLED if name in plain}
    # The install of README.md's two lines: the user's versions of them held as constraints.
    keep = os.path.join(venvs, f"{stack}-keep.txt")
    with open(keep, "w") as f:
        f.writelines(line + "\n" for line in freeze(py, PREINSTALLED))
    run(pip + ["-e", plugin, "-c", keep], log, env)
    versions = installed(py)
    run([py, "-c", "import scsn.fastreid_patches.compat as c; assert c.build_cython_evaluator()"], log, env)
    times["install_s"] = round(time.time() - start)

    start = time.time()
    junit = os.path.join(venvs, f"{stack}-junit.xml")
    with open(log, "a") as f:
        subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests"],
                       cwd=src, env=env, stdout=f, stderr=subprocess.STDOUT)
    times["tests_s"] = round(time.time() - start)
    python_version = subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                    capture_output=True, text=True, check=True).stdout.strip()
    declared = {req.name.lower() for req in requirements()}
    return {
        "commit": commit,
        "held": "every dependency at its setup.cfg lower bound" if held else "nothing: the newest releases",
        "python": python_version,
        "versions": {name: v for name, v in sorted(versions.items()) if name in declared | {"fastreid", "scipy"}},
        "preinstalled": before,
        "plain_install_would_replace": replaced,
        **junit_counts(junit),
        **times,
    }


def export_head(dest):
    """A clean copy of the committed tree at HEAD in ``dest`` -> the commit: what is tested is what is recorded."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    subprocess.run(f"git archive HEAD | tar -x -C {dest}", shell=True, cwd=ROOT, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, of {STACKS}")
    parser.add_argument("--venvs", default=os.path.join(ROOT, ".compat"), help="where the environments are built")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter each environment is made from")
    parser.add_argument("--keep", action="store_true", help="keep the environments (several GB each)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "compat.json"))
    args = parser.parse_args()
    stacks = args.stacks.split(",")
    unknown = set(stacks) - set(STACKS)
    if unknown:
        parser.error(f"unknown stacks {sorted(unknown)}")
    os.makedirs(args.venvs, exist_ok=True)
    src = os.path.join(args.venvs, "src")
    commit = export_head(src)
    results = {}
    for stack in stacks:
        print(f"{stack}: building {os.path.join(args.venvs, stack)} and running the suite", flush=True)
        results[stack] = r = build_and_test(stack, args.venvs, src, args.python, commit)
        print(f"{stack}: torch {r['versions']['torch']}, numpy {r['versions']['numpy']}: {r['passed']} passed, "
              f"{r['failed']} failed, {r['skipped']} skipped; a plain `pip install -e .` would replace "
              f"{r['plain_install_would_replace'] or 'nothing'}", flush=True)
        if not args.keep:
            shutil.rmtree(os.path.join(args.venvs, stack))
    if os.path.isfile(args.out):
        earlier = scsn.results.load(args.out)["stacks"]
        results = {name: results.get(name, earlier.get(name)) for name in STACKS if name in results or name in earlier}
    scsn.results.write(args.out, scsn.results.record({"platform": platform.platform(), "stacks": results}))
    if any(r["failed"] or {"torch", "torchvision"} & set(r["plain_install_would_replace"]) for r in results.values()):
        sys.exit("a stack failed: see " + args.out)


if __name__ == "__main__":
    main()
