"""Hugging Face causal LMs behind the head interface.

- ``attention.py``: the one attention function registered with transformers' ``AttentionInterface``;
- ``model.py``: ``HFModel`` (layouts of each family, residual hooks, the final-token path);
- ``random.py``: ``random:<family>`` models from config classes, ``plain_copy`` for checks;
- ``hub.py``: hub names and local folders, revisions, offline rules.
"""

from .attention import ATTN_IMPL, iclscope_attention, register
from .hub import cached_revisions, hub_reachable, load_pretrained, offline, revision_architecture, revision_config
from .model import HFModel
from .random import RANDOM_FAMILIES, byte_tokenizer, load_random, plain_copy, random_config

__all__ = ["ATTN_IMPL", "HFModel", "RANDOM_FAMILIES", "byte_tokenizer", "cached_revisions", "hub_reachable",
           "iclscope_attention", "load_pretrained", "load_random", "offline", "plain_copy", "random_config",
           "register", "revision_architecture", "revision_config"]
