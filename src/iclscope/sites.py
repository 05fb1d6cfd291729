"""The one naming contract: sites, hook names and shapes.

Every model family calls its hook points by the names built here, the compiler addresses them by these
names, and ``Cache`` is keyed by them (TransformerLens-style ``blocks.{layer}.{hook}``)::

    from iclscope.sites import hook_name, SITES
    hook_name("z", 3)            # 'blocks.3.attn.hook_z'
    parse_hook_name('blocks.3.attn.hook_z')   # ('z', 3)

===========  ==========================  ==================  ==============================
site         hook name                   shape               what it is
===========  ==========================  ==================  ==============================
resid_pre    blocks.L.hook_resid_pre     (B, T, d_model)     input of block L
q            blocks.L.attn.hook_q        (B, T, H, d_head)   queries, after rotary
k            blocks.L.attn.hook_k        (B, T, H, d_head)   keys, after rotary, one per
                                                             *query* head (GQA kv groups are
                                                             expanded, so every query head
                                                             is addressed on its own)
v            blocks.L.attn.hook_v        (B, T, H, d_head)   values, expanded likewise
pattern      blocks.L.attn.hook_pattern  (B, H, T, T)        attention pattern [query, key]
z            blocks.L.attn.hook_z        (B, T, H, d_head)   per-head output: the head's slice
                                                             of the input to the attention
                                                             output projection
attn_out     blocks.L.hook_attn_out      (B, T, d_model)     attention block output
resid_post   blocks.L.hook_resid_post    (B, T, d_model)     output of block L
===========  ==========================  ==================  ==============================

Head sites (q, k, v, pattern, z) are addressed by (layer, head); layer sites by layer. A model runs the
per-head sites of a layer only when something is hooked there (else its fused attention kernel runs).
"""

from __future__ import annotations

from typing import Sequence, Union

from .errors import IclscopeError

HEAD_SITES = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
              "pattern": "attn.hook_pattern"}
LAYER_SITES = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "resid_post": "hook_resid_post"}
SITES = {**HEAD_SITES, **LAYER_SITES}

Head = tuple[int, int]
"""A head, named as (layer, head) everywhere outside ``models/``."""

Positions = Union[None, int, Sequence[int], slice]
"""Token positions: None (all), an int, a list, or a slice; negative values count from the end."""

_PARSE: dict[str, tuple[str, int]] = {}


def hook_name(site: str, layer: int) -> str:
    """The hook-point name of ``site`` at ``layer``, e.g. ``hook_name("z", 3) == "blocks.3.attn.hook_z"``."""
    if site not in SITES:
        raise IclscopeError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
    name = f"blocks.{int(layer)}.{SITES[site]}"
    _PARSE[name] = (site, int(layer))
    return name


def parse_hook_name(name: str) -> tuple[str, int]:
    """(site, layer) of a hook name built by ``hook_name``; an IclscopeError for anything else."""
    hit = _PARSE.get(name)
    if hit is not None:
        return hit
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        for site, suffix in SITES.items():
            if parts[2] == suffix:
                return site, int(parts[1])
    raise IclscopeError(f"unknown hook name {name!r}; hook names look like 'blocks.3.attn.hook_z'")


def layer_names(layer: int) -> dict[str, str]:
    """Every site's hook name at ``layer``: {site: name} (what a model's block calls)."""
    return {site: hook_name(site, layer) for site in SITES}


def is_head_site(site: str) -> bool:
    return site in HEAD_SITES


__all__ = ["HEAD_SITES", "LAYER_SITES", "SITES", "Head", "Positions", "hook_name", "parse_hook_name",
           "layer_names", "is_head_site"]
