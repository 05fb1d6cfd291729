"""The project's own small transformer, for training studies: the whole model on one screen.

Options: layers, heads, d_model, attention-only or with MLPs (d_mlp=0: attention-only), rotary or
learned or no positions, pre-LayerNorm on or off; token inputs, and continuous-vector inputs (few-shot
classification feeds exemplar vectors at some positions and label tokens at others).

Hook points (B batch, T positions, H heads, D d_head), called through ``self.hooks``:
  blocks.L.hook_resid_pre (B,T,d_model) -> attn.hook_q/k/v (B,T,H,D) -> attn.hook_pattern (B,H,T,T)
  -> attn.hook_z (B,T,H,D) -> hook_attn_out (B,T,d_model) -> [MLP] -> hook_resid_post (B,T,d_model)

Saved as ``model.safetensors`` + ``iclscope.json`` (the config) in one directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import IclscopeError
from .base import HookPoints, Model

CONFIG_FILE = "iclscope.json"
WEIGHTS_FILE = "model.safetensors"


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


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last axis. x: (B, T, H, D); cos, sin: (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig, layer: int, hooks: HookPoints):
        super().__init__()
        self.cfg, self.layer, self.hooks = cfg, layer, hooks
        self.H, self.D = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        if cfg.d_mlp:
            self.ln2 = nn.LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))
        p = f"blocks.{layer}."
        self.names = {k: p + v for k, v in dict(resid_pre="hook_resid_pre", q="attn.hook_q", k="attn.hook_k",
                                                 v="attn.hook_v", pattern="attn.hook_pattern", z="attn.hook_z",
                                                 attn_out="hook_attn_out", resid_post="hook_resid_post").items()}

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        h, n = self.hooks, self.names
        x = h(n["resid_pre"], x)
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.H, self.D).unbind(2)  # each (B, T, H, D)
        if rope is not None:
            q, k = rotary(q, *rope), rotary(k, *rope)
        if h.layer_active(self.layer):
            q, k, v = h(n["q"], q), h(n["k"], k), h(n["v"], v)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.D)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            pattern = h(n["pattern"], scores.masked_fill(~causal, float("-inf")).softmax(-1))  # (B, H, T, T)
            z = h(n["z"], torch.einsum("bhqk,bkhd->bqhd", pattern, v))  # (B, T, H, D)
        else:  # fused path when no per-head hook is live in this layer
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True).transpose(1, 2)
        x = x + h(n["attn_out"], self.out(z.reshape(B, T, -1)))
        if self.cfg.d_mlp:
            x = x + self.mlp(self.ln2(x))
        return h(n["resid_post"], x)


class TinyTransformer(nn.Module):
    """Embeddings -> n_layers blocks -> (LayerNorm) -> unembedding. Forward returns logits (B, T, vocab)."""

    def __init__(self, cfg: TinyConfig, hooks: HookPoints | None = None):
        super().__init__()
        self.cfg = cfg
        self.hooks = hooks or HookPoints()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_input = nn.Linear(cfg.d_input, cfg.d_model) if cfg.d_input else None
        self.pos = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, i, self.hooks) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size)
        if cfg.positions == "rotary":
            D = cfg.d_model // cfg.n_heads
            inv = 1.0 / cfg.rotary_base ** (torch.arange(0, D, 2).float() / D)
            ang = torch.arange(cfg.n_ctx).float()[:, None] * inv[None, :]  # (n_ctx, D/2)
            self.register_buffer("rope_cos", ang.cos(), persistent=False)
            self.register_buffer("rope_sin", ang.sin(), persistent=False)

    def forward(self, tokens: torch.Tensor, vectors: torch.Tensor | None = None,
                vector_mask: torch.Tensor | None = None, attention_mask=None) -> torch.Tensor:
        """tokens (B, T) int64; vectors (B, T, d_input) and vector_mask (B, T) bool where a vector is the
        input instead of a token. Returns logits (B, T, vocab_size)."""
        B, T = tokens.shape
        if T > self.cfg.n_ctx:
            raise IclscopeError(f"sequence of length {T} is longer than the model's n_ctx={self.cfg.n_ctx}")
        x = self.embed(tokens)
        if vectors is not None:
            if self.embed_input is None:
                raise IclscopeError("this model takes no vector inputs (d_input=0)")
            if vectors.shape[-1] != self.cfg.d_input:
                raise IclscopeError(f"input vectors have size {vectors.shape[-1]}, the model expects {self.cfg.d_input}")
            x = torch.where(vector_mask[..., None], self.embed_input(vectors), x)
        if self.pos is not None:
            x = x + self.pos.weight[:T]
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.cfg.positions == "rotary" else None
        for block in self.blocks:
            x = block(x, rope)
        return self.unembed(self.ln_f(x))


class TinyModel(Model):
    """The head interface over a ``TinyTransformer``."""

    family = "tiny"

    def __init__(self, cfg: TinyConfig | dict | None = None, seed: int | None = None, module: TinyTransformer | None = None):
        super().__init__()
        if module is None:
            cfg = TinyConfig.from_dict(cfg) if isinstance(cfg, dict) else (cfg or TinyConfig())
            if seed is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    module = TinyTransformer(cfg)
            else:
                module = TinyTransformer(cfg)
        self.module, self.hooks, self.cfg = module, module.hooks, module.cfg
        c = self.cfg
        self.n_layers, self.n_heads, self.n_kv_heads = c.n_layers, c.n_heads, c.n_heads
        self.d_model, self.d_head, self.vocab_size = c.d_model, c.d_model // c.n_heads, c.vocab_size

    def _forward(self, tokens, vectors=None, vector_mask=None, attention_mask=None):
        return self.module(tokens, vectors, vector_mask)

    def out_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return self.module.blocks[layer].out(z.reshape(*z.shape[:-2], -1))

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write model.safetensors and iclscope.json (config, plus ``extra`` metadata) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}
        tmp = path / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(path / WEIGHTS_FILE)
        meta = {"kind": "iclscope-tiny", "config": asdict(self.cfg), **(extra or {})}
        (path / (CONFIG_FILE + ".tmp")).write_text(json.dumps(meta, indent=2))
        (path / (CONFIG_FILE + ".tmp")).replace(path / CONFIG_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path, device=None, dtype=None) -> "TinyModel":
        path = Path(path)
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise IclscopeError(f"{path}: cannot read {CONFIG_FILE}: {e}") from None
        if meta.get("kind") != "iclscope-tiny":
            raise IclscopeError(f"{path / CONFIG_FILE} is not an iclscope model config")
        model = cls(TinyConfig.from_dict(meta["config"]))
        state = load_file(str(path / WEIGHTS_FILE))
        missing, unexpected = model.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IclscopeError(f"{path / WEIGHTS_FILE} does not fit its config: missing {missing}, unexpected {unexpected}")
        model.module.to(device=device, dtype=dtype).eval()
        model.meta = meta
        return model
