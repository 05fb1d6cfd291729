"""Training-lab experiments on tiny configurations: the commands run and their tables are right."""

import json

import pandas as pd
import pytest

from iclscope import IclscopeError
from iclscope.experiments.lab import CONDITIONS, additivity, clamp_sweep, data_sweep
from iclscope.train import load_config, train

TINY = ["train.sequences=960", "train.batch_size=16", "eval.every=20", "eval.batch=64", "eval.checkpoint_every=60",
        "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]


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


def test_clamp_sweep_all_conditions(tmp_path):
    cfg = load_config(None, TINY)
    table = clamp_sweep(cfg, out=tmp_path / "sweep", seeds=[0, 1], sequences=640, workers=2, log=lambda *a: None)
    assert table.condition.tolist() == list(CONDITIONS)
    for c in CONDITIONS:
        for s in (0, 1):
            assert (tmp_path / "sweep" / c / f"seed_{s}" / "metrics.csv").exists()
    # the grafting conditions used the trained unclamped ensemble
    graft = json.loads((tmp_path / "sweep" / "layer1" / "config.json").read_text())["clamp"][0]
    assert graft["source"].endswith("none/final")
    assert (tmp_path / "sweep" / "loss_curves.png").exists()
    # rerunning reuses every finished run
    msgs = []
    clamp_sweep(cfg, out=tmp_path / "sweep", seeds=[0, 1], sequences=640, workers=2, log=msgs.append)
    assert sum("reusing" in m for m in msgs) == len(CONDITIONS)


def test_data_sweep(tmp_path):
    table = data_sweep(load_config(None, TINY), vary="labels=5,7", out=tmp_path / "ds", seeds=[0], sequences=320,
                       log=lambda *a: None)
    assert table.labels.tolist() == [5, 7]
    cfg7 = json.loads((tmp_path / "ds" / "labels=7" / "config.json").read_text())
    assert cfg7["data"]["n_labels"] == 7
    with pytest.raises(IclscopeError, match="unknown property"):
        data_sweep(load_config(None, TINY), vary="colour=1,2", out=tmp_path / "x")
