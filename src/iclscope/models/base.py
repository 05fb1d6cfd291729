"""One head-level interface over every model family.

A ``Model`` wraps a torch module whose forward pass calls ``hooks(name, tensor)`` at every hook point
(names and shapes: ``iclscope.sites``). The one flow: inputs -> ``run`` (interventions compiled by
``iclscope.compile``, pre-passes, one forward pass, recorders) -> logits + ``Cache`` -> a readout. Everything outside ``models/`` names heads as
(layer, head) and talks to this class only:

    model = iclscope.load("random:llama")
    logits, cache = model.run(tokens, record=["z", "pattern"], layers=[0, 1])
    cache.site("z", 1)                          # (B, T, n_heads, d_head)
    with model.intervene([Ablate([(1, 0)], how="zero")]):
        logits = model(tokens)                  # (B, T, vocab)
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterable, Sequence

import torch

from ..cache import Cache
from ..compile import Plan, RunContext, compile_interventions, positions_index, replaced_together
from ..errors import IclscopeError
from ..sites import HEAD_SITES, MODEL_SITES, PER_LAYER_SITES, QK_SITES, SITES, hook_name, parse_hook_name
from .prefix import PrefixCache, PrefixRows


class HookPoints:
    """The dispatcher a model's forward pass calls at each hook point, and the state of the current run.

    ``hooks(name, x)`` returns x unchanged when nothing is registered at ``name`` (one dict lookup),
    else the result of the registered functions in order. ``hooks.layer_active(l)`` tells the attention
    code whether any per-head hook of layer l is live, so that it can take the fused fast path when not;
    ``hooks.ctx`` is the run's ``RunContext`` (token ids, pre-pass caches, the prefix on the final-token
    path).
    """

    def __init__(self) -> None:
        self.ops: dict[str, list[Callable]] = {}
        self.ctx = RunContext()
        self._active_layers: set[int] = set()

    def set(self, ops: dict[str, list[Callable]], ctx: RunContext, active_layers: set[int]) -> None:
        self.ops, self.ctx, self._active_layers = ops, ctx, set(active_layers)

    def state(self) -> tuple:
        return self.ops, self.ctx, self._active_layers

    def clear(self) -> None:
        self.ops, self.ctx, self._active_layers = {}, RunContext(), set()

    def layer_active(self, layer: int) -> bool:
        return layer in self._active_layers

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        fns = self.ops.get(name)
        if fns:
            if len(fns) > 1 and x.requires_grad and replaced_together(fns, x):
                x = x.detach()  # every entry is replaced: no gradient needs to flow into x
            for fn in fns:
                x = fn(x, self.ctx)
        return x


class Model:
    """A causal model with the head interface.

    Attributes: n_layers, n_heads, n_kv_heads, d_head, d_model, vocab_size, tokenizer (or None),
    bos_token_id (or None), family (e.g. "gpt2", "llama", "tiny"), module (the torch module),
    hooks (its HookPoints).

    Beyond ``run`` / ``intervene``: ``generate`` (decoding under interventions), ``tokenize`` (text ->
    token inputs, also accepted by ``run`` directly), ``to(device, dtype)``, ``missing_sites()``.

    Subclasses implement ``_forward(inputs, prefix=None, kv_out=None) -> logits (B, T, vocab)`` and
    ``out_proj(layer, z)``: ``inputs`` is the dict of ``_inputs`` (``tokens`` and the family's extras);
    ``prefix`` a ``PrefixRows`` view on the final-token path; ``kv_out`` a dict to fill with every layer's
    (keys, values) minus the final position (for ``prefix_cache``).
    """

    family: str = "?"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    vocab_size: int
    n_ctx: int | None = None  # longest sequence the model takes (None: not known)
    supports_padding: bool = True  # whether left-padded batches (an attention_mask with zeros) are allowed
    native_final_only: bool = False  # whether _forward takes final_only (else run slices the full logits)
    tokenizer: Any = None
    bos_token_id: int | None = None
    module: torch.nn.Module
    hooks: HookPoints

    def __init__(self) -> None:
        self._stack: list[list] = []
        self._compiled: tuple | None = None

    # ------------------------------------------------------------------ family-specific
    def _forward(self, inputs: dict, prefix: "PrefixRows | None" = None,
                 kv_out: dict | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The attention output projection of ``layer`` applied to z (..., n_heads, d_head) -> (..., d_model),
        bias included."""
        raise NotImplementedError

    # ------------------------------------------------------------------ common
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def missing_sites(self) -> dict[str, str]:
        """{site: why} for the sites of ``iclscope.sites`` this model does not have (refused by name when
        recorded or intervened on). Every family has all of them unless it says otherwise."""
        return {}

    def hook_names(self) -> list[str]:
        """Every hook point this model has, in forward order of layers (model sites first and last)."""
        missing = self.missing_sites()
        per_layer = [s for s in PER_LAYER_SITES if s not in missing]
        names = [hook_name("embed")] if "embed" not in missing else []
        names += [hook_name(s, layer) for layer in range(self.n_layers) for s in per_layer]
        return names + ([hook_name("ln_final")] if "ln_final" not in missing else [])

    def to(self, device=None, dtype=None) -> "Model":
        """Move (and/or cast) the weights; returns self."""
        self.module.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(family={self.family!r}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}, d_head={self.d_head}, d_model={self.d_model})")

    @contextlib.contextmanager
    def intervene(self, interventions: Sequence):
        """Apply a list of interventions to every forward pass inside the block (nestable).

        The list is validated here, so a head out of range fails before any forward pass."""
        interventions = list(interventions)
        compile_interventions(interventions, self)  # validate now
        self._stack.append(interventions)
        self._compiled = None
        try:
            yield self
        finally:
            self._stack.pop()
            self._compiled = None

    def active_interventions(self) -> list:
        return [i for level in self._stack for i in level]

    def __call__(self, inputs: Any, **kwargs) -> torch.Tensor:
        """Logits (B, T, vocab) under the active interventions."""
        return self.run(inputs, **kwargs)[0]

    def run(self, inputs: Any = None, interventions: Sequence = (), record: Sequence[str] | None = None,
            layers: Iterable[int] | None = None, positions=None, grad: bool = False,
            prefix: "PrefixRows | None" = None, final_only: bool = False) -> tuple[torch.Tensor, Cache]:
        """One forward pass under the active interventions plus ``interventions``, recording activations.

        inputs: token ids (B, T) int64; a string or a list of strings (tokenised with the model's tokenizer,
            BOS as ``tokenize`` says, a list left-padded); or a dict / batch object of the family's inputs (token models:
            ``input_ids`` or ``tokens``, optional ``attention_mask``; the tiny model also ``vectors``
            (B, T, d_input) and ``vector_mask`` (B, T)). With ``prefix``, inputs default to the prefix's
            final tokens.
        record: sites to record (e.g. ["z", "pattern"], model sites such as "embed" once each) or full
            hook names; layers: which layers (default all); positions: which token positions (default all;
            query positions for patterns and scores). A site the model lacks (``missing_sites``) is refused.
        grad: keep recorded tensors attached to the graph (for attribution methods); default detached.
        prefix: a ``PrefixRows`` view (see ``run_last_token``): run only the final token of each row
            against that cached prefix.
        final_only: return the final position's logits only, (B, 1, vocab) (a training loss on the last
            token); a family that can skip work for the other positions does (the tiny model's last block,
            when none of its hooks after resid_pre is live), the others slice. Hooks and recorders see what
            they see without it.
        Returns (logits (B, T, vocab), Cache).
        """
        if _is_text(inputs):
            inputs = self.tokenize(inputs)
        return self._run(inputs, interventions, record, layers, positions, grad, prefix, final_only=final_only)

    def tokenize(self, text: "str | Sequence[str]") -> dict:
        """Token inputs for ``run`` from a string or a list of strings, with the model's tokenizer.

        BOS convention: a tokenizer that adds the BOS token itself (Llama's) is used as it is; otherwise
        (GPT-2, GPT-NeoX/Pythia) the model's ``bos_token_id`` is prepended. A list is left-padded (pad id:
        the tokenizer's pad token, else BOS, else 0) with an ``attention_mask``, so that position -1 is every
        row's last token. Returns {"tokens": (B, T) int64, "attention_mask": (B, T) int64}."""
        tok = self.tokenizer
        if tok is None:
            raise IclscopeError(f"this {self.family} model has no tokenizer; give token ids (B, T) instead of text")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise IclscopeError("text inputs must be a string or a non-empty list of strings")
        bos = self.bos_token_id
        rows = []
        for t in texts:
            ids = list(tok(t)["input_ids"])
            if bos is not None and not (ids and ids[0] == bos and len(ids) > len(tok(t, add_special_tokens=False)["input_ids"])):
                ids = [bos] + ids
            if not ids:
                raise IclscopeError(f"the text {t!r} tokenises to nothing and the model has no BOS token")
            rows.append(ids)
        pad = getattr(tok, "pad_token_id", None)
        pad = pad if pad is not None else (bos if bos is not None else 0)
        T = max(map(len, rows))
        tokens = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, ids in enumerate(rows):
            tokens[i, T - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[i, T - len(ids):] = 1
        return {"tokens": tokens.to(self.device), "attention_mask": mask.to(self.device)}

    def _run(self, inputs, interventions=(), record=None, layers=None, positions=None, grad=False, prefix=None,
             kv_out: dict | None = None, final_only: bool = False) -> tuple[torch.Tensor, Cache]:
        """``run``, plus ``kv_out``: a dict the main pass fills with every layer's keys/values (prefix_cache)."""
        if prefix is not None and inputs is None:
            inputs = {k: prefix.select(v) for k, v in prefix.cache.last.items()}
        inputs = self._inputs(inputs)
        if self._compiled is None:  # the context's interventions compile once, not once per pass
            self._compiled = compile_interventions(self.active_interventions(), self)
        plan = self._compiled.extend(compile_interventions(list(interventions), self)) if interventions \
            else self._compiled.extend(Plan())
        ctx = RunContext(tokens=inputs.get("tokens"), prefix=prefix)
        for key, (source_model, names) in plan.prepasses.items():
            if source_model is not None and prefix is not None:
                raise IclscopeError("Graft (a frozen source model) is not supported on the final-token path; "
                                    "run the full sequence instead")
            runner = self if source_model is None else source_model
            with torch.no_grad():
                ctx.caches[key] = runner._plain_run(inputs, sorted(names), prefix=prefix)[1]
        cache = Cache()
        if record:
            pos = positions_index(positions, inputs["tokens"].shape[1])
            cache.positions = pos
            for name in self._record_names(record, layers):
                plan.ops.setdefault(name, []).append(_recorder(cache, name, pos, grad))
                site, layer = parse_hook_name(name)
                if site in HEAD_SITES:
                    plan.head_layers.add(layer)
        self.hooks.set(plan.ops, ctx, plan.head_layers)
        try:
            if final_only and self.native_final_only:
                logits = self._forward(inputs, prefix=prefix, kv_out=kv_out, final_only=True)
            else:
                logits = self._forward(inputs, prefix=prefix, kv_out=kv_out)
                logits = logits[:, -1:] if final_only else logits
        finally:
            self.hooks.clear()
        return logits, cache

    # ------------------------------------------------------------------ generation
    def generate(self, inputs: Any, max_new_tokens: int, interventions: Sequence = (), do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
                 positions_mode: str = "prompt", stop_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Generate ``max_new_tokens`` tokens per row, greedily or by sampling, under interventions.

        inputs: as for ``run`` (token ids (B, T), a dict with a left-padding ``attention_mask``, a string
            or a list of strings, left-padded). interventions: applied, with those of any enclosing
            ``model.intervene`` block, at every step. do_sample: False = greedy (argmax, ties to the lowest
            id, as transformers' greedy search); True = sample from softmax(logits / temperature), keeping
            only the ``top_k`` most likely tokens when given; ``seed`` makes sampling reproducible
            (a private generator; None uses torch's global one). stop_ids: once a row emits one of these
            ids, its remaining entries repeat that id; generation ends when every row has stopped.
        Returns (B, max_new_tokens) int64 on the model's device.

        Positions (the gotcha). Each step is one full forward pass over the prompt plus the tokens
        generated so far, so "the final position" moves as tokens are generated. ``positions_mode``
        says what an intervention's ``positions`` refer to:

        - ``"prompt"`` (default): the prompt's positions only, fixed for the whole generation. A negative
          position counts from the PROMPT's end: ``positions=-1`` is the prompt's last token at every
          step (exactly a single-pass study at -1, carried through the decoding); a slice is taken over
          the prompt's positions.
        - ``"every"``: positions count in the growing sequence and are re-applied at each step:
          ``positions=-1`` is the newest token (every generated token is produced under it).

        In both modes ``positions=None`` is every position of the growing sequence (prompt and new
        tokens). A source that must match the sequence's shape (a ``Cache`` from another run, a pattern
        tensor) fails from the second step; give a tensor of vectors or a constant instead.
        Cost: one full pass per new token (no key/value cache).
        """
        if _is_text(inputs):
            inputs = self.tokenize(inputs)
        d = self._inputs(inputs)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise IclscopeError(f"generate: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if positions_mode not in ("prompt", "every"):
            raise IclscopeError(f"generate: positions_mode must be 'prompt' or 'every', got {positions_mode!r}")
        if do_sample and not float(temperature) > 0:
            raise IclscopeError(f"generate: temperature must be > 0, got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise IclscopeError(f"generate: top_k must be an integer >= 1, got {top_k!r}")
        extra = sorted(set(d) - {"tokens", "attention_mask"})
        if extra:
            raise IclscopeError(f"generate takes token inputs (and an attention_mask) only, not {extra}")
        tokens, mask = d["tokens"].to(self.device), d.get("attention_mask")
        mask = None if mask is None else mask.to(self.device)
        B, P = tokens.shape
        if P == 0:
            raise IclscopeError("generate: the prompt is empty")
        if self.n_ctx is not None and P + max_new_tokens > self.n_ctx:
            raise IclscopeError(f"generate: {P} prompt tokens + {max_new_tokens} new ones exceed the model's "
                                f"n_ctx={self.n_ctx}")
        ivs = self.active_interventions() + list(interventions)
        if positions_mode == "prompt":
            ivs = [_at_prompt_positions(iv, P) for iv in ivs]
        compile_interventions(ivs, self)  # bad input fails before any pass
        stops = None if stop_ids is None else torch.as_tensor(list(stop_ids), dtype=torch.long, device=self.device)
        gen = None
        if do_sample and seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=self.device)
        stopped = torch.zeros(B, dtype=torch.bool, device=self.device)
        fill = torch.zeros(B, dtype=torch.long, device=self.device)
        saved, self._stack, self._compiled = self._stack, [], None  # the context's interventions are in ivs
        try:
            with torch.no_grad():
                for step in range(max_new_tokens):
                    inp = {"tokens": tokens} if mask is None else {"tokens": tokens, "attention_mask": mask}
                    logits = self._run(inp, ivs)[0][:, -1].float()  # (B, vocab)
                    nxt = _next_token(logits, do_sample, float(temperature), top_k, gen)
                    if stops is not None:
                        nxt = torch.where(stopped, fill, nxt)
                        hit = torch.isin(nxt, stops) & ~stopped
                        fill = torch.where(hit, nxt, fill)
                        stopped = stopped | hit
                    out[:, step] = nxt
                    if stops is not None and bool(stopped.all()):
                        out[:, step + 1:] = fill[:, None]
                        break
                    tokens = torch.cat([tokens, nxt[:, None]], 1)
                    if mask is not None:
                        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        finally:
            self._stack, self._compiled = saved, None
        return out

    # ------------------------------------------------------------------ final token against a cached prefix
    def prefix_cache(self, inputs: Any, interventions: Sequence = ()) -> "PrefixCache":
        """One full pass (no gradient, under the active interventions plus ``interventions``) that keeps
        every layer's keys and values for all positions but the last, so that the final token can be
        re-run alone, many times, with ``run_last_token``. Inputs as for ``run`` (T >= 2).

        The cached keys/values are those the layer computed, before any k/v hook; the cache also holds the
        full pass's final-position logits (``.logits``, (B, vocab))."""
        if _is_text(inputs):
            inputs = self.tokenize(inputs)
        d = self._inputs(inputs)
        T = d["tokens"].shape[1]
        if T < 2:
            raise IclscopeError("prefix_cache needs sequences of at least 2 tokens")
        kv_out: dict = {}  # filled by _forward with every layer's keys/values, minus the final position
        with torch.no_grad():
            logits = self._run(d, interventions, kv_out=kv_out)[0]
        if sorted(kv_out) != list(range(self.n_layers)):
            raise IclscopeError(f"prefix_cache: the {self.family} forward pass returned keys/values for layers "
                                f"{sorted(kv_out)}, not all {self.n_layers}")
        kv = [kv_out[layer] for layer in range(self.n_layers)]
        last = {k: d[k][:, -1:] for k in ("tokens", "vectors", "vector_mask") if d.get(k) is not None}
        mask = d.get("attention_mask")
        pos = None
        if mask is not None:
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -1:]
        return PrefixCache(kv, last, mask, pos, logits[:, -1].detach(), T)

    def run_last_token(self, prefix: "PrefixCache", rows=None, interventions: Sequence = (),
                       record: Sequence[str] | None = None, layers: Iterable[int] | None = None,
                       positions=None, grad: bool = False) -> tuple[torch.Tensor, Cache]:
        """Run only the final token of B' rows against a ``prefix_cache``: row i continues prompt
        ``rows[i]`` (default: each prompt once). Equals the final position of a full pass on those prompts.

        Interventions and recording work as in ``run`` on a sequence of length 1: ``positions=[-1]`` (or 0)
        is the final token; q, z and residual sites have shape (B', 1, ...), patterns (B', H, 1, T); the k and
        v hooks see the whole key axis (B', T, H, D), the cached prefix included (recording k/v at chosen
        positions is refused). The prefix is fixed: an intervention here changes the final token only, which
        equals a full pass for interventions at the final position. One that also changes earlier positions
        in a full pass (e.g. a key patch at an earlier position) must be given to ``prefix_cache`` as well:
        the cache holds keys/values from before the k/v hooks, so the same patch then applies to both.
        Returns (logits (B', 1, vocab), Cache).
        """
        if not isinstance(prefix, PrefixCache):
            raise IclscopeError(f"run_last_token needs a PrefixCache from model.prefix_cache, "
                                f"got {type(prefix).__name__}")
        if record and positions is not None and any(r in ("k", "v") or r.endswith(("hook_k", "hook_v"))
                                                    for r in record):
            raise IclscopeError("run_last_token: k and v span the whole key axis; record them without positions")
        view = PrefixRows(prefix, prefix.rows(rows))
        return self.run(None, interventions=interventions, record=record, layers=layers, positions=positions,
                        grad=grad, prefix=view)


    def _plain_run(self, inputs: dict, record_names: Sequence[str], prefix=None) -> tuple[torch.Tensor | None, Cache]:
        """A pass with no interventions at all (for pre-passes), recording full hook names. It stops as
        soon as every requested value is recorded (the later layers cannot change them), so logits are
        None unless nothing was requested."""
        cache = Cache()
        wanted = set(record_names)

        def stop_when_done(x, ctx):
            if wanted.issubset(cache):
                raise _Done
            return x

        ops = {name: [_recorder(cache, name, None, False), stop_when_done] for name in record_names}
        active = {layer for site, layer in map(parse_hook_name, record_names) if site in HEAD_SITES}
        saved = self.hooks.state()
        self.hooks.set(ops, RunContext(tokens=inputs.get("tokens"), prefix=prefix), active)
        logits = None
        try:
            logits = self._forward(inputs, prefix=prefix)
        except _Done:
            pass
        finally:
            self.hooks.set(*saved)
        return logits, cache

    def _record_names(self, record: Sequence[str], layers) -> list[str]:
        layers = range(self.n_layers) if layers is None else list(layers)
        missing = self.missing_sites()
        names = []
        for r in record:
            site = r if r in SITES else (parse_hook_name(r)[0] if _is_hook(r) else None)
            if site in missing:
                raise IclscopeError(f"record: this {self.family} model has no {site!r} site: {missing[site]}")
            if r in MODEL_SITES:
                names.append(hook_name(r))
            elif r in SITES:
                for layer in layers:
                    if not 0 <= int(layer) < self.n_layers:
                        raise IclscopeError(f"record: layer {layer} is out of range: the model has "
                                            f"{self.n_layers} layers (0..{self.n_layers - 1})")
                    names.append(hook_name(r, int(layer)))
            elif r in self.hook_names():
                names.append(r)
            else:
                raise IclscopeError(f"record: unknown site or hook {r!r}; sites are {', '.join(SITES)}")
        return names

    def _inputs(self, inputs: Any) -> dict:
        """Normalise inputs to the keyword arguments of ``_forward``; ``tokens`` is always the token ids."""
        if isinstance(inputs, torch.Tensor):
            d = {"tokens": inputs}
        elif isinstance(inputs, dict):
            d = dict(inputs)
        elif hasattr(inputs, "model_inputs"):  # the Batch protocol (iclscope.batch)
            d = {k: v for k, v in inputs.model_inputs().items() if v is not None}
        else:
            raise IclscopeError(f"inputs must be token ids (B, T), a dict or a batch (with model_inputs()), got "
                               f"{type(inputs).__name__}")
        if "input_ids" in d:
            d["tokens"] = d.pop("input_ids")
        tok = d.get("tokens")
        if tok is None:
            raise IclscopeError("inputs hold no token ids ('tokens' or 'input_ids')")
        if tok.dim() == 1:
            d["tokens"] = tok = tok[None]
        if tok.dim() != 2:
            raise IclscopeError(f"token ids must have shape (batch, seq), got {tuple(tok.shape)}")
        if tok.dtype not in (torch.int64, torch.int32):
            raise IclscopeError(f"token ids must be integers, got {tok.dtype}")
        if tok.shape[0] == 0 or tok.shape[1] == 0:
            raise IclscopeError(f"empty input: token ids of shape {tuple(tok.shape)} (need at least one sequence of "
                                f"at least one token)")
        if self.n_ctx is not None and tok.shape[1] > self.n_ctx:
            raise IclscopeError(f"sequence of length {tok.shape[1]} is longer than the model's n_ctx="
                                f"{self.n_ctx} (its context); shorten the prompts")
        if tok.numel():
            lo, hi = (int(v) for v in torch.aminmax(tok))  # one reduction: this runs every training step
            if lo < 0 or hi >= self.vocab_size:
                raise IclscopeError(f"a token id is outside the vocabulary of {self.vocab_size} (min {lo}, max {hi})")
        return d


class _Done(Exception):
    """Raised inside a pre-pass once every value it was asked for is recorded."""


def _at_prompt_positions(iv, P: int):
    """``iv`` with its positions made absolute against a prompt of length P (None stays None)."""
    pos = getattr(iv, "positions", None)
    if pos is None or not dataclasses.is_dataclass(iv):
        return iv
    return dataclasses.replace(iv, positions=positions_index(pos, P).tolist())


def _next_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_k, gen) -> torch.Tensor:
    """(B,) next ids from final-position logits (B, vocab): argmax, or a sample (temperature, top-k)."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]


def _is_text(inputs) -> bool:
    return isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and len(inputs) > 0
                                       and all(isinstance(t, str) for t in inputs))


def _is_hook(name: str) -> bool:
    try:
        parse_hook_name(name)
    except IclscopeError:
        return False
    return True


def _recorder(cache: Cache, name: str, pos: torch.Tensor | None, grad: bool):
    is_pattern = parse_hook_name(name)[0] in QK_SITES  # (B, H, query, key): positions are query positions

    def record(x: torch.Tensor, ctx) -> torch.Tensor:
        if pos is None:
            cache[name] = x if grad else x.detach()
            return x
        p = pos.to(x.device)
        y = x[:, :, p] if is_pattern else x[:, p]
        if not grad:
            cache[name] = y.detach()
            return x
        # with gradients, the recorded slice must be what flows on, so that it gets a .grad
        y = y.clone()
        cache[name] = y
        out = x.clone()
        if is_pattern:
            out[:, :, p] = y
        else:
            out[:, p] = y
        return out

    return record


def head_means(model: Model, inputs: Any, positions=-1, batch_size: int = 32) -> torch.Tensor:
    """Mean head outputs z over a set of prompts, for mean ablation.

    inputs: token ids (N, T), a dict with ``input_ids``/``tokens`` and an optional ``attention_mask``
    (N, T), or a list of such batches. positions: which positions to average over (default the final
    one; None = every position). Only real tokens count: each (prompt, position) is weighted by the
    ``attention_mask`` there, so left padding never enters the mean. Returns (n_layers, n_heads, d_head).
    """
    batches = inputs if isinstance(inputs, (list, tuple)) else [inputs[i:i + batch_size]
                                                               for i in range(0, len(inputs), batch_size)]
    total, count = None, 0.0
    with torch.no_grad():
        for b in batches:
            norm = model._inputs(b)
            B, T = norm["tokens"].shape
            _, cache = model.run(b, record=["z"], positions=positions)
            z = torch.stack([cache.site("z", layer) for layer in range(model.n_layers)])  # (L, B, P, H, D)
            mask = norm.get("attention_mask")
            if mask is None:
                w = torch.ones(B, z.shape[2], device=z.device)
            else:
                pos = positions_index(positions, T)
                w = (mask if pos is None else mask[:, pos.to(mask.device)]).to(z.device).float()  # (B, P)
            s = (z.float() * w[None, :, :, None, None]).sum(dim=(1, 2))
            total = s if total is None else total + s
            count += float(w.sum())
    if total is None:
        raise IclscopeError("head_means: no inputs given")
    if count == 0:
        raise IclscopeError("head_means: every position asked for is padding (attention_mask 0)")
    return (total / count).to(model.dtype)


__all__ = ["Cache", "HookPoints", "Model", "PrefixCache", "PrefixRows", "head_means"]
