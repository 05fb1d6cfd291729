"""The one attention function iclscope registers with transformers' ``AttentionInterface``.

Every Hugging Face family that routes attention through the interface (gpt2, gpt_neox, llama, qwen2,
mistral, ...) calls ``iclscope_attention`` with queries and keys after rotary. It serves three cases with
one body:

- nothing hooked in this layer, full sequence: the fused SDPA kernel (the stock model's cost);
- something hooked: eager attention that calls the hook points q, k, v, attn_scores, pattern, z (GQA kv groups
  expanded to one key/value per query head, as transformers' ``repeat_kv``);
- the final-token path (``Model.run(..., prefix=...)``): the new token's query against the cached keys
  and values of the prefix plus its own. When every row continues one prompt and no k/v hook is live,
  the prefix is read in place (one matmul per kv group, no copy per row); otherwise it is gathered per
  row and concatenated.

The run's state (the hook functions, the prefix view) comes from the model's ``HookPoints`` object,
wired to each attention module once at load (``module._iclscope_hooks``); nothing is set per run on
torch modules.
"""

from __future__ import annotations

import torch

from ...errors import IclscopeError
from ...sites import layer_names

ATTN_IMPL = "iclscope"
_PROBE: list | None = None  # set by model._discover for one probe pass: the modules that call the function


def _fused(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    """The stock fused kernel; families with an attention softcap (gemma2, ...) that SDPA cannot apply get the
    eager body with no hook called."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is not None:
        return _eager(module, None, None, False, query, key, value, attention_mask, scaling, dropout,
                      kwargs["softcap"], None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def iclscope_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query (B, H, Tq, D); key, value (B, KVH, S, D); attention_mask None (causal), bool or additive
    (B|1, 1, Tq, >=S). Returns (z (B, Tq, H, D), pattern (B, H, Tq, S') or None), S' = S plus the prefix."""

    if _PROBE is not None:
        _PROBE.append(module)
    hooks = getattr(module, "_iclscope_hooks", None)
    layer = getattr(module, "layer_idx", None)
    if hooks is None or layer is None:
        return _fused(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    prefix = hooks.ctx.prefix
    live = hooks.layer_active(layer)
    if prefix is None and not live:
        return _fused(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if kwargs.get("s_aux") is not None:
        raise IclscopeError("attention sinks (s_aux) are not supported by iclscope's head interface")
    names = layer_names(layer)
    shared = None
    if prefix is not None:
        kp, vp = prefix.cache.kv[layer]  # (B, KVH, S, D) each
        S = kp.shape[2]
        pad = prefix.cache.attention_mask
        kv_hooked = live and (names["k"] in hooks.ops or names["v"] in hooks.ops)
        if prefix.same and not kv_hooked and query.shape[2] == 1:
            r = int(prefix.rows[0])
            shared = (kp[r], vp[r])  # (KVH, S, D), read in place by every row
            attention_mask = None
            if pad is not None:  # (1, 1, 1, S + 1) bool: the prompt's padding, then the new token itself
                attention_mask = torch.cat([pad[r, :S].bool(), torch.ones(1, dtype=torch.bool, device=pad.device)])
                attention_mask = attention_mask.to(query.device)[None, None, None]
        else:
            k, v = prefix.kv(layer)
            key, value = torch.cat([k, key], 2), torch.cat([v, value], 2)
            attention_mask = None
            if pad is not None:  # (B', 1, 1, S + 1) bool
                m = prefix.select(pad).bool()
                attention_mask = torch.cat([m[:, :S], torch.ones(len(prefix), 1, dtype=torch.bool, device=m.device)],
                                           1)[:, None, None].to(query.device)
            if not live:
                return _fused(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    return _eager(module, hooks, names, live, query, key, value, attention_mask, scaling, dropout,
                  kwargs.get("softcap"), shared)


def _eager(module, hooks, names, live, query, key, value, attention_mask, scaling, dropout, softcap, shared):
    """Eager attention with hook points (called only where ``live``). ``shared``: (keys, values)
    (KVH, S, D) of one prompt's prefix read by every row, ahead of ``key``/``value`` (the new token)."""
    B, H, Tq, D = query.shape
    g = H // key.shape[1]
    if g > 1:  # GQA: kv head j serves query heads j*g .. j*g+g-1 (as transformers' repeat_kv)
        key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    q = hooks(names["q"], query.transpose(1, 2)).transpose(1, 2) if live else query
    scaling = D ** -0.5 if scaling is None else scaling
    if shared is None:
        k = hooks(names["k"], key.transpose(1, 2)).transpose(1, 2) if live else key
        value = hooks(names["v"], value.transpose(1, 2)).transpose(1, 2) if live else value
        scores = torch.matmul(q, k.transpose(-1, -2))
    else:
        kp, _ = shared
        KVH, S = kp.shape[0], kp.shape[1]
        gp = H // KVH
        qg = q.reshape(B, KVH, gp, D).permute(1, 0, 2, 3).reshape(KVH, B * gp, D)
        s_pre = torch.matmul(qg, kp.transpose(-1, -2)).reshape(KVH, B, gp, S).permute(1, 0, 2, 3).reshape(B, H, 1, S)
        scores = torch.cat([s_pre, (q * key).sum(-1, keepdim=True)], -1)  # (B, H, 1, S + 1)
    scores = scores.float() * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    S_all = scores.shape[-1]
    lowest = torch.finfo(scores.dtype).min
    if attention_mask is None:  # causal, queries are the last Tq of the keys
        allowed = torch.ones(Tq, S_all, dtype=torch.bool, device=q.device).tril(S_all - Tq)
        scores = scores.masked_fill(~allowed, lowest)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :S_all], lowest)
    else:
        scores = scores + attention_mask[..., :S_all].float()
    if live:
        scores = hooks(names["attn_scores"], scores)  # (B, H, Tq, S) float32, masked keys at `lowest`
    pattern = scores.softmax(-1).to(value.dtype)
    if live:
        pattern = hooks(names["pattern"], pattern)
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout)
    if shared is None:
        z = torch.matmul(pattern, value).transpose(1, 2)  # (B, Tq, H, D)
    else:
        _, vp = shared
        KVH, S = vp.shape[0], vp.shape[1]
        gp = H // KVH
        pg = pattern[..., :S].reshape(B, KVH, gp, S).permute(1, 0, 2, 3).reshape(KVH, B * gp, S)
        z = torch.matmul(pg, vp).reshape(KVH, B, gp, D).permute(1, 0, 2, 3).reshape(B, H, 1, D)
        z = (z + pattern[..., S:] * value).transpose(1, 2)  # (B, 1, H, D)
    if live:
        z = hooks(names["z"], z)
    return z.contiguous(), pattern


def register() -> None:
    """Register ``iclscope_attention`` (and the SDPA mask function) under the name "iclscope"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPL, iclscope_attention)
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)
