"""Hugging Face causal LMs (gpt2, gpt_neox/Pythia, llama/mistral, qwen2, ...) behind the head interface.

How: recent transformers releases send every family's attention through one pluggable function
(``AttentionInterface``). iclscope registers its own under the name "iclscope". It receives queries,
keys and values after rotary, computes the pattern and the per-head output z, and calls the hook
points on each, grouped-query attention included (kv groups are expanded so that hooks see one key and
value per query head). When no per-head hook is live in a layer it hands over to the fused SDPA kernel,
so an un-intervened pass costs what the stock model costs. Residual-stream sites (resid_pre, attn_out,
resid_post) are torch forward hooks on the decoder layers and attention modules.

The only per-family facts are where the decoder layers, attention modules and output projections live
(``_LAYOUTS``); a family that routes attention elsewhere is refused at load time with a clear error.
"""

from __future__ import annotations

import copy
import os
import re
import socket
from pathlib import Path

import torch

from ..errors import IclscopeError
from .base import HookPoints, Model

ATTN_IMPL = "iclscope"

# family (config.model_type) -> (decoder layers path, attention module name in a layer, output projection name)
_LAYOUTS = {
    "gpt2": ("transformer.h", "attn", "c_proj"),
    "gpt_neox": ("gpt_neox.layers", "attention", "dense"),
}
_DEFAULT_LAYOUT = ("model.layers", "self_attn", "o_proj")
RANDOM_FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2")


def _iclscope_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with hook points. query (B, H, Tq, D); key, value (B, KVH, S, D).

    Returns (z (B, Tq, H, D), pattern (B, H, Tq, S) or None), as every AttentionInterface function does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    hooks: HookPoints | None = getattr(module, "_iclscope_hooks", None)
    layer = getattr(module, "layer_idx", None)
    prefix = getattr(module, "_iclscope_prefix", None)
    if prefix is not None and not kwargs.pop("_iclscope_no_prefix", False):
        return _prefix_attention(module, query, key, value, prefix, scaling, dropout, **kwargs)
    if hooks is None or layer is None or not hooks.layer_active(layer):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("s_aux") is not None:
        raise IclscopeError("attention sinks (s_aux) are not supported by iclscope's head interface")
    B, H, Tq, D = query.shape
    S, g = key.shape[2], H // key.shape[1]
    if g > 1:  # GQA: kv head j serves query heads j*g .. j*g+g-1 (as transformers' repeat_kv)
        key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    p = f"blocks.{layer}.attn."
    q = hooks(p + "hook_q", query.transpose(1, 2)).transpose(1, 2)
    k = hooks(p + "hook_k", key.transpose(1, 2)).transpose(1, 2)
    v = hooks(p + "hook_v", value.transpose(1, 2)).transpose(1, 2)
    scaling = D ** -0.5 if scaling is None else scaling
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scaling  # (B, H, Tq, S)
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    lowest = torch.finfo(scores.dtype).min
    if attention_mask is None:  # causal, queries are the last Tq of S positions
        allowed = torch.ones(Tq, S, dtype=torch.bool, device=q.device).tril(S - Tq)
        scores = scores.masked_fill(~allowed, lowest)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :S], lowest)
    else:
        scores = scores + attention_mask[..., :S].float()
    pattern = hooks(p + "hook_pattern", scores.softmax(-1).to(v.dtype))
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout)
    z = hooks(p + "hook_z", torch.matmul(pattern, v).transpose(1, 2))  # (B, Tq, H, D)
    return z.contiguous(), pattern


def _prefix_attention(module, query, key, value, prefix, scaling, dropout, **kwargs):
    """The final token (query (B', H, 1, D); its own key, value (B', KVH, 1, D)) against a cached prefix
    (``PrefixRows``: keys/values (B, KVH, T-1, D) of every layer, B' rows mapped to prompts).

    When every row continues the same prompt and no k/v hook is live, the prefix keys/values are read
    in place (one matmul per kv group, no copy of the prefix per row); otherwise they are gathered and
    concatenated with the new token, and the ordinary path runs with the padding mask."""
    hooks: HookPoints = module._iclscope_hooks
    layer = module.layer_idx
    kp, vp = prefix.cache.kv[layer]
    mask = prefix.cache.attention_mask
    Bp, H, Tq, D = query.shape
    KVH, S = kp.shape[1], kp.shape[2]
    p = f"blocks.{layer}.attn."
    live = hooks.layer_active(layer)
    if not prefix.same or (live and (p + "hook_k" in hooks.ops or p + "hook_v" in hooks.ops)) or Tq != 1 \
            or kwargs.get("s_aux") is not None:
        k, v = prefix.kv(layer)
        key, value = torch.cat([k, key], 2), torch.cat([v, value], 2)
        full = None
        if mask is not None:  # (B', 1, 1, T) bool, True = attend: the prefix's padding, the new token itself
            m = prefix.select(mask).bool()
            full = torch.cat([m[:, :S], torch.ones(Bp, 1, dtype=torch.bool, device=m.device)], 1)[:, None, None]
            full = full.to(query.device)
        return _iclscope_attention(module, query, key, value, full, scaling=scaling, dropout=dropout,
                                   _iclscope_no_prefix=True, **kwargs)
    r = int(prefix.rows[0])
    kp1, vp1 = kp[r], vp[r]  # (KVH, S, D), shared by every row
    g = H // KVH
    if key.shape[1] != H:  # the new token's key/value, one per query head (GQA groups expanded)
        key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    q = hooks(p + "hook_q", query.transpose(1, 2)).transpose(1, 2) if live else query
    scaling = D ** -0.5 if scaling is None else scaling
    qg = q.reshape(Bp, KVH, g, D).permute(1, 0, 2, 3).reshape(KVH, Bp * g, D)
    s_pre = torch.matmul(qg, kp1.transpose(-1, -2)).reshape(KVH, Bp, g, S).permute(1, 0, 2, 3).reshape(Bp, H, 1, S)
    s_new = (q * key).sum(-1, keepdim=True)  # (B', H, 1, 1)
    scores = torch.cat([s_pre, s_new], -1).float() * scaling
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    if mask is not None:
        allowed = torch.cat([mask[r, :S].bool().to(scores.device),
                             torch.ones(1, dtype=torch.bool, device=scores.device)])
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    pattern = scores.softmax(-1).to(value.dtype)
    if live:
        pattern = hooks(p + "hook_pattern", pattern)
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout)
    pg = pattern[..., :S].reshape(Bp, KVH, g, S).permute(1, 0, 2, 3).reshape(KVH, Bp * g, S)
    z = torch.matmul(pg, vp1).reshape(KVH, Bp, g, D).permute(1, 0, 2, 3).reshape(Bp, H, 1, D)
    z = (z + pattern[..., S:] * value).transpose(1, 2)  # (B', 1, H, D)
    if live:
        z = hooks(p + "hook_z", z)
    return z.contiguous(), pattern


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPL, _iclscope_attention)
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class HFModel(Model):
    """The head interface over a ``transformers`` causal LM (``module``)."""

    def __init__(self, module, tokenizer=None, name: str = "?"):
        super().__init__()
        _register()
        cfg = module.config
        self.module, self.tokenizer, self.name = module, tokenizer, name
        self.family = cfg.model_type
        self.hooks = HookPoints()
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size = cfg.vocab_size
        self.bos_token_id = (tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None
                             else getattr(cfg, "bos_token_id", None))
        layers_path, attn_name, proj_name = _LAYOUTS.get(self.family, _DEFAULT_LAYOUT)
        try:
            self.layers = _get(module, layers_path)
            self.attns = [getattr(layer, attn_name) for layer in self.layers]
            self.projs = [getattr(a, proj_name) for a in self.attns]
        except AttributeError:
            raise IclscopeError(f"model family {self.family!r} is not supported: its decoder layers are not at "
                                f"{layers_path}.N.{attn_name}.{proj_name}") from None
        if len(self.layers) != self.n_layers:
            raise IclscopeError(f"{name}: found {len(self.layers)} decoder layers, config says {self.n_layers}")
        module.set_attn_implementation(ATTN_IMPL)
        for i, (layer, attn) in enumerate(zip(self.layers, self.attns)):
            attn._iclscope_hooks = self.hooks
            if getattr(attn, "layer_idx", None) != i:
                attn.layer_idx = i
            layer.register_forward_pre_hook(self._pre_hook(f"blocks.{i}.hook_resid_pre"), with_kwargs=True)
            layer.register_forward_hook(self._post_hook(f"blocks.{i}.hook_resid_post"))
            attn.register_forward_hook(self._post_hook(f"blocks.{i}.hook_attn_out"))
        module.eval()
        self._check_routing()

    def _pre_hook(self, name):
        hooks = self.hooks

        def pre(mod, args, kwargs):
            if name not in hooks.ops:
                return None
            if args:
                return (hooks(name, args[0]),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = hooks(name, kwargs["hidden_states"])
            return args, kwargs

        return pre

    def _post_hook(self, name):
        hooks = self.hooks

        def post(mod, args, output):
            if name not in hooks.ops:
                return None
            if isinstance(output, tuple):
                return (hooks(name, output[0]),) + tuple(output[1:])
            return hooks(name, output)

        return post

    def _check_routing(self) -> None:
        """Refuse a family whose attention does not go through the AttentionInterface."""
        tokens = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with torch.no_grad():
            _, cache = self.run(tokens, record=["z"])
        if len(cache) != self.n_layers:
            raise IclscopeError(f"model family {self.family!r} is not supported: its attention does not run "
                                f"through transformers' AttentionInterface (saw {len(cache)} of {self.n_layers} layers)")

    def _forward(self, tokens, attention_mask=None, prefix=None, kv_out=None, **extra):
        if extra:
            raise IclscopeError(f"{self.family} models take token ids and an attention_mask, not {sorted(extra)}")
        if prefix is not None:
            return self._forward_last(tokens, prefix)
        kwargs = {}
        if attention_mask is not None:  # left padding: positions count real tokens only
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if kv_out is None:
            return self.module(input_ids=tokens, attention_mask=attention_mask, use_cache=False, **kwargs).logits
        # prefix_cache: keep transformers' own key/value cache, minus the final position
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        pkv = DynamicCache(config=self.module.config)
        out = self.module(input_ids=tokens, attention_mask=attention_mask, use_cache=True, past_key_values=pkv,
                          **kwargs)
        pkv = out.past_key_values
        if len(pkv.layers) != self.n_layers or any(type(layer) is not DynamicLayer for layer in pkv.layers):
            raise IclscopeError(f"prefix caches need plain full attention in every layer; {self.family} uses "
                                f"{sorted({type(layer).__name__ for layer in pkv.layers})}")
        for i, layer in enumerate(pkv.layers):
            kv_out[i] = (layer.keys[:, :, :-1], layer.values[:, :, :-1])  # (B, KVH, T-1, D)
        return out.logits

    def _forward_last(self, tokens, prefix):
        """The final token (B', 1) against a PrefixRows view: the attention modules read the cached
        keys/values (``_prefix_attention``); positions come from the prefix's attention mask."""
        if tokens.shape[1] != 1:
            raise IclscopeError("a prefix-cache run takes exactly one new token per row")
        B, T = tokens.shape[0], prefix.cache.seq_len
        pos = prefix.select(prefix.cache.position_ids)
        if pos is None:
            pos = torch.full((B, 1), T - 1, dtype=torch.long, device=tokens.device)
        for attn in self.attns:
            attn._iclscope_prefix = prefix
        try:
            return self.module(input_ids=tokens, position_ids=pos.to(tokens.device), use_cache=False).logits
        finally:
            for attn in self.attns:
                attn._iclscope_prefix = None

    def out_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return self.projs[layer](z.reshape(*z.shape[:-2], self.n_heads * self.d_head))


# ----------------------------------------------------------------------------------------------------
# Random models of each family (no download), with a byte-level tokenizer built locally
# ----------------------------------------------------------------------------------------------------


def byte_tokenizer():
    """A real byte-level BPE tokenizer with no merges: 256 byte tokens + "<|endoftext|>" (id 256).

    Same leading-space convention as GPT-2 (" Paris" starts with the byte token for a space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    vocab["<|endoftext|>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def random_config(family: str, layers: int = 2, heads: int = 4, d_model: int = 64, kv_heads: int | None = None,
                  vocab: int = 257, n_ctx: int = 512):
    """A small config of ``family``. llama and qwen2 default to grouped-query attention (kv_heads = heads/2)."""
    import transformers as tf

    if family not in RANDOM_FAMILIES:
        raise IclscopeError(f"unknown family {family!r} for random:<family>; choose from {', '.join(RANDOM_FAMILIES)}")
    common = dict(vocab_size=vocab, bos_token_id=256, eos_token_id=256)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=layers, n_head=heads, n_embd=d_model, n_positions=n_ctx, **common)
    if family == "gpt_neox":  # Pythia's shape: partial rotary, parallel residual
        return tf.GPTNeoXConfig(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=d_model,
                                intermediate_size=4 * d_model, max_position_embeddings=n_ctx, rotary_pct=0.25,
                                use_parallel_residual=True, **common)
    kv = kv_heads or max(1, heads // 2)
    if heads % kv:
        raise IclscopeError(f"heads={heads} is not a multiple of kv_heads={kv}")
    cls = tf.LlamaConfig if family == "llama" else tf.Qwen2Config
    return cls(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, hidden_size=d_model,
               intermediate_size=4 * d_model, max_position_embeddings=n_ctx, **common)


def load_random(spec: str, dtype=None, device=None) -> HFModel:
    """``random:<family>[:key=value,...]`` e.g. ``random:llama:layers=4,heads=8,kv_heads=2,seed=1``."""
    from transformers import AutoModelForCausalLM

    parts = spec.split(":", 2)
    family = parts[1] if len(parts) > 1 else ""
    opts: dict = {}
    if len(parts) == 3 and parts[2]:
        for kv in parts[2].split(","):
            k, _, v = kv.partition("=")
            if k not in ("layers", "heads", "d_model", "kv_heads", "seed", "n_ctx") or not v.lstrip("-").isdigit():
                raise IclscopeError(f"{spec}: bad option {kv!r}; options are layers, heads, d_model, kv_heads, "
                                    f"n_ctx, seed (integers)")
            opts[k] = int(v)
    seed = opts.pop("seed", 0)
    cfg = random_config(family, **opts)
    _register()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN_IMPL)
    module.to(device=device, dtype=dtype)
    return HFModel(module, byte_tokenizer(), name=spec)


def plain_copy(model: HFModel, attn_implementation: str = "eager"):
    """The same weights in a stock transformers module with no iclscope attention (for checks)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.module.config)
    plain = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    plain.load_state_dict(model.module.state_dict())
    return plain.to(model.device, model.dtype).eval()


# ----------------------------------------------------------------------------------------------------
# Loading from the hub or a local directory
# ----------------------------------------------------------------------------------------------------

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:  # pragma: no cover
        host = "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_pretrained(spec: str, revision: str | None = None, dtype=None, device=None, device_map=None,
                    trust_remote_code: bool = False) -> HFModel:
    """A hub name (from the local cache first) or a local directory holding a transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _register()
    where = f"{spec}" + (f" (revision {revision})" if revision else "")
    path = Path(spec).expanduser()
    is_dir = path.is_dir()
    if is_dir and not (path / "config.json").exists():
        raise IclscopeError(f"{spec}: the directory holds no model (no config.json of a transformers model, "
                            f"no iclscope.json of an iclscope model)")
    if not is_dir and (spec.startswith((".", "/", "~")) or not _HUB_NAME.match(spec)):
        raise IclscopeError(f"{spec}: no such directory, and not a valid hub model name")
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code, attn_implementation=ATTN_IMPL)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        try:
            import accelerate  # noqa: F401  (transformers needs it for device_map)
        except ImportError:
            raise IclscopeError("device_map needs the accelerate package: pip install accelerate") from None
        kwargs["device_map"] = device_map
    try:
        module = AutoModelForCausalLM.from_pretrained(str(path) if is_dir else spec, local_files_only=True, **kwargs)
        local_only = True
    except (OSError, ValueError) as e:
        if is_dir:
            raise IclscopeError(f"{where}: cannot load the model in this directory: {str(e).splitlines()[0]}") from None
        if _offline():
            raise IclscopeError(f"{where}: not in the local Hugging Face cache, and the hub is offline "
                                f"(HF_HUB_OFFLINE=1). Download it on a machine with network "
                                f"(`hf download {spec}" + (f" --revision {revision}" if revision else "")
                                + "`) and copy the cache (HF_HOME), or pass a local directory.") from None
        if not _hub_reachable():
            raise IclscopeError(f"{where}: not in the local Hugging Face cache, and the hub cannot be reached. "
                                f"Download it where there is network and copy the cache (HF_HOME), pass a local "
                                f"directory, or try random:<family> for a small random model.") from None
        try:
            module = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
        except (OSError, ValueError) as e2:
            raise IclscopeError(f"{where}: {str(e2).splitlines()[0]}") from None
        local_only = False
    if device is not None and device_map is None:
        module.to(device)
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if is_dir else spec, revision=revision,
                                                  local_files_only=local_only, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        pass  # a model without a tokenizer still has the head interface; text tasks will say so
    return HFModel(module, tokenizer, name=spec)
