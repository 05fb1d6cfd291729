"""Tests of iclscope.tasks: task files, prompt batches, token prompts, synthetic tasks, builders.

No hub access: the tokenizer is a byte-level BPE trained here on a few sentences, wrapped in
transformers.PreTrainedTokenizerFast, so that the leading-space convention (" Paris" vs "Paris")
is real.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from iclscope.errors import IclscopeError
from iclscope.tasks import (
    DEFAULT_TEMPLATE,
    PromptBatch,
    Task,
    TaskError,
    Template,
    TokenTask,
    available_builders,
    build_prompts,
    build_tasks,
    build_token_prompts,
    check_scorable,
    load_task,
    load_tasks,
    save_task,
    split,
    synthetic_token_tasks,
    tokenizer_adds_bos,
)

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Cuba", "Havana"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "Delhi"), ("Poland", "Warsaw"),
]
ANTONYMS = [
    ("hot", "cold"), ("cold", "hot"), ("up", "down"), ("down", "up"), ("big", "small"),
    ("small", "big"), ("good", "bad"), ("bad", "good"), ("fast", "slow"), ("slow", "fast"),
    ("old", "young"), ("young", "old"), ("wet", "dry"), ("dry", "wet"),
]


def _train_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    corpus = []
    for x, y in CAPITALS + ANTONYMS:
        corpus += [f"Q: {x}\nA: {y}\n\n", f"The capital of {x} is {y}.", f"{x} {y} {x}, {y}"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 3, trainer)
    if add_bos:
        bos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tok():
    return _train_tokenizer(add_bos=False)


@pytest.fixture(scope="module")
def tok_bos():
    return _train_tokenizer(add_bos=True)


@pytest.fixture
def capitals():
    return Task("country-capital", list(CAPITALS), {"kind": "abstractive"})


@pytest.fixture
def antonyms():
    return Task("antonym", list(ANTONYMS), {"kind": "abstractive"})


# --------------------------------------------------------------------------------------------------
# Tokenizer sanity: the test tokenizer really distinguishes " Paris" from "Paris"
# --------------------------------------------------------------------------------------------------


def test_test_tokenizer_has_leading_space_tokens(tok):
    assert tok.convert_ids_to_tokens(tok(" Paris", add_special_tokens=False)["input_ids"]) == ["ĠParis"]
    assert tok(" Paris", add_special_tokens=False)["input_ids"] != tok("Paris", add_special_tokens=False)["input_ids"]
    assert not tokenizer_adds_bos(tok)


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def test_two_shot_template_text_exact(tok, capitals):
    assert DEFAULT_TEMPLATE.query == "Q: {x}\nA:" and DEFAULT_TEMPLATE.answer_lead == " "
    batch = build_prompts(capitals, tok, k=2, n=5, seed=3)
    assert isinstance(batch, PromptBatch) and len(batch) == 5 and batch.k == 2
    truth = dict(CAPITALS)
    for text, demos, q in zip(batch.texts, batch.demos, batch.queries):
        (x1, y1), (x2, y2) = demos
        assert y1 == truth[x1] and y2 == truth[x2]
        assert text == f"Q: {x1}\nA: {y1}\n\nQ: {x2}\nA: {y2}\n\nQ: {q}\nA:"
    # the ids are exactly one BOS (the published protocol: this tokenizer adds none) then the text's tokens
    row = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert row == [tok.bos_token_id] + tok(batch.texts[0], add_special_tokens=False)["input_ids"]
    assert tok.decode(row[1:]) == batch.texts[0]
    off = build_prompts(capitals, tok, k=2, n=5, seed=3, add_bos=False)  # iclscope's "none": the text alone
    row = off.input_ids[0][off.attention_mask[0].bool()].tolist()
    assert row == tok(off.texts[0], add_special_tokens=False)["input_ids"] and tok.decode(row) == off.texts[0]


def test_other_template(tok, capitals):
    tpl = Template("{x} -> {y}\n")
    assert tpl.query == "{x} ->" and tpl.answer_lead == " "
    batch = build_prompts(capitals, tok, k=2, n=3, seed=0, template=tpl)
    (x1, y1), (x2, y2) = batch.demos[0]
    assert batch.texts[0] == f"{x1} -> {y1}\n{x2} -> {y2}\n{batch.queries[0]} ->"
    with pytest.raises(TaskError):
        Template("{y} then {x}")


def test_answer_first_token_is_space_prefixed_token_in_context(tok, capitals):
    batch = build_prompts(capitals, tok, k=3, n=len(CAPITALS), seed=1)
    assert batch.answer_first_token.dtype == torch.int64 and batch.answer_first_token.shape == (len(CAPITALS),)
    for ans, first, ids in zip(batch.answers, batch.answer_first_token.tolist(), batch.answer_ids):
        # the trained vocabulary holds every capital as one space-prefixed token
        assert first == tok.convert_tokens_to_ids("Ġ" + ans)
        assert first != tok.convert_tokens_to_ids(ans)
        assert ids == [first]
    assert sorted(batch.answers) == sorted(y for _, y in CAPITALS)  # queries cycle through every pair


def test_left_padding_puts_last_token_last(tok):
    # words unseen in training split into several tokens, so prompt lengths differ
    task = Task("mixed", CAPITALS[:8] + [("Liechtenstein", "Vaduz"), ("Burkina Faso", "Ouagadougou"), ("Fiji", "Suva")])
    batch = build_prompts(task, tok, k=4, n=12, seed=2, add_bos=False)  # the text's tokens alone
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.dtype == torch.int64 and mask.shape == ids.shape
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in batch.texts]
    assert len(set(lengths)) > 1, "prompts of different lengths are needed to test padding"
    assert bool(mask[:, -1].all())
    for i, t in enumerate(batch.texts):
        enc = tok(t, add_special_tokens=False)["input_ids"]
        assert ids[i, -len(enc):].tolist() == enc
        assert mask[i].tolist() == [0] * (ids.shape[1] - len(enc)) + [1] * len(enc)
        assert (ids[i, : ids.shape[1] - len(enc)] == batch.pad_id).all()
    assert batch.lengths.tolist() == lengths
    pos = batch.position_ids()
    assert pos[mask.bool()].min() == 0 and pos[:, -1].tolist() == [n - 1 for n in lengths]


def test_bos_handling(tok, tok_bos, capitals):
    bos = tok.bos_token_id
    with_bos = build_prompts(capitals, tok, k=2, n=4, add_bos=True)
    starts = [row[m.bool()][0].item() for row, m in zip(with_bos.input_ids, with_bos.attention_mask)]
    assert starts == [bos] * 4 and with_bos.bos
    assert tokenizer_adds_bos(tok_bos)
    default = build_prompts(capitals, tok_bos, k=2, n=4)
    assert default.bos and all(r[m.bool()][0].item() == bos for r, m in zip(default.input_ids, default.attention_mask))
    off = build_prompts(capitals, tok_bos, k=2, n=4, add_bos=False)
    assert not off.bos and bos not in off.input_ids[off.attention_mask.bool()].tolist()
    assert torch.equal(default.answer_first_token, off.answer_first_token)


def test_query_never_among_demos(tok, antonyms):
    batch = build_prompts(antonyms, tok, k=10, n=60, seed=4)
    for q, demos in zip(batch.queries, batch.demos):
        assert len(demos) == 10
        assert q not in [x for x, _ in demos]


@pytest.mark.parametrize("mode", ["shuffle", "cycle"])
def test_corruption_moves_every_label_and_keeps_answer(tok, antonyms, mode):
    truth = dict(ANTONYMS)
    clean = build_prompts(antonyms, tok, k=6, n=40, seed=7)
    bad = build_prompts(antonyms, tok, k=6, n=40, seed=7, corrupt=mode)
    assert bad.corrupt == mode
    for q, a, demos in zip(bad.queries, bad.answers, bad.demos):
        assert a == truth[q]
        assert all(shown != truth[x] for x, shown in demos), demos
    # same seed: same queries and demonstration inputs, only the labels differ
    assert bad.queries == clean.queries
    assert [[x for x, _ in d] for d in bad.demos] == [[x for x, _ in d] for d in clean.demos]
    assert torch.equal(bad.answer_first_token, clean.answer_first_token)
    for c, b in zip(clean.demos, bad.demos):
        assert sorted(y for _, y in c) == sorted(y for _, y in b)  # a permutation of the labels
        if mode == "cycle":
            labels = [y for _, y in c]
            assert [y for _, y in b] == labels[-1:] + labels[:-1]


def test_corruption_needs_two_demos(tok, antonyms):
    with pytest.raises(TaskError):
        build_prompts(antonyms, tok, k=1, n=2, corrupt="cycle")
    with pytest.raises(TaskError):
        build_prompts(antonyms, tok, k=2, n=2, corrupt="reverse")


def test_prompts_deterministic_per_seed(tok, antonyms):
    a = build_prompts(antonyms, tok, k=4, n=10, seed=5)
    b = build_prompts(antonyms, tok, k=4, n=10, seed=5)
    c = build_prompts(antonyms, tok, k=4, n=10, seed=6)
    assert a.texts == b.texts and torch.equal(a.input_ids, b.input_ids)
    assert a.texts != c.texts


def test_too_few_pairs(tok):
    task = Task("tiny", CAPITALS[:5])
    build_prompts(task, tok, k=4, n=3)
    with pytest.raises(TaskError, match="k\\+1"):
        build_prompts(task, tok, k=5, n=3)
    # unscorable pairs do not count
    task = Task("tiny", CAPITALS[:5] + [("Atlantis", "")])
    with pytest.raises(TaskError, match="5 usable pairs"):
        build_prompts(task, tok, k=5, n=3)


def test_unscorable_pairs_reported_and_dropped(tok, capitals):
    bad_pairs = [("Atlantis", ""), ("Nowhere", "   "), ("", "Paris"), ("Omega", "Ωmega")]
    task = Task("mixed", list(CAPITALS) + bad_pairs)
    ok, bad = check_scorable(task, tok)
    assert ok == list(CAPITALS)
    reasons = dict(bad)
    assert set(reasons) == set(bad_pairs)
    assert "empty answer" in reasons[("Atlantis", "")] and "empty answer" in reasons[("Nowhere", "   ")]
    assert "empty input" in reasons[("", "Paris")]
    assert "whitespace only" in reasons[("Omega", "Ωmega")]  # " Ω" starts with a bare "Ġ" here
    batch = build_prompts(task, tok, k=3, n=30, seed=0)
    assert dict(batch.dropped) == reasons
    assert not set(batch.queries) & {x for x, _ in bad_pairs}
    assert all(x not in {p[0] for p in bad_pairs} for d in batch.demos for x, _ in d)


def test_separate_demo_and_query_pools(tok, antonyms):
    train, test = split(antonyms, test_fraction=0.3, seed=0)
    batch = build_prompts(antonyms, tok, k=4, n=8, demo_pairs=train, query_pairs=test)
    assert set(batch.queries) <= {x for x, _ in test}
    assert all(p in train for d in batch.demos for p in d)


def test_split_deterministic_and_disjoint(antonyms):
    tr, te = split(antonyms, 0.3, seed=1)
    assert split(antonyms, 0.3, seed=1) == (tr, te)
    assert len(te) == round(0.3 * len(ANTONYMS)) and sorted(tr + te) == sorted(ANTONYMS)
    assert split(antonyms, 0.3, seed=2) != (tr, te)
    assert len(split(Task("two", ANTONYMS[:2]), 0.0)[1]) == 1  # neither side is empty


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def test_load_task_and_meta(tmp_path):
    _write(tmp_path / "t.json", [{"input": "a", "output": "b"}, {"input": "c", "output": ["d", "e"]}])
    _write(tmp_path / "t.meta.json", {"source": "here", "license": "MIT", "kind": "abstractive"})
    task = load_task(tmp_path / "t.json")
    assert task.name == "t" and task.pairs == [("a", "b"), ("c", "d")]
    assert task.meta["license"] == "MIT" and task.kind == "abstractive"
    tasks = load_tasks(tmp_path)
    assert list(tasks) == ["t"]  # the .meta.json is not a task


def test_load_todd_layout_infers_kind(tmp_path):
    (tmp_path / "abstractive").mkdir()
    (tmp_path / "extractive").mkdir()
    _write(tmp_path / "abstractive" / "antonym.json", [{"input": "hot", "output": "cold"}])
    _write(tmp_path / "extractive" / "choose_first_of_5.json", [{"input": "a, b, c, d, e", "output": "a"}])
    tasks = load_tasks(tmp_path)
    assert tasks["antonym"].kind == "abstractive" and tasks["choose_first_of_5"].kind == "extractive"
    assert list(load_tasks(tmp_path, names=["antonym"])) == ["antonym"]
    with pytest.raises(TaskError, match="synonym"):
        load_tasks(tmp_path, names=["synonym"])


@pytest.mark.parametrize(
    "content, pattern",
    [
        ({"input": "a", "output": "b"}, "expected a JSON list"),
        ([], "empty task"),
        ("", "empty file"),
        ("[{", "not valid JSON"),
        ([{"input": "a", "output": "b"}, {"input": "c", "output": "d"}, {"input": "e"}], "entry 2 .*'output'"),
        ([{"input": "a", "output": "b"}, {"input": 3, "output": "d"}], "entry 1 .*'input' must be a string"),
        ([{"input": "a", "output": "b"}, "x -> y"], "entry 1 .*got str"),
        ([{"input": "a", "output": []}], "entry 0 .*empty list"),
    ],
)
def test_load_errors_name_file_and_entry(tmp_path, content, pattern):
    path = _write(tmp_path / "broken.json", content)
    with pytest.raises(TaskError, match=pattern) as info:
        load_task(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, IclscopeError)


def test_load_tasks_empty_folder(tmp_path):
    _write(tmp_path / "orphan.meta.json", {"source": "x"})
    with pytest.raises(TaskError, match="no .json task files"):
        load_tasks(tmp_path)
    with pytest.raises(TaskError, match="no such folder"):
        load_tasks(tmp_path / "missing")


def test_save_load_roundtrip(tmp_path, capitals):
    save_task(capitals, tmp_path)
    again = load_task(tmp_path / "country-capital.json")
    assert again.pairs == capitals.pairs and again.kind == "abstractive"


# --------------------------------------------------------------------------------------------------
# Token tasks
# --------------------------------------------------------------------------------------------------


def test_token_prompt_layout():
    f = {10 + i: 30 + (i * 7) % 16 for i in range(16)}
    task = TokenTask("perm", [(x, y) for x, y in f.items()])
    sep = 2
    batch = build_token_prompts(task, k=3, n=20, seed=0, sep_id=sep, pad_id=0, bos_id=1)
    assert batch.texts is None and batch.input_ids.shape == (20, 1 + 3 * 3 + 1)
    for row, demos, q, a, first in zip(batch.input_ids.tolist(), batch.demos, batch.queries, batch.answers, batch.answer_first_token.tolist()):
        expected = [1]
        for x, y in demos:
            assert y == (f[x[0]],)
            expected += [*x, *y, sep]
        assert row == expected + [*q]
        assert first == f[q[0]] and a == (f[q[0]],)
        assert q not in [x for x, _ in demos]


def test_token_prompts_multi_token_padding_and_cycle():
    task = TokenTask("multi", [((5 + i,) * (1 + i % 3), (40 + i, 60 + i)) for i in range(12)])
    clean = build_token_prompts(task, k=4, n=10, seed=1, sep_id=3, pad_id=99)
    bad = build_token_prompts(task, k=4, n=10, seed=1, sep_id=3, pad_id=99, corrupt="cycle")
    assert (clean.attention_mask[:, -1] == 1).all()
    for row, m, q in zip(clean.input_ids, clean.attention_mask, clean.queries):
        real = row[m.bool()].tolist()
        assert real[-len(q):] == list(q) and (row[~m.bool()] == 99).all()
    truth = dict(task.pairs)
    for q, demos, first in zip(bad.queries, bad.demos, bad.answer_first_token.tolist()):
        assert first == truth[q][0] and all(y != truth[x] for x, y in demos)


def test_synthetic_token_tasks():
    tasks = synthetic_token_tasks(n_tasks=4, n_words=16, seed=3, word_offset=5)
    assert len(tasks) == 4 and all(len(t.pairs) == 16 for t in tasks)
    words = set(range(5, 21))
    for t in tasks:
        assert {x[0] for x, _ in t.pairs} == words and {y[0] for _, y in t.pairs} == words  # permutations
    again = synthetic_token_tasks(n_tasks=4, n_words=16, seed=3, word_offset=5)
    assert [t.pairs for t in tasks] == [t.pairs for t in again]
    other = synthetic_token_tasks(n_tasks=4, n_words=16, seed=4, word_offset=5)
    assert [t.pairs for t in tasks] != [t.pairs for t in other]
    assert len({tuple(t.pairs) for t in tasks}) == 4
    batch = build_token_prompts(tasks[0], k=8, n=5, sep_id=0)
    assert batch.input_ids.shape == (5, 8 * 3 + 1)


# --------------------------------------------------------------------------------------------------
# Builders (each skips when its resource is not installed)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every builder run once; missing resources give warnings (checked in a test below), not failures."""
    out = tmp_path_factory.mktemp("built")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = build_tasks(out)
    return out, summary


def _pairs(built, name):
    out, summary = built
    if not isinstance(summary[name], int):
        pytest.skip(f"{name}: {summary[name]}")
    task = load_task(out / f"{name}.json")
    assert len(task.pairs) == summary[name] and task.meta["license"] and task.meta["source"]
    return dict(task.pairs), task


def test_build_summary_and_sources(built):
    out, summary = built
    assert set(summary) == set(available_builders())
    made = [n for n, v in summary.items() if isinstance(v, int)]
    assert all(isinstance(v, int) or v.startswith("skipped") for v in summary.values())
    sources = (out / "SOURCES.md").read_text()
    for name in made:
        assert f"| {name} |" in sources
        task = load_task(out / f"{name}.json")
        assert len({x for x, _ in task.pairs}) == len(task.pairs), f"{name}: duplicate inputs"
        assert task.kind in ("abstractive", "extractive")


def test_build_antonym(built):
    d, _ = _pairs(built, "antonym")
    assert d.get("hot") == "cold" and d.get("up") == "down"
    assert len(d) >= 100 and all(re.fullmatch("[a-z]+", x + y) for x, y in d.items())


def test_build_synonym(built):
    d, _ = _pairs(built, "synonym")
    assert len(d) >= 100 and all(x != y and re.fullmatch("[a-z]+", x + y) for x, y in d.items())


def test_build_country_capital(built):
    d, _ = _pairs(built, "country-capital")
    assert d["France"] == "Paris" and d["Japan"] == "Tokyo" and len(d) >= 100


def test_build_present_past(built):
    d, _ = _pairs(built, "present-past")
    assert d["walk"] == "walked" and d["go"] == "went" and len(d) >= 100


def test_build_singular_plural(built):
    d, _ = _pairs(built, "singular-plural")
    assert d["city"] == "cities" and d["child"] == "children" and len(d) >= 100


def test_build_english_french(built):
    d, task = _pairs(built, "english-french")
    assert d.get("blue") == "bleu" and len(d) >= 100
    assert "GPL" in task.meta["license"]


def test_build_word_list_tasks(built):
    for name, f in [("capitalize", lambda w: w[0].upper() + w[1:]), ("first-letter", lambda w: w[0]), ("last-letter", lambda w: w[-1])]:
        d, _ = _pairs(built, name)
        assert len(d) >= 100 and all(y == f(x) for x, y in d.items())
    d, _ = _pairs(built, "capitalize")
    if "apple" in d:
        assert d["apple"] == "Apple"


def test_build_extractive_tasks(built):
    checks = {
        "alphabetically_first_3": (3, min),
        "alphabetically_last_3": (3, max),
        "choose_first_of_5": (5, lambda ws: ws[0]),
        "choose_middle_of_5": (5, lambda ws: ws[2]),
        "choose_last_of_5": (5, lambda ws: ws[-1]),
    }
    for name, (size, pick) in checks.items():
        d, task = _pairs(built, name)
        assert task.kind == "extractive" and len(d) >= 100
        for x, y in d.items():
            ws = x.split(", ")
            assert len(ws) == size == len(set(ws)) and y == pick(ws)


def test_build_category_tasks(built):
    for name, size in [("animal_v_object_3", 3), ("animal_v_object_5", 5), ("fruit_v_animal_3", 3), ("color_v_animal_3", 3)]:
        d, _ = _pairs(built, name)
        targets = set(d.values())
        for x, y in d.items():
            ws = x.split(", ")
            assert len(ws) == size and ws.count(y) == 1
            assert not (set(ws) - {y}) & targets, "a distractor is also a target word"
    d, _ = _pairs(built, "animal_v_object_3")
    assert {"elephant", "rabbit"} & set(d.values())


def test_missing_resources_are_skipped_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "countryinfo", None)  # makes `import countryinfo` fail
    with pytest.warns(UserWarning) as rec:
        summary = build_tasks(
            tmp_path,
            names=["antonym", "country-capital", "english-french", "capitalize"],
            wordnet_dir=tmp_path / "no-wordnet",
            freedict_dir=tmp_path / "no-freedict",
            words_file=tmp_path / "no-words.txt",
        )
    assert "apt-get install wordnet-base" in summary["antonym"]
    assert "pip install countryinfo" in summary["country-capital"]
    assert "apt-get install dict-freedict-eng-fra" in summary["english-french"]
    assert "apt-get install wamerican" in summary["capitalize"]
    messages = " ".join(str(r.message) for r in rec)
    assert "wordnet-base" in messages and "countryinfo" in messages
    assert not list(tmp_path.glob("*.json"))
    with pytest.raises(TaskError, match="unknown task"):
        build_tasks(tmp_path, names=["no-such-task"])


def test_build_respects_word_file(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["apple", "Boston", "pear", "it's", "plum", "kiwi", "fig", "lime", "date", "grape"] * 2))
    summary = build_tasks(tmp_path / "out", names=["capitalize", "alphabetically_first_3"], words_file=words, n_generated=30, min_pairs=5)
    cap = load_task(tmp_path / "out" / "capitalize.json")
    assert dict(cap.pairs) == {w: w.capitalize() for w in ["apple", "pear", "plum", "kiwi", "fig", "lime", "date", "grape"]}
    assert summary["capitalize"] == 8 and summary["alphabetically_first_3"] == 30
