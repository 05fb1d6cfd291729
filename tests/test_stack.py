"""Stacked training: several runs (different clamps, data settings, learning rates) trained as one
ensemble, each member exactly as if it trained alone; interventions addressing ensemble members."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import iclscope
from iclscope import Ablate, ClampPattern, IclscopeError, Preserve
from iclscope.interventions import Hook
from iclscope.models.tiny import TinyModel
from iclscope.train import Clamps, Trainer, load_config, stack_groups, train

TINY = ["train.sequences=480", "train.batch_size=16", "eval.every=10", "eval.batch=32", "eval.checkpoint_every=25",
        "data.dim=16", "data.n_classes=20", "data.n_heldout_classes=10", "model.d_model=16", "model.n_heads=2",
        "train.lr=3e-3", "train.threads=1"]
QUIET = dict(progress=False, log=lambda *a: None)
TIMING = {"seconds_this_session", "resumed_from_step"}


def tiny(*extra, clamp=None, seeds=(0,)):
    cfg = load_config(None, TINY + list(extra))
    cfg["clamp"] = clamp or []
    cfg["train"]["seeds"] = list(seeds)
    return cfg


def small_model(R=3):
    return TinyModel({"n_layers": 2, "n_heads": 4, "d_model": 32, "vocab_size": 7, "n_ctx": 12}, seeds=list(range(R)))


# --------------------------------------------------------------------------------------- members= masks
@pytest.mark.parametrize("make", [
    lambda m: ClampPattern([(0, 1), (1, 2)], "prev_token", members=m),
    lambda m: Ablate([(1, 0), (1, 3)], how="mean", members=m),  # the batch mean is the member's own
    lambda m: Ablate([(0, 2)], how="zero", positions=[-1], members=m),
    lambda m: Preserve("q", heads=[(1, 1)], members=m),
])
def test_members_touch_only_their_rows(make):
    """A clamp on member 1 of a 3-member ensemble gives member 1 the logits of that member alone under the
    clamp, and members 0 and 2 their unclamped logits (a plain per-member loop as the reference)."""
    model = small_model()
    tokens = torch.randint(0, 7, (3 * 5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.run({"tokens": tokens}, interventions=[make([1])])[0].view(3, 5, 12, -1)
        for r in range(3):
            alone = model.member(r)
            ivs = [make(None)] if r == 1 else []
            want = alone.run({"tokens": tokens[r * 5:(r + 1) * 5]}, interventions=ivs)[0]
            torch.testing.assert_close(got[r], want, atol=1e-5, rtol=1e-5)
        if not isinstance(make(None), Preserve):  # a Preserve alone changes gradients, not values
            assert not torch.allclose(got[1], model.member(1).run({"tokens": tokens[5:10]})[0], atol=1e-3)


def test_members_are_checked():
    model = small_model()
    with pytest.raises(IclscopeError, match="members"):
        model.run({"tokens": torch.zeros(3, 4, dtype=torch.long)}, interventions=[Ablate([(0, 0)], "zero", members=[3])])
    with pytest.raises(IclscopeError, match="members"):
        model.run({"tokens": torch.zeros(3, 4, dtype=torch.long)}, interventions=[Ablate([(0, 0)], "zero", members=[])])


def test_members_subensemble_roundtrip():
    model = small_model(4)
    sub = model.members([2, 0])
    x = torch.randint(0, 7, (4, 6))
    with torch.no_grad():
        full = model.run({"tokens": x.repeat(4, 1)})[0].view(4, 4, 6, -1)
        part = sub.run({"tokens": x.repeat(2, 1)})[0].view(2, 4, 6, -1)
    torch.testing.assert_close(part[0], full[2])
    torch.testing.assert_close(part[1], full[0])
    torch.testing.assert_close(TinyModel.stacked([sub, model.members([1])]).members([2]).module.embed,
                               model.members([1]).module.embed)


# --------------------------------------------------------------------------------------- Preserve
def test_preserve_without_upstream_clamps_is_a_detach_with_the_same_gradients():
    """A Preserve with nothing upstream becomes a detach (no pre-pass); its loss and gradients equal the
    CleanRun Preserve's. With a clamp upstream, it stays a Preserve (its pre-pass is needed)."""
    model = TinyModel({"n_layers": 2, "n_heads": 2, "d_model": 16, "vocab_size": 5, "n_ctx": 9, "d_input": 8})
    alone = Clamps([{"kind": "Preserve", "heads": "layer:1", "site": "q"}], model)
    assert isinstance(alone.static[0], Hook)
    behind = Clamps([{"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token"},
                     {"kind": "Preserve", "heads": "layer:1", "site": "q"}], model)
    assert isinstance(behind.static[1], Preserve)
    tokens = torch.randint(0, 5, (6, 9))

    def grads(ivs):
        model.module.zero_grad()
        loss = model.run({"tokens": tokens}, interventions=ivs)[0].logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.module.parameters() if p.grad is not None]

    l1, g1 = grads(alone.static)
    l2, g2 = grads([Preserve("q", heads=[(1, 0), (1, 1)])])
    torch.testing.assert_close(l1, l2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------- grouping
def test_stack_groups_by_shape():
    a = tiny()
    b = tiny("data.n_classes=30", clamp=[{"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token"}])
    c = tiny("data.n_labels=3")  # another label vocabulary: the same stack, padded (tests/test_stack_vocab.py)
    d = tiny("data.bursty=1.0", "train.lr=1e-3", seeds=(4, 5))
    e = tiny("data.context_pairs=4")  # another sequence length: another stack
    groups = stack_groups([(a, Path("a")), (b, Path("b")), (c, Path("c")), (d, Path("d")), (e, Path("e"))])
    assert [[str(o) for _, o in g] for g in groups] == [["a", "b", "c", "d"], ["e"]]
    with pytest.raises(IclscopeError, match="another stack"):
        Trainer.stack([(a, "x"), (e, "y")], **QUIET)


# --------------------------------------------------------------------------------------- training
def _metrics(folder):
    return pd.read_csv(folder / "metrics.csv")


def _summary(folder):
    s = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIMING}


def assert_same_run(got: Path, want: Path):
    a, b = _metrics(got), _metrics(want)
    assert a.step.tolist() == b.step.tolist()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=2e-5, rtol=1e-4)
    sa, sb = _summary(got), _summary(want)
    assert sa.keys() == sb.keys() and sa["seed"] == sb["seed"] and sa["ensemble_size"] == sb["ensemble_size"]
    assert sa["final"] == pytest.approx(sb["final"], abs=2e-5, rel=1e-4)
    ca = sorted(p.name for p in (got / "checkpoints").iterdir())
    assert ca == sorted(p.name for p in (want / "checkpoints").iterdir())
    assert (got.parent / ".iclscope-finished.json").exists() or (got / ".iclscope-finished.json").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs trained alone, and their configs: no clamp (the graft source), clamped patterns with a
    batch-built label-induction clamp, a mean ablation with another learning rate and more classes (two
    seeds), and a graft from the first run's final model."""
    root = tmp_path_factory.mktemp("alone")
    train(tiny(), root / "none", **QUIET)
    cfgs = {
        "pattern": tiny(clamp=[{"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token"},
                               {"kind": "ClampPattern", "heads": "layer:1", "pattern": "label_induction",
                                "strength": 0.9}], seeds=(1,)),
        "ablate": tiny("train.lr=1e-3", "data.n_classes=30",
                       clamp=[{"kind": "Ablate", "heads": [[1, 0]], "how": "mean"}], seeds=(2, 3)),
        "graft": tiny(clamp=[{"kind": "Graft", "source": str(root / "none" / "final"), "layers": [0]}], seeds=(4,)),
    }
    for name, cfg in cfgs.items():
        train(cfg, root / name, **QUIET)
    return root, cfgs


def _member_folders(out: Path, cfg) -> list[Path]:
    seeds = cfg["train"]["seeds"]
    return [out] if len(seeds) == 1 else [out / f"seed_{s}" for s in seeds]


def test_stacked_runs_match_runs_alone(runs, tmp_path):
    """Members with different clamps (static, batch-built, graft), data settings and learning rates,
    trained as one stacked model, give per member the metrics, summaries and checkpoints of the run alone."""
    root, cfgs = runs
    jobs = [(cfg, tmp_path / name) for name, cfg in cfgs.items()]
    assert len(stack_groups(jobs)) == 1
    summaries = Trainer.stack(jobs, **QUIET).train()
    assert [s["seed"] for s in summaries] == [1, 2, 3, 4]
    for name, cfg in cfgs.items():
        for got, want in zip(_member_folders(tmp_path / name, cfg), _member_folders(root / name, cfg)):
            assert_same_run(got, want)
        assert (tmp_path / name / ".iclscope-finished.json").exists()
        assert iclscope.load(tmp_path / name / "final").n_models == len(cfg["train"]["seeds"])
    # a rerun reuses every finished run of the stack
    again = Trainer.stack(jobs, **QUIET).train()
    assert [s["final"] for s in again] == [s["final"] for s in summaries]


SCRIPT = """
import json, sys
from iclscope.train import Trainer
jobs = json.loads(sys.argv[1])
Trainer.stack([(c, o) for c, o in jobs], progress=False, log=lambda *a: None).train()
"""


@pytest.mark.parametrize("fault", ["metrics:mid-append@20", "checkpoint:after-weights@16"])
def test_stack_resumes_after_a_kill(runs, tmp_path, fault):
    """A stack SIGKILLed at a fault point, then started again, finishes with every run's metrics and
    summary equal to the run trained alone: nothing lost or duplicated."""
    root, cfgs = runs
    jobs = [(cfgs[n], str(tmp_path / n)) for n in ("pattern", "ablate")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(iclscope.__file__).parent.parent),
               ICLSCOPE_FAULT=fault)
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not (tmp_path / "pattern" / ".iclscope-finished.json").exists()
    env.pop("ICLSCOPE_FAULT")
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for n in ("pattern", "ablate"):
        for got, want in zip(_member_folders(tmp_path / n, cfgs[n]), _member_folders(root / n, cfgs[n])):
            assert_same_run(got, want)
        assert not [p for p in (tmp_path / n).rglob("*") if p.name.startswith(".iclscope-tmp.")]
