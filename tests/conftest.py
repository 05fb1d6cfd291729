import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may wait on the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import iclscope  # noqa: E402

FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2", "tiny"]


def make_model(family: str, seed: int = 0):
    """A small model of each family: 3 layers, 4 heads (llama, qwen2: 2 kv heads)."""
    if family == "tiny":
        cfg = iclscope.TinyConfig(n_layers=3, n_heads=4, d_model=32, d_mlp=64, vocab_size=257, n_ctx=64)
        return iclscope.TinyModel(cfg, seed=seed)
    # the byte tokenizer (257 ids) the per-family tests were designed with; tests of the shipped subword
    # tokenizers build their own models (tests/test_random_tokenizers.py)
    return iclscope.load(f"random:{family}:layers=3,heads=4,d_model=64,seed={seed},tokenizer=byte")


@pytest.fixture(params=FAMILIES)
def model(request):
    return make_model(request.param)


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 257, (3, 10), generator=g)
