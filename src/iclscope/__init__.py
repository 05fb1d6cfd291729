"""iclscope: find, score, ablate and grow the attention heads behind in-context learning.

    import iclscope
    model = iclscope.load("random:gpt2")            # or a hub name, a local directory, an iclscope run
    logits, cache = model.run(tokens, record=["z"])
    with model.intervene([iclscope.Ablate([(1, 2)], how="zero")]):
        logits = model(tokens)
"""

from .cache import Cache
from .errors import IclscopeError
from .interventions import AddVector, Ablate, ClampPattern, Graft, Patch, Preserve
from .sites import SITES, hook_name

_LAZY = {"compile_interventions": "compile", "Model": "models", "TinyConfig": "models", "TinyModel": "models",
         "head_means": "models", "load": "models"}


def __getattr__(name: str):
    # model code loads on first use, so that `import iclscope.interventions` (plain data) imports no model code
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = ["IclscopeError", "SITES", "AddVector", "Ablate", "ClampPattern", "Graft", "Patch", "Preserve",
           "compile_interventions", "hook_name", "Cache", "Model", "TinyConfig", "TinyModel", "head_means", "load"]
