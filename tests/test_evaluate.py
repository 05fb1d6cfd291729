"""ICL evaluation: first-token accuracy, greedy-decoding F1 / exact match, token-loss difference."""

import math

import pytest
import torch

import iclscope
from iclscope import Ablate, IclscopeError
from iclscope.evaluate import (icl_accuracy, icl_generate_f1, load_text_documents, normalize_answer, token_f1,
                               token_loss_difference)
from iclscope.models.hf import byte_tokenizer
from iclscope.tasks import Task, Template, TokenTask, build_prompts, build_token_prompts

from conftest import make_model


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def bias_model(bias: torch.Tensor, n_ctx: int = 128) -> iclscope.TinyModel:
    """A tiny model whose logits are ``bias`` at every position, whatever the input."""
    cfg = iclscope.TinyConfig(n_layers=1, n_heads=2, d_model=16, vocab_size=bias.numel(), n_ctx=n_ctx)
    model = iclscope.TinyModel(cfg, seed=0)
    with torch.no_grad():
        model.module.unembed.weight.zero_()
        model.module.unembed.bias[0, 0] = bias
    return model


def token_batch(answers, k=2):
    """One prompt per answer: demonstrations (10 -> 11), (12 -> 13); query 20 + i -> answers[i]."""
    pairs = [((10,), (11,)), ((12,), (13,))] + [((20 + i,), (a,)) for i, a in enumerate(answers)]
    task = TokenTask("t", pairs)
    queries = [((20 + i,), (a,)) for i, a in enumerate(answers)]
    return build_token_prompts(task, k=k, n=len(answers), sep_id=1, demo_pairs=pairs[:2], query_pairs=queries)


# ------------------------------------------------------------------------------------------ accuracy


def test_icl_accuracy_on_predictable_logits():
    bias = torch.zeros(32)
    bias[5], bias[7], bias[9] = 3.0, 2.0, 2.0  # 5 first; 7 and 9 tie (the lower id ranks first)
    model = bias_model(bias)
    batch = token_batch([5, 7, 9, 0])
    out = icl_accuracy(model, batch, batch_size=3)
    by_answer = {int(a): i for i, a in enumerate(batch.answer_first_token)}
    probs = torch.softmax(bias, -1)
    assert out["rank"][by_answer[5]] == 0 and out["correct"][by_answer[5]]
    assert out["rank"][by_answer[7]] == 1 and out["rank"][by_answer[9]] == 2
    assert out["rank"][by_answer[0]] == 3  # after 5, 7, 9; before the other zeros (higher ids)
    assert out["accuracy"] == pytest.approx(0.25)
    for a, i in by_answer.items():
        assert out["prob"][i].item() == pytest.approx(probs[a].item(), rel=1e-5)


def test_icl_accuracy_applies_interventions():
    model = make_model("gpt2")
    task = Task("upper", [(w, w.upper()) for w in ["abc", "bcd", "cde", "def", "efg", "fgh", "ghi"]])
    batch = build_prompts(task, model.tokenizer, k=2, n=4, template=Template("{x}\t{y}\n"))
    iv = [Ablate([(0, 1), (2, 3)], how="zero", positions=-1)]
    out = icl_accuracy(model, batch, interventions=iv)
    plain = icl_accuracy(model, batch)
    with torch.no_grad():
        logits = model.run({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
                           interventions=iv)[0][:, -1]
    p = torch.softmax(logits, -1)[torch.arange(4), batch.answer_first_token]
    torch.testing.assert_close(out["prob"], p)
    assert (out["prob"] - plain["prob"]).abs().max() > 1e-7
    rank = (logits > logits.gather(-1, batch.answer_first_token[:, None])).sum(-1)
    assert torch.equal(out["rank"], rank)
    with pytest.raises(IclscopeError, match="PromptBatch"):
        icl_accuracy(model, batch.input_ids)


# ------------------------------------------------------------------------------------------ F1 / exact match


def test_token_f1_by_hand():
    assert token_f1("the cat sat", "the cat") == pytest.approx(0.8)  # p 2/3, r 1
    assert token_f1(" Paris\n", "paris") == 1.0
    assert token_f1("a b", "c") == 0.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # overlap counts multiplicity
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0
    assert token_f1((3, 4), [4, 5]) == pytest.approx(0.5)
    assert normalize_answer("  Cold \n") == "cold"


def test_generate_f1_token_task():
    bias = torch.zeros(32)
    bias[7] = 5.0  # greedy decoding always writes 7
    model = bias_model(bias)
    batch = token_batch([7, 8])
    out = icl_generate_f1(model, batch, max_new_tokens=3)
    assert out["generated"].shape == (2, 3) and (out["generated"] == 7).all()
    i7 = int((batch.answer_first_token == 7).nonzero()[0])
    assert out["prediction"][i7] == (7,) and out["exact"][i7] and out["f1"][i7] == 1.0
    assert not out["exact"][1 - i7] and out["f1"][1 - i7] == 0.0
    assert out["exact_match"] == 0.5 and out["mean_f1"] == 0.5
    cut = icl_generate_f1(model, batch, max_new_tokens=3, stop_ids=[1])  # no stop generated: all 3 tokens
    assert cut["prediction"][i7] == (7, 7, 7) and cut["f1"][i7] == pytest.approx(0.5)


def test_generate_f1_word_task_decodes_and_stops_at_the_line_end():
    tok = byte_tokenizer()
    task = Task("same", [(w, w) for w in ["ccc", "abc", "bcd", "cde", "dab"]])
    bias = torch.zeros(257)
    bias[ord("c")] = 5.0
    model = bias_model(bias)
    with pytest.raises(IclscopeError, match="tokenizer"):
        icl_generate_f1(model, build_prompts(task, tok, k=2, n=2, template=Template("{x}\t{y}\n")))
    model.tokenizer = tok
    batch = build_prompts(task, tok, k=2, n=5, template=Template("{x}\t{y}\n"))
    out = icl_generate_f1(model, batch, max_new_tokens=3)
    assert out["prediction"] == ["ccc"] * 5
    assert out["exact"].tolist() == [a == "ccc" for a in batch.answers]
    bias[ord("\n")] = 9.0  # the answer line ends at once: empty answers
    model.module.unembed.bias.data[0, 0] = bias
    out = icl_generate_f1(model, batch, max_new_tokens=3)
    assert out["prediction"] == [""] * 5 and out["exact_match"] == 0.0 and out["mean_f1"] == 0.0


def test_generate_f1_on_a_real_model_matches_a_manual_greedy_loop():
    model = make_model("llama")
    task = Task("upper", [(w, w.upper()) for w in ["abc", "bcd", "cde", "def", "efg"]])
    batch = build_prompts(task, model.tokenizer, k=2, n=3, template=Template("{x}\t{y}\n"))
    out = icl_generate_f1(model, batch, max_new_tokens=2, batch_size=2)
    for i in range(3):  # one prompt at a time, without padding
        ids = batch.input_ids[i][batch.attention_mask[i].bool()][None]
        for step in range(2):
            with torch.no_grad():
                nxt = model(ids)[0, -1].argmax()
            assert out["generated"][i, step] == nxt
            ids = torch.cat([ids, nxt.view(1, 1)], 1)


# ------------------------------------------------------------------------------------------ token-loss difference


def test_token_loss_difference_by_hand():
    V = 16
    bias = torch.linspace(-2, 2, V)
    model = bias_model(bias, n_ctx=64)
    logp = torch.log_softmax(bias, -1)
    ids = torch.randint(0, V, (5, 40), generator=torch.Generator().manual_seed(0))
    out = token_loss_difference(model, ids, ctx=20, early=3, late=15, batch_size=4)
    chunks = torch.cat([ids[:, :20], ids[:, 20:40]])  # two chunks per row, row order kept per document
    order = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    chunks = chunks[order]
    expected = -logp[chunks[:, 15]] + logp[chunks[:, 3]]
    assert out["n_chunks"] == 10
    torch.testing.assert_close(out["per_chunk"], expected)
    assert out["difference"] == pytest.approx(expected.mean().item(), abs=1e-6)
    assert out["loss_late"] - out["loss_early"] == pytest.approx(out["difference"], abs=1e-6)
    assert out["sem"] == pytest.approx(expected.std().item() / math.sqrt(10), rel=1e-4)
    assert token_loss_difference(model, ids, ctx=20, early=3, late=15, n_docs=3)["n_chunks"] == 3


def test_token_loss_difference_text_and_interventions(tmp_path):
    model = iclscope.load("random:gpt2:layers=3,heads=4,d_model=64,tokenizer=byte")  # byte ids: 270 bytes = 270 tokens
    text = "The quick brown fox jumps over the lazy dog. " * 6  # 270 bytes
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text(text[:150])
    assert len(load_text_documents(tmp_path)) == 2
    out = token_loss_difference(model, tmp_path, ctx=100, early=10, late=60)
    assert out["n_chunks"] == 2 + 1  # 270 -> 2 chunks of 100 bytes, 150 -> 1
    ids = torch.tensor(list(text.encode()))[:100][None]
    same = token_loss_difference(model, ids, ctx=100, early=10, late=60)
    assert same["per_chunk"][0].item() == pytest.approx(out["per_chunk"][0].item(), abs=1e-5)
    iv = [Ablate([(1, h) for h in range(model.n_heads)], how="zero")]
    ablated = token_loss_difference(model, [text], ctx=100, early=10, late=60, interventions=iv)
    with torch.no_grad():
        logits = model.run(ids[:, :61], interventions=iv)[0]
    lp = torch.log_softmax(logits[0], -1)
    manual = -lp[59, ids[0, 60]] + lp[9, ids[0, 10]]
    assert ablated["per_chunk"][0].item() == pytest.approx(manual.item(), abs=1e-5)
    assert abs(ablated["difference"] - out["difference"]) > 1e-6


def test_token_loss_difference_errors(tmp_path):
    model = make_model("gpt2")
    with pytest.raises(IclscopeError, match="too short"):
        token_loss_difference(model, ["a short text"], ctx=100, early=10, late=60)
    with pytest.raises(IclscopeError, match="must exceed late"):
        token_loss_difference(model, ["x" * 1000], ctx=500, early=50, late=500)
    with pytest.raises(IclscopeError, match="early < late"):
        token_loss_difference(model, ["x" * 1000], ctx=100, early=60, late=50)
    with pytest.raises(IclscopeError, match="no such file"):
        token_loss_difference(model, tmp_path / "missing.txt")
    with pytest.raises(IclscopeError, match="no .txt files"):
        token_loss_difference(model, tmp_path)
    tiny = make_model("tiny")
    with pytest.raises(IclscopeError, match="no tokenizer"):
        token_loss_difference(tiny, ["x" * 1000], ctx=60, early=5, late=50)
