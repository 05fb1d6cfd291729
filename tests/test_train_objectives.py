"""The training lab's objectives (one per data kind): per-member losses, the exact metric columns,
token layouts and phase thresholds."""

import torch
import torch.nn.functional as F

from iclscope.data.mixture import CONDITIONS
from iclscope.data.synthetic import SPLITS
from iclscope.train import FewShotObjective, MixtureObjective, Trainer, load_config

FEWSHOT = ["train.batch_size=8", "eval.batch=16", "data.dim=32", "model.d_model=32", "model.n_heads=4",
           "train.threads=1", "train.seeds=[3, 4]", "eval.induction_len=4",
           "train.compile=false"]
TESTBED = ["train.batch_size=8", "eval.batch=16", "model.n_layers=2", "model.n_heads=2", "model.d_mlp=32",
           "model.d_model=32", "data.n_words=16", "data.k=4", "eval.induction_len=4", "train.threads=1",
           "train.seeds=[3, 4]", "train.compile=false"]


def _member_rows(x, r, B):
    return x[r * B:(r + 1) * B]


def test_fewshot_objective_loss_is_each_members_mean_at_the_query(tmp_path):
    t = Trainer(load_config(None, FEWSHOT), tmp_path / "run", progress=False)
    assert isinstance(t.objective, FewShotObjective) and t.objective.token_layout is None
    batch = t.sample()
    assert batch.target.shape == (16,)  # two members of 8
    losses = t.loss(batch).detach()
    with torch.no_grad():
        logits = t.model.run(batch)[0][:, -1]
    for r in range(2):
        want = F.cross_entropy(_member_rows(logits, r, 8), _member_rows(batch.target, r, 8))
        assert abs(float(losses[r]) - float(want)) < 1e-5
    assert t.objective.phase_threshold(t.cfg["eval"]) == t.cfg["eval"]["phase_threshold"]


def test_fewshot_objective_metric_columns(tmp_path):
    t = Trainer(load_config(None, FEWSHOT), tmp_path / "run", progress=False)
    out = t.evaluate()
    assert len(out) == 2
    heads = [f"L{l}H{h}" for l in range(2) for h in range(4)]
    want = ["train_eval_loss", "train_acc"]
    for s in SPLITS[1:]:
        want += [f"{s}_loss", f"{s}_acc"]
    want = (want[:2] + [f"task_prev_L0H{h}" for h in range(4)] + [f"ind_strength_L1H{h}" for h in range(4)]
            + want[2:] + [f"prev_{x}" for x in heads] + [f"induction_{x}" for x in heads])
    assert list(out[0]) == want and list(out[1]) == want
    assert out[0]["train_eval_loss"] != out[1]["train_eval_loss"]  # two different members


def test_mixture_objective_loss_columns_and_layout(tmp_path):
    t = Trainer(load_config("testbed", TESTBED), tmp_path / "run", progress=False)
    assert isinstance(t.objective, MixtureObjective)
    assert t.objective.token_layout["word_offset"] == 2 and t.objective.phase_threshold(t.cfg["eval"]) is None
    batch = t.sample()
    losses = t.loss(batch).detach()
    with torch.no_grad():
        logits = t.model.run({"tokens": batch.tokens})[0]
    for r in range(2):
        lg, tg = _member_rows(logits, r, 8), _member_rows(batch.targets, r, 8)
        m = _member_rows(batch.loss_mask, r, 8)
        want = F.cross_entropy(lg[m], tg[m])  # the mean over every loss position of the member
        assert abs(float(losses[r]) - float(want)) < 1e-5
    out = t.evaluate()
    heads = [f"L{l}H{h}" for l in range(2) for h in range(2)]
    want = ["train_eval_loss"]
    for c in CONDITIONS:
        want += [f"{c}_loss", f"{c}_acc"] + (["conflict_copy"] if c == "conflict" else [])
    want += [f"prev_{x}" for x in heads] + [f"induction_{x}" for x in heads]
    assert list(out[0]) == want and list(out[1]) == want
