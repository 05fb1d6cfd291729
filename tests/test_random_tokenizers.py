"""The subword tokenizers shipped for random:<family> models: each family's conventions, common task words as
single leading-space tokens, and word tasks that can now be scored on every random family."""

import json

import pytest
import torch

import iclscope
from iclscope import IclscopeError
from iclscope.models.hf import byte_tokenizer
from iclscope.models.hf.random import TOKENIZER_DIR, family_tokenizer
from iclscope.tasks import build_prompts, check_scorable, load_task

FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2"]

# independent of the builder's word lists: common words a word task asks for
WORDS = {
    "countries": "France Germany Italy Spain Japan China India Brazil Canada Mexico Russia Egypt Kenya Peru Chile "
                 "Greece Norway Sweden Poland Turkey Iran Iraq Cuba Portugal Ireland Argentina Australia Nigeria".split(),
    "capitals": "Paris Berlin Rome Madrid Tokyo Beijing London Moscow Cairo Nairobi Lima Athens Oslo Stockholm "
                "Warsaw Ankara Tehran Baghdad Havana Lisbon Dublin Ottawa Canberra Vienna Prague Brussels".split(),
    "colors": "red blue green yellow black white brown orange purple pink gray gold silver".split(),
    "animals": "dog cat horse cow pig sheep goat lion tiger bear wolf fox mouse rabbit deer eagle snake fish bird "
               "duck elephant".split(),
    "numbers": "one two three four five six seven eight nine ten eleven twelve twenty hundred".split(),
    "common": "good bad big small hot cold old new young fast slow happy sad dark light strong weak rich poor high "
              "low open close run walk eat drink give take make find come go see hear love water fire house tree "
              "city king money".split(),
}
PAIRS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
         ("Greece", "Athens"), ("Norway", "Oslo"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Portugal", "Lisbon"),
         ("Ireland", "Dublin"), ("Austria", "Vienna")]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tok(family):
    return family_tokenizer(family)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "country-capital.json").write_text(json.dumps([{"input": x, "output": y} for x, y in PAIRS]))
    return folder


def _answer_ids(tok, word):
    """Tokens of " word" after "A:" (in context, so that llama's first-word "▁" does not interfere)."""
    head = tok("A:", add_special_tokens=False)["input_ids"]
    full = tok("A: " + word, add_special_tokens=False)["input_ids"]
    assert full[: len(head)] == head
    return full[len(head):]


def test_shipped_files_and_sizes(family, tok):
    assert (TOKENIZER_DIR / family / "tokenizer.json").is_file() and (TOKENIZER_DIR / "SOURCES.md").is_file()
    assert len(tok) == 4096
    m = iclscope.load(f"random:{family}:layers=1,heads=2,d_model=16")
    assert m.vocab_size == len(m.tokenizer) == 4096
    assert m.module.get_input_embeddings().weight.shape[0] == 4096


@pytest.mark.parametrize("text", ["In the beginning God created the heaven and the earth.",
                                  "Q: France\nA: Paris\n\nQ: hot\nA: cold", "naïve café, 1984 — ok?  two  spaces"])
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges, not bytes


def test_bos_convention(family, tok):
    ids = tok("Paris is a city")["input_ids"]
    plain = tok("Paris is a city", add_special_tokens=False)["input_ids"]
    if family == "llama":
        assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
        assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
        assert ids == [1] + plain
        assert tok.convert_ids_to_tokens(_answer_ids(tok, "Paris")) == ["▁Paris"]
    else:
        assert ids == plain  # gpt2, gpt_neox, qwen2 add no BOS
        assert tok.eos_token == "<|endoftext|>"
        assert tok.convert_ids_to_tokens(_answer_ids(tok, "Paris")) == ["ĠParis"]
        # the published protocol writes the BOS text itself: it must be one special token
        assert tok("<|endoftext|>Paris", add_special_tokens=False)["input_ids"][0] == tok.eos_token_id
    want_bos = {"gpt2": ("<|endoftext|>", 4095), "gpt_neox": ("<|endoftext|>", 0), "llama": ("<s>", 1),
                "qwen2": (None, None)}[family]
    assert (tok.bos_token, tok.bos_token_id) == want_bos
    m = iclscope.load(f"random:{family}:layers=1,heads=2,d_model=16")
    assert m.bos_token_id == (tok.eos_token_id if family == "qwen2" else want_bos[1])  # qwen2: config's BOS = EOS


def test_common_words_are_single_leading_space_tokens(tok):
    shares = {}
    for name, words in WORDS.items():
        shares[name] = sum(len(_answer_ids(tok, w)) == 1 for w in words) / len(words)
    total = sum(shares[n] * len(WORDS[n]) for n in WORDS) / sum(map(len, WORDS.values()))
    assert total >= 0.8, shares
    assert shares["countries"] >= 0.9 and shares["capitals"] >= 0.9 and shares["numbers"] >= 0.9, shares
    assert min(shares.values()) >= 0.3, shares
    # a multi-token word still starts with a word-initial token that is not bare whitespace
    first = tok.convert_ids_to_tokens(_answer_ids(tok, "hippopotamus"))[0]
    assert first[0] in "Ġ▁" and len(first) > 1


def test_word_task_is_scorable_on_every_family(family, tok, task_dir):
    task = load_task(task_dir / "country-capital.json")
    ok, bad = check_scorable(task, tok)
    assert len(ok) == len(PAIRS) and not bad
    batch = build_prompts(task, tok, k=3, n=6, seed=0)
    assert batch.input_ids.shape[0] == 6 and not batch.dropped
    # the published protocol: one BOS per prompt wherever the family has one (qwen2's tokenizer has none;
    # the atlas passes the model's bos_token_id for it)
    assert batch.bos == (family != "qwen2")
    if family == "llama":
        assert (batch.input_ids[batch.attention_mask.bool()].view(-1) == 1).sum() == 6  # one BOS per prompt
    for first, answer in zip(batch.answer_first_token.tolist(), batch.answers):
        assert tok.decode([first]).strip() == answer  # the whole capital is the first token


def test_byte_tokenizer_leaves_word_tasks_unscorable(task_dir):
    """What the subword tokenizers fix: with bytes, every answer starts with a bare space."""
    ok, bad = check_scorable(load_task(task_dir / "country-capital.json"), byte_tokenizer())
    assert not ok and all("whitespace only" in reason for _, reason in bad)


def test_byte_option_keeps_the_old_model():
    m = iclscope.load("random:gpt2:layers=1,heads=2,d_model=16,tokenizer=byte")
    assert m.vocab_size == len(m.tokenizer) == 257 and m.bos_token_id == 256
    with pytest.raises(IclscopeError, match="tokenizer"):
        iclscope.load("random:gpt2:tokenizer=bpe")
    with pytest.raises(IclscopeError, match="unknown family"):
        family_tokenizer("bert")


def test_word_task_end_to_end_on_random_llama(task_dir):
    from iclscope.evaluate import icl_accuracy
    from iclscope.scores import fv_prompts, fv_scores

    model = iclscope.load("random:llama")
    task = load_task(task_dir / "country-capital.json")
    prompts = fv_prompts(model, [task], k=3, n_clean=6, n_corrupt=4)
    res = fv_scores(model, prompts, progress=False)
    assert res.scores.shape == (model.n_layers, model.n_heads) and torch.isfinite(res.scores).all()
    assert res.n_prompts == {"country-capital": 4}
    acc = icl_accuracy(model, prompts["country-capital"][0])
    assert acc["correct"].shape == (6,) and 0.0 <= acc["accuracy"] <= 1.0
    assert ((acc["prob"] > 0) & (acc["prob"] < 1)).all() and (acc["rank"] < model.vocab_size).all()
