"""One intervention vocabulary, for analysis and for training.

An intervention is plain data: *what* to change (a site), *where* (heads or layers, positions, batch
rows) and *how* (the value that replaces it). The same list works in an analysis forward pass and
inside every training step::

    from iclscope import Ablate, ClampPattern
    with model.intervene([Ablate([(1, 3)], how="zero"), ClampPattern([(0, 2)], "prev_token")]):
        logits = model(tokens)

Sites (hook points; TransformerLens-style names ``blocks.{layer}.{hook}``)

===========  ==========================  ==================  ==============================
site         hook name                   shape               what it is
===========  ==========================  ==================  ==============================
resid_pre    blocks.L.hook_resid_pre     (B, T, d_model)     input of block L
q            blocks.L.attn.hook_q        (B, T, H, d_head)   queries, after rotary
k            blocks.L.attn.hook_k        (B, T, H, d_head)   keys, after rotary, one per
                                                             *query* head (GQA kv groups are
                                                             expanded, so every query head
                                                             is addressed on its own)
v            blocks.L.attn.hook_v        (B, T, H, d_head)   values, expanded likewise
pattern      blocks.L.attn.hook_pattern  (B, H, T, T)        attention pattern [query, key]
z            blocks.L.attn.hook_z        (B, T, H, d_head)   per-head output: the head's slice
                                                             of the input to the attention
                                                             output projection
attn_out     blocks.L.hook_attn_out      (B, T, d_model)     attention block output
resid_post   blocks.L.hook_resid_post    (B, T, d_model)     output of block L
===========  ==========================  ==================  ==============================

Gradient semantics. Every replacement value is detached: an entry that an intervention replaces
passes no gradient back to whatever computed it in the model (queries and keys behind a clamped
pattern, a head's computation behind its ablated output, ...). Entries not replaced (other heads,
other positions, other batch rows) are untouched and train as usual. ``AddVector`` adds rather than
replaces: gradient flows through the residual stream as usual, and not into the vector.

Composition. Interventions apply in list order at each site; nested ``model.intervene`` blocks
apply the outer list first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import torch

from .errors import IclscopeError
from .patterns import induction_targets, previous_token_pattern, targeted_pattern

if TYPE_CHECKING:  # pragma: no cover
    from .models.base import Model

HEAD_SITES = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
              "pattern": "attn.hook_pattern"}
LAYER_SITES = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "resid_post": "hook_resid_post"}
SITES = {**HEAD_SITES, **LAYER_SITES}

Head = tuple[int, int]
Positions = Union[None, int, Sequence[int], slice]


def hook_name(site: str, layer: int) -> str:
    """The hook-point name of `site` at `layer`, e.g. ``hook_name("z", 3) == "blocks.3.attn.hook_z"``."""
    if site not in SITES:
        raise IclscopeError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
    return f"blocks.{layer}.{SITES[site]}"


# --------------------------------------------------------------------------------------------------
# The vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """Replace a site's value by another.

    site: one of ``SITES``. heads: list of (layer, head) for head sites; layers: list of layers for
    layer sites. positions: token positions (int, list, slice; negative counts from the end; None =
    all). For the ``pattern`` site positions are query positions. rows: optional batch rows, one per
    entry of ``heads`` (or of ``layers``): entry i is patched only in batch row rows[i], so that many
    heads can be patched in one forward pass, one per row.

    source, the replacing value:
      - a number: that constant (0.0 is zero-ablation);
      - ``"clean"``: the value from this model's unintervened pass on the same input (run first,
        without gradient);
      - a ``Model``: the value at the same site from that (frozen) model's pass on the same input;
      - a ``Cache`` from another run: its value at the same site and layer, of the same shape (or
        batch 1, broadcast);
      - ``"batch_mean"``: the mean over the batch of the value being replaced, per position;
      - a tensor: head sites take (n_layers, n_heads, d_head) or (len(heads), d_head), one vector a
        head; layer sites take (d_model,) or (len(layers), d_model); broadcast over batch and position.
    """

    site: str = "z"
    source: Any = 0.0
    heads: Sequence[Head] | None = None
    layers: Sequence[int] | None = None
    positions: Positions = None
    rows: Sequence[int] | None = None

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

    def patches(self) -> list[Patch]:
        if self.how == "zero":
            source: Any = 0.0
        elif self.how == "mean":
            source = "batch_mean" if self.mean is None else self.mean
        else:
            raise IclscopeError(f"Ablate(how={self.how!r}): how must be 'zero' or 'mean'")
        return [Patch("z", source, heads=self.heads, positions=self.positions, rows=self.rows)]


@dataclass(frozen=True)
class Preserve:
    """Hold a site at its value from the unintervened pass (for example keep a head's queries as they
    would be without the other clamps), passing no gradient. Head sites take heads, layer sites layers."""

    site: str
    heads: Sequence[Head] | None = None
    layers: Sequence[int] | None = None
    positions: Positions = None

    def patches(self) -> list[Patch]:
        return [Patch(self.site, "clean", heads=self.heads, layers=self.layers, positions=self.positions)]


@dataclass(frozen=True)
class Graft:
    """Replace a site by its value in a second, frozen model run on the same input: block outputs
    (``layers``, default site resid_post) or a head site such as values (``site="v"``, ``heads``). The
    source model gets no gradient. An ensemble source grafts member r into member r."""

    source: "Model"
    layers: Sequence[int] | None = None
    site: str = "resid_post"
    positions: Positions = None
    heads: Sequence[Head] | None = None

    def patches(self) -> list[Patch]:
        return [Patch(self.site, self.source, heads=self.heads, layers=self.layers, positions=self.positions)]


@dataclass(frozen=True)
class AddVector:
    """Add ``scale * vector`` (d_model,) to a layer site (default: the input of block ``layer``), at
    ``positions`` (None = all). The vector gets no gradient; the residual stream does."""

    layer: int
    vector: torch.Tensor
    site: str = "resid_pre"
    positions: Positions = None
    scale: float = 1.0

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

    def patches(self) -> list["ClampPattern"]:
        return [self]


Intervention = Union[Patch, Ablate, Preserve, Graft, AddVector, ClampPattern]


# --------------------------------------------------------------------------------------------------
# Compiling a list of interventions into per-hook functions
# --------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What the hook functions of one forward pass may read: the inputs and the pre-pass caches."""

    tokens: torch.Tensor | None = None  # (B, T) int64, where the input has tokens
    caches: dict = field(default_factory=dict)  # "clean" or id(model) -> Cache


def positions_index(positions: Positions, T: int) -> torch.Tensor | None:
    """Normalise positions to a sorted int64 index tensor in [0, T), or None for all positions."""
    if positions is None:
        return None
    if isinstance(positions, slice):
        idx = list(range(T))[positions]
    elif isinstance(positions, int):
        idx = [positions]
    elif isinstance(positions, torch.Tensor):
        idx = positions.reshape(-1).tolist()
    else:
        idx = list(positions)
    out = []
    for p in idx:
        p = int(p)
        q = p + T if p < 0 else p
        if not 0 <= q < T:
            raise IclscopeError(f"position {p} is beyond the sequence of length {T}")
        out.append(q)
    return torch.tensor(sorted(set(out)), dtype=torch.long)


def _check_heads(heads, model: "Model", what: str) -> list[Head]:
    if heads is None:
        raise IclscopeError(f"{what} needs heads=[(layer, head), ...]")
    out = []
    for lh in heads:
        try:
            layer, head = (int(v) for v in lh)
        except (TypeError, ValueError):
            raise IclscopeError(f"{what}: a head is a (layer, head) pair, got {lh!r}") from None
        _check_layer(layer, model, what)
        if not 0 <= head < model.n_heads:
            raise IclscopeError(f"{what}: head {head} is out of range: the model has {model.n_heads} heads "
                                f"per layer (0..{model.n_heads - 1})")
        out.append((layer, head))
    return out


def _check_layer(layer: int, model: "Model", what: str) -> int:
    if not 0 <= int(layer) < model.n_layers:
        raise IclscopeError(f"{what}: layer {layer} is out of range: the model has {model.n_layers} layers "
                            f"(0..{model.n_layers - 1})")
    return int(layer)


class _SiteOp:
    """Replace (or add to) entries of one site at one layer. Masks are cached per input shape."""

    def __init__(self, site, entries, rows, positions, value_fn, add=False):
        self.site, self.entries, self.rows = site, entries, rows  # entries: head indices or None
        self.positions, self.value_fn, self.add = positions, value_fn, add
        self._mask_cache: dict = {}

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.device)
        m = self._mask_cache.get(key)
        if m is not None:
            return m
        head_site = self.site in HEAD_SITES
        B = x.shape[0]
        T = x.shape[2] if self.site == "pattern" else x.shape[1]
        pos = positions_index(self.positions, T)
        pos = torch.arange(T) if pos is None else pos
        if self.site == "pattern":  # (B, H, Tq, Tk) -> mask (B|1, H, Tq, 1)
            shape = (B if self.rows is not None else 1, x.shape[1], T, 1)
        elif head_site:  # (B, T, H, D) -> mask (B|1, T, H, 1)
            shape = (B if self.rows is not None else 1, T, x.shape[2], 1)
        else:  # (B, T, d) -> mask (B|1, T, 1)
            shape = (B if self.rows is not None else 1, T, 1)
        m = torch.zeros(shape, dtype=torch.bool)
        if self.rows is not None:
            rows = torch.tensor(self.rows, dtype=torch.long)
            if rows.numel() and (rows.max() >= B or rows.min() < 0):
                raise IclscopeError(f"rows={list(self.rows)} name a batch row beyond the batch of {B}")
            if head_site:
                heads = torch.tensor(self.entries, dtype=torch.long)
                if self.site == "pattern":
                    m[rows[:, None], heads[:, None], pos[None, :]] = True
                else:
                    m[rows[:, None], pos[None, :], heads[:, None]] = True
            else:
                m[rows[:, None], pos[None, :]] = True
        elif head_site:
            heads = torch.tensor(sorted(set(self.entries)), dtype=torch.long)
            if self.site == "pattern":
                m[:, heads[:, None], pos[None, :]] = True
            else:
                m[:, pos[:, None], heads[None, :]] = True
        else:
            m[:, pos] = True
        m = m.to(x.device)
        self._mask_cache[key] = m
        return m

    def __call__(self, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        value = self.value_fn(x, ctx)
        extra = None
        if isinstance(value, tuple):  # (value, mask of the entries the value defines)
            value, extra = value
        if self.add:
            return x + torch.where(self.mask(x), value.to(x.dtype).detach(), torch.zeros((), dtype=x.dtype,
                                                                                         device=x.device))
        mask = self.mask(x)
        if extra is not None:
            mask = mask & extra
        return torch.where(mask, value.to(x.dtype).detach(), x)


def _head_vectors(src: torch.Tensor, site_heads: list[int], idx_in_list: list[int], layer: int,
                  rows, model: "Model", n_heads_total: int, B: int, dtype, device) -> torch.Tensor:
    """Per-head replacement vectors laid out to broadcast over (B|1, T, H, D)."""
    d = src.shape[-1]
    if src.dim() == 3:  # (n_layers, n_heads, d_head)
        vecs = src[layer, site_heads]
    else:  # (len(heads), d_head)
        vecs = src[idx_in_list]
    V = torch.zeros(B if rows is not None else 1, 1, n_heads_total, d, dtype=dtype, device=device)
    if rows is not None:
        V[torch.tensor(rows, dtype=torch.long), 0, torch.tensor(site_heads, dtype=torch.long)] = vecs.to(device, dtype)
    else:
        V[0, 0, torch.tensor(site_heads, dtype=torch.long)] = vecs.to(device, dtype)
    return V


def _source_key(source) -> Any:
    if isinstance(source, str) and source == "clean":
        return "clean"
    return id(source)


def _patch_ops(p: Patch, model: "Model") -> list[tuple[str, Callable]]:
    from .models.base import Cache, Model  # local: models import this module

    site = p.site
    if site not in SITES:
        raise IclscopeError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
    head_site = site in HEAD_SITES
    what = f"{type(p).__name__}({site})"
    if head_site:
        heads = _check_heads(p.heads, model, what)
        entries_by_layer: dict[int, list[int]] = {}
        for i, (layer, head) in enumerate(heads):
            entries_by_layer.setdefault(layer, []).append(i)
        keyed = [(layer, idxs) for layer, idxs in entries_by_layer.items()]
    else:
        if p.layers is None:
            raise IclscopeError(f"{what} needs layers=[...]")
        layers = [_check_layer(layer, model, what) for layer in p.layers]
        heads = None
        keyed = [(layer, [i for i, l2 in enumerate(layers) if l2 == layer]) for layer in sorted(set(layers))]
    if p.rows is not None and len(p.rows) != len(heads if head_site else p.layers):
        raise IclscopeError(f"{what}: rows has {len(p.rows)} entries but there are "
                            f"{len(heads if head_site else p.layers)} heads/layers to patch")
    src = p.source
    if isinstance(src, torch.Tensor):
        want = ((model.n_layers, model.n_heads, model.d_head), (len(heads), model.d_head)) if head_site and site != "pattern" \
            else ((model.d_model,), (len(p.layers or []), model.d_model))
        if site == "pattern" or tuple(src.shape) not in want:
            raise IclscopeError(f"{what}: a tensor source must have shape "
                                f"{' or '.join(str(w) for w in want)}, got {tuple(src.shape)}"
                                + (" (clamp patterns with ClampPattern)" if site == "pattern" else ""))
    elif isinstance(src, str):
        if src not in ("clean", "batch_mean"):
            raise IclscopeError(f"{what}: unknown source {src!r} (use a number, 'clean', 'batch_mean', a "
                                f"tensor, a Cache or a Model)")
    elif isinstance(src, Model):
        if (src.n_layers, src.d_model) != (model.n_layers, model.d_model):
            raise IclscopeError(f"{what}: the source model has {src.n_layers} layers of width {src.d_model}; "
                                f"this one has {model.n_layers} of width {model.d_model}")
    elif not isinstance(src, (int, float, Cache)):
        raise IclscopeError(f"{what}: unsupported source of type {type(src).__name__}")

    ops = []
    for layer, idxs in keyed:
        name = hook_name(site, layer)
        site_heads = [heads[i][1] for i in idxs] if head_site else None
        rows = [p.rows[i] for i in idxs] if p.rows is not None else None

        def value_fn(x, ctx, name=name, layer=layer, idxs=idxs, site_heads=site_heads, rows=rows):
            if isinstance(src, (int, float)):
                return torch.tensor(float(src), dtype=x.dtype, device=x.device)
            if isinstance(src, str) and src == "batch_mean":
                return x.detach().mean(0, keepdim=True)
            if isinstance(src, torch.Tensor):
                if head_site:
                    return _head_vectors(src, site_heads, idxs, layer, rows, model, x.shape[2], x.shape[0],
                                         x.dtype, x.device)
                vec = src if src.dim() == 1 else src[idxs[0]]
                return vec.to(x.device, x.dtype)
            cache = src if isinstance(src, Cache) else ctx.caches[_source_key(src)]
            if name not in cache:
                raise IclscopeError(f"{what}: the source cache has no {name!r}")
            val = cache[name]
            if val.shape[1:] != x.shape[1:] or val.shape[0] not in (1, x.shape[0]):
                raise IclscopeError(f"{what}: the source cache's {name} has shape {tuple(val.shape)}, but "
                                    f"the run has {tuple(x.shape)}")
            return val.to(x.device)

        ops.append((name, _SiteOp(site, site_heads, rows, p.positions, value_fn)))
    return ops


def _add_ops(a: AddVector, model: "Model") -> list[tuple[str, Callable]]:
    if a.site not in LAYER_SITES:
        raise IclscopeError(f"AddVector: site must be one of {', '.join(LAYER_SITES)}, got {a.site!r}")
    layer = _check_layer(a.layer, model, "AddVector")
    vec = torch.as_tensor(a.vector)
    if tuple(vec.shape) != (model.d_model,):
        raise IclscopeError(f"AddVector: the vector must have shape ({model.d_model},), got {tuple(vec.shape)}")

    def value_fn(x, ctx):
        return (a.scale * vec).to(x.device, x.dtype)

    return [(hook_name(a.site, layer), _SiteOp(a.site, None, None, a.positions, value_fn, add=True))]


def _clamp_ops(c: ClampPattern, model: "Model") -> list[tuple[str, Callable]]:
    heads = _check_heads(c.heads, model, "ClampPattern")
    if c.rows is not None and len(c.rows) != len(heads):
        raise IclscopeError(f"ClampPattern: rows has {len(c.rows)} entries for {len(heads)} heads")
    kind = c.pattern
    if isinstance(kind, str) and kind not in ("prev_token", "induction"):
        raise IclscopeError(f"ClampPattern: pattern must be 'prev_token', 'induction' or a tensor, got {kind!r}")
    if not 0.0 <= float(c.strength) <= 1.0:
        raise IclscopeError(f"ClampPattern: strength must lie in [0, 1], got {c.strength}")
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(heads):
        by_layer.setdefault(layer, []).append(i)

    def value_fn(x, ctx):  # x: (B, H, Tq, Tk) -> (B|1, 1, Tq, Tk)
        Tq, Tk = x.shape[-2:]
        if isinstance(kind, torch.Tensor):
            pat = kind.to(x.device)
            if pat.shape[-2:] != (Tq, Tk) or pat.dim() not in (2, 3) or (pat.dim() == 3 and pat.shape[0] not in (1, x.shape[0])):
                raise IclscopeError(f"ClampPattern: the pattern has shape {tuple(pat.shape)}; the run needs "
                                    f"({Tq}, {Tk}) or ({x.shape[0]}, {Tq}, {Tk})")
            return (pat if pat.dim() == 3 else pat[None])[:, None]
        if Tq != Tk:
            raise IclscopeError("ClampPattern with an ideal pattern needs a full pass (no key/value cache)")
        if kind == "prev_token":
            return previous_token_pattern(Tq, device=x.device, strength=c.strength)[None, None]
        if ctx.tokens is None:
            raise IclscopeError("ClampPattern('induction') needs token inputs; give a pattern tensor instead")
        targets = induction_targets(ctx.tokens.to(x.device))  # (B, T)
        pat = targeted_pattern(targets, Tq, c.strength)[:, None]  # (B, 1, T, T)
        return pat, (targets >= 0)[:, None, :, None]  # rows with no earlier occurrence are left alone

    ops = []
    for layer, idxs in by_layer.items():
        rows = [c.rows[i] for i in idxs] if c.rows is not None else None
        ops.append((hook_name("pattern", layer),
                    _SiteOp("pattern", [heads[i][1] for i in idxs], rows, c.positions, value_fn)))
    return ops


def compile_interventions(interventions: Sequence[Intervention], model: "Model"):
    """Validate a list of interventions against a model and turn it into hook functions.

    Returns (ops, sources): ops maps a hook name to a list of f(x, ctx) -> x in application order;
    sources maps a pre-pass key ("clean" or id(model)) to (source model or None, set of hook names
    that pass must record).
    """
    from .models.base import Model

    ops: dict[str, list[Callable]] = {}
    sources: dict[Any, tuple[Any, set]] = {}
    for item in interventions:
        if not hasattr(item, "patches"):
            raise IclscopeError(f"not an intervention: {item!r}")
        for p in item.patches():
            if isinstance(p, Patch):
                new = _patch_ops(p, model)
                if (isinstance(p.source, str) and p.source == "clean") or isinstance(p.source, Model):
                    key = _source_key(p.source)
                    entry = sources.setdefault(key, (None if key == "clean" else p.source, set()))
                    entry[1].update(name for name, _ in new)
            elif isinstance(p, AddVector):
                new = _add_ops(p, model)
            elif isinstance(p, ClampPattern):
                new = _clamp_ops(p, model)
            else:  # pragma: no cover - patches() only returns the kinds above
                raise IclscopeError(f"not an intervention: {p!r}")
            for name, fn in new:
                ops.setdefault(name, []).append(fn)
    return ops, sources
