"""Installing the plugin into an environment that already has torch keeps that torch: setup.cfg's ranges admit the
environment the suite runs in (the lowest and the newest stack of tools/compat_matrix.py among them)."""
import json
import os
import subprocess
import sys

from scsn.results import ROOT


def test_pip_install_e_keeps_this_environments_packages(tmp_path):
    """``pip install -e .`` resolved offline (--no-index) against what is installed: it would install the plugin
    alone; a range that refused this torch would make pip fetch another, which fails offline. setup.cfg's ranges
    alone: no pip configuration file or PIP_* variable (a machine's constraints, such as a cap on torch) applies."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
         "--report", str(report), "-e", ROOT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    installs = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installs == ["scsn-fastreid"]
