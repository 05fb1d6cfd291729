"""Which interventions does a run's config ask for? ``Clamps`` turns its [[clamp]] entries into
``iclscope.interventions`` (static ones, the same every step, and dynamic ones built from each batch).

Stacks. When several runs train as one stacked model (``Trainer.stack``), each run's clamps address its
own members (the interventions' ``members``), ``Clamps.merge`` joins them, and Graft sources are stacked
too: one frozen model whose member j is the source member that member j grafts from, so every graft of a
stack runs as one stacked pre-pass.

Preserve. A Preserve holds a site at its value in the unintervened pass. When none of the run's other
clamps acts at or before that site (in forward order), the value there IS the unintervened one, so the
clamp is a detach of the current value (a ``Hook`` returning ``x.detach()``) and no pre-pass runs; the
result is the same (to float rounding) at a fraction of the cost.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import IclscopeError
from ..compile import compile_interventions
from ..heads import all_heads
from ..interventions import Ablate, ClampPattern, Graft, Hook, Preserve
from ..models.tiny import TinyModel
from ..sites import parse_hook_name

CLAMP_KEYS = {"kind", "heads", "layers", "pattern", "strength", "positions", "how", "site", "source"}
CLAMP_KINDS = ("ClampPattern", "Ablate", "Preserve", "Graft")
# Patterns built from each batch, and the data they need (an objective lists those it supports).
DYNAMIC_PATTERNS = {"label_induction": "few-shot classification data (data.kind = 'fewshot')"}


def _detach(x):
    return x.detach()


def parse_heads(spec, model: TinyModel, i: int) -> list[tuple[int, int]] | None:
    """The (layer, head) pairs of clamp ``i``'s ``heads`` entry: None, "all", "layer:N" or [[l, h], ...]."""
    if spec is None:
        return None
    if spec == "all":
        return all_heads(model)
    if isinstance(spec, str) and spec.startswith("layer:"):
        layer = int(spec.split(":")[1])
        if not 0 <= layer < model.n_layers:
            raise IclscopeError(f"clamp {i}: layer {layer} does not exist (the model has {model.n_layers} layers)")
        return [(layer, h) for h in range(model.n_heads)]
    if isinstance(spec, list):
        return [tuple(x) for x in spec]
    raise IclscopeError(f"clamp {i}: heads must be 'all', 'layer:N' or a list of [layer, head], got {spec!r}")


# Sites of one block in forward order (for "does a clamp act before this site?").
_FORWARD = ("resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "attn_out", "resid_mid", "mlp_in", "mlp_out",
            "resid_post")


def _order(name: str) -> tuple:
    """A hook name's place in the forward pass: (layer, site index); embed first, ln_final last."""
    site, layer = parse_hook_name(name)
    if layer is None:
        return (-1, 0) if site == "embed" else (1 << 30, 0)
    return (layer, _FORWARD.index(site))


class Clamps:
    """The config's [[clamp]] entries as interventions: static ones (the same every step) and dynamic
    ones built from each batch (an ideal label-induction pattern depends on where the labels are).

    ``members``: the ensemble members of ``model`` this run owns when it is one run of a stack (None: the
    whole model); every intervention then carries them. ``sources``: the stack's shared dict of stacked
    Graft sources (path -> TinyModel of model.n_models members)."""

    def __init__(self, specs: list[dict], model: TinyModel, run_dir: Path | None = None,
                 members: list[int] | None = None, sources: dict | None = None):
        self.static: list = []
        self.dynamic: list[tuple[list, float, list | None]] = []  # (heads, strength, members): label induction
        self.sources: dict[str, TinyModel] = {} if sources is None else sources
        self.members = None if members is None or list(members) == list(range(model.n_models)) else list(members)
        M = self.members
        preserves = []
        for i, c in enumerate(specs):
            kind, heads = c["kind"], parse_heads(c.get("heads"), model, i)
            positions = c.get("positions")
            if kind == "ClampPattern":
                pattern = c.get("pattern", "prev_token")
                strength = float(c.get("strength", 1.0))
                if pattern == "label_induction":  # strength s on the correct label, 1-s on the wrong one
                    self._check(ClampPattern(heads, "prev_token", strength, positions=[-1], members=M), model, i)
                    self.dynamic.append((heads, strength, M))
                    continue
                iv = ClampPattern(heads, pattern, strength, positions=positions, members=M)
            elif kind == "Ablate":
                iv = Ablate(heads, how=c.get("how", "zero"), positions=positions, members=M)
            elif kind == "Preserve":
                iv = Preserve(c.get("site", "pattern"), heads=heads, layers=c.get("layers"), positions=positions,
                              members=M)
                preserves.append(len(self.static))
            else:  # Graft
                src = c.get("source")
                if not src:
                    raise IclscopeError(f"clamp {i}: Graft needs source = a checkpoint directory")
                iv = Graft(self._source(src, model, run_dir, i), layers=c.get("layers"),
                           site=c.get("site", "resid_post"), heads=heads, positions=positions, members=M)
            self._check(iv, model, i)
            self.static.append(iv)
        for k in preserves:
            self.static[k] = self._fast_preserve(self.static[k], k, model)

    def _fast_preserve(self, p: Preserve, k: int, model: TinyModel):
        """``p`` as a detach of the current value when no other clamp of this run acts at or before its
        sites (module docstring); ``p`` itself otherwise."""
        mine = [name for name in compile_interventions([p], model).ops]
        others = [iv for j, iv in enumerate(self.static) if j != k]
        names = list(compile_interventions(others, model).ops) if others else []
        names += [f"blocks.{layer}.attn.hook_pattern" for heads, _, _ in self.dynamic for layer, _ in heads]
        first = min(_order(n) for n in mine)
        if any(_order(n) <= first for n in names):
            return p
        return Hook(p.site, _detach, heads=p.heads, layers=p.layers, positions=p.positions, members=p.members)

    @classmethod
    def merge(cls, parts: list["Clamps"]) -> "Clamps":
        """The clamps of several runs of one stack (each addressing its own members) as one."""
        if len(parts) == 1:
            return parts[0]
        out = cls.__new__(cls)
        out.static = [iv for p in parts for iv in p.static]
        out.dynamic = [d for p in parts for d in p.dynamic]
        out.sources = parts[0].sources
        out.members = None
        return out

    @staticmethod
    def _check(iv, model, i):
        try:
            compile_interventions([iv], model)
        except IclscopeError as e:
            raise IclscopeError(f"clamp {i}: {e}") from None

    def _source(self, path: str, model: TinyModel, run_dir, i) -> TinyModel:
        """The frozen Graft source at ``path``: as saved for a run alone; in a stack, one stacked model of
        ``model.n_models`` members shared by every run that grafts from ``path``, whose members that this
        run owns hold the source's members (member r into member r; a single source into all), the others
        a filler (member 0) until their own run fills them."""
        p = Path(path)
        if not p.is_absolute() and run_dir is not None and not p.exists():
            p = run_dir / p
        key = str(p)
        M = self.members
        R = model.n_models if M is None else len(M)
        try:
            src = TinyModel.load(p)
        except IclscopeError as e:
            raise IclscopeError(f"clamp {i}: Graft source: {e}") from None
        if src.cfg != model.cfg:
            raise IclscopeError(f"clamp {i}: Graft source {p} has a different architecture")
        if src.n_models not in (1, R):
            raise IclscopeError(f"clamp {i}: Graft source {p} is an ensemble of {src.n_models}, "
                                f"this run has {R}")
        if M is None:
            stacked = self.sources.setdefault(key, src)
        else:
            stacked = self.sources.get(key)
            if stacked is None:
                stacked = self.sources[key] = TinyModel.stacked([src.member(0)] * model.n_models) \
                    if model.n_models > 1 else src
            with torch.no_grad():
                for r, j in enumerate(M):
                    for dst, s in zip(stacked.module.state_dict().values(), src.module.state_dict().values()):
                        dst[j] = s[r if src.n_models > 1 else 0]
        for q in stacked.module.parameters():
            q.requires_grad_(False)
        return stacked

    def for_batch(self, batch) -> list:
        """The dynamic clamps for one batch (the static ones live in a ``model.intervene`` context)."""
        return [ClampPattern(heads, batch.ideal_induction_pattern(s), positions=[-1], members=m)
                for heads, s, m in self.dynamic]

    def __bool__(self) -> bool:
        return bool(self.static or self.dynamic)
