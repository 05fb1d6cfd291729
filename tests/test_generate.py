"""Model.generate: equal to transformers' greedy generate and to a plain argmax loop; positions modes;
sampling; stop ids; text inputs."""

import pytest
import torch

import iclscope
from iclscope import Ablate, IclscopeError
from iclscope.interventions import AddVector, Hook
from iclscope.models.hf import plain_copy

from conftest import make_model

HF_FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2"]
N_NEW = 6


def _prompt(B=3, T=7, seed=0):
    return torch.randint(0, 257, (B, T), generator=torch.Generator().manual_seed(seed))


def _manual(model, tokens, n, interventions=(), mask=None):
    """The reference: one run per step, argmax of the final position, interventions as given."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            d = {"tokens": tokens} if mask is None else {"tokens": tokens, "attention_mask": mask}
            nxt = model.run(d, interventions=interventions)[0][:, -1].argmax(-1)
            out.append(nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_greedy_equals_transformers_generate_with_left_padding(family):
    model = make_model(family)
    tokens = _prompt()
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # row 0 is left-padded
    mask[1, :1] = 0
    tokens = tokens.masked_fill(mask == 0, 0)
    ours = model.generate({"tokens": tokens, "attention_mask": mask}, N_NEW)
    plain = plain_copy(model)
    plain.generation_config.eos_token_id = None  # run all N_NEW steps, as generate does without stop_ids
    with torch.no_grad():
        ref = plain.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False,
                             pad_token_id=0)[:, tokens.shape[1]:]
    assert ours.shape == (3, N_NEW) and ours.dtype == torch.int64
    assert torch.equal(ours, ref)
    # and without padding (transformers gets an all-ones mask: it would read the id 0 as padding)
    tokens = _prompt(seed=5)
    with torch.no_grad():
        ref = plain.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=N_NEW,
                             do_sample=False, pad_token_id=0)[:, 7:]
    assert torch.equal(model.generate(tokens, N_NEW), ref)


def test_tiny_greedy_equals_a_plain_argmax_loop():
    model = make_model("tiny")
    tokens = _prompt()
    seq = tokens
    with torch.no_grad():
        for _ in range(N_NEW):
            seq = torch.cat([seq, model.module(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(model.generate(tokens, N_NEW), seq[:, 7:])


@pytest.mark.parametrize("family", ["tiny", "gpt2", "llama"])
def test_prompt_mode_keeps_the_prompts_final_position(family):
    """positions=-1 in "prompt" mode equals re-applying the ablation at the absolute position P-1."""
    model = make_model(family)
    tokens = _prompt(seed=1)
    P = tokens.shape[1]
    heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    ours = model.generate(tokens, N_NEW, interventions=[Ablate(heads, how="zero", positions=-1)])
    manual = _manual(model, tokens, N_NEW, [Ablate(heads, how="zero", positions=P - 1)])
    assert torch.equal(ours, manual)
    every = model.generate(tokens, N_NEW, interventions=[Ablate(heads, how="zero", positions=-1)],
                           positions_mode="every")
    assert torch.equal(every, _manual(model, tokens, N_NEW, [Ablate(heads, how="zero", positions=-1)]))
    assert torch.equal(ours[:, 0], every[:, 0])  # the first step is the same pass
    assert not torch.equal(ours, model.generate(tokens, N_NEW))  # the ablation does change the output


def test_prompt_mode_records_where_the_intervention_acts():
    """Which positions an AddVector reaches at each step, in each mode (seen through a Hook)."""
    model = make_model("gpt2")
    tokens = _prompt(B=1, T=5)
    seen = []

    def spy(x):
        seen.append(x.shape[1])
        return x

    vec = torch.full((model.d_model,), 1e4)
    big = [AddVector(1, vec, positions=-1), Hook("resid_pre", spy, layers=[1])]
    for mode in ("prompt", "every"):
        seen.clear()
        marks = []

        def mark(x, marks=marks):
            marks.append((x.abs().amax(-1)[0] > 1e3).nonzero().flatten().tolist())
            return x

        model.generate(tokens, 3, interventions=big + [Hook("resid_pre", mark, layers=[1])], positions_mode=mode)
        assert seen == [5, 6, 7]
        assert marks == ([[4], [4], [4]] if mode == "prompt" else [[4], [5], [6]])


def test_context_interventions_follow_the_mode():
    model = make_model("tiny")
    tokens = _prompt(seed=2)
    heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    iv = Ablate(heads, how="zero", positions=-1)
    with model.intervene([iv]):
        inside = model.generate(tokens, N_NEW)
        assert model.active_interventions() == [iv]
    assert torch.equal(inside, model.generate(tokens, N_NEW, interventions=[iv]))


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = make_model("llama")
    tokens = _prompt()
    a = model.generate(tokens, N_NEW, do_sample=True, seed=3, temperature=2.0)
    b = model.generate(tokens, N_NEW, do_sample=True, seed=3, temperature=2.0)
    c = model.generate(tokens, N_NEW, do_sample=True, seed=4, temperature=2.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.generate(tokens, N_NEW, do_sample=True, top_k=1, seed=0), model.generate(tokens, N_NEW))


def test_sampling_follows_the_distribution():
    """With a huge temperature and top_k=2, samples are (nearly) evenly split over the two top tokens."""
    model = make_model("tiny")
    tokens = _prompt(B=1).expand(400, -1)
    top2 = model(tokens[:1])[0, -1].topk(2).indices
    out = model.generate(tokens, 1, do_sample=True, top_k=2, temperature=1e6, seed=0)[:, 0]
    assert set(out.tolist()) == set(top2.tolist())
    assert 120 < int((out == top2[0]).sum()) < 280


def test_stop_ids_repeat_the_stop_and_end_early():
    model = make_model("gpt2")
    tokens = _prompt()
    free = model.generate(tokens, N_NEW)
    stop = int(free[0, 1])
    out = model.generate(tokens, N_NEW, stop_ids=[stop])
    for row_free, row in zip(free.tolist(), out.tolist()):
        cut = row_free.index(stop) + 1 if stop in row_free else N_NEW
        assert row[:cut] == row_free[:cut]
        assert all(t == stop for t in row[cut:])


def test_text_prompts_for_generate_and_run():
    model = make_model("gpt2")
    one = model.tokenize("Paris")
    assert one["tokens"][0, 0] == model.bos_token_id and one["tokens"].shape == (1, 6)
    batch = model.tokenize(["hi", "Paris"])
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [1] * 6]
    out = model.generate(["hi", "Paris"], 3)
    assert torch.equal(out[1:], model.generate("Paris", 3))
    torch.testing.assert_close(model("Paris"), model(one["tokens"]))


def test_bad_generate_input():
    model = make_model("tiny")
    tokens = _prompt()
    for kwargs, msg in [({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2, "positions_mode": "last"},
                                                                    "positions_mode"),
                        ({"max_new_tokens": 2, "do_sample": True, "temperature": 0}, "temperature"),
                        ({"max_new_tokens": 2, "top_k": 0}, "top_k"), ({"max_new_tokens": 100}, "n_ctx")]:
        with pytest.raises(IclscopeError, match=msg):
            model.generate(tokens, **kwargs)
    with pytest.raises(IclscopeError, match="head 99 is out of range"):
        model.generate(tokens, 2, interventions=[Ablate([(0, 99)])])
    with pytest.raises(IclscopeError, match="beyond the sequence of length 7"):
        model.generate(tokens, 2, interventions=[Ablate([(0, 0)], positions=9)])
    with pytest.raises(IclscopeError, match="no tokenizer"):
        model.generate("hello", 2)


def test_generate_on_an_ensemble_is_each_member():
    cfg = iclscope.TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=11, n_ctx=16)
    ens = iclscope.TinyModel(cfg, seeds=[0, 1])
    tokens = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(0))
    out = ens.generate(torch.cat([tokens, tokens]), 4)
    assert torch.equal(out[:2], ens.member(0).generate(tokens, 4))
    assert torch.equal(out[2:], ens.member(1).generate(tokens, 4))
