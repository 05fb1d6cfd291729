"""Which interventions does a run's config ask for? ``Clamps`` turns its [[clamp]] entries into
``iclscope.interventions`` (static ones, the same every step, and dynamic ones built from each batch)."""

from __future__ import annotations

from pathlib import Path

from ..errors import IclscopeError
from ..compile import compile_interventions
from ..heads import all_heads
from ..interventions import Ablate, ClampPattern, Graft, Preserve
from ..models.tiny import TinyModel

CLAMP_KEYS = {"kind", "heads", "layers", "pattern", "strength", "positions", "how", "site", "source"}
CLAMP_KINDS = ("ClampPattern", "Ablate", "Preserve", "Graft")
# Patterns built from each batch, and the data they need (an objective lists those it supports).
DYNAMIC_PATTERNS = {"label_induction": "few-shot classification data (data.kind = 'fewshot')"}


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


class Clamps:
    """The config's [[clamp]] entries as interventions: static ones (the same every step) and dynamic
    ones built from each batch (an ideal label-induction pattern depends on where the labels are)."""

    def __init__(self, specs: list[dict], model: TinyModel, run_dir: Path | None = None):
        self.static: list = []
        self.dynamic: list[tuple[list, float]] = []  # (heads, strength) of label-induction clamps
        self.sources: dict[str, TinyModel] = {}
        for i, c in enumerate(specs):
            kind, heads = c["kind"], parse_heads(c.get("heads"), model, i)
            positions = c.get("positions")
            if kind == "ClampPattern":
                pattern = c.get("pattern", "prev_token")
                strength = float(c.get("strength", 1.0))
                if pattern == "label_induction":  # strength s on the correct label, 1-s on the wrong one
                    self._check(ClampPattern(heads, "prev_token", strength, positions=[-1]), model, i)
                    self.dynamic.append((heads, strength))
                    continue
                iv = ClampPattern(heads, pattern, strength, positions=positions)
            elif kind == "Ablate":
                iv = Ablate(heads, how=c.get("how", "zero"), positions=positions)
            elif kind == "Preserve":
                iv = Preserve(c.get("site", "pattern"), heads=heads, layers=c.get("layers"), positions=positions)
            else:  # Graft
                src = c.get("source")
                if not src:
                    raise IclscopeError(f"clamp {i}: Graft needs source = a checkpoint directory")
                iv = Graft(self._source(src, model, run_dir, i), layers=c.get("layers"),
                           site=c.get("site", "resid_post"), heads=heads, positions=positions)
            self._check(iv, model, i)
            self.static.append(iv)

    @staticmethod
    def _check(iv, model, i):
        try:
            compile_interventions([iv], model)
        except IclscopeError as e:
            raise IclscopeError(f"clamp {i}: {e}") from None

    def _source(self, path: str, model: TinyModel, run_dir, i) -> TinyModel:
        p = Path(path)
        if not p.is_absolute() and run_dir is not None and not p.exists():
            p = run_dir / p
        if str(p) not in self.sources:
            try:
                src = TinyModel.load(p)
            except IclscopeError as e:
                raise IclscopeError(f"clamp {i}: Graft source: {e}") from None
            if src.cfg != model.cfg:
                raise IclscopeError(f"clamp {i}: Graft source {p} has a different architecture")
            if src.n_models not in (1, model.n_models):
                raise IclscopeError(f"clamp {i}: Graft source {p} is an ensemble of {src.n_models}, "
                                    f"this run has {model.n_models}")
            for q in src.module.parameters():
                q.requires_grad_(False)
            self.sources[str(p)] = src
        return self.sources[str(p)]

    def for_batch(self, batch) -> list:
        """The dynamic clamps for one batch (the static ones live in a ``model.intervene`` context)."""
        return [ClampPattern(heads, batch.ideal_induction_pattern(s), positions=[-1]) for heads, s in self.dynamic]

    def __bool__(self) -> bool:
        return bool(self.static or self.dynamic)
