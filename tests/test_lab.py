"""Training-lab experiments on tiny configurations: the commands run and their tables are right."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import iclscope
from iclscope import IclscopeError
from iclscope.engine import Engine
from iclscope.experiments.lab import (CONDITIONS, phase_rows, additivity, clamp_sweep, data_sweep, t_interval,
                                      versus_reference)
from iclscope.train import load_config, train

TINY = ["train.sequences=960", "train.batch_size=16", "eval.every=20", "eval.batch=64", "eval.checkpoint_every=60",
        "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]


@pytest.fixture(scope="module")
def engine():
    """One local Ray of 2 CPUs for the sweeps of this file (the kill test's sweep starts its own, embedded)."""
    with Engine(num_cpus=2) as eng:
        yield eng


def test_additivity_tables(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, TINY), run, progress=False, log=lambda *a: None)
    s = additivity(run, n=256, log=lambda *a: None)
    heads = pd.read_csv(run / "additivity" / "heads.csv")
    add = pd.read_csv(run / "additivity" / "add_back.csv")
    assert len(heads) == 4 and add.heads_active.tolist() == [0, 1, 2, 3, 4]
    # all heads active equals the full model; heads are added strongest first
    assert add.loss.iloc[-1] == pytest.approx(s["full_loss"])
    order = heads.sort_values("induction_strength", ascending=False)["head"].tolist()
    assert add.heads.iloc[2] == f"{order[0]} {order[1]}"
    assert (run / "additivity" / "additivity.png").exists() and (run / "additivity" / "report.html").exists()


def test_additivity_needs_a_run(tmp_path):
    with pytest.raises(IclscopeError, match="no checkpoints"):
        additivity(tmp_path)


def test_clamp_sweep_all_conditions(tmp_path, engine):
    cfg = load_config(None, TINY)
    table = clamp_sweep(cfg, out=tmp_path / "sweep", seeds=[0, 1], sequences=640, workers=2, engine=engine,
                        log=lambda *a: None)
    assert table.condition.tolist() == list(CONDITIONS)
    for c in CONDITIONS:
        for s in (0, 1):
            assert (tmp_path / "sweep" / c / f"seed_{s}" / "metrics.csv").exists()
    # the grafting conditions used the trained unclamped ensemble
    graft = json.loads((tmp_path / "sweep" / "layer1" / "config.json").read_text())["clamp"][0]
    assert graft["source"].endswith("none/final")
    assert (tmp_path / "sweep" / "loss_curves.png").exists()
    assert {"phase_change_ci95_low", "phase_change_ci95_high", "per_seed", "vs_none", "what"} <= set(table.columns)
    assert table.vs_none.iloc[0] == "reference"
    # rerunning reuses every finished run
    msgs = []
    clamp_sweep(cfg, out=tmp_path / "sweep", seeds=[0, 1], sequences=640, workers=2, engine=engine, log=msgs.append)
    assert sum("reusing" in m for m in msgs) == len(CONDITIONS)


def _curve(drop_at: float, seed: int) -> pd.DataFrame:
    """A synthetic few-shot loss curve: ln 2 plateau, then a fall to 0.05 at ``drop_at`` sequences."""
    rng = np.random.default_rng(seed)
    seqs = np.arange(100) * 1000
    loss = np.where(seqs < drop_at, 0.69, 0.05) * np.exp(rng.normal(0, 0.02, 100))
    return pd.DataFrame({"step": seqs // 10, "sequences": seqs, "train_loss": loss})


def test_phase_table_intervals_and_within_noise():
    thr = 0.4 * np.log(2)
    none = phase_rows("none", [_curve(d, s) for s, d in enumerate([40_000, 42_000, 44_000])], [0, 1, 2], thr)
    late = phase_rows("late", [_curve(d, s) for s, d in enumerate([70_000, 71_000, 72_000])], [0, 1, 2], thr)
    close = phase_rows("close", [_curve(d, s) for s, d in enumerate([38_000, 43_000, 47_000])], [0, 1, 2], thr)
    # independent: 95 % t interval with t(0.975, 2) = 4.303 from the table
    v = np.array([40_000, 42_000, 44_000.0])
    half = 4.303 * v.std(ddof=1) / np.sqrt(3)
    assert none["phase_change_mean"] == pytest.approx(42_000)
    assert none["phase_change_ci95_low"] == pytest.approx(42_000 - half, rel=1e-3)
    assert none["phase_change_ci95_high"] == pytest.approx(42_000 + half, rel=1e-3)
    assert none["per_seed"] == "4e+04 4.2e+04 4.4e+04" and none["transitions_per_seed"] == "1 1 1"
    table = pd.DataFrame([none, late, close])
    assert versus_reference(table, "none") == ["reference", "later than none", "within noise"]
    assert all(np.isnan(t_interval([1.0])))  # no interval from one value


def test_data_sweep(tmp_path, engine):
    table = data_sweep(load_config(None, TINY), vary="labels=5,7", out=tmp_path / "ds", seeds=[0], sequences=320,
                       engine=engine, log=lambda *a: None)
    assert table.labels.tolist() == [5, 7]
    assert table.vs_first.iloc[0] == "reference" and table.vs_first.iloc[1].startswith("n/a")  # one seed: no interval
    cfg7 = json.loads((tmp_path / "ds" / "labels=7" / "config.json").read_text())
    assert cfg7["data"]["n_labels"] == 7
    with pytest.raises(IclscopeError, match="unknown property"):
        data_sweep(load_config(None, TINY), vary="colour=1,2", out=tmp_path / "x")


def test_sweep_results_are_owned_folders_and_reuse_needs_the_finished_marker(tmp_path, engine):
    out = tmp_path / "ds"
    data_sweep(load_config(None, TINY), vary="labels=5", out=out, seeds=[0], sequences=64, engine=engine,
               log=lambda *a: None)
    assert (out / ".iclscope.json").exists() and (out / ".iclscope-finished.json").exists()
    run = out / "labels=5"
    assert (run / ".iclscope.json").exists() and (run / ".iclscope-finished.json").exists()
    msgs = []
    data_sweep(load_config(None, TINY), vary="labels=5", out=out, seeds=[0], sequences=64, engine=engine,
               log=msgs.append)
    assert sum("reusing finished run" in m for m in msgs) == 1
    # final/ alone does not make a run finished: without its marker the run is trained (resumed), not reused
    (run / ".iclscope-finished.json").unlink()
    msgs = []
    data_sweep(load_config(None, TINY), vary="labels=5", out=out, seeds=[0], sequences=64, engine=engine,
               log=msgs.append)
    assert not any("reusing" in m for m in msgs) and (run / ".iclscope-finished.json").exists()
    # a foreign folder is refused untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "phase_change.csv").write_text("mine\n")
    with pytest.raises(IclscopeError, match="not made by iclscope"):
        data_sweep(load_config(None, TINY), vary="labels=5", out=mine, seeds=[0], sequences=64, log=lambda *a: None)
    assert [p.name for p in mine.iterdir()] == ["phase_change.csv"]


def test_sweep_values_never_name_a_path_outside_the_sweep(tmp_path, engine):
    out = tmp_path / "a" / "ds"
    data_sweep(load_config(None, TINY), vary="data.features_dataset=/../../evil", out=out, seeds=[0], sequences=32,
               engine=engine, log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_dir() and "evil" in p.name) == \
        [p.name for p in out.iterdir() if p.is_dir() and "evil" in p.name]
    [run] = [p for p in out.iterdir() if p.is_dir() and "evil" in p.name]
    assert run.parent == out and ".." not in run.name and "/" not in run.name
    assert (run / "metrics.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (the embedded Ray's GCS, raylet, agents and the training workers)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_a_sweep_leaves_no_worker_behind(tmp_path, sig):
    out = tmp_path / "sweep"
    script = ("import sys\nfrom iclscope.experiments.lab import clamp_sweep\nfrom iclscope.train import load_config\n"
              f"clamp_sweep(load_config(None, {TINY!r}), out=sys.argv[1], seeds=[0], sequences=10**8, "
              "conditions=['none', 'prev_token'], workers=2, log=print)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(iclscope.__file__).parent.parent))
    env.pop("ICLSCOPE_FAULT", None)
    p = subprocess.Popen([sys.executable, "-c", script, str(out)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not all((out / c / "metrics.csv").exists() for c in ("none", "prev_token")):
            assert p.poll() is None, "the sweep ended early"
            time.sleep(0.1)
        assert all((out / c / "metrics.csv").exists() for c in ("none", "prev_token")), "the workers never trained"
        kids = _descendants(p.pid)
        workers = [int((out / c / ".iclscope.pid").read_text()) for c in ("none", "prev_token")]
        assert set(workers) <= kids  # the stacks train in the sweep's own (engine) processes
        p.send_signal(sig)
        p.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "a worker outlived the sweep"
    finally:
        if p.poll() is None:
            kids |= _descendants(p.pid)
            p.kill()
            p.wait()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
    # the interrupted runs are consistent: not finished, and reopen (resume) cleanly
    for c in ("none", "prev_token"):
        assert not (out / c / ".iclscope-finished.json").exists()
