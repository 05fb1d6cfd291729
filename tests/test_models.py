"""Loading every family, the tiny transformer's options and checkpoints, and load errors."""

import json
import time

import pytest
import torch

import iclscope
from iclscope import IclscopeError, TinyConfig, TinyModel


@pytest.mark.parametrize("family, kv", [("gpt2", 4), ("gpt_neox", 4), ("llama", 2), ("qwen2", 2)])
def test_random_family_shapes(family, kv):
    m = iclscope.load(f"random:{family}:layers=3,heads=4,d_model=64,tokenizer=byte")
    assert (m.family, m.n_layers, m.n_heads, m.n_kv_heads, m.d_head, m.d_model) == (family, 3, 4, kv, 16, 64)
    assert m.tokenizer is not None and m.bos_token_id == 256
    assert m.tokenizer(" Paris")["input_ids"][0] == m.tokenizer(" ")["input_ids"][0]  # leading-space byte


def test_random_models_are_seeded():
    a, b = iclscope.load("random:gpt2"), iclscope.load("random:gpt2")
    c = iclscope.load("random:gpt2:seed=1")
    t = torch.arange(10)[None]
    torch.testing.assert_close(a(t), b(t))
    assert (a(t) - c(t)).abs().max() > 0


@pytest.mark.parametrize("positions", ["rotary", "learned", "none"])
@pytest.mark.parametrize("d_mlp, layernorm", [(0, True), (32, False)])
def test_tiny_options_and_save_load_round_trip(tmp_path, positions, d_mlp, layernorm):
    cfg = TinyConfig(n_layers=2, n_heads=2, d_model=16, d_mlp=d_mlp, vocab_size=7, n_ctx=12, positions=positions,
                     layernorm=layernorm, d_input=5)
    m = TinyModel(cfg, seed=3)
    inputs = {"tokens": torch.randint(0, 7, (2, 6)), "vectors": torch.randn(2, 6, 5),
              "vector_mask": torch.tensor([[True, False] * 3] * 2)}
    before = m(inputs)
    m.save(tmp_path / "ckpt", extra={"step": 10})
    assert json.loads((tmp_path / "ckpt" / "iclscope.json").read_text())["step"] == 10
    loaded = iclscope.load(tmp_path / "ckpt")
    assert isinstance(loaded, TinyModel) and loaded.cfg == cfg
    torch.testing.assert_close(loaded(inputs), before)
    # vectors really are the input where the mask says so
    other = dict(inputs, vectors=inputs["vectors"] + 1)
    assert (m(other) - before).abs().max() > 0


def test_tiny_positions_matter():
    m = TinyModel(TinyConfig(n_layers=1, n_heads=2, d_model=16, vocab_size=5, positions="rotary"), seed=0)
    a = m(torch.tensor([[1, 2, 3, 4]]))[0, -1]
    b = m(torch.tensor([[3, 2, 1, 4]]))[0, -1]
    assert (a - b).abs().max() > 1e-6


def test_tiny_bad_config():
    with pytest.raises(IclscopeError, match="not divisible"):
        TinyConfig(d_model=10, n_heads=3)
    with pytest.raises(IclscopeError, match="unknown model config key"):
        TinyConfig.from_dict({"n_layer": 2})
    m = TinyModel(TinyConfig(n_ctx=4, vocab_size=5), seed=0)
    with pytest.raises(IclscopeError, match="longer than the model's n_ctx"):
        m(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(IclscopeError, match="takes no vector inputs"):
        m({"tokens": torch.zeros(1, 3, dtype=torch.long), "vectors": torch.zeros(1, 3, 2),
           "vector_mask": torch.ones(1, 3, dtype=torch.bool)})


def test_unknown_family():
    with pytest.raises(IclscopeError, match="unknown family 'bert'"):
        iclscope.load("random:bert")
    with pytest.raises(IclscopeError, match="bad option"):
        iclscope.load("random:gpt2:layers=two")


def test_directory_without_a_model(tmp_path):
    with pytest.raises(IclscopeError, match="holds no model"):
        iclscope.load(tmp_path)


def test_hub_name_offline_fails_fast_with_advice():
    t = time.time()
    with pytest.raises(IclscopeError, match="not in the local Hugging Face cache.*hf download"):
        iclscope.load("EleutherAI/pythia-70m", revision="step1000")
    assert time.time() - t < 10


def test_local_transformers_directory(tmp_path):
    m = iclscope.load("random:gpt_neox")
    m.module.save_pretrained(tmp_path / "neox")
    m.tokenizer.save_pretrained(tmp_path / "neox")
    loaded = iclscope.load(tmp_path / "neox")
    assert loaded.family == "gpt_neox" and loaded.tokenizer is not None
    t = torch.arange(8)[None]
    torch.testing.assert_close(loaded(t), m(t))


def test_dtype_option():
    m = iclscope.load("random:llama", dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    _, c = m.run(torch.arange(6)[None], record=["z"])
    assert c.site("z", 0).dtype == torch.bfloat16
    with pytest.raises(IclscopeError, match="unknown dtype"):
        iclscope.load("random:llama", dtype="float8")


def _fewshot_inputs(R, B=4, T=5, d_in=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randint(0, 5, (R * B, T), generator=g), "vectors": torch.randn(R * B, T, d_in, generator=g),
            "vector_mask": torch.tensor([True, False] * (T // 2) + [True]).expand(R * B, T)}


def test_ensemble_members_are_single_models_of_their_seeds():
    cfg = TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=5, d_input=6, n_ctx=8)
    ens = TinyModel(cfg, seeds=[3, 7, 11])
    inputs = _fewshot_inputs(3)
    out = ens(inputs).view(3, 4, 5, 5)
    for r, seed in enumerate([3, 7, 11]):
        single = TinyModel(cfg, seed=seed)
        part = {k: v[r * 4:(r + 1) * 4] for k, v in inputs.items()}
        torch.testing.assert_close(out[r], single(part), atol=1e-5, rtol=0)
        torch.testing.assert_close(ens.member(r)(part), single(part), atol=1e-5, rtol=0)


def test_one_adam_step_on_an_ensemble_equals_separate_runs():
    cfg = TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=5, d_input=6, n_ctx=8)
    ens, singles = TinyModel(cfg, seeds=[0, 1]), [TinyModel(cfg, seed=0), TinyModel(cfg, seed=1)]
    inputs = _fewshot_inputs(2, seed=4)
    target = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(ens.module.parameters(), lr=1e-2)
    # the ensemble's loss is the sum of the members' mean losses: each member gets its own gradient
    loss = sum(torch.nn.functional.cross_entropy(ens(inputs)[r * 4:(r + 1) * 4, -1], target[r * 4:(r + 1) * 4])
               for r in range(2))
    loss.backward()
    opt.step()
    for r, s in enumerate(singles):
        o = torch.optim.Adam(s.module.parameters(), lr=1e-2)
        part = {k: v[r * 4:(r + 1) * 4] for k, v in inputs.items()}
        torch.nn.functional.cross_entropy(s(part)[:, -1], target[r * 4:(r + 1) * 4]).backward()
        o.step()
        torch.testing.assert_close(ens.member(r)(part), s(part), atol=1e-5, rtol=0)


def test_tiny_model_refuses_padding_instead_of_attending_to_it():
    m = TinyModel(TinyConfig(n_layers=1, n_heads=2, d_model=16, vocab_size=5), seed=0)
    toks = torch.tensor([[1, 2, 3], [0, 2, 3]])
    m({"tokens": toks, "attention_mask": torch.ones(2, 3, dtype=torch.long)})  # no padding: fine
    with pytest.raises(IclscopeError, match="no padding support"):
        m({"tokens": toks, "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])})
