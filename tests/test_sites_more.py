"""The sites beyond the original eight (embed, resid_mid, mlp_in, mlp_out, attn_scores, ln_final), the Hook
escape hatch, the cache shorthand and model.to, for every family (tests/conftest.py: FAMILIES)."""

import pytest
import torch

import iclscope
from iclscope import IclscopeError, Patch
from iclscope.interventions import Hook
from iclscope.sites import MODEL_SITES, SITES, hook_name, parse_hook_name

from conftest import make_model

ATOL = 1e-5
NEW = ["embed", "resid_mid", "mlp_in", "mlp_out", "attn_scores", "ln_final"]


def _sites(model):
    return [s for s in NEW if s not in model.missing_sites()]


def test_hook_names_round_trip():
    for site in SITES:
        layer = None if site in MODEL_SITES else 2
        assert parse_hook_name(hook_name(site, layer)) == (site, layer)
    assert hook_name("embed") == "hook_embed" and hook_name("ln_final") == "hook_ln_final"
    assert hook_name("attn_scores", 1) == "blocks.1.attn.hook_attn_scores"
    assert hook_name("resid_mid", 0) == "blocks.0.hook_resid_mid"
    with pytest.raises(IclscopeError, match="not per layer"):
        hook_name("embed", 0)
    with pytest.raises(IclscopeError, match="is per layer"):
        hook_name("z")
    with pytest.raises(IclscopeError, match="unknown hook name"):
        parse_hook_name("blocks.0.hook_embed")


def test_recorded_shapes(model, tokens):
    _, c = model.run(tokens, record=_sites(model))
    d = model.d_model
    assert c["embed"].shape == c.site("embed").shape == (3, 10, d)
    assert c["ln_final"].shape == (3, 10, d)
    for layer in range(model.n_layers):
        assert c["attn_scores", layer].shape == (3, model.n_heads, 10, 10)
        for s in ("mlp_in", "mlp_out") + (() if "resid_mid" in model.missing_sites() else ("resid_mid",)):
            assert c[s, layer].shape == (3, 10, d)
    assert set(c) <= set(model.hook_names())


def test_new_sites_fit_the_residual_stream(model, tokens):
    """embed is what enters block 0; resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out
    (or resid_pre + attn_out + mlp_out in parallel families); unembedding(ln_final) = logits."""
    logits, c = model.run(tokens, record=_sites(model) + ["resid_pre", "attn_out", "resid_post"])
    torch.testing.assert_close(c["embed"], c["resid_pre", 0])
    for layer in range(model.n_layers):
        if "resid_mid" in model.missing_sites():
            torch.testing.assert_close(c["resid_post", layer],
                                       c["resid_pre", layer] + c["attn_out", layer] + c["mlp_out", layer],
                                       atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(c["resid_mid", layer], c["resid_pre", layer] + c["attn_out", layer])
            torch.testing.assert_close(c["resid_post", layer], c["resid_mid", layer] + c["mlp_out", layer],
                                       atol=ATOL, rtol=0)
    if model.family == "tiny":
        lin = model.module.unembed
        unembedded = c["ln_final"] @ lin.weight[0] + lin.bias[0, 0]
    else:
        unembedded = model.module.get_output_embeddings()(c["ln_final"])
    torch.testing.assert_close(unembedded, logits, atol=ATOL, rtol=0)


def test_patching_with_own_values_is_a_no_op(model, tokens):
    sites = _sites(model)
    clean, c = model.run(tokens, record=sites)
    for s in sites:
        kw = {} if s in MODEL_SITES else ({"heads": [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]}
                                          if s == "attn_scores" else {"layers": list(range(model.n_layers))})
        patched = model.run(tokens, interventions=[Patch(s, c, **kw)])[0]
        torch.testing.assert_close(patched, clean, atol=ATOL, rtol=0, msg=f"site {s}")


def test_softmax_of_scores_is_the_pattern(model, tokens):
    _, c = model.run(tokens, record=["attn_scores", "pattern"], layers=[1])
    torch.testing.assert_close(c["attn_scores", 1].float().softmax(-1), c["pattern", 1].float(), atol=1e-6, rtol=0)
    assert c["attn_scores", 1][0, 0, 0, 1] < -1e30  # a future key is masked


def test_scores_patch_and_recording_at_positions(model, tokens):
    """Patching query row -1's scores of one head with a constant gives a uniform pattern there."""
    _, c = model.run(tokens, interventions=[Patch("attn_scores", 0.0, heads=[(1, 2)], positions=-1)],
                     record=["pattern", "attn_scores"], layers=[1], positions=[-1])
    assert c["attn_scores", 1].shape == (3, model.n_heads, 1, 10)
    torch.testing.assert_close(c["pattern", 1][:, 2, 0], torch.full((3, 10), 0.1))
    assert (c["pattern", 1][:, 1, 0] - 0.1).abs().max() > 1e-3


def test_resid_mid_and_mlp_out_patches_equal_manual_recomputation(model, tokens):
    layer = 1
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    _, clean = model.run(tokens, record=["resid_pre", "attn_out", "resid_mid", "mlp_out"], layers=[layer]) \
        if "resid_mid" not in model.missing_sites() else model.run(tokens, record=["resid_pre", "attn_out", "mlp_out"],
                                                                   layers=[layer])
    # mlp_out := vec at the final position == resid_post patched to (resid_post - mlp_out + vec) there
    out = model.run(tokens, interventions=[Patch("mlp_out", vec, layers=[layer], positions=-1)])[0]
    _, rp = model.run(tokens, record=["resid_post"], layers=[layer])
    target = rp["resid_post", layer].clone()
    target[:, -1] += vec - clean["mlp_out", layer][:, -1]
    via = model.run(tokens, interventions=[Patch("resid_post", _cache("resid_post", layer, target), layers=[layer])])[0]
    torch.testing.assert_close(out, via, atol=1e-4, rtol=0)
    if "resid_mid" in model.missing_sites():
        with pytest.raises(IclscopeError, match="no 'resid_mid' site: attention and MLP run in parallel"):
            model.run(tokens, interventions=[Patch("resid_mid", vec, layers=[layer])])
        with pytest.raises(IclscopeError, match="no 'resid_mid' site"):
            model.run(tokens, record=["resid_mid"])
        return
    # resid_mid := vec at the final position: the MLP then sees vec, and resid_post = vec + mlp(vec)
    out, c = model.run(tokens, interventions=[Patch("resid_mid", vec, layers=[layer], positions=-1)],
                       record=["resid_mid", "mlp_out", "resid_post"], layers=[layer])
    torch.testing.assert_close(c["resid_mid", layer][:, -1], vec.expand(3, -1), atol=ATOL, rtol=0)
    torch.testing.assert_close(c["resid_mid", layer][:, :-1], clean["resid_mid", layer][:, :-1])
    torch.testing.assert_close(c["resid_post", layer][:, -1], vec + c["mlp_out", layer][:, -1], atol=ATOL, rtol=0)
    # equals moving the attention output by the difference
    delta = torch.zeros_like(clean["attn_out", layer])
    delta[:, -1] = vec - clean["resid_mid", layer][:, -1]
    via = model.run(tokens, interventions=[Patch("attn_out", _cache("attn_out", layer, clean["attn_out", layer] + delta),
                                                 layers=[layer])])[0]
    torch.testing.assert_close(out, via, atol=1e-4, rtol=0)


def _cache(site, layer, value):
    c = iclscope.Cache()
    c[hook_name(site, layer)] = value
    return c


def test_resid_mid_patch_passes_no_gradient_to_what_it_replaced(model, tokens):
    if "resid_mid" in model.missing_sites():
        pytest.skip("no resid_mid in parallel-residual families")
    logits, c = model.run(tokens, interventions=[Patch("resid_mid", 0.0, layers=[1], positions=-1)],
                          record=["resid_pre", "attn_out"], layers=[1], grad=True)
    rp, ao = c["resid_pre", 1], c["attn_out", 1]
    rp.retain_grad()
    ao.retain_grad()
    logits.float().pow(2).mean().backward()
    assert ao.grad[:, -1].abs().max() == 0 and rp.grad[:, -1].abs().max() < 1e-6
    assert ao.grad[:, 0].abs().max() > 0
    model.module.zero_grad()


def test_embed_and_ln_final_patches(model, tokens):
    vec = torch.randn(model.d_model, generator=torch.Generator().manual_seed(6))
    clean = model(tokens)
    out, c = model.run(tokens, interventions=[Patch("embed", vec, positions=[0], rows=[1])], record=["resid_pre"],
                       layers=[0])
    torch.testing.assert_close(c["resid_pre", 0][1, 0], vec)
    torch.testing.assert_close(out[0], clean[0], atol=ATOL, rtol=0)  # other rows untouched
    assert (out[1] - clean[1]).abs().max() > 1e-5
    out = model.run(tokens, interventions=[Patch("ln_final", vec, positions=-1)])[0]
    torch.testing.assert_close(out[:, :-1], clean[:, :-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, -1], out[:1, -1].expand(3, -1))  # one input vector, one output
    with pytest.raises(IclscopeError, match="model site"):
        model.run(tokens, interventions=[Patch("embed", vec, layers=[0])])


def test_attention_only_and_norm_free_tiny_models_refuse_missing_sites(tokens):
    m = iclscope.TinyModel(iclscope.TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=257, layernorm=False))
    assert set(m.missing_sites()) == {"mlp_in", "mlp_out", "ln_final"}
    for site in ("mlp_in", "mlp_out"):
        with pytest.raises(IclscopeError, match=f"no '{site}' site: the model is attention-only"):
            m.run(tokens, record=[site])
        with pytest.raises(IclscopeError, match="attention-only"):
            with m.intervene([Patch(site, 0.0, layers=[0])]):
                pass
    with pytest.raises(IclscopeError, match="no final norm"):
        m.run(tokens, record=["hook_ln_final"])
    _, c = m.run(tokens, record=["resid_mid", "embed"])  # resid_mid exists: attention added, no MLP after
    assert "blocks.0.hook_mlp_in" not in m.hook_names() and "hook_embed" in m.hook_names()


# ---------------------------------------------------------------------------------------- Hook


def test_hook_replaces_only_masked_entries(model, tokens):
    _, clean = model.run(tokens, record=["z"], layers=[1])
    _, c = model.run(tokens, interventions=[Hook("z", lambda x: 2 * x, heads=[(1, 1)], positions=-1)],
                     record=["z"], layers=[1])
    z, z0 = c["z", 1], clean["z", 1]
    torch.testing.assert_close(z[:, -1, 1], 2 * z0[:, -1, 1])
    torch.testing.assert_close(z[:, :-1], z0[:, :-1])
    torch.testing.assert_close(z[:, :, [0, 2, 3]], z0[:, :, [0, 2, 3]])


def test_hook_identity_is_a_no_op_and_equals_patch(model, tokens):
    clean = model(tokens)
    sites = _sites(model)
    for s in sites + ["z", "resid_post"]:
        kw = {} if s in MODEL_SITES else ({"heads": [(0, 0), (2, 3)]} if s in ("attn_scores", "z")
                                          else {"layers": [0, 2]})
        torch.testing.assert_close(model.run(tokens, interventions=[Hook(s, lambda x: x, **kw)])[0], clean,
                                   atol=ATOL, rtol=0, msg=f"site {s}")
    zero = model.run(tokens, interventions=[Hook("mlp_out", torch.zeros_like, layers=[1], rows=[2])])[0]
    torch.testing.assert_close(zero, model.run(tokens, interventions=[Patch("mlp_out", 0.0, layers=[1], rows=[2])])[0])


def test_hook_gradient_flows_through_fns_output(model, tokens):
    scale = torch.tensor(1.5, requires_grad=True)
    logits, c = model.run(tokens, interventions=[Hook("v", lambda x: scale * x, heads=[(1, 0)])], record=["v"],
                          layers=[1], grad=True)
    v = c["v", 1]
    v.retain_grad()
    logits.float().pow(2).mean().backward()
    assert scale.grad is not None and scale.grad.abs() > 0  # into what fn used
    assert v.grad[:, :, 0].abs().max() > 0  # and through fn to the activation itself
    model.module.zero_grad()


def test_hook_bad_fn(model, tokens):
    with pytest.raises(IclscopeError, match="must return a tensor of the activation's shape"):
        model.run(tokens, interventions=[Hook("z", lambda x: x[:, :1], heads=[(0, 0)])])
    with pytest.raises(IclscopeError, match="fn must be a function"):
        model.run(tokens, interventions=[Hook("z", 3, heads=[(0, 0)])])


# ---------------------------------------------------------------------------------------- cache, to


def test_cache_shorthand(model, tokens):
    _, c = model.run(tokens, record=["z", "embed"], layers=[1])
    assert c["z", 1] is c.site("z", 1) is c["blocks.1.attn.hook_z"]
    assert c["embed"] is c["hook_embed"]
    with pytest.raises(IclscopeError, match="holds no 'blocks.0.attn.hook_z'"):
        c["z", 0]
    with pytest.raises(KeyError):
        c["blocks.0.attn.hook_q"]


def test_to_returns_the_model(model, tokens):
    before = model(tokens)
    assert model.to(dtype=torch.float64) is model and model.dtype == torch.float64
    torch.testing.assert_close(model(tokens).float(), before, atol=1e-4, rtol=0)
    assert model.to(device="cpu", dtype=torch.float32) is model and model.dtype == torch.float32
