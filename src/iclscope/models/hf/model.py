"""``HFModel``: the head interface over a Hugging Face causal LM.

Attention goes through the one registered function of ``attention.py``; the other sites are torch
forward hooks registered once, each one dict lookup when unused: embed and resid_pre on the decoder
layers' inputs, attn_out and resid_mid on the attention modules' outputs, mlp_in and mlp_out on the MLP
modules, resid_post on the layers' outputs, ln_final on the final norm. The only per-family facts are
where the decoder layers, attention modules, output projections, MLPs and final norm live: listed in
``_LAYOUTS``, else discovered at load by one probe pass (the modules that call the attention function, the
ModuleList that holds them, their child named o_proj/dense/c_proj/out_proj, the layer's mlp). A family whose
attention does not route through the interface, whose heads' outputs are changed between the attention
function and the output projection (gates, sub-norms, differential attention), or that is a state-space
model or an attention/state-space hybrid (``REFUSED``) is refused at load time with one line. See
docs/families.md.

resid_mid (residual after attention, before the MLP) is not a tensor the stock layer hands to any
module; it is resid_pre + attn_out, computed at the attention module's output from the layer input kept
by the pre-hook. A change to it reaches the layer as a change of the attention output by the difference
(new - old), so the MLP and the residual both see the new value (up to float rounding) and replaced
entries pass no gradient to resid_pre or attn_out (the two paths cancel). Families whose attention and
MLP run in parallel (GPT-NeoX/Pythia with use_parallel_residual) have no resid_mid: it is refused.
"""

from __future__ import annotations

import inspect

import torch

from ...errors import IclscopeError
from ...sites import hook_name
from ..base import HookPoints, Model, PrefixRows
from .attention import ATTN_IMPL, register

# family (config.model_type) -> (decoder layers path, attention module name in a layer, output projection name,
# MLP module name in a layer, final norm path)
_LAYOUTS = {
    "gpt2": ("transformer.h", "attn", "c_proj", "mlp", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox.layers", "attention", "dense", "mlp", "gpt_neox.final_layer_norm"),
}
_PROJ_NAMES = ("o_proj", "dense", "c_proj", "out_proj", "o")
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "ln_final")

_SSM = "a state-space model: it has no attention heads to address"
_HYBRID = ("a hybrid: only some layers (or only part of each layer) are attention, the rest a state-space or "
           "linear-attention mixer, which the head interface does not cover")
# family -> why it is refused (one line each; checked before anything else at load)
REFUSED = {
    "mamba": _SSM, "mamba2": _SSM, "falcon_mamba": _SSM, "rwkv": _SSM, "xlstm": _SSM,
    "jamba": _HYBRID, "bamba": _HYBRID, "zamba": _HYBRID, "zamba2": _HYBRID, "nemotron_h": _HYBRID,
    "granitemoehybrid": _HYBRID, "falcon_h1": _HYBRID, "lfm2": _HYBRID, "lfm2_moe": _HYBRID,
    "recurrent_gemma": _HYBRID, "minimax": _HYBRID, "kimi_linear": _HYBRID, "olmo_hybrid": _HYBRID,
    "qwen3_next": _HYBRID, "qwen3_5_text": _HYBRID, "qwen3_5_moe_text": _HYBRID, "bailing_hybrid": _HYBRID,
    "bitnet": "a sub-norm (attn_sub_norm) sits between the heads' outputs and o_proj, so z is not what o_proj reads",
    "diffllama": "differential attention: each head's output is a difference of two softmax patterns, "
                 "re-normed before the output projection, so z is not what o_proj reads",
}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class HFModel(Model):
    """The head interface over a ``transformers`` causal LM (``module``)."""

    def __init__(self, module, tokenizer=None, name: str = "?"):
        super().__init__()
        register()
        cfg = module.config
        self.module, self.tokenizer, self.name = module, tokenizer, name
        self.family = cfg.model_type
        refuse(self.family, cfg)
        self.hooks = HookPoints()
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size = cfg.vocab_size
        self.n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.bos_token_id = (tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None
                             else getattr(cfg, "bos_token_id", None))
        module.set_attn_implementation(ATTN_IMPL)
        if self.family in _LAYOUTS:
            layers_path, attn_name, proj_name, mlp_name, norm_path = _LAYOUTS[self.family]
        else:
            layers_path, attn_name, proj_name, mlp_name, norm_path = _discover(module, self.family, self.n_layers)
        try:
            self.layers = _get(module, layers_path)
            self.attns = [_get(layer, attn_name) for layer in self.layers]
            self.projs = [getattr(a, proj_name) for a in self.attns]
        except AttributeError:
            raise IclscopeError(f"model family {self.family!r} is not supported: its decoder layers are not at "
                                f"{layers_path}.N.{attn_name}.{proj_name}") from None
        if len(self.layers) != self.n_layers:
            raise IclscopeError(f"{name}: found {len(self.layers)} decoder layers, config says {self.n_layers}")
        self._missing: dict[str, str] = {}
        self.mlps = [getattr(layer, mlp_name, None) if mlp_name else None for layer in self.layers]
        if any(m is None for m in self.mlps):
            self._missing.update({s: f"its decoder layers have no MLP module ({mlp_name or '|'.join(_MLP_NAMES)})" for s in ("mlp_in", "mlp_out")})
        try:
            self.final_norm = _get(module, norm_path) if norm_path else None
            if self.final_norm is None:
                raise AttributeError(norm_path)
        except AttributeError:
            self.final_norm = None
            self._missing["ln_final"] = f"its final norm is not at {norm_path}"
        if getattr(cfg, "use_parallel_residual", False):
            self._missing["resid_mid"] = ("attention and MLP run in parallel (use_parallel_residual): both read "
                                          "resid_pre, and resid_post = resid_pre + attn_out + mlp_out")
        for i, (layer, attn) in enumerate(zip(self.layers, self.attns)):
            attn._iclscope_hooks = self.hooks  # wiring, set once: the run's state lives in self.hooks
            if getattr(attn, "layer_idx", None) != i:
                attn.layer_idx = i
            pre_names = ([hook_name("embed")] if i == 0 else []) + [hook_name("resid_pre", i)]
            layer.register_forward_pre_hook(self._pre_hook(pre_names, hook_name("resid_mid", i)), with_kwargs=True)
            layer.register_forward_hook(self._post_hook(hook_name("resid_post", i)))
            attn.register_forward_hook(self._attn_hook(hook_name("attn_out", i), hook_name("resid_mid", i)))
            if self.mlps[i] is not None:
                self.mlps[i].register_forward_pre_hook(self._input_hook(hook_name("mlp_in", i)))
                self.mlps[i].register_forward_hook(self._post_hook(hook_name("mlp_out", i)))
        if self.final_norm is not None:
            self.final_norm.register_forward_hook(self._post_hook(hook_name("ln_final")))
        module.eval()
        self._check_routing()

    def missing_sites(self) -> dict[str, str]:
        return dict(self._missing)

    def _pre_hook(self, names: list[str], mid_name: str):
        """A decoder layer's input: the hooks of ``names`` in order (embed before layer 0, resid_pre); the
        result is kept in the run context when the layer's resid_mid is hooked (see the module docstring)."""
        hooks = self.hooks

        def pre(mod, args, kwargs):
            live = [n for n in names if n in hooks.ops]
            if not live and mid_name not in hooks.ops:
                return None
            x = args[0] if args else kwargs["hidden_states"]
            for n in live:
                x = hooks(n, x)
            if mid_name in hooks.ops:
                hooks.ctx.scratch[mid_name] = x
            if not live:
                return None
            if args:
                return (x,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = x
            return args, kwargs

        return pre

    def _attn_hook(self, out_name: str, mid_name: str):
        """The attention module's output: attn_out's hooks, then resid_mid's (resid_pre + attn_out)."""
        hooks = self.hooks

        def post(mod, args, output):
            if out_name not in hooks.ops and mid_name not in hooks.ops:
                return None
            a = output[0] if isinstance(output, tuple) else output
            a = hooks(out_name, a)
            if mid_name in hooks.ops:
                mid = hooks.ctx.scratch.pop(mid_name) + a
                new = hooks(mid_name, mid)
                if new is not mid:
                    a = a + (new - mid)
            return (a,) + tuple(output[1:]) if isinstance(output, tuple) else a

        return post

    def _input_hook(self, name: str):
        """A module's first positional input (the MLP's: mlp_in)."""
        hooks = self.hooks

        def pre(mod, args):
            if name not in hooks.ops:
                return None
            return (hooks(name, args[0]),) + tuple(args[1:])

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
        try:
            with torch.no_grad():
                _, cache = self.run(tokens, record=["z", "attn_out"])
        except IclscopeError as e:
            if str(e).startswith("model family"):
                raise
            raise IclscopeError(f"model family {self.family!r} is not supported: {e}") from None
        except Exception as e:  # a family whose attention breaks the head interface's assumptions
            first = (str(e).splitlines() or [""])[0][:200]
            raise IclscopeError(f"model family {self.family!r} is not supported: its attention does not fit the "
                                f"head interface ({type(e).__name__}: {first})") from None
        seen = sum(1 for i in range(self.n_layers) if hook_name("z", i) in cache)
        if seen != self.n_layers:
            raise IclscopeError(f"model family {self.family!r} is not supported: its attention does not run "
                                f"through transformers' AttentionInterface (saw {seen} of {self.n_layers} layers)")
        with torch.no_grad():
            for i in range(self.n_layers):
                out, z = cache.site("attn_out", i), cache.site("z", i)
                if z.shape[-1] != self.d_head or z.shape[-2] != self.n_heads:
                    raise IclscopeError(f"model family {self.family!r} is not supported: its heads' outputs are "
                                        f"{tuple(z.shape[-2:])}, not (n_heads, d_head) = {(self.n_heads, self.d_head)}")
                tol = 1e-3 * max(1.0, out.abs().max().item())
                if (self.out_proj(i, z) - out).abs().max().item() > tol:
                    raise IclscopeError(f"model family {self.family!r} is not supported: its attention changes the "
                                        f"heads' outputs z between the attention function and the output projection "
                                        f"(a gate, a sub-norm or similar), so z sites would not mean what they say")

    def _forward(self, inputs: dict, prefix: PrefixRows | None = None, kv_out: dict | None = None) -> torch.Tensor:
        tokens, attention_mask = inputs["tokens"], inputs.get("attention_mask")
        extra = sorted(set(inputs) - {"tokens", "attention_mask"})
        if extra:
            raise IclscopeError(f"{self.family} models take token ids and an attention_mask, not {extra}")
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
        # transformers >= 5.24 names the argument ``cache`` (``past_key_values`` is deprecated); the cache
        # object is filled in place either way
        kwargs["cache" if "cache" in inspect.signature(self.module.forward).parameters else "past_key_values"] = pkv
        out = self.module(input_ids=tokens, attention_mask=attention_mask, use_cache=True, **kwargs)
        if len(pkv.layers) != self.n_layers or any(type(layer) is not DynamicLayer for layer in pkv.layers):
            raise IclscopeError(f"prefix caches need plain full attention in every layer; {self.family} uses "
                                f"{sorted({type(layer).__name__ for layer in pkv.layers})}")
        for i, layer in enumerate(pkv.layers):
            kv_out[i] = (layer.keys[:, :, :-1], layer.values[:, :, :-1])  # (B, KVH, T-1, D)
        return out.logits

    def _forward_last(self, tokens: torch.Tensor, prefix: PrefixRows) -> torch.Tensor:
        """The final token (B', 1) against a PrefixRows view: the attention function reads the cached
        keys/values from the run context; positions come from the prefix's attention mask."""
        if tokens.shape[1] != 1:
            raise IclscopeError("a prefix-cache run takes exactly one new token per row")
        B, T = tokens.shape[0], prefix.cache.seq_len
        pos = prefix.select(prefix.cache.position_ids)
        if pos is None:
            pos = torch.full((B, 1), T - 1, dtype=torch.long, device=tokens.device)
        return self.module(input_ids=tokens, position_ids=pos.to(tokens.device), use_cache=False).logits

    def out_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return self.projs[layer](z.reshape(*z.shape[:-2], self.n_heads * self.d_head))


def refuse(family: str, cfg) -> None:
    """One line naming ``family`` and why, for the families the head interface does not cover."""
    if family in REFUSED:
        raise IclscopeError(f"model family {family!r} is not supported: {REFUSED[family]}")
    if not getattr(cfg, "num_attention_heads", None) or not getattr(cfg, "num_hidden_layers", None):
        raise IclscopeError(f"model family {family!r} is not supported: its config names no attention heads "
                            f"(num_attention_heads) or decoder layers (num_hidden_layers)")


def _discover(module, family: str, n_layers: int) -> tuple[str, str, str, str | None, str | None]:
    """(layers path, attention path in a layer, output projection, MLP name or None, final norm path or None)
    of a family not in ``_LAYOUTS``: one probe pass records the modules that call the attention function."""
    from . import attention

    names = {m: n for n, m in module.named_modules()}
    attention._PROBE = probe = []
    try:
        with torch.no_grad():
            module(input_ids=torch.zeros(1, 2, dtype=torch.long, device=module.device), use_cache=False)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise IclscopeError(f"model family {family!r} is not supported: a probe pass through its attention "
                            f"failed ({type(e).__name__}: {first})") from None
    finally:
        attention._PROBE = None
    seen = list(dict.fromkeys(names[m] for m in probe if m in names))
    if len(seen) != n_layers:
        raise IclscopeError(f"model family {family!r} is not supported: its attention does not run through "
                            f"transformers' AttentionInterface ({len(seen)} attention modules called it, for "
                            f"{n_layers} layers)")
    parts = seen[0].split(".")
    idx = next((j for j, p in enumerate(parts) if p.isdigit()), None)
    if idx is None:
        raise IclscopeError(f"model family {family!r} is not supported: its attention module {seen[0]} is not "
                            f"inside a list of decoder layers")
    layers_path, attn_name = ".".join(parts[:idx]), ".".join(parts[idx + 1:])
    if seen != [f"{layers_path}.{i}.{attn_name}" for i in range(n_layers)]:
        raise IclscopeError(f"model family {family!r} is not supported: its attention modules are not one per "
                            f"decoder layer at {layers_path}.N.{attn_name}")
    attn = _get(module, seen[0])
    proj = next((p for p in _PROJ_NAMES if isinstance(getattr(attn, p, None), torch.nn.Module)), None)
    if proj is None:
        raise IclscopeError(f"model family {family!r} is not supported: its attention module has no output "
                            f"projection named {'/'.join(_PROJ_NAMES)}")
    layer0 = _get(module, f"{layers_path}.0")
    mlp = next((p for p in _MLP_NAMES if isinstance(getattr(layer0, p, None), torch.nn.Module)), None)
    norm = None
    for n, m in module.named_modules():
        if n.split(".")[-1] in _NORM_NAMES and not n.startswith(layers_path + "."):
            norm = n
    return layers_path, attn_name, proj, mlp, norm
