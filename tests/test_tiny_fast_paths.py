"""The tiny model's fast paths give the numbers of a plainly written transformer: attention over few keys
(rows x heads innermost), the fused kernel, the explicit path under live hooks, and embedding only the
vector positions when every row has them at the same places."""

import math

import pytest
import torch

from iclscope import Hook
from iclscope.models.tiny import SMALL_T, TinyConfig, TinyModel, small_attention


def plain_attention(q, k, v):
    """Per row and head: softmax(q k^T / sqrt(D) + causal mask) v, with the final T rows of q aligned to
    the final positions of k. q (N, Tq, H, D), k, v (N, Tk, H, D) -> (N, Tq, H, D)."""
    N, Tq, H, D = q.shape
    Tk = k.shape[1]
    out = torch.zeros_like(q)
    for n in range(N):
        for h in range(H):
            for i in range(Tq):
                pos = Tk - Tq + i  # absolute position of query i
                s = torch.stack([q[n, i, h] @ k[n, j, h] / math.sqrt(D) for j in range(pos + 1)])
                p = s.softmax(0)
                out[n, i, h] = sum(p[j] * v[n, j, h] for j in range(pos + 1))
    return out


@pytest.mark.parametrize("Tq,Tk", [(5, 5), (1, 5), (3, 8)])
def test_small_attention_matches_a_per_head_loop(Tq, Tk):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, t, 2, 4, generator=g) for t in (Tq, Tk, Tk))
    P = Tk - Tq
    mask = torch.zeros(Tq, Tk).masked_fill(~torch.ones(Tk, Tk, dtype=torch.bool).tril()[P:], float("-inf"))
    assert torch.allclose(small_attention(q, k, v, mask), plain_attention(q, k, v), atol=1e-5)


def plain_forward(model: TinyModel, tokens, vectors=None, vector_mask=None):
    """Logits of member 0 of the tiny model, written out layer by layer (rotary, pre-LayerNorm,
    attention-only), from its weights."""
    m, cfg = model.module, model.cfg
    H, D = cfg.n_heads, cfg.d_model // cfg.n_heads
    x = m.embed[0][tokens]
    if vectors is not None:
        xv = vectors @ m.embed_input.weight[0] + m.embed_input.bias[0, 0]
        x = torch.where(vector_mask[..., None], xv, x)
    T = tokens.shape[1]
    cos, sin = m.rope_cos[:T, 0, 0], m.rope_sin[:T, 0, 0]  # (T, D)

    def rot(t):  # (B, T, H, D)
        t1, t2 = t.chunk(2, -1)
        return t * cos[:, None] + torch.cat([-t2, t1], -1) * sin[:, None]

    for blk in m.blocks:
        a = torch.nn.functional.layer_norm(x, (cfg.d_model,), blk.ln1.weight[0, 0], blk.ln1.bias[0, 0])
        qkv = (a @ blk.qkv.weight[0] + blk.qkv.bias[0, 0]).view(*x.shape[:2], 3, H, D)
        z = plain_attention(rot(qkv[:, :, 0]), rot(qkv[:, :, 1]), qkv[:, :, 2])
        x = x + z.reshape(*x.shape[:2], -1) @ blk.out.weight[0] + blk.out.bias[0, 0]
    x = torch.nn.functional.layer_norm(x, (cfg.d_model,), m.ln_f.weight[0, 0], m.ln_f.bias[0, 0])
    return x @ m.unembed.weight[0] + m.unembed.bias[0, 0]


@pytest.mark.parametrize("T", [5, SMALL_T + 4, 40])  # few keys, the explicit path, the fused kernel
def test_tiny_forward_matches_the_plain_transformer(T):
    model = TinyModel(TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=7, n_ctx=48), seed=1)
    tokens = torch.randint(0, 7, (3, T), generator=torch.Generator().manual_seed(T))
    ref = plain_forward(model, tokens)
    with torch.no_grad():
        assert torch.allclose(model.run(tokens)[0], ref, atol=1e-4)
        # a live identity hook on every layer takes the hooked path (explicit pattern): same logits
        live = [Hook("pattern", lambda p: p * 1.0, heads=[(0, 0), (0, 1), (1, 0), (1, 1)])]
        logits, cache = model.run(tokens, interventions=live, record=["pattern"])
        assert torch.allclose(logits, ref, atol=1e-4)
        p = cache.site("pattern", 1)  # (B, H, T, T): rows sum to 1, nothing above the diagonal
        assert p.shape == (3, 2, T, T) and torch.allclose(p.sum(-1), torch.ones(3, 2, T), atol=1e-5)
        assert float(p.triu(1).abs().max()) == 0.0


def test_vector_positions_embedded_only_where_every_row_has_them():
    cfg = TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=5, n_ctx=16, d_input=6)
    model = TinyModel(cfg, seed=2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5, (4, 5), generator=g)
    vectors = torch.randn(4, 5, 6, generator=g)
    shared = torch.tensor([True, False, True, False, True]).expand(4, 5)  # few-shot layout: one path
    mixed = shared.clone()
    mixed[1, 1] = True  # rows differ: the general path
    with torch.no_grad():
        for vm in (shared, mixed):
            out = model.run({"tokens": tokens, "vectors": vectors, "vector_mask": vm})[0]
            assert torch.allclose(out, plain_forward(model, tokens, vectors, vm), atol=1e-4)


def test_a_clamp_over_the_whole_layer_stops_the_gradient_into_it():
    """A pattern clamp that replaces every entry (all heads, rows and positions) leaves layer 0's queries
    and keys without gradient, as the clamp means; a clamp of some heads leaves the others training."""
    from iclscope import ClampPattern

    model = TinyModel(TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=7, n_ctx=16), seed=0)
    tokens = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(0))
    qkv = model.module.blocks[0].qkv.weight
    for heads, frozen in (([(0, 0), (0, 1)], True), ([(0, 0)], False)):
        model.module.zero_grad(set_to_none=True)
        logits = model.run(tokens, interventions=[ClampPattern(heads, "prev_token")], grad=True)[0]
        logits.sum().backward()
        qk_grad = qkv.grad[0, :, :32] if qkv.grad is not None else torch.zeros(1)
        assert (float(qk_grad.abs().max()) == 0.0) == frozen


def test_ops_that_together_replace_a_site_stop_its_gradient_with_the_same_numbers():
    """Two runs of a stack each ablating layer 0's heads of their own member: together every entry of z is
    replaced, so layer 0's q/k/v weights get no gradient (none needs it), and the logits are those of one
    ablation over both members."""
    from iclscope import Ablate

    model = TinyModel(TinyConfig(n_layers=2, n_heads=2, d_model=16, vocab_size=7, n_ctx=16), seeds=[0, 1])
    tokens = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(0))  # 2 rows per member
    heads = [(0, 0), (0, 1)]
    qkv = model.module.blocks[0].qkv.weight
    split = [Ablate(heads, how="zero", members=[0]), Ablate(heads, how="zero", members=[1])]
    partial = [Ablate(heads, how="zero", members=[0]), Ablate([(0, 0)], how="zero", members=[1])]
    out = {}
    for name, ivs in (("split", split), ("whole", [Ablate(heads, how="zero")]), ("partial", partial)):
        model.module.zero_grad(set_to_none=True)
        logits = model.run(tokens, interventions=ivs, grad=True)[0]
        logits.sum().backward()
        out[name] = (logits.detach(), qkv.grad)
    assert torch.allclose(out["split"][0], out["whole"][0], atol=1e-6)
    assert out["split"][1] is None  # not even computed: layer 0 is outside the differentiated graph
    assert out["partial"][1] is not None and float(out["partial"][1][1].abs().max()) > 0  # member 1's head 1 trains
