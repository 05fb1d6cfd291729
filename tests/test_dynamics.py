"""Head dynamics over training: checkpoints of a run and hub revisions, resume after a kill, reuse of
earlier results, role transitions, bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import iclscope
from iclscope import IclscopeError
from iclscope.cli import main
from iclscope.experiments import dynamics as dyn
from iclscope.experiments.atlas import attention_table, run_atlas, run_scores
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


def test_dynamics_of_a_run_resumes_after_a_kill(run, tmp_path, monkeypatch):
    out = tmp_path / "dyn"
    real = dyn.score_heads
    calls = []

    def dying(model, tasks, res, *a, **k):
        calls.append(res.path.name)
        if len(calls) == 3:  # killed while scoring the third checkpoint
            raise KeyboardInterrupt
        return real(model, tasks, res, *a, **k)

    monkeypatch.setattr(dyn, "score_heads", dying)
    with pytest.raises(KeyboardInterrupt):
        dyn.run_dynamics(out, run=run, log=quiet, **SET)
    done = sorted(p.parent.name for p in (out / "checkpoints").glob("*/done.json"))
    assert done == ["step_0000000", "step_0000001"]
    kept = {n: (out / "checkpoints" / n / "heads.csv").read_bytes() for n in done}
    mtimes = {n: (out / "checkpoints" / n / "heads.csv").stat().st_mtime_ns for n in done}

    calls.clear()
    monkeypatch.setattr(dyn, "score_heads", lambda *a, **k: (calls.append(a[2].path.name), real(*a, **k))[1])
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
    real = dyn.score_heads
    monkeypatch.setattr(dyn, "score_heads", lambda *a, **k: (calls.append(a[2].path.name), real(*a, **k))[1])
    out = tmp_path / "dyn"
    dyn.run_dynamics(out, run=run, checkpoints="16,40", reuse=[tmp_path], log=quiet, **SET)
    recs = {n: json.loads((out / "checkpoints" / n / "done.json").read_text()) for n in ("step_0000016", "step_0000040")}
    assert recs["step_0000040"]["reused_from"] == str(tmp_path / "atlas")
    assert recs["step_0000016"]["reused_from"] == str(tmp_path / "scores")
    # nothing was scored again: score_heads found complete tables
    assert all((out / "checkpoints" / n / "fv_per_task.csv").exists() for n in recs)
    assert not list((out / "checkpoints").glob("*/fv_task_*.csv"))

    # the reused numbers are the ones dynamics computes itself
    monkeypatch.setattr(dyn, "score_heads", real)
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
    monkeypatch.setattr(dyn, "score_heads", lambda *a, **k: (calls.append(a[2].path.name), real(*a, **k))[1])
    dyn.run_dynamics(other, run=run, checkpoints="40", reuse=[tmp_path / "atlas"], log=quiet, **{**SET, "n_clean": 6})
    assert json.loads((other / "checkpoints" / "step_0000040" / "done.json").read_text())["reused_from"] is None


def _long(induction, fv):
    """A heads_over_training table from (checkpoints x heads) score arrays, 2 layers of 4 heads."""
    rows = []
    for c, (ri, rf) in enumerate(zip(induction, fv)):
        for j, (a, b) in enumerate(zip(ri, rf)):
            rows.append({"checkpoint": f"c{c}", "order": c, "step": 10 * c, "layer": j // 4, "head": j % 4,
                         "induction": a, "fv": b})
    return pd.DataFrame(rows)


def test_role_transitions_by_hand():
    z = [0.0] * 8
    # head 5 is the top induction head at checkpoints 0-1, then an FV head; head 6 becomes an FV head
    # at checkpoint 2 without an induction phase; head 1 is an induction head from checkpoint 1 on
    ind = [[0, 0, 0, 0, 0, 0.9, 0, 0], [0, 0.8, 0, 0, 0, 0.9, 0, 0], [0, 0.9, 0, 0, 0, 0.1, 0, 0],
           [0, 0.9, 0, 0, 0, 0.1, 0, 0]]
    fv = [z, z, [0, 0, 0, 0, 0, 0.3, 0.2, 0], [0, 0, 0, 0, 0, 0.3, 0.2, 0]]
    trans, s = dyn.role_transitions(_long(ind, fv), top=2, rel=0.25, n_random=500)
    f = trans[trans.role == "fv"].set_index("head")
    assert sorted(zip(f.layer, f.index)) == [(1, 1), (1, 2)]
    assert f.loc[1, "was_top_induction_before"] and not f.loc[2, "was_top_induction_before"]
    assert f.loc[1, "onset_step"] == 20 and f.loc[1, "first_top_induction_step"] == 0
    assert f.loc[1, "last_top_induction_step"] == 10 and f.loc[1, "checkpoints_as_top_induction_before"] == 2
    r = s["fv_heads_through_induction"]
    assert r["fraction"] == 0.5 and r["n"] == 2
    # random pairs of heads over the same windows: 2 of 8 heads were ever top induction heads before step 20
    assert 0.1 < r["random_mean"] < 0.4 and 0 <= r["p_random_ge_observed"] <= 1
    # the reverse: the final induction head(s)
    i = trans[trans.role == "induction"]
    assert [(int(a), int(b)) for a, b in zip(i.layer, i["head"])] == [(0, 1)]
    assert not i.was_top_fv_before.iloc[0] and i.onset_step.iloc[0] == 10
    assert s["induction_heads_through_fv"]["fraction"] == 0.0


def test_role_transitions_with_no_fv_heads():
    z = [0.0] * 8
    trans, s = dyn.role_transitions(_long([[0.5] + z[1:]] * 2, [z, z]), top=2, n_random=10)
    assert s["fv_heads_through_induction"]["fraction"] is None
    assert set(trans.role) == {"induction"}


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


# ----------------------------------------------------------------------------------------------------
# Hub revisions from a local Hugging Face cache
# ----------------------------------------------------------------------------------------------------

REPO = "iclscope-test/neox-tiny"
REVS = {"step1": 11, "step2": 12, "step4": 14}  # revision -> seed of the random model saved there
SPEC = "random:gpt_neox:layers=2,heads=4,d_model=32,seed={}"


def _snapshot(cache, rev, spec, n):
    """One revision laid out as the hub client lays it out: refs/<rev> -> hash, snapshots/<hash>/files."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    commit = f"{n:040x}"
    snap = repo / "snapshots" / commit
    m = iclscope.load(spec)
    m.module.save_pretrained(snap)
    m.tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / rev).write_text(commit)  # no newline, as huggingface_hub writes it


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf")
    cache = home / "hub"
    for n, (rev, seed) in enumerate(REVS.items()):
        _snapshot(cache, rev, SPEC.format(seed), n + 1)
    _snapshot(cache, "step8", "random:gpt_neox:layers=3,heads=4,d_model=32,seed=18", 9)  # another shape
    return home


def test_dynamics_over_hub_revisions_offline(hub_cache, tmp_path):
    out = tmp_path / "dyn"
    env = dict(os.environ, HF_HOME=str(hub_cache), HF_HUB_CACHE=str(hub_cache / "hub"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "iclscope", "dynamics", "--model", REPO, "--revisions", "step4,step1,step2",
                        "--out", str(out), "--shots", "4", "--n-clean", "8", "--n-corrupt", "4", "--n-eval", "8",
                        "--tokens-per-step", "1000"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    long = pd.read_csv(out / "heads_over_training.csv")
    assert long.groupby("order").step.first().tolist() == [1, 2, 4]
    assert (long.tokens == 1000 * long.step).all()
    # each revision's scores are those of the weights saved under it
    want = attention_table(iclscope.load(SPEC.format(REVS["step2"])), seed=0)
    got = long[long.step == 2].sort_values(["layer", "head"])
    np.testing.assert_allclose(got.induction.to_numpy(), want.induction.to_numpy(), atol=1e-6)
    assert not np.allclose(long[long.step == 1].induction.to_numpy(), got.induction.to_numpy())
    assert (out / "report.html").exists() and (out / "transitions.png").exists()


def test_missing_or_different_revisions_are_named(hub_cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hub_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache / "hub"))
    out = tmp_path / "dyn"
    with pytest.raises(IclscopeError, match=r"revision 'step3' is not in the local Hugging Face cache.*"
                                            r"step1, step2, step4"):
        dyn.run_dynamics(out, model=REPO, revisions="step1,step3", log=quiet, **SET)
    with pytest.raises(IclscopeError, match="checkpoint step8 has a different architecture from step1: "
                                            "num_hidden_layers=3"):
        dyn.run_dynamics(out, model=REPO, revisions="step1,step8", log=quiet, **SET)
    assert not out.exists()  # refused before anything was computed
    with pytest.raises(IclscopeError, match="need a Hugging Face hub model name"):
        dyn.run_dynamics(out, model="random:gpt2", revisions="step1", log=quiet)
