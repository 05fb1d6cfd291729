"""iclscope: find, score, ablate and grow the attention heads behind in-context learning.

    import iclscope
    model = iclscope.load("random:gpt2")            # or a hub name, a local directory, an iclscope run
    logits, cache = model.run(tokens, record=["z"])
    with model.intervene([iclscope.Ablate([(1, 2)], how="zero")]):
        logits = model(tokens)

Every name below loads its module on first use, so that ``import iclscope.cli`` (and ``iclscope --help``)
imports no torch, and ``import iclscope.interventions`` (plain data) imports no model code.
"""

from .errors import IclscopeError

__version__ = "0.1.0"

_LAZY = {"Cache": "cache", "AddVector": "interventions", "Ablate": "interventions", "ClampPattern": "interventions",
         "Graft": "interventions", "Hook": "interventions", "Patch": "interventions", "Preserve": "interventions", "SITES": "sites",
         "hook_name": "sites", "compile_interventions": "compile", "Model": "models", "TinyConfig": "models",
         "TinyModel": "models", "head_means": "models", "load": "models"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["IclscopeError", *_LAZY]
