"""iclscope: find, score, ablate and grow the attention heads behind in-context learning.

    import iclscope
    model = iclscope.load("random:gpt2")            # or a hub name, a local directory, an iclscope run
    logits, cache = model.run(tokens, record=["z"])
    with model.intervene([iclscope.Ablate([(1, 2)], how="zero")]):
        logits = model(tokens)
"""

from .errors import IclscopeError
from .interventions import (SITES, AddVector, Ablate, ClampPattern, Graft, Patch, Preserve, compile_interventions,
                            hook_name)
from .models import Cache, Model, TinyConfig, TinyModel, head_means, load

__version__ = "0.1.0"

__all__ = ["IclscopeError", "SITES", "AddVector", "Ablate", "ClampPattern", "Graft", "Patch", "Preserve",
           "compile_interventions", "hook_name", "Cache", "Model", "TinyConfig", "TinyModel", "head_means", "load"]
