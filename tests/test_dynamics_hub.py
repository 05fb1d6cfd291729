"""Head dynamics over hub revisions of one model, from a local Hugging Face cache laid out as the hub client
lays it out: offline end to end, and missing revisions or a change of architecture named before anything runs."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import iclscope
from iclscope import IclscopeError
from iclscope.experiments import dynamics as dyn
from iclscope.experiments.atlas import attention_table

SET = dict(k=4, n_clean=8, n_corrupt=4, n_eval=8)
quiet = lambda *a: None  # noqa: E731

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
