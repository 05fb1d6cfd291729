"""The project's own small transformer, for training studies: the whole model on one screen.

Options: layers, heads, d_model, attention-only or with MLPs (d_mlp=0: attention-only), rotary or
learned or no positions, pre-LayerNorm on or off; token inputs, and continuous-vector inputs (few-shot
classification feeds exemplar vectors at some positions and label tokens at others).

Ensembles. Every weight has a leading axis of size R (``n_models``): R independent models trained side
by side, each op one batched op for all of them (one optimizer step updates all; Adam is elementwise,
so this is exactly R separate runs). R=1 is the ordinary model. The members may be different runs (a
sweep's conditions stacked into one model: ``train.trainer.Trainer.stack``), under different clamps
(interventions' ``members``). Inputs and hook values fold the models
into the batch: rows r*B .. r*B+B-1 belong to model r.

Padded label vocabularies. Members may have vocabularies of different sizes (``vocab_sizes``: a stack
of few-shot runs with different numbers of labels): the embedding and unembedding are padded to the
largest, V, member r's rows/columns beyond its own size v_r hold zeros, and its logits there are -inf
(an additive (R, 1, V) buffer, ``vocab_mask``), so its softmax, cross-entropy and argmax are those of
its unpadded model and its padding gets no gradient. ``members`` / ``member`` cut each member's own
vocabulary back out; a padded ensemble of mixed sizes is never saved as one file.

Hook points (B' = R*B rows, T positions, H heads, D d_head), called through ``self.hooks``:
  hook_embed (B',T,d_model) -> per block L: blocks.L.hook_resid_pre (B',T,d_model) -> attn.hook_q/k/v
  (B',T,H,D) -> attn.hook_attn_scores, attn.hook_pattern (B',H,T,T) -> attn.hook_z (B',T,H,D) ->
  hook_attn_out (B',T,d_model) -> hook_resid_mid -> [hook_mlp_in -> MLP -> hook_mlp_out] ->
  hook_resid_post (B',T,d_model) -> hook_ln_final (B',T,d_model) -> unembedding.
An attention-only model (d_mlp=0) has no mlp_in/mlp_out; one without LayerNorms no ln_final.

Saved as ``model.safetensors`` + ``iclscope.json`` (the config) in one directory.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import IclscopeError
from ..sites import hook_name, layer_names
from .base import HookPoints, Model

CONFIG_FILE = "iclscope.json"
WEIGHTS_FILE = "model.safetensors"
EMBED, LN_FINAL = hook_name("embed"), hook_name("ln_final")
SDPA_MIN_LEN = 9  # from this many keys on, the fused kernel is faster than a plain matmul attention on CPU
SMALL_T = 8  # up to this many keys, ``small_attention`` (rows x heads innermost) is the fastest on CPU


@dataclass
class TinyConfig:
    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    d_mlp: int = 0  # 0: attention-only
    vocab_size: int = 5  # token ids (labels); the unembedding has this many outputs
    n_ctx: int = 64  # longest sequence (learned positions, rotary table)
    positions: str = "rotary"  # "rotary" | "learned" | "none"
    layernorm: bool = True  # pre-LayerNorm in each block and before the unembedding
    d_input: int = 0  # >0: continuous input vectors of this size, embedded linearly
    rotary_base: float = 10000.0

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise IclscopeError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.positions not in ("rotary", "learned", "none"):
            raise IclscopeError(f"positions must be 'rotary', 'learned' or 'none', got {self.positions!r}")
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise IclscopeError("rotary positions need an even d_head")

    @classmethod
    def from_dict(cls, d: dict) -> "TinyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IclscopeError(f"unknown model config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


class Linear(nn.Module):
    """R stacked linear maps: x (R, N, d_in) -> (R, N, d_out). Initialised as torch's nn.Linear."""

    def __init__(self, R: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(R, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(R, 1, d_out))

    def reset(self, r: int, d_out: int | None = None) -> None:
        """(Re)initialise map r. ``d_out`` < the stored width (a padded vocabulary): the first d_out outputs
        are drawn exactly as for a map of that width (the same random numbers, in the same order) and the
        padding columns are zeros."""
        bound = 1 / math.sqrt(self.weight.shape[1])
        if d_out is None or d_out == self.weight.shape[2]:
            nn.init.uniform_(self.weight.data[r], -bound, bound)
            nn.init.uniform_(self.bias.data[r], -bound, bound)
            return
        w, b = self.weight.data.new_empty(self.weight.shape[1], d_out), self.bias.data.new_empty(1, d_out)
        nn.init.uniform_(w, -bound, bound)  # contiguous, as in the unpadded map
        nn.init.uniform_(b, -bound, bound)
        self.weight.data[r].zero_()
        self.bias.data[r].zero_()
        self.weight.data[r, :, :d_out] = w
        self.bias.data[r, :, :d_out] = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class LayerNorm(nn.Module):
    """R stacked LayerNorms over the last axis. x (R, N, d)."""

    def __init__(self, R: int, d: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(R, 1, d)), nn.Parameter(torch.zeros(R, 1, d))

    def reset(self, r: int) -> None:
        self.weight.data[r] = 1.0
        self.bias.data[r] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return F.layer_norm(x, x.shape[-1:], self.weight[0, 0], self.bias[0, 0])
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:]), self.weight)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last axis. x (N, T, ..., D); cos, sin (T, 1.., D)
    with each half's angles repeated: out = x*cos + rotate_half(x)*sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([-x2, x1], dim=-1), sin)


def small_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                    hooks: HookPoints | None = None, names: dict | None = None) -> torch.Tensor:
    """Causal attention for a few positions, computed with the (rows x heads) axis innermost.

    q (N, Tq, H, D), k and v (N, Tk, H, D), mask (Tq, Tk) additive -> z (N, Tq, H, D). The same numbers
    as softmax(q k^T / sqrt(D) + mask) v per row and head; laid out as (Tq, Tk, N*H), every product, sum
    and the softmax are one vectorised op over N*H contiguous values, where a batched matmul would run
    N*H tiny (Tq x D) @ (D x Tk) products (measured 2-3x slower for fwd+bwd at Tk = 5, the few-shot
    sequences of the training lab). With ``hooks`` (the layer has a live hook), the attn_scores, pattern
    and z hooks see their usual (N, H, Tq, Tk) and (N, Tq, H, D) tensors."""
    N, Tq, H, D = q.shape
    Tk = k.shape[1]

    def inner(x: torch.Tensor, T: int) -> torch.Tensor:  # (N, T, H, D) -> (T, D, N*H)
        return x.permute(1, 3, 0, 2).reshape(T, D, N * H)

    def outer(x: torch.Tensor) -> torch.Tensor:  # (Tq, Tk, N*H) -> (N, H, Tq, Tk), contiguous
        return x.view(Tq, Tk, N, H).permute(2, 3, 0, 1).contiguous()

    def back(x: torch.Tensor) -> torch.Tensor:  # (N, H, Tq, Tk) -> (Tq, Tk, N*H)
        return x.permute(2, 3, 0, 1).reshape(Tq, Tk, N * H)

    def hooked(site: str) -> bool:  # only a site with something registered pays for the layout change
        return hooks is not None and bool(hooks.ops.get(names[site]))

    qq, kk, vv = inner(q, Tq), inner(k, Tk), inner(v, Tk)
    scores = (qq[:, None] * kk[None]).sum(2) * (D ** -0.5) + mask[:, :, None]  # (Tq, Tk, N*H)
    if hooked("attn_scores"):
        scores = back(hooks(names["attn_scores"], outer(scores)))  # masked keys at -inf
    pattern = scores.softmax(1)
    if hooked("pattern"):
        pattern = back(hooks(names["pattern"], outer(pattern)))
    z = (pattern[:, :, None] * vv[None]).sum(1)  # (Tq, D, N*H)
    z = z.view(Tq, D, N, H).permute(2, 0, 3, 1).contiguous()  # (N, Tq, H, D)
    return hooks(names["z"], z) if hooked("z") else z


def shared_columns(vector_mask: torch.Tensor) -> torch.Tensor | None:
    """The positions (n,) int64 that hold a vector in every row, when every row of ``vector_mask`` (B, T)
    bool is the same (few-shot sequences: exemplars and query at fixed positions); None otherwise."""
    first = vector_mask[0]
    if vector_mask.shape[0] > 1 and not bool((vector_mask == first).all()):
        return None
    return first.nonzero().squeeze(1)


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig, R: int, layer: int, hooks: HookPoints):
        super().__init__()
        self.cfg, self.layer, self.hooks = cfg, layer, hooks
        self.H, self.D = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.ln1 = LayerNorm(R, cfg.d_model) if cfg.layernorm else None
        self.qkv = Linear(R, cfg.d_model, 3 * cfg.d_model)
        self.out = Linear(R, cfg.d_model, cfg.d_model)
        if cfg.d_mlp:
            self.ln2 = LayerNorm(R, cfg.d_model) if cfg.layernorm else None
            self.mlp_in, self.mlp_out = Linear(R, cfg.d_model, cfg.d_mlp), Linear(R, cfg.d_mlp, cfg.d_model)
        self.names = layer_names(layer)

    def forward(self, x: torch.Tensor, rope, mask: torch.Tensor, past=None, kv_out=None,
                final_only: bool = False) -> torch.Tensor:
        """x (R*B, T, d_model) -> (R*B, T, d_model); rope: (cos, sin) or None; mask (T, P+T) additive causal.

        past: (keys, values) (R*B, P, H, D) of P earlier positions (after rotary, before the k/v hooks);
        kv_out: a dict that receives this layer's (keys, values) likewise. final_only: the output at the
        final position only, (R*B, 1, d_model): keys and values at every position, the query, attention,
        output and MLP at the last one (the caller makes sure no hook after resid_pre is live here)."""
        h, n, H, D = self.hooks, self.names, self.H, self.D
        RB, T, d = x.shape
        R = self.qkv.weight.shape[0]
        x = h(n["resid_pre"], x)
        a = self.ln1(x.view(R, -1, d)) if self.ln1 is not None else x.view(R, -1, d)
        qkv = self.qkv(a).view(RB, T, 3, H, D)
        if rope is not None:  # rotate q and k in one op
            qk = rotary(qkv[:, :, :2], *rope)
            q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = qkv.unbind(2)  # each (R*B, T, H, D)
        if final_only:
            return self._final(x[:, -1:], q[:, -1:], k, v, mask[-1:], past)
        if kv_out is not None:
            kv_out[self.layer] = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        live = h.layer_active(self.layer)
        if live:
            q, k, v = h(n["q"], q), h(n["k"], k), h(n["v"], v)
        if k.shape[1] <= SMALL_T:  # few positions: rows x heads innermost (see small_attention)
            z = small_attention(q, k, v, mask, h if live else None, n)
        elif live or k.shape[1] < SDPA_MIN_LEN:
            scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * (D ** -0.5) + mask  # (RB, H, T, T)
            if live:
                scores = h(n["attn_scores"], scores)  # masked keys at -inf
            pattern = scores.softmax(-1)
            if live:
                pattern = h(n["pattern"], pattern)
            z = torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2)  # (R*B, T, H, D)
            if live:
                z = h(n["z"], z)
        else:  # fused kernel when no per-head hook is live
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=None if past is None else mask,
                                               is_causal=past is None).transpose(1, 2)
        attn_out = self.out(z.reshape(R, -1, d)).view(RB, T, d)
        x = h(n["resid_mid"], x + h(n["attn_out"], attn_out))
        if self.cfg.d_mlp:
            m = self.ln2(x.view(R, -1, d)) if self.ln2 is not None else x.view(R, -1, d)
            m = h(n["mlp_in"], m.view(RB, T, d)).view(R, -1, d)
            x = x + h(n["mlp_out"], self.mlp_out(F.gelu(self.mlp_in(m))).view(RB, T, d))
        return h(n["resid_post"], x)

    def _final(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               past) -> torch.Tensor:
        """The rest of ``forward`` for the final position alone, without hooks: x and q (R*B, 1, ...), k and
        v (R*B, T, H, D) of this pass, mask (1, P+T) -> (R*B, 1, d_model)."""
        RB, d = x.shape[0], x.shape[-1]
        R = self.qkv.weight.shape[0]
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        if k.shape[1] <= SMALL_T:
            z = small_attention(q, k, v, mask)
        else:  # one query that sees every key: no causal mask
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        x = x + self.out(z.reshape(R, -1, d)).view(RB, 1, d)
        if self.cfg.d_mlp:
            m = self.ln2(x.view(R, -1, d)) if self.ln2 is not None else x.view(R, -1, d)
            x = x + self.mlp_out(F.gelu(self.mlp_in(m))).view(RB, 1, d)
        return x

    def reset(self, r: int) -> None:
        for mod in self.children():
            mod.reset(r)


# the padded vocabulary axis of each vocabulary-sized weight (state-dict name -> axis, ensemble axis 0)
VOCAB_AXES = {"embed": 1, "unembed.weight": 2, "unembed.bias": 2}


def vocab_slice(name: str, v: int, members=slice(None)) -> tuple:
    """The index of the first ``v`` vocabulary entries of members ``members`` in the state-dict tensor
    ``name`` (its ensemble axis first); just ``(members,)`` for a weight without a vocabulary axis."""
    axis = VOCAB_AXES.get(name)
    return (members,) if axis is None else (members,) + (slice(None),) * (axis - 1) + (slice(0, v),)


class TinyTransformer(nn.Module):
    """Embeddings -> n_layers blocks -> (LayerNorm) -> unembedding, for R models at once.

    forward(tokens (R*B, T)[, vectors (R*B, T, d_input), vector_mask (R*B, T)]) -> logits (R*B, T, vocab).
    Model r is initialised from torch.manual_seed(seeds[r]), so member r of an ensemble starts exactly as
    a single model of the same seed. ``vocab_sizes``: each member's own vocabulary size (<= cfg.vocab_size,
    the padded width; None: all cfg.vocab_size): member r starts exactly as a single model of
    vocab_size=vocab_sizes[r] and its seed, zeros in the padding, and its padded logits are -inf
    (``vocab_mask`` (R, 1, V), a buffer that is not in the state dict)."""

    def __init__(self, cfg: TinyConfig, n_models: int = 1, seeds=None, hooks: HookPoints | None = None,
                 vocab_sizes=None):
        super().__init__()
        R = self.R = n_models
        self.cfg = cfg
        sizes = [cfg.vocab_size] * R if vocab_sizes is None else [int(v) for v in vocab_sizes]
        if len(sizes) != R or not all(1 <= v <= cfg.vocab_size for v in sizes):
            raise IclscopeError(f"vocab_sizes {sizes}: need one size per member ({R}), each 1 .. the padded "
                                f"vocab_size {cfg.vocab_size}")
        self.vocab_sizes = sizes
        if min(sizes) < cfg.vocab_size:
            pad = torch.arange(cfg.vocab_size)[None, :] >= torch.tensor(sizes)[:, None]  # (R, V)
            self.register_buffer("vocab_mask", torch.zeros(R, 1, cfg.vocab_size).masked_fill(pad[:, None], float("-inf")),
                                 persistent=False)
        else:
            self.vocab_mask = None
        self.hooks = hooks or HookPoints()
        self.embed = nn.Parameter(torch.empty(R, cfg.vocab_size, cfg.d_model))
        self.embed_input = Linear(R, cfg.d_input, cfg.d_model) if cfg.d_input else None
        self.pos = nn.Parameter(torch.empty(R, cfg.n_ctx, cfg.d_model)) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, R, i, self.hooks) for i in range(cfg.n_layers))
        self.ln_f = LayerNorm(R, cfg.d_model) if cfg.layernorm else None
        self.unembed = Linear(R, cfg.d_model, cfg.vocab_size)
        D = cfg.d_model // cfg.n_heads
        if cfg.positions == "rotary":
            inv = 1.0 / cfg.rotary_base ** (torch.arange(0, D, 2).float() / D)
            ang = torch.arange(cfg.n_ctx).float()[:, None] * inv[None, :]  # (n_ctx, D/2)
            ang = torch.cat([ang, ang], -1)[:, None, None, :]  # (n_ctx, 1, 1, D): broadcasts over (2, H)
            self.register_buffer("rope_cos", ang.cos(), persistent=False)
            self.register_buffer("rope_sin", ang.sin(), persistent=False)
        causal = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", torch.zeros(cfg.n_ctx, cfg.n_ctx).masked_fill(~causal, float("-inf")),
                             persistent=False)
        seeds = list(range(R)) if seeds is None else list(seeds)
        for r, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.reset(r)

    def reset(self, r: int) -> None:
        """(Re)initialise model r: embeddings N(0, 1), linear maps as nn.Linear, LayerNorms to identity. A
        member of a smaller vocabulary than the padded one draws exactly its own model's numbers (contiguous
        tensors of its own size, as nn.init draws differently into strided ones) and has zeros as padding."""
        v = self.vocab_sizes[r]
        if v == self.cfg.vocab_size:
            nn.init.normal_(self.embed.data[r])
        else:
            self.embed.data[r].zero_()
            self.embed.data[r, :v] = nn.init.normal_(self.embed.data.new_empty(v, self.cfg.d_model))
        if self.embed_input is not None:
            self.embed_input.reset(r)
        if self.pos is not None:
            nn.init.normal_(self.pos.data[r], std=0.02)
        for block in self.blocks:
            block.reset(r)
        if self.ln_f is not None:
            self.ln_f.reset(r)
        self.unembed.reset(r, v)

    def forward(self, tokens: torch.Tensor, vectors: torch.Tensor | None = None,
                vector_mask: torch.Tensor | None = None, past=None, kv_out=None, final_only: bool = False,
                vector_cols: torch.Tensor | None = None) -> torch.Tensor:
        """past: per-layer (keys, values) (R*B, P, H, D) of P earlier positions (tokens then sit at positions
        P..P+T-1); kv_out: a dict that receives every layer's (keys, values). final_only: logits of the
        final position only, (R*B, 1, vocab); the last block then computes its query, attention and output
        there alone, unless a hook of that block (after resid_pre) or ln_final is live or kv_out is asked
        for (then the whole pass runs and is sliced: the same numbers). vector_cols: the positions (n,) that
        hold a vector in every row when the caller knows them (``shared_columns``; skips that check, so
        the pass has no data-dependent branch and compiles whole)."""
        R, cfg = self.R, self.cfg
        RB, T = tokens.shape
        P = 0 if past is None else past[0][0].shape[1]
        if P + T > cfg.n_ctx:
            raise IclscopeError(f"sequence of length {P + T} is longer than the model's n_ctx={cfg.n_ctx}")
        if RB % R:
            raise IclscopeError(f"a batch of {RB} rows does not split over an ensemble of {R} models")
        offset = (torch.arange(R, device=tokens.device) * cfg.vocab_size).repeat_interleave(RB // R)[:, None]
        x = self.embed.view(R * cfg.vocab_size, -1)[tokens + offset]  # (R*B, T, d)
        if vectors is not None:
            if self.embed_input is None:
                raise IclscopeError("this model takes no vector inputs (d_input=0)")
            if vectors.shape[-1] != cfg.d_input:
                raise IclscopeError(f"input vectors have size {vectors.shape[-1]}, the model expects {cfg.d_input}")
            cols = shared_columns(vector_mask) if vector_cols is None else vector_cols
            if cols is not None:  # the same vector positions in every row: embed only those
                xv = self.embed_input(vectors[:, cols].reshape(R, -1, cfg.d_input)).view(RB, len(cols), -1)
                x = x.index_copy(1, cols, xv)
            else:
                xv = self.embed_input(vectors.reshape(R, -1, cfg.d_input)).view(RB, T, -1)
                x = torch.where(vector_mask[..., None], xv, x)
        if self.pos is not None:
            x = (x.view(R, -1, T, cfg.d_model) + self.pos[:, None, P:P + T]).view(RB, T, -1)
        rope = (self.rope_cos[P:P + T], self.rope_sin[P:P + T]) if cfg.positions == "rotary" else None
        mask = self.causal_mask[P:P + T, :P + T]
        x = self.hooks(EMBED, x)
        short = final_only and kv_out is None and self._final_unhooked()
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, None if past is None else past[i], kv_out, final_only=short and i == last)
        Tx = x.shape[1]
        x = x.view(R, -1, cfg.d_model)
        if self.ln_f is not None:
            x = self.hooks(LN_FINAL, self.ln_f(x).view(RB, Tx, -1)).view(R, -1, cfg.d_model)
        logits = self.unembed(x)  # (R, B*Tx, V)
        if self.vocab_mask is not None:  # padded vocabulary entries of each member: -inf
            logits = logits + self.vocab_mask
        logits = logits.view(RB, Tx, -1)
        return logits[:, -1:] if final_only and Tx > 1 else logits

    def _final_unhooked(self) -> bool:
        """Whether nothing is registered at the last block's sites after resid_pre nor at ln_final (the
        final-position shortcut of ``forward`` may then skip the other positions there)."""
        names = self.blocks[-1].names
        ops = self.hooks.ops
        return not ops.get(LN_FINAL) and not self.hooks.layer_active(len(self.blocks) - 1) and \
            not any(ops.get(name) for site, name in names.items() if site != "resid_pre")


class TinyModel(Model):
    """The head interface over a ``TinyTransformer`` (an ensemble of R models when n_models > 1)."""

    family = "tiny"
    supports_padding = False
    native_final_only = True  # the last block can compute the final position alone (``run(final_only=True)``)

    def __init__(self, cfg: TinyConfig | dict | None = None, seed: int | None = None, n_models: int = 1,
                 seeds=None, module: TinyTransformer | None = None, vocab_sizes=None):
        """``vocab_sizes``: each member's own vocabulary size, the weights padded to cfg.vocab_size (see
        ``TinyTransformer``); None: every member has cfg.vocab_size."""
        super().__init__()
        if module is None:
            cfg = TinyConfig.from_dict(cfg) if isinstance(cfg, dict) else (cfg or TinyConfig())
            if seeds is None:
                seeds = [seed if seed is not None else 0] if n_models == 1 else list(range(n_models))
            module = TinyTransformer(cfg, n_models=len(seeds), seeds=seeds, vocab_sizes=vocab_sizes)
        self.module, self.hooks, self.cfg = module, module.hooks, module.cfg
        self.n_models = module.R
        c = self.cfg
        self.n_layers, self.n_heads, self.n_kv_heads = c.n_layers, c.n_heads, c.n_heads
        self.d_model, self.d_head, self.vocab_size = c.d_model, c.d_model // c.n_heads, c.vocab_size
        self.n_ctx = c.n_ctx

    def _forward(self, inputs: dict, prefix=None, kv_out=None, final_only: bool = False):
        extra = sorted(set(inputs) - {"tokens", "vectors", "vector_mask", "attention_mask"})
        if extra:
            raise IclscopeError(f"the tiny model takes tokens, vectors, vector_mask and attention_mask, not {extra}")
        tokens, vectors, vector_mask = inputs["tokens"], inputs.get("vectors"), inputs.get("vector_mask")
        attention_mask = inputs.get("attention_mask")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise IclscopeError("the tiny model has no padding support: its prompts must all have the same length "
                                "(an attention_mask with zeros was given)")
        if prefix is None:
            if kv_out is None:
                return self.module(tokens, vectors, vector_mask, final_only=final_only)
            kv: dict = {}  # prefix_cache: every layer's keys/values (R*B, T, H, D), minus the final position
            logits = self.module(tokens, vectors, vector_mask, kv_out=kv, final_only=final_only)
            kv_out.update({i: (k[:, :-1], v[:, :-1]) for i, (k, v) in kv.items()})
            return logits
        if self.n_models > 1:  # rows must keep every member's rows together, in member order
            Bp, B = len(prefix), len(prefix.cache) // self.n_models
            member = prefix.rows // B
            if Bp % self.n_models or not bool((member == torch.arange(Bp) // (Bp // self.n_models)).all()):
                raise IclscopeError("run_last_token on an ensemble: rows must list member 0's prompts, then "
                                    "member 1's, ..., the same number for each member")
        past = [prefix.kv(i) for i in range(self.cfg.n_layers)]
        return self.module(tokens, vectors, vector_mask, past=past, final_only=final_only)

    def missing_sites(self) -> dict[str, str]:
        out = {}
        if not self.cfg.d_mlp:
            out.update({s: "the model is attention-only (d_mlp=0): it has no MLP" for s in ("mlp_in", "mlp_out")})
        if not self.cfg.layernorm:
            out["ln_final"] = "the model has no LayerNorms (layernorm=False), so no final norm"
        return out

    def out_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z (..., H, D) -> (..., d_model) through model 0's output projection (bias included)."""
        lin = self.module.blocks[layer].out
        return z.reshape(*z.shape[:-2], -1) @ lin.weight[0] + lin.bias[0, 0]

    @property
    def vocab_sizes(self) -> list[int]:
        """Each member's own vocabulary size (all ``vocab_size`` unless the vocabulary is padded)."""
        return list(self.module.vocab_sizes)

    @property
    def padded(self) -> bool:
        """Whether some member's vocabulary is smaller than the (padded) ``vocab_size``."""
        return self.module.vocab_mask is not None

    def member(self, r: int) -> "TinyModel":
        """Model r of an ensemble as a stand-alone TinyModel (weights copied; of its own vocabulary size
        when the ensemble's vocabulary is padded)."""
        if not 0 <= r < self.n_models:
            raise IclscopeError(f"member {r} is out of range: the ensemble has {self.n_models} models")
        if self.padded:
            return self.members([r])
        single = TinyModel(self.cfg, seed=0)
        single.module.load_state_dict({k: v[r:r + 1].detach().clone() for k, v in self.module.state_dict().items()})
        return single.to(self.device)

    def members(self, indices) -> "TinyModel":
        """Members ``indices`` (a list or range) of an ensemble as an ensemble of their own, in that order
        (weights copied): e.g. one run's seeds out of a stacked model of several runs. With a padded
        vocabulary, members of one vocabulary size come back unpadded (a model of that vocab_size: what a
        run trained alone has); members of several sizes stay padded to the largest of theirs."""
        idx = [int(i) for i in indices]
        if not idx or min(idx) < 0 or max(idx) >= self.n_models:
            raise IclscopeError(f"members {idx} are out of range: the ensemble has {self.n_models} models")
        sizes = [self.module.vocab_sizes[i] for i in idx]
        V = max(sizes)
        cfg = self.cfg if V == self.cfg.vocab_size else replace(self.cfg, vocab_size=V)
        sub = TinyModel(cfg, seeds=[0] * len(idx), vocab_sizes=sizes if min(sizes) < V else None)
        sel = torch.tensor(idx, dtype=torch.long)
        sub.module.load_state_dict({k: v.detach().index_select(0, sel.to(v.device))[vocab_slice(k, V)].clone()
                                    for k, v in self.module.state_dict().items()})
        return sub.to(self.device)

    @classmethod
    def stacked(cls, parts: list) -> "TinyModel":
        """One ensemble of the members of ``parts`` (TinyModels of one config), in order (weights copied).
        Parts whose configs differ only in vocab_size are padded to the largest (their own sizes kept in
        ``vocab_sizes``, their padded logits -inf): each member computes what it computed before."""
        base = [{**asdict(p.cfg), "vocab_size": 0} for p in parts]
        if any(b != base[0] for b in base[1:]):
            raise IclscopeError("models of different configs cannot be stacked into one ensemble (only their "
                                "vocab_size may differ)")
        V = max(p.cfg.vocab_size for p in parts)
        sizes = [v for p in parts for v in p.vocab_sizes]
        out = TinyModel(replace(parts[0].cfg, vocab_size=V), seeds=[0] * len(sizes),
                        vocab_sizes=sizes if min(sizes) < V else None)
        states = [p.module.state_dict() for p in parts]
        full = {}
        for k, ref in out.module.state_dict().items():
            pieces = []
            for p, s in zip(parts, states):
                piece = torch.zeros(p.n_models, *ref.shape[1:], dtype=ref.dtype)
                piece[vocab_slice(k, p.cfg.vocab_size)] = s[k].detach().cpu()
                pieces.append(piece)
            full[k] = torch.cat(pieces)
        out.module.load_state_dict(full)
        return out.to(parts[0].device)

    def to(self, device=None, dtype=None) -> "TinyModel":
        self.module.to(device=device, dtype=dtype)
        return self

    def save(self, path: str | Path, extra: dict | None = None, *,
             fault: str | tuple[str, ...] = "model:after-weights") -> Path:
        """Write model.safetensors and iclscope.json (config, plus ``extra`` metadata) into the folder
        ``path``, whole: both files go into a temporary folder beside it that is then renamed to ``path``
        (``store.write_folder_atomically``), so ``path`` is at every moment absent, the complete old
        checkpoint or the complete new one, never weights without their JSON. An ensemble saves all members
        (load gives the ensemble back; ``member(r)`` takes one). ``fault``: the test fault point label(s)
        checked once the weights are written and the JSON is not (see ``iclscope.store``)."""
        from .. import store

        path = Path(path)
        if self.padded:
            raise IclscopeError(f"an ensemble with padded vocabularies (sizes {self.vocab_sizes}) is not saved as one "
                                f"model; save its members by vocabulary size (members([...]) unpads them)")
        if path.exists():
            other = sorted(set(os.listdir(path)) - {WEIGHTS_FILE, CONFIG_FILE}) if path.is_dir() else [path.name]
            if other:
                raise IclscopeError(f"{path} holds other files ({', '.join(other[:3])}); a checkpoint replaces its "
                                    "folder whole, so nothing was written: save into a new or empty folder")
        state = {k: v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}
        meta = {"kind": "iclscope-tiny", "config": asdict(self.cfg), "n_models": self.n_models, **(extra or {})}

        def fill(folder: Path) -> None:
            save_file(state, str(folder / WEIGHTS_FILE))
            for label in (fault,) if isinstance(fault, str) else fault:
                store.fault_point(label)
            (folder / CONFIG_FILE).write_text(store.dumps_json(meta))

        return store.write_folder_atomically(path, fill)

    @classmethod
    def load(cls, path: str | Path, device=None, dtype=None) -> "TinyModel":
        path = Path(path)
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise IclscopeError(f"{path}: cannot read {CONFIG_FILE}: {e}") from None
        if meta.get("kind") != "iclscope-tiny":
            raise IclscopeError(f"{path / CONFIG_FILE} is not an iclscope model config")
        R = int(meta.get("n_models", 1))
        model = cls(TinyConfig.from_dict(meta["config"]), n_models=R)
        try:
            state = load_file(str(path / WEIGHTS_FILE))
        except (OSError, Exception) as e:  # safetensors raises its own error type on a damaged file
            raise IclscopeError(f"{path / WEIGHTS_FILE}: cannot read the weights: {e}") from None
        try:
            model.module.load_state_dict(state)
        except RuntimeError as e:
            raise IclscopeError(f"{path / WEIGHTS_FILE} does not fit its config: {str(e).splitlines()[0]}") from None
        model.module.to(device=device, dtype=dtype).eval()
        model.meta = meta
        model.bos_token_id = (meta.get("token_layout") or {}).get("bos_id")
        return model
