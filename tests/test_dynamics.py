"""Head dynamics over training: checkpoints of a run, resume after a kill, reuse of earlier results, bad
input. (Role transitions: test_dynamics_transitions.py; hub revisions: test_dynamics_hub.py.)"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import iclscope
from iclscope import IclscopeError
from iclscope.cli import main
from iclscope.experiments import dynamics as dyn
from iclscope.experiments.dynamics import scoring
from iclscope.experiments.atlas import run_atlas, run_scores
from iclscope.models import checkpoint_info
from iclscope.train import load_config, train

TINY = ["train.sequences=1280", "train.batch_size=32", "eval.every=10", "eval.batch=64", "eval.checkpoint_every=20",
        "model.n_layers=2", "model.d_mlp=64", "model.d_model=32", "data.n_words=16", "data.k=4",
        "eval.induction_len=6", "train.threads=1"]
SET = dict(k=4, n_clean=8, n_corrupt=4, n_eval=8)
STEPS = [0, 1, 2, 4, 8, 16, 20, 32, 40]
quiet = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn") / "run"
    train(load_config("testbed", TINY), out, progress=False, log=quiet)
    return out


def test_run_checkpoints_and_selection(run):
    cks = dyn.run_checkpoints(run)
    assert [c.step for c in cks] == STEPS and len(cks) >= 8
    assert [c.sequences for c in cks] == [32 * s for s in STEPS]
    assert [c.step for c in dyn.run_checkpoints(run, "40,step_0000004,1")] == [1, 4, 40]
    with pytest.raises(IclscopeError, match="--checkpoints: 3 not saved"):
        dyn.run_checkpoints(run, "0,3")


def test_checkpoint_metadata_is_read_without_loading(run, tmp_path):
    meta = checkpoint_info(run / "checkpoints" / "step_0000040")
    assert meta["step"] == 40 and meta["sequences"] == 32 * 40 and meta["config"]["n_layers"] == 2
    assert checkpoint_info(tmp_path) is None and checkpoint_info(tmp_path / "nothing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "iclscope.json").write_text("{not json")
    with pytest.raises(IclscopeError, match="checkpoint .*bad: unreadable iclscope.json"):
        checkpoint_info(tmp_path / "bad")


def test_dynamics_of_a_run_resumes_after_a_kill(run, tmp_path, monkeypatch):
    out = tmp_path / "dyn"
    real = scoring.score_heads
    calls = []

    def dying(model, tasks, res, *a, **k):
        calls.append(res.path.name)
        if len(calls) == 3:  # killed while scoring the third checkpoint
            raise KeyboardInterrupt
        return real(model, tasks, res, *a, **k)

    monkeypatch.setattr(scoring, "score_heads", dying)
    with pytest.raises(KeyboardInterrupt):
        dyn.run_dynamics(out, run=run, log=quiet, **SET)
    done = sorted(p.parent.name for p in (out / "checkpoints").glob("*/done.json"))
    assert done == ["step_0000000", "step_0000001"]
    kept = {n: (out / "checkpoints" / n / "heads.csv").read_bytes() for n in done}
    mtimes = {n: (out / "checkpoints" / n / "heads.csv").stat().st_mtime_ns for n in done}

    calls.clear()
    monkeypatch.setattr(scoring, "score_heads", lambda *a, **k: (calls.append(a[2].path.name), real(*a, **k))[1])
    s = dyn.run_dynamics(out, run=run, log=quiet, **SET)
    assert calls == [f"step_{n:07d}" for n in STEPS[2:]]  # the finished two were not recomputed
    for n in done:
        assert (out / "checkpoints" / n / "heads.csv").read_bytes() == kept[n]
        assert (out / "checkpoints" / n / "heads.csv").stat().st_mtime_ns == mtimes[n]

    long = pd.read_csv(out / "heads_over_training.csv")
    assert len(long) == len(STEPS) * 2 * 4
    assert sorted(long.step.unique()) == STEPS and (long.sequences == 32 * long.step).all()
    for col in ("induction", "prev_token", "fv", "fv_task_std", "layer", "head", "checkpoint"):
        assert long[col].notna().all(), col
    ck = pd.read_csv(out / "checkpoints.csv")
    assert ck.step.tolist() == STEPS and ck.accuracy.between(0, 1).all() and ck.copy_accuracy.notna().all()
    acc = pd.read_csv(out / "accuracy_per_task.csv")
    assert "copy:fresh_repeat" in set(acc.task) and len(acc) == len(STEPS) * 5  # 4 evaluation tasks + copying
    for f in ("trajectories.png", "heatmaps.png", "accuracy.png", "transitions.png", "report.html", "summary.json",
              "transitions.csv"):
        assert (out / f).exists(), f
    t = s["transitions"]
    assert t["top"] == 3 and t["checkpoints"] == len(STEPS)

    # the resumed checkpoint equals one computed in a single go
    fresh = tmp_path / "fresh"
    dyn.run_dynamics(fresh, run=run, checkpoints="2", log=quiet, **SET)
    pd.testing.assert_frame_equal(pd.read_csv(fresh / "checkpoints" / "step_0000002" / "heads.csv"),
                                  pd.read_csv(out / "checkpoints" / "step_0000002" / "heads.csv"))

    # the command line: same settings, everything done already
    calls.clear()
    assert main(["dynamics", "--run", str(run), "--out", str(out), "--shots", "4", "--n-clean", "8",
                 "--n-corrupt", "4", "--n-eval", "8"]) == 0
    assert calls == []


def test_scores_and_atlas_results_are_reused(run, tmp_path, monkeypatch):
    last, mid = run / "checkpoints" / "step_0000040", run / "checkpoints" / "step_0000016"
    fast = dict(k=4, n_clean=8, n_corrupt=4)
    run_atlas(str(last), tmp_path / "atlas", log=quiet, n_eval=8, random_seeds=1, fractions=(0.0, 0.25), **fast)
    run_scores(str(mid), tmp_path / "scores", log=quiet, **fast)  # FV over all 8 tasks: a superset
    calls = []
    real = scoring.score_heads
    monkeypatch.setattr(scoring, "score_heads", lambda *a, **k: (calls.append(a[2].path.name), real(*a, **k))[1])
    out = tmp_path / "dyn"
    dyn.run_dynamics(out, run=run, checkpoints="16,40", reuse=[tmp_path], log=quiet, **SET)
    recs = {n: json.loads((out / "checkpoints" / n / "done.json").read_text()) for n in ("step_0000016", "step_0000040")}
    assert recs["step_0000040"]["reused_from"] == str(tmp_path / "atlas")
    assert recs["step_0000016"]["reused_from"] == str(tmp_path / "scores")
    # nothing was scored again: score_heads found complete tables
    assert all((out / "checkpoints" / n / "fv_per_task.csv").exists() for n in recs)
    assert not list((out / "checkpoints").glob("*/fv_task_*.csv"))

    # the reused numbers are the ones dynamics computes itself
    monkeypatch.setattr(scoring, "score_heads", real)
    own = tmp_path / "own"
    dyn.run_dynamics(own, run=run, checkpoints="16,40", log=quiet, **SET)
    for n in recs:
        a = pd.read_csv(out / "checkpoints" / n / "heads.csv").sort_values(["layer", "head"]).reset_index(drop=True)
        b = pd.read_csv(own / "checkpoints" / n / "heads.csv").sort_values(["layer", "head"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(a[b.columns], b, check_exact=False, atol=1e-6, rtol=0)
        pd.testing.assert_frame_equal(pd.read_csv(out / "checkpoints" / n / "accuracy.csv"),
                                      pd.read_csv(own / "checkpoints" / n / "accuracy.csv"))
    # the atlas's FV scores were over the scoring half only: its heads.csv is the same table
    atlas_heads = pd.read_csv(tmp_path / "atlas" / "heads.csv")
    np.testing.assert_allclose(atlas_heads.fv, pd.read_csv(own / "checkpoints" / "step_0000040" / "heads.csv").fv,
                               atol=1e-7)
    # other settings: not reused
    other = tmp_path / "other"
    calls.clear()
    monkeypatch.setattr(scoring, "score_heads", lambda *a, **k: (calls.append(a[2].path.name), real(*a, **k))[1])
    dyn.run_dynamics(other, run=run, checkpoints="40", reuse=[tmp_path / "atlas"], log=quiet, **{**SET, "n_clean": 6})
    assert json.loads((other / "checkpoints" / "step_0000040" / "done.json").read_text())["reused_from"] is None


def test_bad_runs_are_refused_and_nothing_lost(run, tmp_path):
    with pytest.raises(IclscopeError, match="no checkpoints/ folder"):
        dyn.run_dynamics(tmp_path / "o1", run=tmp_path, log=quiet, **SET)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(IclscopeError, match="holds no checkpoints"):
        dyn.run_dynamics(tmp_path / "o2", run=tmp_path / "empty", log=quiet, **SET)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()

    # a run whose checkpoints do not all share one architecture
    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed, ignore=shutil.ignore_patterns("step_00000[1-3]?", "step_0000004", "step_0000008"))
    out = tmp_path / "out"
    dyn.run_dynamics(out, run=mixed, log=quiet, **SET)
    finished = sorted(p.read_text() for p in (out / "checkpoints").glob("*/done.json"))
    meta = json.loads((mixed / "checkpoints" / "step_0000040" / "iclscope.json").read_text())
    cfg = iclscope.TinyConfig.from_dict({**meta["config"], "n_layers": 3})
    extra = {k: v for k, v in meta.items() if k not in ("kind", "config", "n_models")}
    iclscope.TinyModel(cfg).save(mixed / "checkpoints" / "step_0000050", extra={**extra, "step": 50, "sequences": 1600})
    with pytest.raises(IclscopeError, match="checkpoint step_0000050 has a different architecture from "
                                            "step_0000000: n_layers=3 \\(vs 2\\)"):
        dyn.run_dynamics(out, run=mixed, log=quiet, **SET)
    assert sorted(p.read_text() for p in (out / "checkpoints").glob("*/done.json")) == finished
    # the CLI: one line, exit 2
    assert main(["dynamics", "--run", str(mixed), "--out", str(out)]) == 2

    # an ensemble: one member at a time
    (tmp_path / "ens" / "seed_0" / "checkpoints").mkdir(parents=True)
    with pytest.raises(IclscopeError, match="ensemble run.*seed_0"):
        dyn.run_checkpoints(tmp_path / "ens")
