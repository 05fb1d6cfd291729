"""Models behind one head-level interface; ``load(spec)`` picks the family.

spec:
  - ``random:<family>[:opts]`` for family in gpt2, gpt_neox, llama (GQA), qwen2 (GQA): a small seeded
    random model built from the family's config class, with a byte-level tokenizer; no download;
  - a directory holding an iclscope model (``iclscope.json`` + ``model.safetensors``);
  - a directory holding a transformers model (``config.json``), or a Hugging Face hub name (looked up in
    the local cache first; ``revision`` picks a training checkpoint such as Pythia's "step1000").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cache import Cache
from ..errors import IclscopeError
from .base import HookPoints, Model, PrefixCache, PrefixRows, head_means
from .tiny import CONFIG_FILE, TinyConfig, TinyModel, TinyTransformer

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


_PICKLES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise IclscopeError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load(spec: str | Path, revision: str | None = None, dtype=None, device=None, device_map=None,
         trust_remote_code: bool = False) -> Model:
    """Load a model by spec (see the module docstring). Returns a ``Model``."""
    dtype = _dtype(dtype)
    if device is not None and not isinstance(device, torch.device):
        from ..schema import check_device
        check_device(str(device))
    spec_s = str(spec)
    path = Path(spec_s).expanduser()
    if path.is_file():
        if path.suffix.lower() in _PICKLES:
            raise IclscopeError(f"{spec_s}: a pickled model file; iclscope never unpickles (it can run code): give "
                                f"a folder with safetensors weights (an iclscope model or a transformers model)")
        raise IclscopeError(f"{spec_s} is a file; a model is a folder (iclscope.json or config.json), a hub name or "
                            f"random:<family>")
    if revision is not None and (spec_s.startswith("random:") or path.is_dir()):
        raise IclscopeError(f"--revision {revision!r} with {spec_s}: a revision only applies to hub models "
                            f"(not to random: models, local folders or iclscope checkpoints)")
    if spec_s.startswith("random:"):
        from .hf import load_random
        return load_random(spec_s, dtype=dtype, device=device)
    if path.is_dir() and (path / CONFIG_FILE).exists():
        return TinyModel.load(path, device=device, dtype=dtype)
    from .hf import load_pretrained
    return load_pretrained(spec_s, revision=revision, dtype=dtype, device=device, device_map=device_map,
                           trust_remote_code=trust_remote_code)


def checkpoint_info(path: str | Path) -> dict | None:
    """The metadata saved with an iclscope model in folder ``path`` (its iclscope.json: "config" the
    architecture, and what the saver added, e.g. a training-lab checkpoint's "step" and "sequences"), read
    without loading weights; None when ``path`` holds no iclscope model. An IclscopeError when unreadable."""
    path = Path(path).expanduser()
    file = path / CONFIG_FILE
    if not path.is_dir() or not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise IclscopeError(f"checkpoint {path}: unreadable {CONFIG_FILE} ({e})") from None


def count_parameters(spec: str | Path, revision: str | None = None) -> int:
    """The parameter count of the model ``spec`` names, without loading weights: random:<family> specs
    from their options, iclscope model folders from the size of their float32 weight files, transformers
    folders and hub names from their config. IclscopeError when none of these is found."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / CONFIG_FILE).exists():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix == ".safetensors") // 4
    from .hf.hub import hf_parameter_count
    return hf_parameter_count(spec, revision)


__all__ = ["count_parameters", "Cache", "HookPoints", "Model", "PrefixCache", "PrefixRows", "TinyConfig", "TinyModel", "TinyTransformer",
           "checkpoint_info", "head_means", "load"]
