"""Interventions -> per-hook functions: the compiler, the run context and the pre-pass plan.

``compile_interventions(interventions, model)`` validates a list of interventions (plain data from
``iclscope.interventions``) against a model's shape and returns a ``Plan``:

- ``ops``: hook name -> list of ``f(x, ctx) -> x``, in application order (what ``HookPoints`` calls);
- ``head_layers``: the layers whose per-head sites are hooked (there, attention runs eagerly);
- ``prepasses``: source -> (model to run, hook names it must record): ``CleanRun`` runs this model
  without interventions, ``FrozenModel(m)`` runs ``m``; each pre-pass stops after the last site it needs.

Each site op builds a boolean mask over (batch row, position, head), cached per input shape (on an
ensemble, an intervention's ``members`` keep only those members' rows), and uses
``torch.where(mask, value.detach(), x)``: replaced entries get no gradient, the rest train (a ``Hook``'s
output is the one value not detached). Nothing here imports a model family: a model is anything with
n_layers, n_heads, d_head and d_model, and optionally ``missing_sites()`` ({site: why}) for the sites it
lacks, which are refused here by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .errors import IclscopeError
from .heads import check_heads as _check_heads, check_layer as _check_layer
from .interventions import (AddVector, BatchMean, CleanRun, ClampPattern, Constant, FromCache, FrozenModel,
                            Hook, Patch, Positions, Vectors)
from .patterns import induction_targets, previous_token_pattern, targeted_pattern
from .sites import HEAD_SITES, LAYER_SITES, MODEL_SITES, QK_SITES, SITES, hook_name


@dataclass
class RunContext:
    """What the hook functions of one forward pass may read: the token ids, the pre-pass caches, and on
    the final-token path the prefix view (``models.base.PrefixRows``) the attention code reads."""

    tokens: torch.Tensor | None = None  # (B, T) int64, where the input has tokens
    caches: dict = field(default_factory=dict)  # CleanRun() or FrozenModel(m) -> Cache
    prefix: Any = None
    scratch: dict = field(default_factory=dict)  # a model's per-pass notes between its own hooks


@dataclass
class Plan:
    """A compiled list of interventions (see the module docstring)."""

    ops: dict[str, list[Callable]] = field(default_factory=dict)
    head_layers: set[int] = field(default_factory=set)
    prepasses: dict[Any, tuple[Any, set]] = field(default_factory=dict)

    def extend(self, other: "Plan") -> "Plan":
        """A new plan: this one's ops first at each hook, then ``other``'s."""
        ops = {k: list(v) for k, v in self.ops.items()}
        for name, fns in other.ops.items():
            ops.setdefault(name, []).extend(fns)
        pre = {k: (m, set(n)) for k, (m, n) in self.prepasses.items()}
        for key, (m, names) in other.prepasses.items():
            pre.setdefault(key, (m, set()))[1].update(names)
        return Plan(ops, self.head_layers | other.head_layers, pre)


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


class _SiteOp:
    """Replace (or add to) entries of one site at one layer. Masks are cached per input shape."""

    def __init__(self, site, layer, entries, rows, positions, value_fn, add=False, detach=True, members=None,
                 n_models=1):
        self.site, self.layer, self.entries, self.rows = site, layer, entries, rows  # entries: head indices or None
        self.positions, self.value_fn, self.add, self.detach = positions, value_fn, add, detach
        self.members, self.n_models = members, n_models  # members: ensemble member indices or None (all)
        self.exact_mask = True  # False when value_fn may narrow the mask (returns (value, mask))
        self._mask_cache: dict = {}
        self._full_cache: dict = {}

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.device)
        m = self._mask_cache.get(key)
        if m is not None:
            return m
        head_site = self.site in HEAD_SITES
        B = x.shape[0]
        qk = self.site in QK_SITES
        T = x.shape[2] if qk else x.shape[1]
        pos = positions_index(self.positions, T)
        pos = torch.arange(T) if pos is None else pos
        if qk:  # (B, H, Tq, Tk) -> mask (B|1, H, Tq, 1)
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
                if qk:
                    m[rows[:, None], heads[:, None], pos[None, :]] = True
                else:
                    m[rows[:, None], pos[None, :], heads[:, None]] = True
            else:
                m[rows[:, None], pos[None, :]] = True
        elif head_site:
            heads = torch.tensor(sorted(set(self.entries)), dtype=torch.long)
            if qk:
                m[:, heads[:, None], pos[None, :]] = True
            else:
                m[:, pos[:, None], heads[None, :]] = True
        else:
            m[:, pos] = True
        if self.members is not None:  # only the rows of the addressed ensemble members
            R = self.n_models
            if B % R:
                raise IclscopeError(f"members={list(self.members)}: a batch of {B} rows does not split over an "
                                    f"ensemble of {R} models")
            keep = torch.zeros(R, B // R, dtype=torch.bool)
            keep[torch.tensor(self.members, dtype=torch.long)] = True
            m = m & keep.view(B, *([1] * (m.dim() - 1)))
        m = m.to(x.device)
        self._mask_cache[key] = m
        self._full_cache[key] = bool(m.all())  # the mask broadcasts over x: all True selects everything
        return m

    def covers_all(self, x: torch.Tensor) -> bool:
        """Does the mask select every entry of ``x`` (every row, position and head)? Then the op is the value
        itself, with no ``torch.where`` (a clamp of a whole layer costs nothing beyond its value)."""
        self.mask(x)
        return self._full_cache[(tuple(x.shape), x.device)]

    def __call__(self, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        value = self.value_fn(x, ctx)
        extra = None
        if isinstance(value, tuple):  # (value, mask of the entries the value defines)
            value, extra = value
        if self.add:
            return x + torch.where(self.mask(x), value.to(x.dtype).detach(), torch.zeros((), dtype=x.dtype,
                                                                                         device=x.device))
        value = value.to(x.dtype)
        if extra is None and torch.broadcast_shapes(value.shape, x.shape) == x.shape and self.covers_all(x):
            out = value.detach() if self.detach else value  # nothing of x is kept: no gradient flows into x
            return out if out.shape == x.shape else out.expand(x.shape)
        mask = self.mask(x)
        if extra is not None:
            mask = mask & extra
        return torch.where(mask, value.detach() if self.detach else value, x)


def _head_vectors(src: torch.Tensor, site_heads: list[int], idx_in_list: list[int], layer: int,
                  rows, n_heads_total: int, B: int, dtype, device) -> torch.Tensor:
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


def check_members(members, model, what: str) -> list[int] | None:
    """The member indices of an intervention's ``members`` (None: all members), checked against the
    model's ensemble size (``n_models``, 1 for a model that is not an ensemble)."""
    if members is None:
        return None
    R = int(getattr(model, "n_models", 1))
    try:
        out = sorted({int(m) for m in members})
    except (TypeError, ValueError):
        raise IclscopeError(f"{what}: members must be a list of ensemble member indices, got {members!r}") from None
    if not out or out[0] < 0 or out[-1] >= R:
        raise IclscopeError(f"{what}: members={list(members)} must name members 0..{R - 1} of this ensemble of "
                            f"{R} model(s)")
    return out


def check_site(site: str, model, what: str) -> str:
    """``site`` if it is a site this model has; an IclscopeError naming it otherwise."""
    if site not in SITES:
        raise IclscopeError(f"{what}: unknown site {site!r}; sites are {', '.join(SITES)}")
    missing = model.missing_sites() if hasattr(model, "missing_sites") else {}
    if site in missing:
        raise IclscopeError(f"{what}: this {getattr(model, 'family', '')} model has no {site!r} site: {missing[site]}")
    return site


def _targets(p, model, what: str):
    """Validate the heads/layers/rows of a Patch or Hook: (heads or None, [(layer|None, entry indices)])."""
    site = p.site
    head_site = site in HEAD_SITES
    if site in MODEL_SITES:
        if p.heads is not None or p.layers is not None:
            raise IclscopeError(f"{what}: {site} is a model site (one hook, no layer); give neither heads nor layers")
        if p.rows is not None:
            rows = [int(r) for r in p.rows]
            return None, [(None, list(range(len(rows))))]
        return None, [(None, [0])]
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
    return heads, keyed


def _patch_ops(p: Patch, model) -> list[tuple[str, Callable]]:
    site = p.site
    what = f"{type(p).__name__}({site})"
    check_site(site, model, what)
    head_site = site in HEAD_SITES
    heads, keyed = _targets(p, model, what)
    src = p.source
    if isinstance(src, Vectors):
        if site in QK_SITES:
            raise IclscopeError(f"{what}: {site} takes no tensor source (clamp patterns with ClampPattern, or "
                                f"change scores with Hook)")
        want = ((model.n_layers, model.n_heads, model.d_head), (len(heads), model.d_head)) if head_site \
            else ((model.d_model,),) if site in MODEL_SITES else ((model.d_model,), (len(p.layers or []), model.d_model))
        if tuple(src.values.shape) not in want:
            raise IclscopeError(f"{what}: a tensor source must have shape "
                                f"{' or '.join(str(w) for w in want)}, got {tuple(src.values.shape)}")
    elif isinstance(src, FrozenModel):
        m = src.model
        if (m.n_layers, m.d_model) != (model.n_layers, model.d_model):
            raise IclscopeError(f"{what}: the source model has {m.n_layers} layers of width {m.d_model}; "
                                f"this one has {model.n_layers} of width {model.d_model}")

    members, R = check_members(p.members, model, what), int(getattr(model, "n_models", 1))
    ops = []
    for layer, idxs in keyed:
        name = hook_name(site, layer)
        site_heads = [heads[i][1] for i in idxs] if head_site else None
        rows = [p.rows[i] for i in idxs] if p.rows is not None else None
        ops.append((name, _SiteOp(site, layer, site_heads, rows, p.positions,
                                  _value_fn(src, what, name, layer, idxs, site_heads, rows, head_site, R),
                                  members=members, n_models=R)))
    return ops


def _hook_ops(h: Hook, model) -> list[tuple[str, Callable]]:
    what = f"Hook({h.site})"
    check_site(h.site, model, what)
    heads, keyed = _targets(h, model, what)
    fn = h.fn

    def value_fn(x, ctx):
        y = fn(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise IclscopeError(f"{what}: fn must return a tensor of the activation's shape {tuple(x.shape)}, got {got}")
        return y

    members, R = check_members(h.members, model, what), int(getattr(model, "n_models", 1))
    ops = []
    for layer, idxs in keyed:
        site_heads = [heads[i][1] for i in idxs] if h.site in HEAD_SITES else None
        rows = [h.rows[i] for i in idxs] if h.rows is not None else None
        ops.append((hook_name(h.site, layer), _SiteOp(h.site, layer, site_heads, rows, h.positions, value_fn,
                                                      detach=False, members=members, n_models=R)))
    return ops


def _value_fn(src, what, name, layer, idxs, site_heads, rows, head_site, n_models=1) -> Callable:
    """f(x, ctx) -> the replacing value for one site op, by source type. On an ensemble (``n_models`` > 1)
    the batch mean is each member's own (over its rows), as if the member ran alone."""
    if isinstance(src, Constant):
        return lambda x, ctx: torch.tensor(float(src.value), dtype=x.dtype, device=x.device)
    if isinstance(src, BatchMean):
        def batch_mean(x, ctx):
            if n_models > 1 and x.shape[0] % n_models == 0:
                per = x.detach().view(n_models, -1, *x.shape[1:]).mean(1, keepdim=True)  # (R, 1, ...)
                return per.expand(n_models, x.shape[0] // n_models, *x.shape[1:]).reshape(x.shape)
            return x.detach().mean(0, keepdim=True)
        return batch_mean
    if isinstance(src, Vectors):
        vals = src.values
        if head_site:
            return lambda x, ctx: _head_vectors(vals, site_heads, idxs, layer, rows, x.shape[2], x.shape[0],
                                                x.dtype, x.device)
        vec = vals if vals.dim() == 1 else vals[idxs[0]]
        return lambda x, ctx: vec.to(x.device, x.dtype)

    def from_cache(x, ctx):
        cache = src.cache if isinstance(src, FromCache) else ctx.caches[src]
        if name not in cache:
            raise IclscopeError(f"{what}: the source cache has no {name!r}")
        val = cache[name]
        if val.shape[1:] != x.shape[1:] or val.shape[0] not in (1, x.shape[0]):
            raise IclscopeError(f"{what}: the source cache's {name} has shape {tuple(val.shape)}, but "
                                f"the run has {tuple(x.shape)}")
        return val.to(x.device)

    return from_cache


def _add_ops(a: AddVector, model) -> list[tuple[str, Callable]]:
    if a.site not in LAYER_SITES:
        raise IclscopeError(f"AddVector: site must be one of {', '.join(LAYER_SITES)}, got {a.site!r}")
    check_site(a.site, model, "AddVector")
    layer = _check_layer(a.layer, model, "AddVector")
    vec = torch.as_tensor(a.vector)
    if tuple(vec.shape) != (model.d_model,):
        raise IclscopeError(f"AddVector: the vector must have shape ({model.d_model},), got {tuple(vec.shape)}")

    def value_fn(x, ctx):
        return (a.scale * vec).to(x.device, x.dtype)

    return [(hook_name(a.site, layer), _SiteOp(a.site, layer, None, None, a.positions, value_fn, add=True,
                                               members=check_members(a.members, model, "AddVector"),
                                               n_models=int(getattr(model, "n_models", 1))))]


def _clamp_ops(c: ClampPattern, model) -> list[tuple[str, Callable]]:
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

    members, R = check_members(c.members, model, "ClampPattern"), int(getattr(model, "n_models", 1))
    ops = []
    for layer, idxs in by_layer.items():
        rows = [c.rows[i] for i in idxs] if c.rows is not None else None
        op = _SiteOp("pattern", layer, [heads[i][1] for i in idxs], rows, c.positions, value_fn, members=members,
                     n_models=R)
        op.exact_mask = not isinstance(kind, str) or kind != "induction"
        ops.append((hook_name("pattern", layer), op))
    return ops


def replaced_together(fns: Sequence[Callable], x: torch.Tensor) -> bool:
    """Do the site ops ``fns`` (two or more, applied in order at one site) together replace every entry of
    ``x`` by detached values? Then nothing of ``x`` reaches the output and the caller may detach it, so no
    gradient is computed through what produced it (e.g. the runs of a stack that each graft layer 0 of
    their own members: every member's layer 0 is replaced, none needs its backward pass)."""
    if len(fns) < 2 or not all(isinstance(f, _SiteOp) and not f.add and f.detach and f.exact_mask for f in fns):
        return False
    covered = None
    for f in fns:
        m = f.mask(x)
        covered = m if covered is None else covered | m
    return bool(covered.all())


def compile_interventions(interventions: Sequence, model) -> Plan:
    """Validate a list of interventions against a model and turn it into a ``Plan`` (module docstring)."""
    plan = Plan()
    for item in interventions:
        if not hasattr(item, "patches"):
            raise IclscopeError(f"not an intervention: {item!r}")
        for p in item.patches():
            if isinstance(p, Patch):
                new = _patch_ops(p, model)
                if isinstance(p.source, (CleanRun, FrozenModel)):
                    runner = None if isinstance(p.source, CleanRun) else p.source.model
                    plan.prepasses.setdefault(p.source, (runner, set()))[1].update(name for name, _ in new)
            elif isinstance(p, AddVector):
                new = _add_ops(p, model)
            elif isinstance(p, ClampPattern):
                new = _clamp_ops(p, model)
            elif isinstance(p, Hook):
                new = _hook_ops(p, model)
            else:  # pragma: no cover - patches() only returns the kinds above
                raise IclscopeError(f"not an intervention: {p!r}")
            for name, fn in new:
                plan.ops.setdefault(name, []).append(fn)
                if fn.site in HEAD_SITES:
                    plan.head_layers.add(fn.layer)
    return plan


__all__ = ["Plan", "RunContext", "check_members", "check_site", "compile_interventions", "positions_index",
           "replaced_together"]
