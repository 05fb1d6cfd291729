"""Random models of each family (no download), from the family's config class, with the family's subword
tokenizer shipped in ``iclscope/data/tokenizers/<family>/`` (or a byte tokenizer on request); and
``plain_copy``, the same weights in a stock transformers module (for checks)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from ...errors import IclscopeError
from .attention import ATTN_IMPL, register
from .model import REFUSED, HFModel

_OWN = "it picks its own attention classes and does not route attention through transformers' AttentionInterface"
# families whose attention bypasses the interface in the installed transformers (docs/families.md)
OWN_ATTENTION = {"falcon": _OWN, "gpt_neo": _OWN, "bloom": _OWN, "git": _OWN}

TOKENIZER_FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2")  # the families whose tokenizers ship with iclscope
# every family random:<family> builds (each checked by tests/test_families.py; docs/families.md)
RANDOM_FAMILIES = TOKENIZER_FAMILIES + (
    "apertus", "apertus1p5_text", "arcee", "aria_text", "biogpt", "codegen", "cohere", "cohere2",
    "cohere2_moe", "ctrl", "cwm", "doge", "dots1", "ernie4_5", "ernie4_5_moe", "exaone", "exaone4",
    "exaone_moe", "flex_olmo", "gemma", "gemma2", "gemma3_text", "glm", "glm4", "glm4_moe",
    "gpt_bigcode", "gptj", "granite", "granitemoe", "granitemoeshared", "helium", "hunyuan_v1_dense",
    "hunyuan_v1_moe", "hy_v3", "hyperclovax", "internlm3", "iquestcoder", "jais2", "kolibri1", "llama4_text",
    "mellum", "minimax_m2", "minimax_m3_vl_text", "ministral", "ministral3", "mistral", "mixtral", "nanochat",
    "nemotron", "olmo", "olmo2", "olmo3", "olmoe", "opt", "persimmon", "phi", "phi3", "phimoe", "qwen2_moe",
    "qwen3", "qwen3_moe", "sarvam_moe", "seed_oss", "smollm3", "solar_open", "stablelm", "starcoder2",
    "vaultgemma",
)
# family -> the shipped tokenizer it gets (the closest one: same tokenizer kind); default llama's
_TOKENIZER_OF = {"gpt_bigcode": "gpt2", "codegen": "gpt2", "gptj": "gpt2", "opt": "gpt2",
                 "olmo": "gpt_neox", "olmo2": "gpt_neox", "olmo3": "gpt_neox", "olmoe": "gpt_neox",
                 "stablelm": "gpt_neox", "qwen3": "qwen2", "starcoder2": "gpt2"}
RANDOM_OPTIONS = ("layers", "heads", "d_model", "kv_heads", "seed", "n_ctx")
TOKENIZERS = ("family", "byte")
TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "data" / "tokenizers"


def family_tokenizer(family: str):
    """The subword tokenizer shipped for ``family`` (4096 tokens; see data/tokenizers/SOURCES.md).

    gpt2, gpt_neox: byte-level BPE with leading-space tokens ("ĠParis"), "<|endoftext|>" as BOS/EOS
    (id 4095 for gpt2, 0 for gpt_neox), no BOS added. llama: "▁"-word BPE with byte fallback, "<unk>" 0,
    "<s>" 1 (added at the start of every encoded text), "</s>" 2. qwen2: byte-level BPE, "<|endoftext|>"
    (EOS, pad; no BOS token, none added). A fresh tokenizer each call (callers may change it).
    """
    from transformers import PreTrainedTokenizerFast

    if family not in TOKENIZER_FAMILIES:
        raise IclscopeError(f"unknown family {family!r} for a tokenizer; choose from {', '.join(TOKENIZER_FAMILIES)}")
    folder = TOKENIZER_DIR / family
    if not (folder / "tokenizer.json").is_file():
        raise IclscopeError(f"the tokenizer of {family} is missing from {folder} (a broken install; "
                            f"rebuild with tools/build_tokenizers.py)")
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


@functools.lru_cache(maxsize=None)
def _special_ids(family: str) -> tuple[int, int, int]:
    """(vocab size, BOS id, EOS id) of a family's tokenizer; BOS is EOS's id where it has no BOS token."""
    tok = family_tokenizer(family)
    eos = tok.eos_token_id
    return len(tok), (eos if tok.bos_token_id is None else tok.bos_token_id), eos


def byte_tokenizer():
    """A real byte-level BPE tokenizer with no merges: 256 byte tokens + "<|endoftext|>" (id 256).

    Same leading-space convention as GPT-2 (" Paris" starts with the byte token for a space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    vocab["<|endoftext|>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_family(family: str) -> str:
    """The shipped tokenizer a random ``family`` model gets: its own, else the closest kind (byte-level BPE
    families: gpt2, gpt_neox or qwen2's; sentencepiece-style families: llama's)."""
    return family if family in TOKENIZER_FAMILIES else _TOKENIZER_OF.get(family, "llama")


def random_config(family: str, layers: int = 2, heads: int = 4, d_model: int = 64, kv_heads: int | None = None,
                  vocab: int = 257, n_ctx: int = 512, bos_id: int = 256, eos_id: int = 256):
    """A small config of ``family``. llama and qwen2 default to grouped-query attention (kv_heads = heads/2).

    Other families (``RANDOM_FAMILIES``): the family's config class with its defaults, resized: ``layers``
    layers, ``heads`` heads of d_model/heads, kv_heads (default heads/2 where the family has the option),
    MLP width 2*d_model, MoE families 4 experts with 2 active; the rest of the family's quirks (softcaps,
    sliding windows, qk-norm, partial rotary, parallel residual) are kept as the family's defaults.

    The defaults (257 tokens, BOS = EOS = 256) fit :func:`byte_tokenizer`; ``load_random`` passes the
    family tokenizer's size and ids."""
    import transformers as tf

    if family not in RANDOM_FAMILIES:
        raise IclscopeError(f"unknown family {family!r} for random:<family>; choose from {', '.join(RANDOM_FAMILIES)}")
    common = dict(vocab_size=vocab, bos_token_id=bos_id, eos_token_id=eos_id)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=layers, n_head=heads, n_embd=d_model, n_positions=n_ctx, **common)
    if family == "gpt_neox":  # Pythia's shape: partial rotary, parallel residual
        return tf.GPTNeoXConfig(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=d_model,
                                intermediate_size=4 * d_model, max_position_embeddings=n_ctx, rotary_pct=0.25,
                                use_parallel_residual=True, **common)
    kv = kv_heads or max(1, heads // 2)
    if heads % kv:
        raise IclscopeError(f"heads={heads} is not a multiple of kv_heads={kv}")
    if d_model % heads:
        raise IclscopeError(f"d_model={d_model} is not a multiple of heads={heads}")
    if family not in ("llama", "qwen2"):
        return _generic_config(family, layers, heads, d_model, kv, n_ctx, common)
    cls = tf.LlamaConfig if family == "llama" else tf.Qwen2Config
    return cls(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, hidden_size=d_model,
               intermediate_size=4 * d_model, max_position_embeddings=n_ctx, **common)


_MOE = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_topk=2,
            moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=0, moe_num_experts=4)


def _generic_config(family, layers, heads, d_model, kv, n_ctx, common):
    """The config class of ``family`` (transformers' CONFIG_MAPPING) with its defaults, resized."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[family]()
    small = dict(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=d_model, head_dim=d_model // heads,
                 intermediate_size=2 * d_model, max_position_embeddings=n_ctx, pad_token_id=None,
                 vocab_size=common["vocab_size"], bos_token_id=common["bos_token_id"],
                 eos_token_id=common["eos_token_id"])
    if hasattr(cfg, "num_key_value_heads"):
        small["num_key_value_heads"] = kv
    small.update({k: v for k, v in _MOE.items() if hasattr(cfg, k)})
    if hasattr(cfg, "rotary_dim"):  # gptj, codegen: rotary on part of each head
        small["rotary_dim"] = d_model // heads // 2
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:  # e.g. sliding/full alternation
        pattern = list(cfg.layer_types)
        small["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    for k, v in small.items():
        try:
            setattr(cfg, k, v)
        except (AttributeError, TypeError, ValueError):
            pass
    return cfg


def random_spec(spec: str) -> tuple:
    """Parse and check ``random:<family>[:key=value,...]``: returns (config, tokenizer kind, seed, family), the config
    exactly as ``load_random`` builds it (the one parser of these specs; the engine sizes jobs with it)."""
    parts = spec.split(":", 2)
    family = parts[1] if len(parts) > 1 else ""
    opts: dict = {}
    kind = "family"
    if len(parts) == 3 and parts[2]:
        for kv in parts[2].split(","):
            k, _, v = kv.partition("=")
            if k == "tokenizer" and v in TOKENIZERS:
                kind = v
                continue
            if k not in RANDOM_OPTIONS or not v.lstrip("-").isdigit():
                raise IclscopeError(f"{spec}: bad option {kv!r}; options are layers, heads, d_model, kv_heads, "
                                    f"n_ctx, seed (integers) and tokenizer ({' or '.join(TOKENIZERS)})")
            opts[k] = int(v)
    seed = opts.pop("seed", 0)
    if family in REFUSED or family in OWN_ATTENTION:
        raise IclscopeError(f"model family {family!r} is not supported: "
                            f"{REFUSED.get(family) or OWN_ATTENTION[family]}")
    if family not in RANDOM_FAMILIES:
        raise IclscopeError(f"unknown family {family!r} for random:<family>; choose from {', '.join(RANDOM_FAMILIES)}")
    if kind != "byte":
        vocab, bos, eos = _special_ids(tokenizer_family(family))
        opts.update(vocab=vocab, bos_id=bos, eos_id=eos)
    return random_config(family, **opts), kind, seed, family


def load_random(spec: str, dtype=None, device=None) -> HFModel:
    """``random:<family>[:key=value,...]`` e.g. ``random:llama:layers=4,heads=8,kv_heads=2,seed=1``.

    Options: layers, heads, d_model, kv_heads, n_ctx, seed (integers) and ``tokenizer=family`` (default:
    the family's shipped subword tokenizer, vocab_size 4096) or ``tokenizer=byte`` (:func:`byte_tokenizer`,
    vocab_size 257, BOS/EOS 256)."""
    from transformers import AutoModelForCausalLM

    cfg, kind, seed, family = random_spec(spec)
    tokenizer = byte_tokenizer() if kind == "byte" else family_tokenizer(tokenizer_family(family))
    register()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN_IMPL)
    module.to(device=device, dtype=dtype)
    return HFModel(module, tokenizer, name=spec)


def plain_copy(model: HFModel, attn_implementation: str = "eager"):
    """The same weights in a stock transformers module with no iclscope attention (for checks)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.module.config)
    plain = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    plain.load_state_dict(model.module.state_dict())
    return plain.to(model.device, model.dtype).eval()


