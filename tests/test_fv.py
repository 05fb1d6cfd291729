"""FV scores (reference loop, fast final-token path, attribution) and the prefix cache they stand on."""

import dataclasses
import random

import pytest
import torch

import iclscope
from iclscope import IclscopeError, Patch
from iclscope.scores import (FVResult, fv_prompts, fv_scores, fv_scores_attribution, fv_scores_reference, spearman,
                             task_means)
from iclscope.tasks import Task, Template, synthetic_token_tasks

from conftest import FAMILIES, make_model

ATOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run faster on one thread, and do not fight other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _padded_batch(seed=0, B=3, T=9, pads=(0, 3, 1)):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, 257, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    return {"input_ids": tok, "attention_mask": mask}


# ------------------------------------------------------------------------------------------ prefix cache


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_against_prefix_equals_full_pass(family):
    model = make_model(family)
    inp = _padded_batch(pads=(0, 0, 0) if family == "tiny" else (0, 3, 1))  # the tiny model takes no padding
    with torch.no_grad():
        full = model(inp)[:, -1]
        prefix = model.prefix_cache(inp)
        assert len(prefix) == 3 and prefix.seq_len == 9
        torch.testing.assert_close(prefix.logits, full, atol=ATOL, rtol=0)
        last, _ = model.run_last_token(prefix)
        assert last.shape == (3, 1, model.vocab_size)
        torch.testing.assert_close(last[:, -1], full, atol=ATOL, rtol=0)
        rows = torch.tensor([2, 0, 1, 1, 2, 0])  # rows gathered from several prompts
        torch.testing.assert_close(model.run_last_token(prefix, rows=rows)[0][:, -1], full[rows], atol=ATOL, rtol=0)
        same = model.run_last_token(prefix, rows=[1] * 4)[0][:, -1]  # one prompt shared by every row
        torch.testing.assert_close(same, full[[1] * 4], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_patches_on_the_last_token_pass_equal_full_pass_patches(family):
    model = make_model(family)
    inp = _padded_batch(seed=1, pads=(0, 0, 0) if family == "tiny" else (0, 3, 1))
    means = torch.randn(model.n_layers, model.n_heads, model.d_head, generator=torch.Generator().manual_seed(2))
    heads = [(0, 1), (1, 2), (2, 3), (2, 0)]
    with torch.no_grad():
        prefix = model.prefix_cache(inp)
        for prompt in (1, None):  # one prompt for every row (prefix read in place) / rows over prompts
            rows = [prompt] * len(heads) if prompt is not None else [0, 1, 2, 1]
            fast, cache = model.run_last_token(
                prefix, rows=rows, record=["pattern", "z"],
                interventions=[Patch("z", means, heads=heads, positions=[-1], rows=list(range(len(heads))))])
            for i, h in enumerate(heads):
                alone = model.run(inp, interventions=[Patch("z", means, heads=[h], positions=[-1])])[0][rows[i], -1]
                torch.testing.assert_close(fast[i, -1], alone, atol=ATOL, rtol=0)
            assert cache.site("pattern", 1).shape == (len(heads), model.n_heads, 1, 9)
            assert cache.site("z", 1).shape == (len(heads), 1, model.n_heads, model.d_head)
            torch.testing.assert_close(cache.site("z", 2)[2, 0, 3], means[2, 3])
        # k/v hooks see the whole key axis: the final key patched alone equals the full pass; an earlier key
        # also changes earlier positions, so the prefix must be built under the same patch
        kvec = torch.randn(1, model.d_head, generator=torch.Generator().manual_seed(3))
        for pos, built_under in ((8, ()), (6, "same")):
            kpatch = [Patch("k", kvec, heads=[(1, 0)], positions=[pos])]
            pre = prefix if built_under == () else model.prefix_cache(inp, interventions=kpatch)
            full = model.run(inp, interventions=kpatch)[0][:, -1]
            if built_under:
                torch.testing.assert_close(pre.logits, full, atol=ATOL, rtol=0)
            last = model.run_last_token(pre, interventions=kpatch)[0][:, -1]
            torch.testing.assert_close(last, full, atol=ATOL, rtol=0)


def test_prefix_cache_tiny_long_sequences_and_learned_positions():
    """Sequences past the fused-kernel threshold, learned positions, and a 2-model ensemble."""
    for positions in ("rotary", "learned"):
        cfg = iclscope.TinyConfig(n_layers=2, n_heads=4, d_model=32, d_mlp=32, vocab_size=50, n_ctx=64,
                                  positions=positions)
        model = iclscope.TinyModel(cfg, seed=1)
        tok = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = model(tok)[:, -1]
            torch.testing.assert_close(model.run_last_token(model.prefix_cache(tok))[0][:, -1], full, atol=ATOL, rtol=0)
    ens = iclscope.TinyModel(cfg, n_models=2)
    tok = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))  # rows 0,1: model 0; 2,3: model 1
    with torch.no_grad():
        full = ens(tok)[:, -1]
        prefix = ens.prefix_cache(tok)
        torch.testing.assert_close(ens.run_last_token(prefix, rows=[1, 0, 3, 3])[0][:, -1], full[[1, 0, 3, 3]],
                                   atol=ATOL, rtol=0)
        with pytest.raises(IclscopeError, match="ensemble"):
            ens.run_last_token(prefix, rows=[2, 0, 1, 3])


def test_prefix_cache_bad_input():
    model = make_model("gpt2")
    with pytest.raises(IclscopeError, match="at least 2 tokens"):
        model.prefix_cache(torch.tensor([[5]]))
    prefix = model.prefix_cache(torch.tensor([[5, 6, 7]]))
    with pytest.raises(IclscopeError, match="beyond"):
        model.run_last_token(prefix, rows=[1])
    with pytest.raises(IclscopeError, match="whole key axis"):
        model.run_last_token(prefix, record=["k"], positions=[-1])


# ------------------------------------------------------------------------------------------ FV scores


_rng = random.Random(0)
WORDS = sorted({"".join(_rng.choice("abcdefgh") for _ in range(3)) for _ in range(30)})


def _fv_setup(family, scale=4.0, n_clean=6, n_corrupt=4, protocol=None):
    """A small model with a sharper output (scaled unembedding) and two tasks whose answer is, per prompt,
    the model's own top token on the clean prompt: patching towards the clean means then moves P(answer)
    by 1e-4..1e-2, so that comparisons are not between zeros."""
    model = make_model(family) if family == "tiny" else iclscope.load(f"random:{family}:layers=3,heads=4,d_model=64,tokenizer=byte")
    with torch.no_grad():
        (model.module.unembed.weight if family == "tiny" else model.module.get_output_embeddings().weight).mul_(scale)
    if family == "tiny":
        tasks = fv_prompts(model, synthetic_token_tasks(2, 12, seed=0, word_offset=2), k=4, n_clean=n_clean,
                           n_corrupt=n_corrupt, sep_id=1, protocol=protocol)
    else:
        pairs = [Task("upper", [(w, w.upper()) for w in WORDS]), Task("rev", [(w, w[::-1]) for w in WORDS])]
        tasks = fv_prompts(model, pairs, k=3, n_clean=n_clean, n_corrupt=n_corrupt, template=Template("{x}\t{y}\n"),
                           protocol=protocol)
    out = {}
    for name, (clean, bad) in tasks.items():
        if protocol == "iclscope":  # the corrupted prompts are the first clean prompts, labels cycled
            assert bad.corrupt == "cycle" and bad.queries == clean.queries[:len(bad)]
        else:  # published: fresh prompts (another draw), labels randomly permuted
            assert bad.corrupt == "permute" and [d for d in bad.demos] != clean.demos[:len(bad)]
        with torch.no_grad():
            top = model({"input_ids": clean.input_ids, "attention_mask": clean.attention_mask})[:, -1].argmax(-1)
        out[name] = (dataclasses.replace(clean, answer_first_token=top),
                     dataclasses.replace(bad, answer_first_token=top[:len(bad)]))
    return model, out


@pytest.mark.parametrize("family,protocol", [("gpt2", None), ("llama", None), ("tiny", None), ("gpt2", "iclscope")])
def test_fast_fv_scores_equal_the_reference_loop(family, protocol):
    model, tasks = _fv_setup(family, protocol=protocol)
    ref = fv_scores_reference(model, tasks, batch_size=3, progress=False)
    gathered = fv_scores(model, tasks, batch_size=3, progress=False)  # 12 heads: a pass holds several prompts
    fast = fv_scores(model, tasks, batch_size=4, max_rows=5, progress=False)  # a pass holds one prompt (shared)
    assert ref.method == "reference" and fast.method == "fast"
    assert max(d.abs().max().item() for d in ref.per_prompt.values()) > 1e-4  # not a comparison of zeros
    for name in tasks:
        assert ref.per_prompt[name].shape == (4, model.n_layers, model.n_heads)
        torch.testing.assert_close(fast.per_prompt[name], ref.per_prompt[name], atol=ATOL, rtol=0)
        torch.testing.assert_close(gathered.per_prompt[name], ref.per_prompt[name], atol=ATOL, rtol=0)
        torch.testing.assert_close(fast.baseline[name], ref.baseline[name], atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.scores, ref.scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.scores, torch.stack([fast.per_task[n] for n in tasks]).mean(0))
    # the definition, by hand, for one head and one task
    name = next(iter(tasks))
    clean, bad = tasks[name]
    means = task_means(model, clean)
    inp = {"input_ids": bad.input_ids, "attention_mask": bad.attention_mask}
    with torch.no_grad():
        base = torch.softmax(model(inp)[:, -1], -1)[torch.arange(4), bad.answer_first_token]
        pat = model.run(inp, interventions=[Patch("z", means, heads=[(2, 1)], positions=[-1])])[0][:, -1]
    manual = (torch.softmax(pat, -1)[torch.arange(4), bad.answer_first_token] - base).mean()
    assert fast.per_task[name][2, 1].item() == pytest.approx(manual.item(), abs=1e-6)


def test_a_head_that_matters_scores_and_a_silent_head_does_not():
    model, tasks = _fv_setup("gpt2")
    D = model.d_head
    with torch.no_grad():
        w = model.module.transformer.h[2].attn.c_proj.weight  # Conv1D (in, out): rows h*D.. are head h's input
        w[1 * D:2 * D] *= 30.0  # head (2, 1) now dominates the residual stream
        w[3 * D:4 * D] = 0.0  # head (2, 3) writes nothing
    res = fv_scores(model, tasks, batch_size=4, progress=False)
    s = res.scores.abs()
    assert s[2, 1] == s.max() and s[2, 1] > 1e-3
    assert s[2, 3] < 1e-7
    assert res.top(1) == [(2, 1)] or res.scores[2, 1] < 0


def test_heads_subset_result_object_and_means():
    model, tasks = _fv_setup("tiny")
    heads = [(0, 0), (2, 3)]
    res = fv_scores(model, tasks, heads=heads, batch_size=4, progress=False)
    scored = ~res.scores.isnan()
    assert scored.sum() == 2 and scored[0, 0] and scored[2, 3]
    assert set(res.top(10)) == set(heads)
    means = {name: task_means(model, clean) for name, (clean, _) in tasks.items()}
    again = fv_scores_reference(model, tasks, heads=heads, means=means, progress=False)
    torch.testing.assert_close(again.scores[scored], res.scores[scored], atol=ATOL, rtol=0)
    assert res.n_prompts == {name: 4 for name in tasks}
    assert res.task_std.shape == (model.n_layers, model.n_heads)
    assert all(v.shape == (model.n_layers, model.n_heads) for v in res.per_task_sem.values())
    frame = res.to_frame()
    assert len(frame) == (len(tasks) + 1) * model.n_layers * model.n_heads
    assert set(frame["task"]) == {*tasks, "mean"}
    with pytest.raises(IclscopeError, match="means has no entry"):
        fv_scores(model, tasks, means={"other": means[next(iter(tasks))]}, progress=False)


def test_attribution_tracks_the_exact_scores():
    model, tasks = _fv_setup("tiny")
    exact = fv_scores(model, tasks, batch_size=4, progress=False)
    att = fv_scores_attribution(model, tasks, batch_size=4, compare=exact, progress=False)
    assert att.method == "attribution"
    assert att.spearman == pytest.approx(spearman(att.scores, exact.scores))
    assert att.spearman > 0.8
    torch.testing.assert_close(att.baseline[next(iter(tasks))], exact.baseline[next(iter(tasks))], atol=ATOL, rtol=0)
    assert all(p.grad is None for p in model.module.parameters())  # no weight gradient left behind
    # a frozen model still gets its estimate, and stays frozen
    for p in model.module.parameters():
        p.requires_grad_(False)
    frozen = fv_scores_attribution(model, tasks, batch_size=4, compare=True, progress=False)
    torch.testing.assert_close(frozen.scores, att.scores, atol=ATOL, rtol=0)
    assert frozen.spearman == pytest.approx(att.spearman, abs=1e-6)
    assert not any(p.requires_grad for p in model.module.parameters())


def test_spearman_on_known_inputs():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a.exp()) == pytest.approx(1.0)  # ranks only
    # ties get their mean rank: ranks of b are 1, 2, 3.5, 5, 3.5 -> r = 8 / sqrt(95) (= scipy's spearmanr)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / 95 ** 0.5, abs=1e-12)
    nan = float("nan")
    assert spearman([1, 2, nan, 3], [3, 2, 1, 1]) == pytest.approx(-1.0)  # the NaN pair is left out
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # constant side: NaN
    with pytest.raises(IclscopeError):
        spearman([1, 2], [1, 2, 3])


def test_fv_bad_input():
    model, tasks = _fv_setup("tiny", n_clean=4, n_corrupt=2)
    name = next(iter(tasks))
    clean, bad = tasks[name]
    with pytest.raises(IclscopeError, match="not corrupted"):
        fv_scores(model, {name: (clean, clean)}, progress=False)
    with pytest.raises(IclscopeError, match="out of range"):
        fv_scores(model, tasks, heads=[(9, 0)], progress=False)
    with pytest.raises(IclscopeError, match="no tokenizer"):
        fv_prompts(model, [Task("upper", [(w, w.upper()) for w in WORDS])])
    res = fv_scores(model, (clean, bad), progress=False)  # one pair, named by its task
    assert isinstance(res, FVResult) and res.tasks == [clean.task]


def test_tiny_prefix_cache_refuses_padded_prompts():
    model = make_model("tiny")
    with pytest.raises(iclscope.IclscopeError, match="no padding support"):
        model.prefix_cache(_padded_batch())
