"""``Cache``: recorded activations of one run, keyed by hook name (``iclscope.sites``)."""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import IclscopeError
from .sites import hook_name


class Cache(dict):
    """Recorded activations: hook name -> tensor (shapes in ``iclscope.sites``).

    ``cache.site("z", 1)`` is ``cache["blocks.1.attn.hook_z"]``. When recorded at chosen positions only,
    the position axis holds just those positions, in the order of ``cache.positions``.
    """

    positions: torch.Tensor | None = None

    def site(self, site: str, layer: int) -> torch.Tensor:
        name = hook_name(site, layer)
        if name not in self:
            raise IclscopeError(f"the cache holds no {name!r}; it holds {sorted(self)}")
        return self[name]

    def stack(self, site: str, layers: Iterable[int]) -> torch.Tensor:
        """(n_layers_given, ...) stack of one site over layers."""
        return torch.stack([self.site(site, layer) for layer in layers])


__all__ = ["Cache"]
