"""The training lab's resume: a run folder of another config is refused, and an interrupted or killed
run resumes to the same result (no metrics row lost or duplicated)."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from iclscope import IclscopeError
from iclscope.train import Trainer, load_config, train

# the small few-shot setup of test_train_run.py
SMALL = ["train.sequences=1600", "train.batch_size=16", "eval.every=20", "eval.batch=64", "eval.checkpoint_every=50",
         "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]


def small(*extra):
    return load_config(None, SMALL + list(extra))


def test_rerun_with_another_config_is_refused_and_nothing_lost(tmp_path):
    out = tmp_path / "run"
    train(small(), out, progress=False, log=lambda *a: None)
    before = (out / "metrics.csv").read_text()
    with pytest.raises(IclscopeError, match="different config.*train.lr"):
        Trainer(small("train.lr=1e-3"), out, progress=False)
    assert (out / "metrics.csv").read_text() == before


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(small(), full, progress=False, log=lambda *a: None)

    part = tmp_path / "part"
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 57:  # between two evaluations: the rows after the saved state are redone
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(small(), part, progress=False, log=lambda *a: None)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert pd.read_csv(part / "metrics.csv").step.max() < 100
    [s] = train(small(), part, progress=False, log=lambda *a: None)
    assert s["resumed_from_step"] > 0
    a, b = pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    assert a.step.tolist() == b.step.tolist()  # no row lost or duplicated
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)


def test_killed_process_resumes(tmp_path):
    """SIGKILL at an arbitrary moment, then the same command again."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "iclscope", "train", "--out", str(out), "--quiet"]
    for s in SMALL[:-1] + ["train.sequences=6400", "train.threads=1"]:
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "checkpoints" / "step_0000100").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out / "metrics.csv")
    assert df.step.tolist() == list(range(0, 401, 20))


