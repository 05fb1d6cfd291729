"""The choices behind FV scores, function vectors and induction scores, named in one place.

``Protocol()`` is the studies' published protocol (Todd et al.'s ``function_vectors`` code, which Yin &
Steinhardt build on; reference.md section D); ``Protocol.iclscope()`` is iclscope's earlier variant. Each
field is one choice; docs/protocol.md says what each value does and why the variant exists. The atlas
writes ``protocol.to_dict()`` into its results' ``config.json`` (the ``protocol`` block).

Fields (published default first):

- ``bos``: ``"published"`` (every prompt starts with exactly one BOS token: prepended for tokenizers that
  add none, GPT-2 / GPT-NeoX / GPT-J / OLMo / Qwen2; Llama's own otherwise), ``"tokenizer"`` (a BOS only
  where the tokenizer adds one itself), ``"none"``.
- ``corrupt``: the corruption of the demonstration labels: ``"permute"`` (a random permutation; a label
  may stay on its own input), ``"shuffle"`` (a random derangement where possible), ``"cycle"`` (demo i
  shows demo i-1's label).
- ``corrupt_prompts``: ``"fresh"`` (the corrupted prompts are drawn anew, independent of the clean
  prompts behind the task mean: demonstrations from the task's train split, queries from its held-out
  split, as are the clean prompts') or ``"twins"`` (the first clean prompts with their labels corrupted).
- ``test_fraction``: the held-out share of each task's pairs for ``"fresh"`` (queries come from it).
- ``fv_bias``: ``"full"`` (each head's vector goes through the output projection WITH its bias, as the
  published code applies ``out_proj`` to each head's output alone: every head contributes the whole
  bias b_O) or ``"none"`` (the heads' outputs only: out_proj(z_h) - out_proj(0)).
- ``fv_layer``: ``"output"`` (the FV is added to the output of layer L, ``resid_post``) or ``"input"``
  (to the input of layer L, ``resid_pre``: iclscope's old layer L is the published layer L-1).
- ``induction``: ``"iclscope"`` (mean attention to the target over the query positions that have one) or
  ``"head_detector"`` (TransformerLens's head_detector: the summed attention on every target over all
  rows, divided by the sequence length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ..errors import IclscopeError

__all__ = ["Protocol", "PROTOCOL_CHOICES"]

#: The allowed values of each field (the published one first).
PROTOCOL_CHOICES: dict[str, tuple] = {
    "bos": ("published", "tokenizer", "none"),
    "corrupt": ("permute", "shuffle", "cycle"),
    "corrupt_prompts": ("fresh", "twins"),
    "fv_bias": ("full", "none"),
    "fv_layer": ("output", "input"),
    "induction": ("iclscope", "head_detector"),
}


@dataclass(frozen=True)
class Protocol:
    """One choice per field; ``Protocol()`` is the published protocol (see the module docstring)."""

    bos: str = "published"
    corrupt: str = "permute"
    corrupt_prompts: str = "fresh"
    test_fraction: float = 0.3
    fv_bias: str = "full"
    fv_layer: str = "output"
    induction: str = "iclscope"

    def __post_init__(self) -> None:
        for name, allowed in PROTOCOL_CHOICES.items():
            v = getattr(self, name)
            if v not in allowed:
                raise IclscopeError(f"protocol {name}={v!r}: choose from {', '.join(allowed)}")
        tf = self.test_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0.0 < tf < 1.0:
            raise IclscopeError(f"protocol test_fraction={tf!r}: must be a number in (0, 1)")

    @classmethod
    def iclscope(cls) -> "Protocol":
        """iclscope's earlier variant: BOS as the tokenizer does, cycled labels on the clean prompts' twins,
        the FV without the projection bias, added at the input of layer L."""
        return cls(bos="tokenizer", corrupt="cycle", corrupt_prompts="twins", fv_bias="none", fv_layer="input")

    @classmethod
    def make(cls, value: Any = None, **overrides) -> "Protocol":
        """A Protocol from None (published), ``"published"``, ``"iclscope"``, a Protocol or a dict of fields
        (over the published defaults), then ``overrides`` (fields given as None are left alone)."""
        if value is None or value == "published":
            base = cls()
        elif value == "iclscope":
            base = cls.iclscope()
        elif isinstance(value, Protocol):
            base = value
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise IclscopeError(f"protocol: unknown field(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(f.name for f in fields(cls))}")
            base = cls(**dict(value))
        else:
            raise IclscopeError(f"protocol must be 'published', 'iclscope', a Protocol or a dict, got {value!r}")
        extra = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(extra) - {f.name for f in fields(cls)})
        if unknown:
            raise IclscopeError(f"protocol: unknown field(s) {', '.join(unknown)}")
        return replace(base, **extra) if extra else base

    def to_dict(self) -> dict:
        """The fields as plain JSON values (the ``protocol`` block of config.json)."""
        return asdict(self)

    @property
    def add_bos(self):
        """The ``add_bos`` argument of ``build_prompts`` for this protocol."""
        return {"published": "published", "tokenizer": "tokenizer", "none": False}[self.bos]

    @property
    def fv_site(self) -> str:
        """The residual-stream site the function vector is added to: resid_post (output) or resid_pre."""
        return "resid_post" if self.fv_layer == "output" else "resid_pre"

    @property
    def layer_convention(self) -> str:
        """How tables name the FV layer: "layer L = output of block L" or "layer L = input of block L"."""
        return f"layer L = {self.fv_layer} of block L ({self.fv_site})"
