"""The one naming contract: sites, hook names and shapes.

Every model family calls its hook points by the names built here, the compiler addresses them by these
names, and ``Cache`` is keyed by them (TransformerLens-style ``blocks.{layer}.{hook}``)::

    from iclscope.sites import hook_name, SITES
    hook_name("z", 3)            # 'blocks.3.attn.hook_z'
    hook_name("embed")           # 'hook_embed' (a model site: no layer)
    parse_hook_name('blocks.3.attn.hook_z')   # ('z', 3)
    parse_hook_name('hook_embed')             # ('embed', None)

===========  ===============================  ==================  ==============================
site         hook name                        shape               what it is
===========  ===============================  ==================  ==============================
embed        hook_embed                       (B, T, d_model)     output of the embeddings, incl.
                                                                  learned positions: what enters
                                                                  block 0
resid_pre    blocks.L.hook_resid_pre          (B, T, d_model)     input of block L
q            blocks.L.attn.hook_q             (B, T, H, d_head)   queries, after rotary
k            blocks.L.attn.hook_k             (B, T, H, d_head)   keys, after rotary, one per
                                                                  *query* head (GQA kv groups are
                                                                  expanded, so every query head
                                                                  is addressed on its own)
v            blocks.L.attn.hook_v             (B, T, H, d_head)   values, expanded likewise
attn_scores  blocks.L.attn.hook_attn_scores   (B, H, T, T)        pre-softmax scores [query, key],
                                                                  after scaling, softcap and the
                                                                  mask (masked keys hold a huge
                                                                  negative number); float32 in
                                                                  Hugging Face families
pattern      blocks.L.attn.hook_pattern       (B, H, T, T)        attention pattern [query, key]
z            blocks.L.attn.hook_z             (B, T, H, d_head)   per-head output: the head's slice
                                                                  of the input to the attention
                                                                  output projection
attn_out     blocks.L.hook_attn_out           (B, T, d_model)     attention block output
resid_mid    blocks.L.hook_resid_mid          (B, T, d_model)     residual after attention is
                                                                  added, before the MLP (refused
                                                                  where attention and MLP run in
                                                                  parallel, e.g. Pythia)
mlp_in       blocks.L.hook_mlp_in             (B, T, d_model)     the MLP's input, after its norm
mlp_out      blocks.L.hook_mlp_out            (B, T, d_model)     the MLP's output
resid_post   blocks.L.hook_resid_post         (B, T, d_model)     output of block L
ln_final     hook_ln_final                    (B, T, d_model)     the final norm's output (what
                                                                  the unembedding reads)
===========  ===============================  ==================  ==============================

Head sites (q, k, v, attn_scores, pattern, z) are addressed by (layer, head); layer sites by layer; model
sites (embed, ln_final) by name alone (layer None). A model runs the per-head sites of a layer only when
something is hooked there (else its fused attention kernel runs). A model that lacks a site (an
attention-only model has no MLP) lists it in ``Model.missing_sites()`` and refuses it by name.
"""

from __future__ import annotations

from typing import Sequence, Union

from .errors import IclscopeError

HEAD_SITES = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
              "pattern": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores"}
LAYER_SITES = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "resid_post": "hook_resid_post",
               "resid_mid": "hook_resid_mid", "mlp_in": "hook_mlp_in", "mlp_out": "hook_mlp_out"}
MODEL_SITES = {"embed": "hook_embed", "ln_final": "hook_ln_final"}
"""Sites with no layer: one hook point per model."""
PER_LAYER_SITES = {**HEAD_SITES, **LAYER_SITES}
SITES = {**PER_LAYER_SITES, **MODEL_SITES}
QK_SITES = ("pattern", "attn_scores")
"""Head sites laid out (B, H, query, key): positions there are query positions."""

Head = tuple[int, int]
"""A head, named as (layer, head) everywhere outside ``models/``."""

Positions = Union[None, int, Sequence[int], slice]
"""Token positions: None (all), an int, a list, or a slice; negative values count from the end."""

_PARSE: dict[str, tuple[str, int | None]] = {name: (site, None) for site, name in MODEL_SITES.items()}


def hook_name(site: str, layer: int | None = None) -> str:
    """The hook-point name of ``site`` at ``layer``: ``hook_name("z", 3) == "blocks.3.attn.hook_z"``;
    model sites take no layer: ``hook_name("embed") == "hook_embed"``."""
    if site not in SITES:
        raise IclscopeError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
    if site in MODEL_SITES:
        if layer is not None:
            raise IclscopeError(f"site {site!r} is not per layer (its hook is {MODEL_SITES[site]!r}); give no layer")
        return MODEL_SITES[site]
    if layer is None:
        raise IclscopeError(f"site {site!r} is per layer; give a layer, e.g. hook_name({site!r}, 0)")
    name = f"blocks.{int(layer)}.{SITES[site]}"
    _PARSE[name] = (site, int(layer))
    return name


def parse_hook_name(name: str) -> tuple[str, int | None]:
    """(site, layer) of a hook name built by ``hook_name`` (layer None for a model site); the inverse of
    ``hook_name``. An IclscopeError for anything else."""
    hit = _PARSE.get(name)
    if hit is not None:
        return hit
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        for site, suffix in PER_LAYER_SITES.items():
            if parts[2] == suffix:
                return site, int(parts[1])
    raise IclscopeError(f"unknown hook name {name!r}; hook names look like 'blocks.3.attn.hook_z' or 'hook_embed'")


def layer_names(layer: int) -> dict[str, str]:
    """Every per-layer site's hook name at ``layer``: {site: name} (what a model's block calls)."""
    return {site: hook_name(site, layer) for site in PER_LAYER_SITES}


def is_head_site(site: str) -> bool:
    return site in HEAD_SITES


__all__ = ["HEAD_SITES", "LAYER_SITES", "MODEL_SITES", "PER_LAYER_SITES", "QK_SITES", "SITES", "Head", "Positions", "hook_name", "parse_hook_name",
           "layer_names", "is_head_site"]
