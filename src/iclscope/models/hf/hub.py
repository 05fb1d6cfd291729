"""Hub names and local folders: loading a pretrained model, revisions, and the offline rules.

Public helpers used outside ``models/`` (e.g. by ``iclscope dynamics``): ``offline()``, ``hub_reachable()``,
``cached_revisions(name)``, ``revision_architecture(name, revision)``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from ...errors import IclscopeError
from .attention import ATTN_IMPL, register
from .model import HFModel

ARCH_KEYS = ("model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
             "vocab_size")


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:  # pragma: no cover
        host = "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_pretrained(spec: str, revision: str | None = None, dtype=None, device=None, device_map=None,
                    trust_remote_code: bool = False) -> HFModel:
    """A hub name (from the local cache first) or a local directory holding a transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register()
    where = f"{spec}" + (f" (revision {revision})" if revision else "")
    path = Path(spec).expanduser()
    is_dir = path.is_dir()
    if is_dir and not (path / "config.json").exists():
        raise IclscopeError(f"{spec}: the directory holds no model (no config.json of a transformers model, "
                            f"no iclscope.json of an iclscope model)")
    if not is_dir and (spec.startswith((".", "/", "~")) or not _HUB_NAME.match(spec)):
        raise IclscopeError(f"{spec}: no such directory, and not a valid hub model name")
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code, attn_implementation=ATTN_IMPL)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:  # accelerate (a dependency) places the layers; caches stay on their layer's device
        kwargs["device_map"] = device_map
    try:
        module = AutoModelForCausalLM.from_pretrained(str(path) if is_dir else spec, local_files_only=True, **kwargs)
        local_only = True
    except KeyError as e:
        if e.args != (ATTN_IMPL,):
            raise
        _refuse_own_attention(str(path) if is_dir else spec, revision)
    except (OSError, ValueError) as e:
        if is_dir:
            raise IclscopeError(f"{where}: cannot load the model in this directory: {str(e).splitlines()[0]}") from None
        if offline():
            raise IclscopeError(f"{where}: not in the local Hugging Face cache, and the hub is offline "
                                f"(HF_HUB_OFFLINE=1). Download it on a machine with network "
                                f"(`hf download {spec}" + (f" --revision {revision}" if revision else "")
                                + "`) and copy the cache (HF_HOME), or pass a local directory.") from None
        if not hub_reachable():
            raise IclscopeError(f"{where}: not in the local Hugging Face cache, and the hub cannot be reached. "
                                f"Download it where there is network and copy the cache (HF_HOME), pass a local "
                                f"directory, or try random:<family> for a small random model.") from None
        try:
            module = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
        except KeyError as e2:
            if e2.args != (ATTN_IMPL,):
                raise
            _refuse_own_attention(spec, revision)
        except (OSError, ValueError) as e2:
            raise IclscopeError(f"{where}: {str(e2).splitlines()[0]}") from None
        local_only = False
    if device is not None and device_map is None:
        module.to(device)
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if is_dir else spec, revision=revision,
                                                  local_files_only=local_only, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        pass  # a model without a tokenizer still has the head interface; text tasks will say so
    if tokenizer is not None and not _encodes(tokenizer):
        tokenizer = None  # e.g. a local folder without tokenizer files: a tokenizer that encodes nothing
    return HFModel(module, tokenizer, name=spec)


def _refuse_own_attention(where: str, revision: str | None) -> None:
    """One line for a family that picks its own attention classes (falcon, gpt_neo, ...): transformers
    raises KeyError('iclscope') when asked for the AttentionInterface."""
    from transformers import AutoConfig

    try:
        family = AutoConfig.from_pretrained(where, revision=revision).model_type
    except Exception:  # pragma: no cover
        family = "?"
    raise IclscopeError(f"model family {family!r} is not supported: it picks its own attention classes and does "
                        f"not route attention through transformers' AttentionInterface") from None


def _encodes(tokenizer) -> bool:
    """Whether ``tokenizer`` turns plain text into at least one token id."""
    try:
        return len(tokenizer("the cat", add_special_tokens=False)["input_ids"]) > 0
    except Exception:
        return False


def cached_revisions(name: str) -> list[str]:
    """The revisions (refs) of hub model ``name`` present in the local Hugging Face cache."""
    try:
        from huggingface_hub import constants
        refs = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs"
        return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())
    except Exception:  # pragma: no cover
        return []


def revision_config(name: str, revision: str) -> dict:
    """The transformers config of hub model ``name`` at ``revision``, as a dict: from the local cache, else
    (online) the hub. An IclscopeError naming the revision when it cannot be found."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=revision, local_files_only=True).to_dict()
    except (OSError, ValueError):
        pass
    cached = cached_revisions(name)
    have = (f"revisions in the local cache: {', '.join(cached)}" if cached
            else "no revision of it is in the local Hugging Face cache")
    if offline() or not hub_reachable():
        raise IclscopeError(f"{name}: revision {revision!r} is not in the local Hugging Face cache and the hub "
                            f"{'is offline (HF_HUB_OFFLINE=1)' if offline() else 'cannot be reached'} ({have}); "
                            f"download it where there is network (`hf download {name} --revision {revision}`) "
                            f"and copy the cache (HF_HOME), or leave it out of --revisions") from None
    try:
        return AutoConfig.from_pretrained(name, revision=revision).to_dict()
    except (OSError, ValueError) as e:
        raise IclscopeError(f"{name}: revision {revision!r} cannot be found: {str(e).splitlines()[0]}") from None


def revision_architecture(name: str, revision: str) -> dict:
    """The architecture of ``name`` at ``revision`` (family, layers, heads, kv heads, width, vocabulary), read
    from its config without loading weights: {model_type, num_hidden_layers, ...} (``ARCH_KEYS``)."""
    cfg = revision_config(name, revision)
    return {k: cfg.get(k) for k in ARCH_KEYS}


def _meta_params(config) -> int:
    """Parameters of a transformers model built from ``config`` on the meta device (no memory used)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        module = AutoModelForCausalLM.from_config(config)
    return int(sum(p.numel() for p in module.parameters()))


def hf_parameter_count(spec: str, revision: str | None = None) -> int:
    """The parameter count of a random:<family> spec, a transformers folder or a hub model, from its
    config alone (an empty model on the meta device: weights are never loaded)."""
    from transformers import AutoConfig

    if spec.startswith("random:"):
        from .random import random_spec
        return _meta_params(random_spec(spec)[0])
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").exists():
            try:
                return _meta_params(AutoConfig.from_pretrained(str(path), local_files_only=True))
            except (OSError, ValueError) as e:
                raise IclscopeError(f"{spec}: unreadable config.json ({str(e).splitlines()[0]})") from None
        raise IclscopeError(f"{spec}: the folder holds no model (no config.json, no iclscope.json)")
    if spec.startswith((".", "/", "~")):
        raise IclscopeError(f"{spec}: no such folder")
    cfg = revision_config(spec, revision or "main")
    model_type = cfg.pop("model_type", None)
    try:
        return _meta_params(AutoConfig.for_model(model_type, **cfg))
    except (ValueError, KeyError) as e:
        raise IclscopeError(f"{spec}: cannot build a model from its config ({str(e).splitlines()[0]})") from None
