"""The head atlas: rankings, exclusion, function vectors, and the commands end to end."""

import json

import pandas as pd
import pytest
import torch

import iclscope
from iclscope import IclscopeError
from iclscope.experiments.atlas import attention_table, function_vector, ranked_heads, run_atlas, run_scores

from conftest import make_model

FAST = dict(k=4, n_clean=8, n_corrupt=4, n_eval=8, random_seeds=2, fractions=(0.0, 0.1, 0.25),
            measures=("first_token",))  # the token-loss measure has its own tests (test_ablation.py)


def test_ranked_heads_and_exclusion():
    s = torch.tensor([[0.1, 0.9], [0.5, float("nan")]])
    assert ranked_heads(s) == [(0, 1), (1, 0), (0, 0), (1, 1)]
    assert ranked_heads(s, exclude=[(0, 1)]) == [(1, 0), (0, 0), (1, 1)]


def test_attention_scores_fit_a_short_context():
    # repeated halves are capped by the model's n_ctx, whatever the family (odd n_ctx: the segment
    # sequences, one token longer than [BOS] + 2 * half, must fit too)
    model = iclscope.load("random:gpt2:layers=2,heads=2,d_model=32,n_ctx=21")
    t = attention_table(model, n=4, half=50, batch_size=4)
    assert len(t) == 4 and t.induction.notna().all()
    with pytest.raises(Exception):
        model(torch.zeros(1, 22, dtype=torch.long))  # one token longer than the model takes: the cap matters


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_function_vector_is_the_heads_contribution(family):
    model = make_model(family)
    means = torch.randn(model.n_layers, model.n_heads, model.d_head)
    heads = [(1, 2), (2, 0)]
    fv = function_vector(model, means, heads, bias="none")  # iclscope's variant: the heads' own contribution
    # the same vector read off the model: attn_out with only those heads' means minus with none
    tokens = torch.randint(0, 257, (1, 5))
    outs = []
    for layer in (1, 2):
        z = torch.zeros(model.n_layers, model.n_heads, model.d_head)
        z[layer] = 0
        every = [(layer, h) for h in range(model.n_heads)]
        _, c0 = model.run(tokens, interventions=[iclscope.Patch("z", z, heads=every)], record=["attn_out"], layers=[layer])
        zz = z.clone()
        for l2, h in heads:
            if l2 == layer:
                zz[l2, h] = means[l2, h]
        _, c1 = model.run(tokens, interventions=[iclscope.Patch("z", zz, heads=every)], record=["attn_out"], layers=[layer])
        outs.append(c1.site("attn_out", layer)[0, -1] - c0.site("attn_out", layer)[0, -1])
    torch.testing.assert_close(fv, (outs[0] + outs[1]).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_atlas_end_to_end(tmp_path, family):
    model = iclscope.load(f"random:{family}")
    measures = ("first_token", "token_loss") if family == "llama" else ("first_token",)  # the default, once
    s = run_atlas(f"random:{family}", tmp_path / "atlas", model=model, log=lambda *a: None,
                  **{**FAST, "measures": measures})
    heads = pd.read_csv(tmp_path / "atlas" / "heads.csv")
    assert list(heads.columns[:2]) == ["layer", "head"] and len(heads) == model.n_layers * model.n_heads
    for col in ("induction", "prev_token", "duplicate", "fv", "induction_segments"):
        assert heads[col].notna().all()
    abl = pd.read_csv(tmp_path / "atlas" / "ablation.csv")
    assert set(abl.ranking) == {"induction", "fv", "induction (excl. top FV)", "fv (excl. top induction)", "random"}
    assert sorted(abl[abl.ranking == "random"].seed.unique()) == [0, 1]
    assert (abl.k <= len(heads)).all() and set(abl.fraction) == {0.0, 0.1, 0.25}
    for f in ("report.html", "ablation.png", "induction.png", "fv.png", "induction_vs_fv.png", "function_vectors.csv"):
        assert (tmp_path / "atlas" / f).exists(), f
    assert s["disjoint_tasks"] is True
    if family == "llama":  # the default measures: the token-loss difference under every setting too
        tl = pd.read_csv(tmp_path / "atlas" / "ablation_token_loss.csv")
        assert set(tl.ranking) == set(abl.ranking) and tl.difference.notna().all()


def test_atlas_reuses_finished_stages(tmp_path):
    model = iclscope.load("random:gpt2")
    run_atlas("random:gpt2", tmp_path / "a", model=model, log=lambda *a: None, **FAST)
    before = (tmp_path / "a" / "heads.csv").read_text()
    (tmp_path / "a" / "ablation.csv").unlink()  # as if killed during the ablation study
    msgs = []
    run_atlas("random:gpt2", tmp_path / "a", model=model, log=msgs.append, **FAST)
    assert any("reusing attention" in m for m in msgs) and any("reusing ablation" in m for m in msgs)
    assert (tmp_path / "a" / "heads.csv").read_text() == before and (tmp_path / "a" / "ablation.csv").exists()
    # k is a stage key now: the FV scores and what depends on them are recomputed, the attention scores reused
    msgs.clear()
    run_atlas("random:gpt2", tmp_path / "a", model=model, log=msgs.append, **{**FAST, "k": 3})
    assert any("reusing attention" in m for m in msgs) and any("recomputing ablation" in m for m in msgs)
    # the model is part of the folder config: a change is refused, naming the key
    with pytest.raises(IclscopeError, match="different config.*model"):
        run_atlas("random:gpt2:layers=3", tmp_path / "a", model=model, log=lambda *a: None, **FAST)


def test_scores_command_table(tmp_path):
    model = iclscope.load("random:qwen2")
    t = run_scores("random:qwen2", tmp_path / "s", model=model, k=4, n_clean=8, n_corrupt=4, log=lambda *a: None)
    assert {"induction", "prev_token", "duplicate", "fv"} <= set(t.columns)
    assert (tmp_path / "s" / "fv.png").exists()


def test_word_tasks_need_a_tokenizer(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "antonym.json").write_text(json.dumps([{"input": f"w{i}", "output": f"v{i}"} for i in range(20)]))
    model = make_model("tiny")
    with pytest.raises(IclscopeError, match="no tokenizer"):
        run_scores("tiny", tmp_path / "s", tasks_dir=tmp_path / "tasks", model=model, log=lambda *a: None)
