"""Stacks of few-shot runs with different label vocabularies (data.n_labels): the embedding and unembedding
padded to the largest vocabulary, each member's padded logits -inf. Every member must train, save and
resume exactly as the run alone (its own-size model is the reference)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import iclscope
from iclscope import IclscopeError
from iclscope.models.tiny import TinyModel
from iclscope.readout import answer_correct, answer_loss
from iclscope.train import Trainer, load_config, stack_groups, train
from iclscope.train.trainer import stack_key

TINY = ["train.sequences=480", "train.batch_size=16", "eval.every=10", "eval.batch=32", "eval.checkpoint_every=25",
        "data.dim=16", "data.n_classes=20", "data.n_heldout_classes=10", "model.d_model=16", "model.n_heads=2",
        "train.lr=3e-3", "train.threads=1", "train.optimizer=adamw", "train.weight_decay=0.05"]
QUIET = dict(progress=False, log=lambda *a: None)
TIMING = {"seconds_this_session", "resumed_from_step"}
CFG = {"n_layers": 2, "n_heads": 2, "d_model": 16, "n_ctx": 9, "d_input": 8}


def tiny(*extra, seeds=(0,), clamp=None):
    cfg = load_config(None, TINY + list(extra))
    cfg["clamp"] = clamp or []
    cfg["train"]["seeds"] = list(seeds)
    return cfg


def inputs(n_rows, vocab, seed=0, dim=8):
    """Few-shot-like inputs: vectors (of size ``dim``) at even positions, label tokens (< vocab) at odd ones."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n_rows, 9), generator=g)
    vectors = torch.randn(n_rows, 9, dim, generator=g)
    mask = (torch.arange(9) % 2 == 0).expand(n_rows, 9)
    return {"tokens": tokens, "vectors": vectors, "vector_mask": mask}


def cat(parts):
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------------------- the model
def test_padded_members_are_their_own_models():
    """Members of vocab 3 and 5 (seeds 7, 9) start as the single models of their own size and seed (padding
    zeros), give those models' logits on their labels, -inf beyond, and the same loss and gradients; the
    padding gets exactly zero gradient. members()/member() cut the own vocabulary back out, stacked() pads."""
    a, b = TinyModel({**CFG, "vocab_size": 3}, seed=7), TinyModel({**CFG, "vocab_size": 5}, seed=9)
    padded = TinyModel({**CFG, "vocab_size": 5}, seeds=[7, 9], vocab_sizes=[3, 5])
    assert padded.padded and padded.vocab_sizes == [3, 5] and not a.padded
    state = padded.module.state_dict()
    for k, v in a.module.state_dict().items():  # member 0: a's weights, then zeros
        sl = (0,) + tuple(slice(0, n) for n in v.shape[1:])
        assert torch.equal(state[k][sl], v[0]), k
        rest = state[k][0].clone()
        rest[sl[1:]] = 0
        assert not rest.any(), k
    for k, v in b.module.state_dict().items():
        assert torch.equal(state[k][1], v[0]), k
    stacked = TinyModel.stacked([a, b])
    assert stacked.vocab_sizes == [3, 5]
    for k, v in stacked.module.state_dict().items():
        assert torch.equal(v, state[k]), k

    xa, xb = inputs(6, 3, seed=1), inputs(6, 5, seed=2)
    ya, yb = torch.randint(0, 3, (6,)), torch.randint(0, 5, (6,))
    logits = padded.run(cat([xa, xb]))[0]
    la, lb = a.run(xa)[0], b.run(xb)[0]
    torch.testing.assert_close(logits[:6, :, :3], la, atol=1e-5, rtol=1e-5)
    assert bool((logits[:6, :, 3:] == float("-inf")).all())
    torch.testing.assert_close(logits[6:], lb, atol=1e-5, rtol=1e-5)
    q = logits[:, -1]
    assert torch.equal(answer_correct(q[:6], ya), answer_correct(la[:, -1], ya))
    loss = answer_loss(q, torch.cat([ya, yb]))
    torch.testing.assert_close(loss[:6], answer_loss(la[:, -1], ya), atol=1e-5, rtol=1e-5)
    (loss.sum() + 0 * logits[:, :, :3].sum()).backward()
    answer_loss(la[:, -1], ya).sum().backward()
    for (name, p), pa in zip(padded.module.named_parameters(), a.module.parameters()):
        sl = tuple(slice(0, n) for n in pa.shape[1:])
        torch.testing.assert_close(p.grad[0][sl], pa.grad[0], atol=1e-5, rtol=1e-4)
        rest = p.grad[0].clone()
        rest[sl] = 0
        assert not rest.any(), f"padding of {name} got a gradient"

    one = padded.members([0])
    assert one.cfg.vocab_size == 3 and not one.padded and padded.member(0).cfg.vocab_size == 3
    for k, v in one.module.state_dict().items():
        assert torch.equal(v, a.module.state_dict()[k]), k
    both = padded.members([1, 0])
    assert both.vocab_sizes == [5, 3] and both.padded


def test_a_padded_ensemble_is_not_saved_whole(tmp_path):
    padded = TinyModel({**CFG, "vocab_size": 5}, seeds=[7, 9], vocab_sizes=[3, 5])
    with pytest.raises(IclscopeError, match="padded"):
        padded.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    padded.members([0]).save(tmp_path / "m")
    assert TinyModel.load(tmp_path / "m").cfg.vocab_size == 3
    with pytest.raises(IclscopeError, match="vocab_sizes"):
        TinyModel({**CFG, "vocab_size": 5}, seeds=[0, 1], vocab_sizes=[3, 6])
    with pytest.raises(IclscopeError, match="only their vocab_size"):
        TinyModel.stacked([TinyModel({**CFG, "vocab_size": 3}), TinyModel({**CFG, "vocab_size": 5, "d_model": 32})])


# --------------------------------------------------------------------------------------- grouping
def test_stack_groups_pad_label_vocabularies_only():
    """Runs that differ in n_labels share a stack (and stack_key); a different context length does not;
    token-mixture runs of different vocabularies keep separate keys; a grafting run keeps the largest
    vocabulary of its stack."""
    a, b, c = tiny("data.n_labels=3"), tiny("data.n_labels=5", seeds=(1, 2)), tiny("data.n_labels=10")
    e = tiny("data.n_labels=5", "data.context_pairs=4")
    assert stack_key(a) == stack_key(b) == stack_key(c) != stack_key(e)
    groups = stack_groups([(a, Path("a")), (e, Path("e")), (b, Path("b")), (c, Path("c"))])
    assert [[str(o) for _, o in g] for g in groups] == [["a", "b", "c"], ["e"]]
    m1 = load_config("testbed", ["data.n_words=16", "data.k=4"])
    m2 = load_config("testbed", ["data.n_words=17", "data.k=4"])
    assert stack_key(m1) != stack_key(m2)
    graft = [{"kind": "Graft", "source": "elsewhere", "layers": [0]}]
    g5, g3 = tiny("data.n_labels=5", clamp=graft), tiny("data.n_labels=3", clamp=graft)
    groups = stack_groups([(a, Path("a")), (g5, Path("g5")), (c, Path("c")), (g3, Path("g3")), (b, Path("b"))])
    assert [[str(o) for _, o in g] for g in groups] == [["a", "g5", "b"], ["c"], ["g3"]]


# --------------------------------------------------------------------------------------- training
RUNS = {"three": ("data.n_labels=3", (1,)), "five": ("data.n_labels=5", (2, 3))}


def _folders(out: Path, cfg) -> list[Path]:
    seeds = cfg["train"]["seeds"]
    return [out] if len(seeds) == 1 else [out / f"seed_{s}" for s in seeds]


def _summary(folder):
    s = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIMING}


def assert_same_run(got: Path, want: Path):
    a, b = pd.read_csv(got / "metrics.csv"), pd.read_csv(want / "metrics.csv")
    assert a.step.tolist() == b.step.tolist() and list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=2e-5, rtol=1e-4)
    sa, sb = _summary(got), _summary(want)
    assert sa.keys() == sb.keys() and sa["seed"] == sb["seed"]
    assert sa["final"] == pytest.approx(sb["final"], abs=2e-5, rel=1e-4)
    names = sorted(p.name for p in (got / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (want / "checkpoints").iterdir())
    for n in names:
        wa = load_file(str(got / "checkpoints" / n / "model.safetensors"))
        wb = load_file(str(want / "checkpoints" / n / "model.safetensors"))
        assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wb.items()}
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-3)


def assert_same_state(got: Path, want: Path):
    """state/ (weights and Adam moments) of a stacked run: the shapes and values of the run alone."""
    for f in ("model.safetensors", "optim.safetensors"):
        a, b = load_file(str(got / "state" / f)), load_file(str(want / "state" / f))
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, f
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The runs trained alone: 3 labels (seed 1) and 5 labels (seeds 2, 3), AdamW with weight decay."""
    root = tmp_path_factory.mktemp("alone")
    cfgs = {name: tiny(opt, seeds=seeds) for name, (opt, seeds) in RUNS.items()}
    for name, cfg in cfgs.items():
        train(cfg, root / name, **QUIET)
    return root, cfgs


def test_padded_stack_matches_runs_alone(alone, tmp_path):
    """A stack of runs of 3 and 5 labels gives each member the metrics, summaries, checkpoints (shapes and
    weights), final model and state/ of the run alone; a checkpoint loads alone with the padded member's
    logits on its labels."""
    root, cfgs = alone
    jobs = [(cfg, tmp_path / name) for name, cfg in cfgs.items()]
    assert len(stack_groups(jobs)) == 1
    trainer = Trainer.stack(jobs, **QUIET)
    assert trainer.model.vocab_sizes == [3, 5, 5]
    summaries = trainer.train()
    assert [s["seed"] for s in summaries] == [1, 2, 3]
    for name, cfg in cfgs.items():
        for got, want in zip(_folders(tmp_path / name, cfg), _folders(root / name, cfg)):
            assert_same_run(got, want)
        assert_same_state(tmp_path / name, root / name)
        final = iclscope.load(tmp_path / name / "final")
        assert final.n_models == len(cfg["train"]["seeds"]) and final.vocab_size == int(cfg["data"]["n_labels"])
    ckpt = TinyModel.load(sorted((tmp_path / "three" / "checkpoints").iterdir())[-1])  # the last step: final weights
    assert ckpt.cfg.vocab_size == 3 and ckpt.meta["step"] == trainer.step
    x = inputs(4, 3, seed=5, dim=16)
    with torch.no_grad():
        trainer.model.module.eval()
        stacked = trainer.model.run(cat([x, x, x]))[0][:4]
        own = ckpt.run(x)[0]
    torch.testing.assert_close(stacked[..., :3], own, atol=1e-5, rtol=1e-5)
    assert bool((stacked[..., 3:] == float("-inf")).all())


SCRIPT = """
import json, sys
from iclscope.train import Trainer
jobs = json.loads(sys.argv[1])
Trainer.stack([(c, o) for c, o in jobs], progress=False, log=lambda *a: None).train()
"""


@pytest.mark.parametrize("resume", ["stack", "alone"])
def test_padded_stack_resumes_after_a_kill(alone, tmp_path, resume):
    """A padded stack SIGKILLed mid-way, then resumed as the same stack, or each run alone from the state/
    the stack saved, finishes with every run's metrics, checkpoints and state equal to the run alone."""
    root, cfgs = alone
    jobs = [(cfgs[n], str(tmp_path / n)) for n in cfgs]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(iclscope.__file__).parent.parent),
               ICLSCOPE_FAULT="metrics:mid-append@20")
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert json.loads((tmp_path / "three" / "state" / "state.json").read_text())["step"] == 16  # the log checkpoint before step 20
    if resume == "stack":
        env.pop("ICLSCOPE_FAULT")
        r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    else:
        for cfg, out in jobs:
            train(cfg, out, **QUIET)
    for n, cfg in cfgs.items():
        for got, want in zip(_folders(tmp_path / n, cfg), _folders(root / n, cfg)):
            assert_same_run(got, want)
        assert_same_state(tmp_path / n, root / n)
        assert (tmp_path / n / ".iclscope-finished.json").exists()
