"""The head interface and the intervention vocabulary, for every family (tests/conftest.py: FAMILIES)."""

import pytest
import torch

import iclscope
from iclscope import Ablate, AddVector, ClampPattern, Graft, IclscopeError, Patch, Preserve
from iclscope.models.hf import plain_copy
from iclscope.patterns import induction_targets, previous_token_pattern

from conftest import make_model

ATOL = 1e-5


def _plain_logits(model, tokens):
    if model.family == "tiny":
        with torch.no_grad():
            return model.module(tokens)  # the bare module, with the fused attention path
    with torch.no_grad():
        return plain_copy(model)(tokens).logits  # stock transformers, eager attention


def test_no_intervention_equals_plain_model(model, tokens):
    plain = _plain_logits(model, tokens)
    fast = model(tokens)  # fused attention, no hook live
    eager, cache = model.run(tokens, record=["z", "pattern", "q", "k", "v"])  # every hook live
    assert plain.abs().max() > 0
    torch.testing.assert_close(fast, plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(eager, plain, atol=ATOL, rtol=0)
    assert cache.site("z", 0).shape == (3, 10, model.n_heads, model.d_head)
    assert cache.site("pattern", 2).shape == (3, model.n_heads, 10, 10)
    torch.testing.assert_close(cache.site("pattern", 1).sum(-1), torch.ones(3, model.n_heads, 10))


def test_patch_with_own_clean_value_changes_nothing(model, tokens):
    clean, cache = model.run(tokens, record=["z"])
    every = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    patched = model.run(tokens, interventions=[Patch("z", cache, heads=every)])[0]
    torch.testing.assert_close(patched, clean, atol=ATOL, rtol=0)


def test_patch_matches_manual_recomputation_through_out_proj(model, tokens):
    layer, head = 1, 2
    clean, cache = model.run(tokens, record=["z"])
    other = torch.randn(model.d_head, generator=torch.Generator().manual_seed(1))
    src = torch.zeros(model.n_layers, model.n_heads, model.d_head)
    src[layer, head] = other
    patched, pcache = model.run(tokens, interventions=[Patch("z", src, heads=[(layer, head)])], record=["attn_out"])
    z = cache.site("z", layer).clone()
    z[:, :, head] = other
    with torch.no_grad():
        manual_attn_out = model.out_proj(layer, z)  # (B, T, d_model)
    torch.testing.assert_close(pcache.site("attn_out", layer), manual_attn_out, atol=ATOL, rtol=0)
    # the downstream effect is exactly that of the recomputed attention output
    via_out = model.run(tokens, interventions=[Patch("attn_out", _as_cache(layer, manual_attn_out), layers=[layer])])[0]
    torch.testing.assert_close(patched, via_out, atol=ATOL, rtol=0)
    assert (patched - clean).abs().max() > 1e-4


def _as_cache(layer, value):
    c = iclscope.Cache()
    c[iclscope.hook_name("attn_out", layer)] = value
    return c


def test_mean_ablating_a_whole_layer_feeds_the_means_to_out_proj(model, tokens):
    layer = 1
    means = iclscope.head_means(model, tokens, positions=None)  # (L, H, D)
    assert means.shape == (model.n_layers, model.n_heads, model.d_head)
    heads = [(layer, h) for h in range(model.n_heads)]
    _, c = model.run(tokens, interventions=[Ablate(heads, how="mean", mean=means)], record=["attn_out"])
    with torch.no_grad():
        expected = model.out_proj(layer, means[layer])  # (d_model,)
    torch.testing.assert_close(c.site("attn_out", layer), expected.expand(3, 10, -1), atol=ATOL, rtol=0)


def test_zero_ablation_and_batch_mean(model, tokens):
    _, c = model.run(tokens, interventions=[Ablate([(2, 1)], how="zero")], record=["z"])
    assert c.site("z", 2)[:, :, 1].abs().max() == 0
    assert c.site("z", 2)[:, :, 0].abs().max() > 0
    _, clean = model.run(tokens, record=["z"])
    _, c = model.run(tokens, interventions=[Ablate([(2, 1)], how="mean")], record=["z"])
    torch.testing.assert_close(c.site("z", 2)[:, :, 1], clean.site("z", 2)[:, :, 1].mean(0, keepdim=True).expand(3, -1, -1))


def test_patch_at_final_position_changes_only_final_logits(model, tokens):
    clean = model(tokens)
    patched = model.run(tokens, interventions=[Ablate([(0, 0), (1, 3)], how="zero", positions=-1)])[0]
    torch.testing.assert_close(patched[:, :-1], clean[:, :-1], atol=ATOL, rtol=0)
    assert (patched[:, -1] - clean[:, -1]).abs().max() > 1e-5


def test_rows_patch_one_head_per_batch_row(model, tokens):
    """Many heads in one pass, one per row, equals one pass per head."""
    heads = [(0, 1), (1, 2), (2, 3)]
    batch = tokens[:1].expand(3, -1)
    together = model.run(batch, interventions=[Ablate(heads, how="zero", rows=[0, 1, 2])])[0]
    for i, h in enumerate(heads):
        alone = model.run(tokens[:1], interventions=[Ablate([h], how="zero")])[0]
        torch.testing.assert_close(together[i], alone[0], atol=ATOL, rtol=0)


def test_gqa_addresses_each_query_head_not_its_kv_group():
    model = make_model("llama")
    assert model.n_kv_heads == 2 and model.n_heads == 4  # heads 0,1 share kv 0; heads 2,3 share kv 1
    tokens = torch.randint(0, 257, (2, 8), generator=torch.Generator().manual_seed(3))
    _, clean = model.run(tokens, record=["k", "z"])
    k = clean.site("k", 1)
    torch.testing.assert_close(k[:, :, 0], k[:, :, 1])  # the expanded keys of one kv group
    assert (k[:, :, 0] - k[:, :, 2]).abs().max() > 0
    noise = torch.randn(4, model.d_head)
    _, c = model.run(tokens, interventions=[Patch("k", noise[:1], heads=[(1, 0)])], record=["z"])
    z, z0 = c.site("z", 1), clean.site("z", 1)
    assert (z[:, 1:, 0] - z0[:, 1:, 0]).abs().max() > 1e-6  # head 0 sees the new keys
    torch.testing.assert_close(z[:, :, 1], z0[:, :, 1])  # its kv partner does not
    torch.testing.assert_close(z[:, :, 2:], z0[:, :, 2:])
    _, c = model.run(tokens, interventions=[Ablate([(1, 1)], how="zero")], record=["z"])
    assert c.site("z", 1)[:, :, 1].abs().max() == 0
    torch.testing.assert_close(c.site("z", 1)[:, :, 0], z0[:, :, 0])


def test_pattern_clamp_sets_pattern_and_changes_output(model, tokens):
    clean = model(tokens)
    logits, c = model.run(tokens, interventions=[ClampPattern([(0, 0), (0, 3)], "prev_token")], record=["pattern"])
    ideal = previous_token_pattern(10)
    torch.testing.assert_close(c.site("pattern", 0)[:, 0], ideal.expand(3, -1, -1))
    torch.testing.assert_close(c.site("pattern", 0)[:, 3], ideal.expand(3, -1, -1))
    assert (c.site("pattern", 0)[:, 1] - ideal).abs().max() > 0.1
    assert (logits - clean).abs().max() > 1e-4


def test_induction_clamp_only_touches_rows_with_an_earlier_occurrence(model):
    half = torch.randint(0, 257, (2, 6), generator=torch.Generator().manual_seed(5))
    tokens = torch.cat([half, half], 1)
    _, clean = model.run(tokens, record=["pattern"])
    _, c = model.run(tokens, interventions=[ClampPattern([(1, 1)], "induction", strength=0.8)], record=["pattern"])
    pat, targets = c.site("pattern", 1)[:, 1], induction_targets(tokens)
    for b in range(2):
        for q in range(12):
            if targets[b, q] >= 0:
                assert pat[b, q, targets[b, q]] == pytest.approx(0.8, abs=1e-6)
            else:
                torch.testing.assert_close(pat[b, q], clean.site("pattern", 1)[b, 1, q])


def test_clamped_path_gets_no_gradient_the_rest_does(model, tokens):
    model.module.train(False)
    layer, head = 1, 2
    logits, c = model.run(tokens, interventions=[ClampPattern([(layer, head)], "prev_token")],
                          record=["q", "v"], layers=[layer], grad=True)
    q, v = c.site("q", layer), c.site("v", layer)
    q.retain_grad()
    v.retain_grad()
    logits.float().pow(2).mean().backward()
    assert q.grad[:, :, head].abs().max() == 0  # the clamped pattern hides the queries' effect
    assert q.grad[:, :, (head + 1) % model.n_heads].abs().max() > 0
    assert v.grad[:, :, head].abs().max() > 0  # values still pass through the clamped pattern
    grads = [p.grad for p in model.module.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    model.module.zero_grad()


def test_ablation_blocks_gradient_to_the_head(model, tokens):
    logits, c = model.run(tokens, interventions=[Ablate([(2, 0)], how="zero")], record=["v"], layers=[2], grad=True)
    v = c.site("v", 2)
    v.retain_grad()
    logits.float().pow(2).mean().backward()
    assert v.grad[:, :, 0].abs().max() == 0
    assert v.grad[:, :, 1].abs().max() > 0
    model.module.zero_grad()


def test_preserve_holds_the_unintervened_value(model, tokens):
    _, clean = model.run(tokens, record=["q"], layers=[2])
    ivs = [Ablate([(0, h) for h in range(model.n_heads)], how="zero"), Preserve("q", heads=[(2, 1)])]
    _, c = model.run(tokens, interventions=ivs, record=["q"], layers=[2])
    torch.testing.assert_close(c.site("q", 2)[:, :, 1], clean.site("q", 2)[:, :, 1], atol=ATOL, rtol=0)
    assert (c.site("q", 2)[:, :, 0] - clean.site("q", 2)[:, :, 0]).abs().max() > 1e-6


def test_graft_from_a_frozen_model(model, tokens):
    other = make_model(model.family, seed=1)
    layer = 1
    _, src = other.run(tokens, record=["resid_post"], layers=[layer])
    grafted = model.run(tokens, interventions=[Graft(other, layers=[layer])])[0]
    patched = model.run(tokens, interventions=[Patch("resid_post", src, layers=[layer])])[0]
    torch.testing.assert_close(grafted, patched, atol=ATOL, rtol=0)
    assert (grafted - model(tokens)).abs().max() > 1e-5
    grafted.float().sum().backward()
    assert all(p.grad is None for p in other.module.parameters())
    model.module.zero_grad()


def test_add_vector(model, tokens):
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    _, clean = model.run(tokens, record=["resid_pre"], layers=[1])
    out, c = model.run(tokens, interventions=[AddVector(1, vec, positions=[-1])], record=["resid_pre"], layers=[1])
    torch.testing.assert_close(c.site("resid_pre", 1)[:, -1], clean.site("resid_pre", 1)[:, -1] + vec)
    torch.testing.assert_close(c.site("resid_pre", 1)[:, :-1], clean.site("resid_pre", 1)[:, :-1])


def test_nested_contexts_compose_in_order(model, tokens):
    with model.intervene([Ablate([(0, 0)], how="zero")]):
        with model.intervene([Ablate([(1, 1)], how="zero")]):
            both = model(tokens)
        outer = model(tokens)
    assert not model.active_interventions()
    torch.testing.assert_close(both, model.run(tokens, interventions=[Ablate([(0, 0), (1, 1)], how="zero")])[0])
    torch.testing.assert_close(outer, model.run(tokens, interventions=[Ablate([(0, 0)], how="zero")])[0])


def test_record_chosen_layers_and_positions(model, tokens):
    _, c = model.run(tokens, record=["z", "pattern"], layers=[2], positions=[-1])
    assert sorted(c) == ["blocks.2.attn.hook_pattern", "blocks.2.attn.hook_z"]
    assert c.site("z", 2).shape == (3, 1, model.n_heads, model.d_head)
    assert c.site("pattern", 2).shape == (3, model.n_heads, 1, 10)


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("iv, msg", [
    (Ablate([(0, 99)]), "head 99 is out of range"),
    (Ablate([(7, 0)]), "layer 7 is out of range"),
    (Ablate([(0, 0)], how="half"), "how must be"),
    (ClampPattern([(0, 0)], "diagonal"), "pattern must be"),
    (Patch("zz", 0.0, heads=[(0, 0)]), "unknown site"),
    (Patch("z", torch.zeros(5), heads=[(0, 0)]), "a tensor source must have shape"),
    (Patch("attn_scores", torch.zeros(16), heads=[(0, 0)]), "takes no tensor source"),
    (Patch("ln_final", 0.0, layers=[0]), "model site"),
    (Patch("mlp_out", 0.0), "needs layers"),
])
def test_bad_interventions_fail_before_any_forward_pass(model, iv, msg):
    with pytest.raises(IclscopeError, match=msg):
        with model.intervene([iv]):
            pass


def test_position_beyond_sequence(model, tokens):
    with pytest.raises(IclscopeError, match="position 12 is beyond the sequence of length 10"):
        model.run(tokens, interventions=[Ablate([(0, 0)], positions=12)])


def test_cache_of_wrong_shape(model, tokens):
    _, c = model.run(tokens[:, :6], record=["z"])
    with pytest.raises(IclscopeError, match="has shape"):
        model.run(tokens, interventions=[Patch("z", c, heads=[(0, 0)])])


def test_bad_tokens(model):
    with pytest.raises(IclscopeError, match="outside the vocabulary"):
        model(torch.tensor([[0, 100000]]))


def test_replacement_values_pass_no_gradient_to_their_source(model, tokens):
    """A replacing tensor that itself requires grad (e.g. a learned mean) gets none through the patch."""
    src = torch.randn(1, model.d_head, requires_grad=True)
    logits = model.run(tokens, interventions=[Patch("z", src, heads=[(1, 1)])])[0]
    logits.float().pow(2).mean().backward()
    assert src.grad is None
    assert any(p.grad is not None for p in model.module.parameters())
    model.module.zero_grad()


def test_recorded_slice_with_grad_gets_the_gradient(model, tokens):
    logits, c = model.run(tokens, record=["z"], layers=[1], positions=[-1], grad=True)
    z = c.site("z", 1)
    z.retain_grad()
    logits[:, -1].float().pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().max() > 0
    model.module.zero_grad()


@pytest.mark.parametrize("family", ["tiny", "gpt2"])
def test_graft_pre_pass_stops_after_the_grafted_layer(family, tokens):
    model, source = make_model(family), make_model(family, seed=1)
    last = source.module.blocks[-1] if family == "tiny" else source.layers[-1]
    calls = []
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        grafted = model.run(tokens, interventions=[Graft(source, layers=[0])])[0]
    finally:
        handle.remove()
    assert calls == []  # the source ran layer 0 only
    _, src = source.run(tokens, record=["resid_post"], layers=[0])
    torch.testing.assert_close(grafted, model.run(tokens, interventions=[Patch("resid_post", src, layers=[0])])[0],
                               atol=ATOL, rtol=0)
