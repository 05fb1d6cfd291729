"""The command line, end to end, in a subprocess as a user runs it."""

import json
import os
import subprocess
import sys

import pandas as pd


def run_cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "iclscope", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "demo" in r.stdout and "info" in r.stdout


def test_demo_writes_results(tmp_path):
    r = run_cli("demo", "--no-train", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "demo" / "heads" / "heads.csv")
    assert len(df) == 8 and (df.kl_mean_ablation > 0).all()
    assert json.loads((tmp_path / "demo" / "heads" / "config.json").read_text())["model"] == "random:gpt2"
    assert (tmp_path / "demo" / "heads" / "kl_mean_ablation.png").stat().st_size > 1000
    assert "one batched pass" in r.stdout


def test_bad_input_is_one_line_without_traceback(tmp_path):
    r = run_cli("info", "--model", str(tmp_path))
    assert r.returncode == 2
    assert "holds no model" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("info", "--model", "random:mamba")
    assert r.returncode == 2 and "unknown family" in r.stderr and "Traceback" not in r.stderr
