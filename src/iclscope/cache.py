"""``Cache``: recorded activations of one run, keyed by hook name (``iclscope.sites``)."""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import IclscopeError
from .sites import MODEL_SITES, hook_name


class Cache(dict):
    """Recorded activations: hook name -> tensor (shapes in ``iclscope.sites``).

    Three spellings of one entry: ``cache["blocks.1.attn.hook_z"]``, ``cache["z", 1]`` and
    ``cache.site("z", 1)``; model sites take no layer: ``cache["embed"]``, ``cache.site("ln_final")``
    (``cache["hook_embed"]`` too). When recorded at chosen positions only, the position axis holds just
    those positions, in the order of ``cache.positions``.
    """

    positions: torch.Tensor | None = None

    def site(self, site: str, layer: int | None = None) -> torch.Tensor:
        name = hook_name(site, layer)
        if name not in self:
            raise IclscopeError(f"the cache holds no {name!r}; it holds {sorted(self)}")
        return dict.__getitem__(self, name)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IclscopeError(f"cache[{key!r}]: index by (site, layer), e.g. cache['z', 1]")
            return self.site(*key)
        if isinstance(key, str) and key in MODEL_SITES and not dict.__contains__(self, key):
            return self.site(key)
        return dict.__getitem__(self, key)

    def stack(self, site: str, layers: Iterable[int]) -> torch.Tensor:
        """(n_layers_given, ...) stack of one site over layers."""
        return torch.stack([self.site(site, layer) for layer in layers])


__all__ = ["Cache"]
