"""Issue 9 in the training lab: nothing a user has is ever lost, overwritten or left broken.

Kill tests: a ``python -m iclscope train`` is SIGKILLed at a fault point (``ICLSCOPE_FAULT``, see
iclscope.store), then the same run again finishes with the same metrics.csv and summary.json values as an
uninterrupted run. Also: foreign folders, concurrent trainings, reuse and extension of finished runs, and
diverging runs."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import iclscope
from iclscope import IclscopeError
from iclscope.train import Trainer, TrainingDiverged, load_config, train

# tiny: 40 steps of 16 sequences, an evaluation every 10 steps, checkpoints every 25 steps (and powers of 2)
TINY = ["train.sequences=640", "train.batch_size=16", "eval.every=10", "eval.batch=32", "eval.checkpoint_every=25",
        "data.dim=16", "data.n_classes=20", "data.n_heldout_classes=10", "model.d_model=16", "model.n_heads=2",
        "train.lr=3e-3", "train.threads=1"]
TIMING = {"seconds_this_session", "resumed_from_step"}
QUIET = dict(progress=False, log=lambda *a: None)


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def cli(out, *extra, fault=None, check=None):
    """``iclscope train`` in a subprocess (with the fault point ``fault``); returns the CompletedProcess."""
    args = [sys.executable, "-m", "iclscope", "train", "--out", str(out), "--quiet"]
    for s in TINY + list(extra):
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(iclscope.__file__).parent.parent))
    env.pop("ICLSCOPE_FAULT", None)
    if fault:
        env["ICLSCOPE_FAULT"] = fault
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert r.returncode == check, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its metrics table and summary."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny(), out, **QUIET)
    return pd.read_csv(out / "metrics.csv"), json.loads((out / "summary.json").read_text())


def assert_same_as_reference(out, reference):
    df, summary = reference
    got = pd.read_csv(out / "metrics.csv")
    assert got.step.tolist() == df.step.tolist()  # no row lost or duplicated
    pd.testing.assert_frame_equal(got, df, check_exact=False, atol=1e-6, rtol=0)
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == set(summary)
    a, b = _flat({k: v for k, v in s.items() if k not in TIMING}), _flat({k: v for k, v in summary.items()
                                                                         if k not in TIMING})
    assert a == pytest.approx(b, abs=1e-6)
    assert (out / ".iclscope-finished.json").exists()
    m = iclscope.load(out / "final")  # loadable
    assert m.n_layers == 2
    assert not [p for p in out.rglob("*") if p.name.startswith(".iclscope-tmp.")]


def _flat(obj, prefix=""):
    """A JSON value as {dotted path: leaf}."""
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    if isinstance(obj, list):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in _flat(v, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def forked(out, fault, *extra):
    """Train in a forked copy of this process (no import cost) that SIGKILLs itself at ``fault``; returns
    the signal that ended it (a hang is killed after 60 s and fails the test)."""
    cfg = tiny(*extra)
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            os.environ["ICLSCOPE_FAULT"] = fault
            train(cfg, out, **QUIET)
            code = 0
        finally:
            os._exit(code)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked training with {fault} hung")


# ----------------------------------------------------------------------------------------------------- kills

@pytest.mark.parametrize("faults", [
    ["checkpoint:after-weights@25"],                     # between a checkpoint's weights and its JSON
    ["final:after-weights"],                             # between final/model.safetensors and final/iclscope.json
    ["results:after-marker", "json:mid-write"],          # then during config.json (the marker is there already)
    ["metrics:mid-append@30", "csv:mid-write"],          # half a row; then during the resume's truncation
    ["summary:mid-write"],                               # during summary.json
    ["folder:after-old-moved"],                          # old state/ moved aside, the new one not renamed in
    ["state:after-weights"],                             # inside the training state
])
def test_killed_run_reruns_to_the_uninterrupted_result(tmp_path, reference, faults):
    out = tmp_path / "run"
    for fault in faults:
        assert forked(out, fault) == signal.SIGKILL, f"{fault} was not reached"
        assert not (out / ".iclscope-finished.json").exists()
        if (out / "config.json").exists():
            assert json.loads((out / "config.json").read_text())["train"]["sequences"] == 640
    if faults == ["final:after-weights"]:
        assert not (out / "final").exists()  # never weights without their JSON
        cli(out, check=0)  # the command-line rerun finishes it, exit 0
    else:
        msgs = []
        train(tiny(), out, progress=False, log=msgs.append)
    assert_same_as_reference(out, reference)


def test_finished_run_is_reused_and_final_is_never_the_finished_test(tmp_path, reference):
    out = tmp_path / "run"
    train(tiny(), out, **QUIET)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in (".iclscope.pid", ".iclscope.lock")
              and p.name != ".iclscope-finished.json"}
    msgs = []
    [s] = train(tiny(), out, progress=False, log=msgs.append)
    assert any("reusing finished run" in m for m in msgs)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten
    assert s["steps"] == 40 and (out / ".iclscope-finished.json").exists()
    # a run whose final/ exists but whose finished marker does not is not finished: it is resumed and completed
    os.unlink(out / ".iclscope-finished.json")
    msgs = []
    train(tiny(), out, progress=False, log=msgs.append)
    assert not any("reusing" in m for m in msgs)
    assert_same_as_reference(out, reference)


def test_finished_run_extended_to_more_sequences_and_never_shortened(tmp_path):
    full = tmp_path / "full"
    train(tiny("train.sequences=960"), full, **QUIET)
    out = tmp_path / "run"
    train(tiny(), out, **QUIET)
    msgs = []
    [s] = train(tiny("train.sequences=960"), out, progress=False, log=msgs.append)
    assert any("extending finished run" in m and "960" in m for m in msgs)
    assert s["steps"] == 60 and s["resumed_from_step"] == 40
    # step 40 is an evaluation step either way: the extended run equals the longer run
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), pd.read_csv(full / "metrics.csv"),
                                  check_exact=False, atol=1e-6, rtol=0)
    assert iclscope.load(out / "final").meta["step"] == 60
    assert json.loads((out / "config.json").read_text())["train"]["sequences"] == 960
    with pytest.raises(IclscopeError, match="train.sequences = 960.*not shorten it to 640"):
        Trainer(tiny(), out, **QUIET)
    with pytest.raises(IclscopeError, match=r"different config \(differs in: train.lr, train.sequences\)"):
        Trainer(tiny("train.sequences=1280", "train.lr=1e-3"), out, **QUIET)
    assert (out / ".iclscope-finished.json").exists()


# --------------------------------------------------------------------------------------- folders and locks

def test_a_folder_of_unrelated_files_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("metrics.csv", "summary.json", "config.json", "notes.txt"):
        (out / name).write_text(f"my {name}\n")
    with pytest.raises(IclscopeError, match="not empty and was not made by iclscope"):
        Trainer(tiny(), out, **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.csv", "notes.txt", "summary.json"]
    assert all((out / n).read_text() == f"my {n}\n" for n in ("metrics.csv", "summary.json", "config.json"))


def test_a_second_training_on_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    t = Trainer(tiny(), out, **QUIET)  # holds the folder's lock until train() ends
    msg = tmp_path / "msg.txt"
    try:
        pid = os.fork()  # a second process (forked: no import cost) trains into the same folder
        if pid == 0:
            code = 0
            try:
                train(tiny(), out, **QUIET)
            except IclscopeError as e:
                msg.write_text(str(e))
                code = 2
            finally:
                os._exit(code)
        assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 2
        assert f"in use by another iclscope process (PID {os.getpid()})" in msg.read_text()
        assert not (out / "metrics.csv").exists()
        t.train()
    finally:
        t.close()
    assert len(pd.read_csv(out / "metrics.csv")) == 5  # steps 0, 10, ..., 40: no duplicated rows


# ------------------------------------------------------------------------------------------- divergence

def test_nan_loss_stops_at_once_keeps_the_last_good_state_and_writes_nothing_non_finite(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = Trainer.loss
    calls = {"n": 0}

    def nan_from_step_15(self, batch):
        calls["n"] += 1
        losses = real(self, batch)
        return losses * float("nan") if calls["n"] >= 15 else losses

    monkeypatch.setattr(Trainer, "loss", nan_from_step_15)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 15 of 40: the training loss is nan "
                                               r"\(seed 5\); .*last good state \(step 10\)") as e:
        train(tiny(), out, **QUIET)
    assert "\n" not in str(e.value) and isinstance(e.value, IclscopeError)
    assert calls["n"] == 15  # stopped at once
    df = pd.read_csv(out / "metrics.csv")
    assert df.step.tolist() == [0, 10] and all(df.select_dtypes("number").apply(lambda c: c.map(math.isfinite)).all())
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 10
    assert not (out / "summary.json").exists() and not (out / "final").exists()
    assert not (out / ".iclscope-finished.json").exists()
    for ck in (out / "checkpoints").iterdir():
        assert all(torch.isfinite(v).all() for v in iclscope.load(ck).module.state_dict().values())


def test_non_finite_weights_after_a_step_stop_training(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = torch.optim.Adam.step
    calls = {"n": 0}

    def poisoning_step(self, *a, **k):
        calls["n"] += 1
        r = real(self, *a, **k)
        if calls["n"] == 7:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return r

    monkeypatch.setattr(torch.optim.Adam, "step", poisoning_step)
    with pytest.raises(TrainingDiverged, match=r"step 7 of 40: a weight became non-finite.*last good state \(step 4\)"):
        train(tiny(), out, **QUIET)
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 4  # the power-of-two checkpoint


def test_diverging_run_from_the_command_line_exits_non_zero_in_one_line(tmp_path):
    out = tmp_path / "run"
    r = cli(out, "train.lr=1e30", "train.sequences=320")
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "training diverged at step" in lines[0], r.stderr[-2000:]
    assert not (out / "summary.json").exists()
    assert "nan" not in (out / "metrics.csv").read_text().lower()


def test_a_killed_compiled_run_reruns_to_the_uninterrupted_compiled_result(tmp_path):
    """The compiled step (train.compile=true) keeps the contract: killed mid-run, the rerun ends with the
    same metrics.csv and summary.json as an uninterrupted compiled run (the same compiled kernels)."""
    ref = tmp_path / "ref"
    train(tiny("train.compile=true"), ref, **QUIET)
    reference = pd.read_csv(ref / "metrics.csv"), json.loads((ref / "summary.json").read_text())
    out = tmp_path / "run"
    assert forked(out, "metrics:mid-append@30", "train.compile=true") == signal.SIGKILL
    assert not (out / ".iclscope-finished.json").exists()
    train(tiny("train.compile=true"), out, **QUIET)
    assert_same_as_reference(out, reference)
