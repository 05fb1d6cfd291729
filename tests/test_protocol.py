"""The studies' published protocol as the default (docs/protocol.md), each choice against a plainly written
implementation of its definition, and iclscope's variants as options."""

import json
import warnings

import pandas as pd
import pytest
import torch

import iclscope
from iclscope import IclscopeError
from iclscope.experiments.atlas import function_vector, run_atlas, split_tasks
from iclscope.experiments.atlas.command import top_head_evidence
from iclscope.experiments.atlas.vectors import fv_summary
from iclscope.models.base import head_means
from iclscope.scores import fv_prompts
from iclscope.scores.attention import induction_scores
from iclscope.tasks import Protocol, Task, TaskError, build_prompts, load_tasks

WORDS = ["cat", "dog", "sun", "red", "map", "cup", "hat", "pen", "box", "car", "bed", "egg", "ice", "jam",
         "key", "leg", "net", "owl"]
TASK = Task("upper", [(w, w.upper()) for w in WORDS])


def _small(family, **kw):
    opts = ",".join(f"{k}={v}" for k, v in {"layers": 2, "heads": 4, "d_model": 32, **kw}.items())
    return iclscope.load(f"random:{family}:{opts}")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ 1. BOS


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2", "llama"])
def test_every_prompt_has_exactly_one_bos(family):
    model = _small(family)
    bos = model.bos_token_id
    clean, bad = fv_prompts(model, [TASK], k=3, n_clean=4, n_corrupt=3)["upper"]
    for batch in (clean, bad):
        for row, m in zip(batch.input_ids, batch.attention_mask):
            real = row[m.bool()].tolist()
            assert real[0] == bos and real.count(bos) == 1, family
    # Llama's tokenizer adds its own <s>: the same single token as what the published protocol prepends
    if family == "llama":
        assert model.tokenizer("a")["input_ids"][0] == bos
    off = build_prompts(TASK, model.tokenizer, k=3, n=3, add_bos=False)
    assert bos not in off.input_ids[off.attention_mask.bool()].tolist() and not off.bos
    # iclscope's old convention: a BOS only where the tokenizer adds one itself
    own = build_prompts(TASK, model.tokenizer, k=3, n=3, add_bos="tokenizer", bos_id=bos)
    assert own.bos == (family == "llama")
    with pytest.raises(TaskError, match="add_bos"):
        build_prompts(TASK, model.tokenizer, k=3, n=3, add_bos="sometimes")


def test_an_empty_tokenizer_is_no_tokenizer():
    model = _small("gpt2")

    class Empty:
        def __len__(self):
            return 0

    with pytest.raises(TaskError, match="needs a tokenizer"):
        build_prompts(TASK, Empty(), k=3, n=3)
    with pytest.raises(TaskError, match="needs a tokenizer"):
        build_prompts(TASK, None, k=3, n=3)
    model.tokenizer = Empty()
    with pytest.raises(IclscopeError, match="no tokenizer"):
        fv_prompts(model, [TASK], k=3, n_clean=2, n_corrupt=2)


# ------------------------------------------------------------------------------------------ 2. corruption


def test_published_corruption_is_fresh_and_permuted():
    model = _small("gpt2")
    clean, bad = fv_prompts(model, [TASK], k=4, n_clean=12, n_corrupt=12, seed=3)["upper"]
    train, test = iclscope.tasks.split(TASK, 0.3, 3)
    test_inputs, train_inputs = {x for x, _ in test}, {x for x, _ in train}
    truth = dict(TASK.pairs)
    for batch in (clean, bad):
        assert set(batch.queries) <= test_inputs  # queries from the held-out split
        assert all(x in train_inputs for demos in batch.demos for x, _ in demos)  # demos from the train split
    # independent of the clean prompts: not their twins
    assert bad.demos != clean.demos[:len(bad)]
    # labels are a permutation of the demos' own labels, a label may stay on its own input
    stays = 0
    for demos in bad.demos:
        shown = [y for _, y in demos]
        assert sorted(shown) == sorted(truth[x] for x, _ in demos)
        stays += sum(truth[x] == y for x, y in demos)
    assert stays > 0  # 12 prompts x 4 demos: a random permutation keeps some labels in place
    # iclscope's variant: the first clean prompts, labels cycled (none stays)
    clean2, twins = fv_prompts(model, [TASK], k=4, n_clean=12, n_corrupt=5, seed=3, protocol="iclscope")["upper"]
    assert twins.corrupt == "cycle" and twins.queries == clean2.queries[:5]
    assert all(truth[x] != y for demos in twins.demos for x, y in demos)
    with pytest.raises(IclscopeError, match="corrupt"):
        fv_prompts(model, [TASK], corrupt="reverse")


# ------------------------------------------------------------------------------------------ 3. FV placement


def _randomise_biases(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_function_vector_with_bias_is_each_heads_output_projection(family):
    model = _small(family)
    _randomise_biases(model)
    means = torch.randn(model.n_layers, model.n_heads, model.d_head, generator=torch.Generator().manual_seed(1))
    heads = [(0, 1), (1, 2), (1, 3)]
    # the published definition, written plainly: per head, a d_model-wide z that is zero except that head's
    # slice, through the layer's output projection (weight and bias), summed over heads
    want = torch.zeros(model.d_model)
    for layer, h in heads:
        proj = model.projs[layer]
        x = torch.zeros(model.n_heads * model.d_head)
        x[h * model.d_head:(h + 1) * model.d_head] = means[layer, h]
        want += proj(x[None])[0].detach()
    torch.testing.assert_close(function_vector(model, means, heads), want, atol=1e-5, rtol=0)
    bias = sum(model.projs[layer](torch.zeros(1, model.d_model))[0].detach() for layer, _ in heads)
    torch.testing.assert_close(function_vector(model, means, heads, bias="none"), want - bias, atol=1e-5, rtol=0)


def test_function_vector_goes_to_the_output_of_layer_l():
    model = _small("gpt2", layers=3)
    vec = torch.randn(model.d_model)
    toks = torch.randint(0, 4000, (2, 6))
    with torch.no_grad():
        _, plain = model.run(toks, record=["resid_post", "resid_pre"])
        _, out = model.run(toks, record=["resid_post"], interventions=[
            iclscope.AddVector(1, vec, site=Protocol().fv_site, positions=[-1])])
        _, old = model.run(toks, record=["resid_post"], interventions=[
            iclscope.AddVector(2, vec, site=Protocol.iclscope().fv_site, positions=[-1])])
    # published layer 1 = after block 1; iclscope's old layer 2 = before block 2: the same residual stream
    torch.testing.assert_close(out.site("resid_post", 1)[:, -1], plain.site("resid_post", 1)[:, -1] + vec)
    torch.testing.assert_close(out.site("resid_post", 2), old.site("resid_post", 2), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ 4. task split


def test_task_lists_chosen_and_checked():
    tasks = {n: n for n in ["a", "b", "c", "d", "e"]}
    s, e, disjoint = split_tasks(tasks)
    assert list(s) == ["a", "b"] and list(e) == ["c", "d", "e"] and disjoint
    s, e, disjoint = split_tasks(tasks, score_tasks=["e", "a"])
    assert list(s) == ["a", "e"] and list(e) == ["b", "c", "d"] and disjoint
    s, e, disjoint = split_tasks(tasks, score_tasks=["a"], eval_tasks=["a", "b"])
    assert not disjoint
    with pytest.raises(IclscopeError, match="eval_tasks: unknown task.*zz"):
        split_tasks(tasks, eval_tasks=["a", "zz"])


# ------------------------------------------------------------------------------------------ 5. bugs


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_means_skip_left_padding(family):
    model = _small(family)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 4000, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    got = head_means(model, [{"input_ids": ids, "attention_mask": mask}], positions=None)
    # a plain loop: each prompt alone, unpadded, every position summed
    total, count = torch.zeros(model.n_layers, model.n_heads, model.d_head), 0
    for b in range(3):
        real = ids[b][mask[b].bool()][None]
        _, cache = model.run(real, record=["z"])
        for layer in range(model.n_layers):
            total[layer] += cache.site("z", layer)[0].sum(0)
        count += real.shape[1]
    torch.testing.assert_close(got, total / count, atol=1e-5, rtol=1e-4)


def test_todd_dataset_files_load_as_a_whole(tmp_path):
    root = tmp_path / "dataset_files"
    for kind, name in (("abstractive", "antonym"), ("extractive", "first_item")):
        (root / kind).mkdir(parents=True)
        (root / kind / f"{name}.json").write_text(json.dumps([{"input": "a", "output": "b"}] * 3))
    (root / "generate").mkdir()
    (root / "generate" / "country_list.json").write_text(json.dumps({"France": "Paris"}))  # not a task list
    with pytest.warns(UserWarning, match="generate.*skipped"):
        tasks = load_tasks(root)
    assert sorted(tasks) == ["antonym", "first_item"] and tasks["antonym"].kind == "abstractive"


# ------------------------------------------------------------------------------------------ 6. head_detector


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "qwen2"])
def test_head_detector_induction_equals_a_plain_loop(family):
    model = _small(family)
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(5, 50, (2, 14), generator=g)  # a small range: many duplicates, several per token
    toks[:, 8:] = toks[:, 1:7]
    got = induction_scores(model, toks, definition="head_detector")
    with torch.no_grad():
        _, cache = model.run(toks, record=["pattern"])
    T = toks.shape[1]
    want = torch.zeros(model.n_layers, model.n_heads)
    for layer in range(model.n_layers):
        pat = cache.site("pattern", layer)  # eager attention weights (B, H, T, T)
        for h in range(model.n_heads):
            per_seq = []
            for b in range(2):
                s = 0.0
                for i in range(T):
                    for j in range(1, i + 1):
                        if toks[b, j - 1] == toks[b, i] and j - 1 < i:  # every earlier duplicate, + 1
                            s += float(pat[b, h, i, j])
                per_seq.append(s / T)
            want[layer, h] = sum(per_seq) / 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # on [BOS, r, r] with distinct r: iclscope's score times half / T
    r = torch.randperm(60, generator=g)[:6] + 10
    seq = torch.cat([torch.tensor([model.bos_token_id]), r, r])[None]
    ours = induction_scores(model, seq)
    theirs = induction_scores(model, seq, definition="head_detector")
    torch.testing.assert_close(theirs, ours * 6 / 13, atol=1e-6, rtol=1e-5)
    with pytest.raises(IclscopeError, match="induction definition"):
        induction_scores(model, seq, definition="other")


# ------------------------------------------------------------------------------------------ 7. summaries


def test_evidence_on_known_tables():
    base = {"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "induction_baseline": [0.1] * 4}
    clear = pd.DataFrame({**base, "induction": [0.1, 0.1, 0.9, 0.1], "induction_sem": [0.01] * 4,
                          "fv": [0.0, 0.2, 0.0, 0.0], "fv_sem": [0.01] * 4})
    ev = top_head_evidence(clear)
    assert ev["induction"]["head"] == [1, 0] and ev["induction"]["distinguishable"]
    assert ev["fv"]["head"] == [0, 1] and ev["fv"]["distinguishable"]
    noise = clear.assign(fv=[0.0, 0.02, 0.0, 0.0], induction=[0.1, 0.1, 0.12, 0.1])  # 2 sem: not enough
    ev = top_head_evidence(noise)
    assert not ev["fv"]["distinguishable"] and not ev["induction"]["distinguishable"]
    assert "No head is distinguishable" in ev["verdict"]
    fvt = pd.DataFrame({"task": ["a", "a", "b", "b"], "layer": [0, 1, 0, 1], "site": "resid_post", "heads": 3,
                        "n": 50, "zero_shot_acc": 0.1, "with_fv_acc": [0.1, 0.5, 0.1, 0.0], "few_shot_acc": 0.6})
    s = fv_summary(fvt)  # layer 1 gains 0.4 on one task and -0.1 on the other: within the spread
    assert s["best_layer"] == 1 and not s["distinguishable"] and "not distinguishable" in s["verdict"]
    assert s["layer_convention"] == "layer L = output of block L (resid_post)"
    s = fv_summary(fvt.assign(with_fv_acc=[0.1, 0.6, 0.1, 0.55]))
    assert s["distinguishable"] and s["gain"] == pytest.approx(0.475)


def test_atlas_on_a_random_model_names_no_winner(tmp_path):
    model = _small("gpt2")
    msgs = []
    s = run_atlas("random:gpt2", tmp_path / "a", model=model, log=msgs.append, k=4, n_clean=6, n_corrupt=4,
                  n_eval=6, random_seeds=1, fractions=(0.0, 0.25))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["protocol"] == Protocol().to_dict() and cfg["protocol"]["corrupt_prompts"] == "fresh"
    assert cfg["score_tasks"] and cfg["eval_tasks"] and not set(cfg["score_tasks"]) & set(cfg["eval_tasks"])
    ev = s["top_head_evidence"]
    assert not ev["fv"]["distinguishable"] and not ev["induction"]["distinguishable"]
    assert "No head is distinguishable" in ev["verdict"] and any("No head is distinguishable" in m for m in msgs)
    assert not s["function_vectors"]["distinguishable"]
    assert "not distinguishable" in s["function_vectors"]["verdict"]
    heads = pd.read_csv(tmp_path / "a" / "heads.csv")
    assert {"induction_baseline", "induction_sem", "fv_sem"} <= set(heads.columns)
    assert (pd.read_csv(tmp_path / "a" / "function_vectors.csv").site == "resid_post").all()
    # another protocol in the same folder is refused, naming the key
    with pytest.raises(IclscopeError, match="protocol"):
        run_atlas("random:gpt2", tmp_path / "a", model=model, log=lambda *a: None, protocol="iclscope", k=4,
                  n_clean=6, n_corrupt=4, n_eval=6, random_seeds=1, fractions=(0.0, 0.25))
    with pytest.raises(IclscopeError, match="score_tasks: unknown task.*nope"):
        run_atlas("random:gpt2", tmp_path / "b", model=model, score_tasks=["nope"], log=lambda *a: None)
    assert not (tmp_path / "b").exists()


def test_protocol_values_checked():
    assert Protocol.make("iclscope").corrupt == "cycle" and Protocol.make(None) == Protocol()
    assert Protocol.make({"induction": "head_detector"}).corrupt == "permute"
    with pytest.raises(IclscopeError, match="fv_layer"):
        Protocol(fv_layer="middle")
    with pytest.raises(IclscopeError, match="unknown field"):
        Protocol.make({"bias": "full"})
    with pytest.raises(IclscopeError, match="test_fraction"):
        Protocol(test_fraction=1.0)
