"""Every decoder family iclscope covers (random:<family>), each against the per-family invariants, and the
families it refuses (one line each). See docs/families.md."""

import pytest
import torch

import iclscope
from iclscope import Ablate, IclscopeError, Patch
from iclscope.models.hf import RANDOM_FAMILIES, plain_copy
from iclscope.models.hf.random import tokenizer_family

# every family built and checked here: the random:<family> list (models/hf/random.py)
FAMILIES_COVERED = RANDOM_FAMILIES
# families whose tiny models keep sliding-window layers: prefix caches are refused for them, clearly
SLIDING = {"cohere2", "cohere2_moe", "cwm", "exaone4", "exaone_moe", "gemma2", "gemma3_text", "kolibri1",
           "llama4_text", "ministral", "mistral", "olmo3", "vaultgemma"}
ATOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_at_least_sixteen_families():
    assert len(set(FAMILIES_COVERED)) == len(FAMILIES_COVERED) >= 16
    assert {"gpt2", "gpt_neox", "llama", "qwen2", "mistral", "gemma2", "olmo2", "qwen3", "opt", "gptj"} <= \
        set(FAMILIES_COVERED)


@pytest.mark.parametrize("family", FAMILIES_COVERED)
def test_family_invariants(family):
    model = iclscope.load(f"random:{family}:layers=2,heads=4,d_model=64,tokenizer=byte")
    assert (model.family, model.n_layers, model.n_heads, model.d_head) == (family, 2, 4, 16)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 257, (2, 7), generator=g)
    with torch.no_grad():
        plain = plain_copy(model)(tokens).logits
        # a no-op run equals the stock eager model, fused (nothing hooked) and eager (every head site hooked)
        fast = model(tokens)
        eager, cache = model.run(tokens, record=["z", "pattern", "attn_out"])
    assert plain.abs().max() > 0
    torch.testing.assert_close(fast, plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(eager, plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(cache.site("pattern", 1).sum(-1), torch.ones(2, 4, 7))
    every = [(layer, h) for layer in range(2) for h in range(4)]
    with torch.no_grad():
        # patching every head with its own z is a no-op
        own = model.run(tokens, interventions=[Patch("z", cache, heads=every)])[0]
        torch.testing.assert_close(own, eager, atol=ATOL, rtol=0)
        # a z patch equals the manual recomputation through the output projection
        other = torch.randn(16, generator=g)
        src = torch.zeros(2, 4, 16)
        src[1, 2] = other
        patched, pc = model.run(tokens, interventions=[Patch("z", src, heads=[(1, 2)])], record=["attn_out"])
        z = cache.site("z", 1).clone()
        z[:, :, 2] = other
        torch.testing.assert_close(pc.site("attn_out", 1), model.out_proj(1, z), atol=ATOL, rtol=0)
        assert (patched - eager).abs().max() > 1e-5
        # mean-ablating a whole layer feeds the means through the output projection
        means = torch.randn(2, 4, 16, generator=g)
        _, mc = model.run(tokens, interventions=[Ablate([(0, h) for h in range(4)], how="mean", mean=means)],
                          record=["attn_out"])
        torch.testing.assert_close(mc.site("attn_out", 0), model.out_proj(0, means[0]).expand(2, 7, -1),
                                   atol=ATOL, rtol=0)
    # the final-token path against a prefix cache equals the full pass (left-padded rows)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    inp = {"input_ids": tokens, "attention_mask": mask}
    if family in SLIDING:
        with pytest.raises(IclscopeError, match=f"prefix caches need plain full attention.*{family}"):
            model.prefix_cache(inp)
    else:
        with torch.no_grad():
            full = model(inp)[:, -1]
            last = model.run_last_token(model.prefix_cache(inp))[0][:, -1]
        torch.testing.assert_close(last, full, atol=ATOL, rtol=0)
    # GQA: each query head is addressed on its own, not its kv group
    if model.n_kv_heads < model.n_heads:
        g_size = model.n_heads // model.n_kv_heads
        noise = torch.randn(1, 16, generator=g)
        with torch.no_grad():
            _, kc = model.run(tokens, interventions=[Patch("k", noise, heads=[(1, 0)])], record=["z"])
        zk, z0 = kc.site("z", 1), cache.site("z", 1)
        assert (zk[:, 1:, 0] - z0[:, 1:, 0]).abs().max() > 1e-6
        torch.testing.assert_close(zk[:, :, 1:g_size], z0[:, :, 1:g_size])  # its kv partners are untouched
        torch.testing.assert_close(zk[:, :, g_size:], z0[:, :, g_size:])


@pytest.mark.parametrize("family", ["mistral", "opt", "gemma", "qwen3", "olmo2"])
def test_family_tokenizer_is_the_closest_shipped_one(family):
    model = iclscope.load(f"random:{family}")
    assert model.vocab_size == 4096 and model.tokenizer is not None
    assert len(model.tokenizer(" Paris")["input_ids"]) >= 1
    assert tokenizer_family(family) in ("gpt2", "gpt_neox", "llama", "qwen2")


@pytest.mark.parametrize("family, why", [
    ("falcon", "own attention classes"), ("bloom", "own attention classes"), ("gpt_neo", "own attention classes"),
    ("mamba", "state-space"), ("mamba2", "state-space"), ("rwkv", "state-space"), ("xlstm", "state-space"),
    ("jamba", "hybrid"), ("qwen3_next", "hybrid"), ("diffllama", "differential")])
def test_refused_families_say_one_line(family, why):
    with pytest.raises(IclscopeError, match=f"model family '{family}' is not supported: .*{why}") as e:
        iclscope.load(f"random:{family}")
    assert "\n" not in str(e.value)


def _save(tmp_path, cfg):
    from transformers import AutoModelForCausalLM

    module = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    module.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("family", ["falcon", "mamba", "bitnet"])
def test_refused_folders_say_one_line(tmp_path, family):
    """A saved model of a refused family: one IclscopeError line naming the family, never a traceback."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[family]()
    for k, v in dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                     intermediate_size=128, vocab_size=300, head_dim=16, pad_token_id=0).items():
        try:
            setattr(cfg, k, v)
        except AttributeError:  # a derived property (falcon's head_dim)
            pass
    if family == "mamba":
        cfg.state_size, cfg.expand = 4, 1
    with pytest.raises(IclscopeError, match=f"model family '{family}' is not supported") as e:
        iclscope.load(_save(tmp_path / family, cfg))
    assert "\n" not in str(e.value)
