"""The atlas's ablation study: the final-token path equals full passes (icl_accuracy / icl_generate_f1)
under the same Ablate, setting by setting, on every family; settings deduplicated by head set; the t
interval; the token-loss measure's corpus, scaling and skip notes."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

import iclscope
from iclscope import Ablate, IclscopeError
from iclscope.evaluate import icl_accuracy, icl_generate_f1, token_loss_difference
from iclscope.experiments.atlas.ablation import (ablation_settings, ablation_study, ablation_summary, check_measures,
                                                 final_token_accuracy, generate_rows, task_means, text_corpus)
from iclscope.experiments.atlas.tasks import FRACTIONS, build_eval_prompts, default_tasks

from conftest import FAMILIES, make_model


def _prompts(model, n_tasks=2, n=6, k=3):
    tasks = default_tasks(model)
    return {t: build_eval_prompts(model, tasks[t], k, n, 1) for t in sorted(tasks)[:n_tasks]}


def _answerable(model, batch):
    """The batch with answers the model gets right unablated (even rows: its top token) or nearly (odd rows:
    its second choice), so that ablations flip correctness both ways."""
    with torch.no_grad():
        logits = model.run({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0][:, -1]
    top2 = logits.float().topk(2, -1).indices
    ans = torch.where(torch.arange(len(batch)) % 2 == 0, top2[:, 0], top2[:, 1])
    return dataclasses.replace(batch, answer_first_token=ans)


def _head_sets(model):
    L, H = model.n_layers, model.n_heads
    return [(), ((0, 1),), ((L - 1, 0), (L - 1, 2)), tuple((l, h) for l in range(L) for h in range(H) if (l + h) % 2)]


@pytest.mark.parametrize("family", FAMILIES)
def test_final_token_path_equals_full_passes(family):
    model = make_model(family)
    eps = {t: _answerable(model, b) for t, b in _prompts(model, n_tasks=1).items()}
    mean = task_means(model, eps, "final")
    sets = _head_sets(model)
    for how, m in (("mean", mean), ("zero", None))[:2 if family in ("gpt2", "tiny") else 1]:
        for t, batch in eps.items():
            fast = final_token_accuracy(model, batch, sets, how, m, prompt_batch=4, budget=1)  # 1 row per chunk
            wide = final_token_accuracy(model, batch, sets, how, m)  # every row in one chunk
            flipped = False
            for s, hs in enumerate(sets):
                ivs = [Ablate(list(hs), how=how, mean=m, positions=[-1])] if hs else []
                ref = icl_accuracy(model, batch, interventions=ivs)
                for got in (fast, wide):
                    assert torch.equal(got["correct"][s], ref["correct"]), (family, how, t, hs)
                    assert torch.equal(got["rank"][s], ref["rank"]), (family, how, t, hs)
                    torch.testing.assert_close(got["prob"][s], ref["prob"], rtol=1e-4, atol=1e-6)
                flipped |= bool((ref["prob"] / fast["prob"][0] - 1).abs().max() > 1e-3)
            assert fast["correct"][0].float().mean() == 0.5  # the unablated rows: even prompts right
            assert flipped  # the ablations do change the predictions: the comparison can fail


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_rows_equal_icl_generate_f1(family):
    model = make_model(family)
    eps = _prompts(model, n_tasks=1, n=4)
    mean = task_means(model, eps, "final")
    sets = _head_sets(model)
    batch = next(iter(eps.values()))
    P = batch.input_ids.shape[1]
    for positions, pos in (("final", slice(P - 1, None)), ("all", None)):
        ids = generate_rows(model, batch, sets, "mean", mean, positions, max_new_tokens=3)
        for s, hs in enumerate(sets):
            ivs = [Ablate(list(hs), how="mean", mean=mean, positions=pos)] if hs else []
            ref = icl_generate_f1(model, batch, max_new_tokens=3, interventions=ivs)
            assert torch.equal(ids[s], ref["generated"]), (family, positions, hs)


def _table(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pd.DataFrame([{"layer": l, "head": h, "induction": float(torch.rand(1, generator=g)),
                          "fv": float(torch.rand(1, generator=g))}
                         for l in range(model.n_layers) for h in range(model.n_heads)])


def test_settings_deduplicated_by_head_count():
    model = make_model("gpt2")  # 3 x 4 = 12 heads: 1 % and 3 % give 0 heads, 5/7/9 % give 1
    settings, head_sets = ablation_settings(model, _table(model), FRACTIONS, random_seeds=2)
    ks = {s.fraction: s.k for s in settings}
    assert ks == {0.0: 0, 0.01: 0, 0.03: 0, 0.05: 1, 0.07: 1, 0.09: 1, 0.15: 2, 0.20: 2}
    assert len(settings) == 6 * len(FRACTIONS)
    distinct = {s.heads for s in settings}
    assert set(head_sets) == distinct and len(head_sets) == len(distinct) <= 1 + 6 * 2
    assert () in distinct and all(len(s.heads) == s.k for s in settings)


def test_study_table_measures_and_notes(tmp_path):
    model = iclscope.load("random:gpt2:layers=3,heads=4,d_model=32,n_ctx=128")
    eps = _prompts(model, n_tasks=2, n=4)
    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    r = ablation_study(model, eps, _table(model), fractions=(0.0, 0.01, 0.09, 0.2), random_seeds=2, log=lambda m: None,
                       measures=("first_token", "generate_f1", "token_loss"), text_dir=tmp_path, max_new_tokens=2,
                       n_text_chunks=3)
    df = r.per_task
    assert list(df.columns) == ["ranking", "fraction", "k", "seed", "task", "accuracy", "f1", "exact_match"]
    assert len(df) == 6 * 4 * 2
    # fractions with one head count share one result
    for _, g in df[df.k == 0].groupby("task"):
        assert g.accuracy.nunique() == 1 and g.f1.nunique() == 1
    one = df[(df.ranking == "induction") & (df.k == 1)]
    assert set(one.fraction) == {0.09} and len(one) == 2
    # the token loss: n_ctx 128 < 501, so tokens 50 and 127, with a note
    tl = r.token_loss
    assert (tl.early == 50).all() and (tl.late == 127).all() and (tl.n_chunks == 3).all()
    assert any("tokens 50 and 127" in n for n in r.notes)
    assert r.protocol["token_loss"]["late"] == 127 and r.protocol["path"].startswith("final-token")
    # the unablated row is the plain token-loss difference on the same chunks
    corpus = text_corpus(model, tmp_path, 3)
    ref = token_loss_difference(model, corpus.ids, ctx=128, early=50, late=127)
    assert math.isclose(float(tl[tl.k == 0].difference.iloc[0]), ref["difference"], rel_tol=1e-5)
    assert tl[tl.k > 0].difference.nunique() > 1


def test_token_loss_skipped_without_tokenizer_and_default_corpus():
    tiny = make_model("tiny")
    c = text_corpus(tiny)
    assert c.ids is None and len(c.notes) == 1 and "no tokenizer" in c.notes[0]
    model = iclscope.load("random:llama:layers=1,heads=2,d_model=16")  # n_ctx 512: tokens 50 and 500 fit
    c = text_corpus(model, n_chunks=2)
    assert c.ids.shape == (2, 501) and (c.early, c.late) == (50, 500) and c.notes == []
    assert c.source.endswith("text")  # the shipped King James Genesis


def test_t_interval_over_seeds():
    vals = [0.2, 0.4, 0.3, 0.5, 0.1]
    df = pd.DataFrame({"ranking": "random", "fraction": 0.1, "k": 1, "seed": range(5), "task": "t", "accuracy": vals})
    s = ablation_summary(df).iloc[0]
    m = sum(vals) / 5
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / 4)
    half = 2.7764451 * sd / math.sqrt(5)  # t(0.975, 4 degrees of freedom), from a printed table
    assert math.isclose(s.ci_low, m - half, rel_tol=1e-6) and math.isclose(s.ci_high, m + half, rel_tol=1e-6)
    assert s.n_seeds == 5 and "t interval" in s.interval


def test_bad_measures_are_refused(tmp_path):
    with pytest.raises(IclscopeError, match="unknown measure 'bleu'"):
        check_measures(("first_token", "bleu"))
    with pytest.raises(IclscopeError, match="must include first_token"):
        check_measures(("token_loss",))
    with pytest.raises(IclscopeError, match="--text-dir"):
        check_measures(("first_token", "token_loss"), tmp_path / "missing")
    assert check_measures("first_token,generate_f1") == ("first_token", "generate_f1")
