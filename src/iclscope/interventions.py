"""One intervention vocabulary, for analysis and for training.

An intervention is plain data: *what* to change (a site), *where* (heads or layers, positions, batch
rows) and *how* (the value that replaces it). The same list works in an analysis forward pass and
inside every training step::

    from iclscope import Ablate, ClampPattern
    with model.intervene([Ablate([(1, 3)], how="zero"), ClampPattern([(0, 2)], "prev_token")]):
        logits = model(tokens)

Sites and hook names are defined in ``iclscope.sites`` (the one naming contract).

Sources. What replaces a value is a typed source: ``Constant``, ``CleanRun`` (this model's unintervened
pass), ``BatchMean``, ``FromCache`` (another run's recorded values), ``FrozenModel`` (a second model's pass
on the same input) or ``Vectors`` (one vector per head or layer). ``Patch`` also takes the short forms
(a number, ``"clean"``, ``"batch_mean"``, a ``Cache``, a ``Model``, a tensor) and turns them into these.

Gradient semantics. Every replacement value is detached: an entry that an intervention replaces
passes no gradient back to whatever computed it in the model (queries and keys behind a clamped
pattern, a head's computation behind its ablated output, ...). Entries not replaced (other heads,
other positions, other batch rows) are untouched and train as usual. ``AddVector`` adds rather than
replaces: gradient flows through the residual stream as usual, and not into the vector. ``Hook`` (the
escape hatch, a user function) is the one exception to detaching: its function's output replaces the
masked entries as it is, so gradient flows through that output to whatever the function used (the
activation it was given included); return ``y.detach()`` for the detached rule.

Ensemble members. On an ensemble model (``n_models`` = R > 1, batch rows r*B .. r*B+B-1 belonging to
member r) every intervention takes ``members``: the member indices it acts on (None: all). A clamp with
``members=[3]`` touches only member 3's rows, so members of one stacked model can train under different
clamps. It combines with ``rows`` (both must select a row); ``BatchMean`` is the mean over each member's
own rows.

Composition. Interventions apply in list order at each site; nested ``model.intervene`` blocks
apply the outer list first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch

from .errors import IclscopeError
from .sites import HEAD_SITES, LAYER_SITES, MODEL_SITES, SITES, Head, Positions, hook_name  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------------
# Sources: what replaces a value
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    """Every replaced entry becomes ``value`` (0.0 is zero-ablation)."""

    value: float = 0.0


@dataclass(frozen=True)
class CleanRun:
    """The value from this model's unintervened pass on the same input (a pre-pass, no gradient)."""


@dataclass(frozen=True)
class BatchMean:
    """The mean over the batch of the value being replaced, per position."""


@dataclass(frozen=True, eq=False)
class FromCache:
    """The value at the same site and layer in ``cache`` (a ``Cache`` from another run): the same shape
    as the run's, or batch 1 (broadcast)."""

    cache: Mapping


@dataclass(frozen=True)
class FrozenModel:
    """The value at the same site from a second, frozen model's pass on the same input (no gradient into
    it). Two ``FrozenModel`` sources of one model share one pre-pass."""

    model: Any


@dataclass(frozen=True, eq=False)
class Vectors:
    """One vector per head (head sites: (n_layers, n_heads, d_head), or (len(heads), d_head)) or per layer
    (layer sites: (d_model,) or (len(layers), d_model)), broadcast over batch and position."""

    values: torch.Tensor


Source = Union[Constant, CleanRun, BatchMean, FromCache, FrozenModel, Vectors]
SOURCE_TYPES = (Constant, CleanRun, BatchMean, FromCache, FrozenModel, Vectors)


def as_source(value: Any) -> Source:
    """A typed source from a typed source or a short form: a number, "clean", "batch_mean", a tensor, a
    Cache (any mapping of hook names to tensors) or a Model (anything with ``run`` and ``n_layers``)."""
    if isinstance(value, SOURCE_TYPES):
        return value
    if isinstance(value, bool):
        raise IclscopeError(f"a source cannot be a bool ({value!r}); give a number, 'clean', 'batch_mean', a "
                            f"tensor, a Cache or a Model")
    if isinstance(value, (int, float)):
        return Constant(float(value))
    if isinstance(value, str):
        if value == "clean":
            return CleanRun()
        if value == "batch_mean":
            return BatchMean()
        raise IclscopeError(f"unknown source {value!r} (use a number, 'clean', 'batch_mean', a tensor, a Cache or "
                            f"a Model)")
    if isinstance(value, torch.Tensor):
        return Vectors(value)
    if isinstance(value, Mapping):
        return FromCache(value)
    if hasattr(value, "run") and hasattr(value, "n_layers"):
        return FrozenModel(value)
    raise IclscopeError(f"unsupported source of type {type(value).__name__}")


# --------------------------------------------------------------------------------------------------
# The vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """Replace a site's value by another.

    site: one of ``SITES``. heads: list of (layer, head) for head sites; layers: list of layers for
    layer sites; neither for model sites (embed, ln_final). positions: token positions (int, list,
    slice; negative counts from the end; None = all). For the ``pattern`` and ``attn_scores`` sites
    positions are query positions. rows: optional batch rows, one per entry of ``heads`` (or of
    ``layers``): entry i is patched only in batch row rows[i], so that many heads can be patched in one
    forward pass, one per row; for a model site, rows lists the batch rows to patch.

    source, the replacing value:
      - a number: that constant (0.0 is zero-ablation);
      - ``"clean"``: the value from this model's unintervened pass on the same input (run first,
        without gradient);
      - a ``Model``: the value at the same site from that (frozen) model's pass on the same input;
      - a ``Cache`` from another run: its value at the same site and layer, of the same shape (or
        batch 1, broadcast);
      - ``"batch_mean"``: the mean over the batch of the value being replaced, per position;
      - a tensor: head sites take (n_layers, n_heads, d_head) or (len(heads), d_head), one vector a
        head; layer sites take (d_model,) or (len(layers), d_model), model sites (d_model,); broadcast
        over batch and position (``pattern`` and ``attn_scores`` take no tensor source).
    """

    site: str = "z"
    source: Any = 0.0
    heads: Sequence[Head] | None = None
    layers: Sequence[int] | None = None
    positions: Positions = None
    rows: Sequence[int] | None = None
    members: Sequence[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", as_source(self.source))

    def patches(self) -> list["Patch"]:
        return [self]


@dataclass(frozen=True)
class Ablate:
    """Ablate heads' outputs (site z).

    how="zero": set to 0. how="mean": set to ``mean``, a (n_layers, n_heads, d_head) or
    (len(heads), d_head) tensor (e.g. from ``iclscope.head_means``); with ``mean=None`` the mean over
    the current batch at each position is used.
    """

    heads: Sequence[Head]
    how: str = "mean"
    mean: torch.Tensor | None = None
    positions: Positions = None
    rows: Sequence[int] | None = None
    members: Sequence[int] | None = None

    def patches(self) -> list[Patch]:
        if self.how == "zero":
            source: Source = Constant(0.0)
        elif self.how == "mean":
            source = BatchMean() if self.mean is None else Vectors(self.mean)
        else:
            raise IclscopeError(f"Ablate(how={self.how!r}): how must be 'zero' or 'mean'")
        return [Patch("z", source, heads=self.heads, positions=self.positions, rows=self.rows, members=self.members)]


@dataclass(frozen=True)
class Preserve:
    """Hold a site at its value from the unintervened pass (for example keep a head's queries as they
    would be without the other clamps), passing no gradient. Head sites take heads, layer sites layers."""

    site: str
    heads: Sequence[Head] | None = None
    layers: Sequence[int] | None = None
    positions: Positions = None
    members: Sequence[int] | None = None

    def patches(self) -> list[Patch]:
        return [Patch(self.site, CleanRun(), heads=self.heads, layers=self.layers, positions=self.positions,
                      members=self.members)]


@dataclass(frozen=True)
class Graft:
    """Replace a site by its value in a second, frozen model run on the same input: block outputs
    (``layers``, default site resid_post) or a head site such as values (``site="v"``, ``heads``). The
    source model gets no gradient. An ensemble source grafts member r into member r."""

    source: Any  # a Model
    layers: Sequence[int] | None = None
    site: str = "resid_post"
    positions: Positions = None
    heads: Sequence[Head] | None = None
    members: Sequence[int] | None = None

    def patches(self) -> list[Patch]:
        return [Patch(self.site, FrozenModel(self.source), heads=self.heads, layers=self.layers, positions=self.positions,
                      members=self.members)]


@dataclass(frozen=True)
class AddVector:
    """Add ``scale * vector`` (d_model,) to a layer site (default: the input of block ``layer``), at
    ``positions`` (None = all). The vector gets no gradient; the residual stream does."""

    layer: int
    vector: torch.Tensor
    site: str = "resid_pre"
    positions: Positions = None
    scale: float = 1.0
    members: Sequence[int] | None = None

    def patches(self) -> list["AddVector"]:
        return [self]


@dataclass(frozen=True)
class ClampPattern:
    """Clamp heads' attention patterns.

    pattern:
      - ``"prev_token"``: query i puts ``strength`` on key i-1 (row 0 on itself);
      - ``"induction"``: query i puts ``strength`` on the key right after the previous occurrence of its
        own token (needs token inputs); rows whose token has not occurred before are left alone;
      - a tensor (T, T) or (B, T, T): used as given (rows should sum to 1).
    With strength s < 1 the remaining 1-s is spread evenly over the other causal keys.
    positions: query positions to clamp (None = all). rows: as in ``Patch``.
    """

    heads: Sequence[Head]
    pattern: Any = "prev_token"
    strength: float = 1.0
    positions: Positions = None
    rows: Sequence[int] | None = None
    members: Sequence[int] | None = None

    def patches(self) -> list["ClampPattern"]:
        return [self]


@dataclass(frozen=True, eq=False)
class Hook:
    """The escape hatch: run ``fn(x) -> x'`` on a site's activation and keep x' at the chosen entries.

    ``fn`` gets the whole activation of one hook point (shape in ``iclscope.sites``, e.g. (B, T, H, D) for
    ``z``) and must return a tensor of the same shape; x' replaces x at the entries that ``heads`` /
    ``layers`` / ``positions`` / ``rows`` select (the same masks as ``Patch``), x stays elsewhere. With
    several layers or several layers' heads, ``fn`` runs once per hook point.

    Gradient rule: x' is NOT detached. Gradient flows through fn's output to whatever fn used (x itself,
    a learned tensor, ...); entries outside the mask train as usual. For the detached rule of every
    other intervention, return ``y.detach()`` from fn.
    """

    site: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    heads: Sequence[Head] | None = None
    layers: Sequence[int] | None = None
    positions: Positions = None
    rows: Sequence[int] | None = None
    members: Sequence[int] | None = None

    def patches(self) -> list["Hook"]:
        if not callable(self.fn):
            raise IclscopeError(f"Hook({self.site!r}): fn must be a function x -> x', got {type(self.fn).__name__}")
        return [self]


Intervention = Union[Patch, Ablate, Preserve, Graft, AddVector, ClampPattern, Hook]


__all__ = ["Patch", "Ablate", "Preserve", "Graft", "AddVector", "ClampPattern", "Hook", "Intervention", "Constant",
           "CleanRun", "BatchMean", "FromCache", "FrozenModel", "Vectors", "Source", "as_source", "SITES",
           "HEAD_SITES", "LAYER_SITES", "MODEL_SITES", "Head", "Positions", "hook_name"]

