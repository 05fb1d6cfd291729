"""Function-vector (FV) head scores: the causal indirect effect of Todd et al. (ICLR 2024).

Definition (reference.md, section A). For each ICL task:

1. the task mean of each head's output z at the final token, over clean k-shot prompts:
   ``means`` (n_layers, n_heads, d_head);
2. on prompts whose demonstration labels are corrupted (by default, as published, fresh prompts whose
   labels are randomly permuted; see ``fv_prompts`` and docs/protocol.md), replace ONE head's
   final-token z by its task mean and record the increase in the probability (softmax over the whole
   vocabulary, float32) of the first token of the correct answer (``answer_first_token``) over the
   corrupted run without the patch.

The score of head (l, h) is that increase averaged over a task's prompts, then over tasks. Scores are
small and noisy (a few hundredths in the models of the study): ``FVResult`` keeps every task's table,
the per-prompt standard error and the spread over tasks.

Three implementations, equal up to float error (the first two exactly so):

- ``fv_scores_reference``: the published loop, one forward pass per head per prompt batch
  (layers x heads full passes). For checking and benchmarks.
- ``fv_scores`` (default): patching the final position changes nothing at earlier positions, so the
  corrupted prompts run once (``Model.prefix_cache``), and only the final token is recomputed
  (``Model.run_last_token``) for a batch of (head, prompt) rows, one patched head per row
  (``Patch(..., rows=...)``).
- ``fv_scores_attribution``: attribution patching, one forward + backward pass per batch:
  score ~= (mean_z - z_corrupt) . dP(answer)/dz at the final position. A first-order estimate; check
  its ranking against the exact scores with ``spearman`` (``compare=True`` does it and stores the
  correlation in the result).

Inputs: ``tasks`` maps a task name to a pair (clean PromptBatch, corrupted PromptBatch); a list of
pairs (named by ``PromptBatch.task``) or a single pair also works. ``fv_prompts`` builds such pairs
for word tasks (``Task``, needs the model's tokenizer) and token tasks (``TokenTask``).

Why one file of ~460 lines: the three implementations of one definition stay side by side, sharing their
input checks and result type, so that a reader can hold each against the published loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..batch import chunks
from ..errors import IclscopeError
from ..readout import answer_prob
from ..heads import all_heads, check_heads, top_heads
from ..interventions import Patch
from ..models.base import head_means

__all__ = ["FVResult", "fv_prompts", "fv_scores", "fv_scores_attribution", "fv_scores_reference", "spearman",
           "task_means"]

Head = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------


@dataclass
class FVResult:
    """FV scores of every head, overall and per task.

    Attributes:
        scores: (n_layers, n_heads) float32, the mean over tasks of the per-task scores (NaN for heads
            not scored).
        per_task: task -> (n_layers, n_heads), the mean increase in P(answer) over the task's prompts.
        per_task_sem: task -> (n_layers, n_heads), the standard error of that mean over prompts.
        per_prompt: task -> (n_prompts, n_layers, n_heads), every prompt's increase (or its estimate).
        baseline: task -> (n_prompts,), P(answer) on the corrupted prompts without a patch.
        method: "reference", "fast" or "attribution".
        spearman: attribution only: the rank correlation with the exact scores, when compared.
    """

    scores: torch.Tensor
    per_task: dict[str, torch.Tensor]
    per_task_sem: dict[str, torch.Tensor]
    per_prompt: dict[str, torch.Tensor]
    baseline: dict[str, torch.Tensor]
    method: str
    spearman: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.per_task)

    @property
    def n_prompts(self) -> dict[str, int]:
        return {t: int(v.shape[0]) for t, v in self.per_prompt.items()}

    @property
    def task_std(self) -> torch.Tensor:
        """(n_layers, n_heads) standard deviation of the per-task scores over tasks (0 with one task)."""
        stack = torch.stack(list(self.per_task.values()))
        return stack.std(0, unbiased=True) if stack.shape[0] > 1 else torch.zeros_like(stack[0])

    def top(self, k: int) -> list[Head]:
        """The k heads with the highest mean score, best first (unscored heads never)."""
        n = int((~self.scores.isnan()).sum())
        return top_heads(self.scores, min(k, n))

    def to_frame(self):
        """A long pandas table: task ("mean" for the mean over tasks), layer, head, score, sem."""
        import pandas as pd

        rows = []
        L, H = self.scores.shape
        std = self.task_std
        for task in [*self.per_task, "mean"]:
            tab = self.scores if task == "mean" else self.per_task[task]
            sem = (std / math.sqrt(len(self.per_task))) if task == "mean" else self.per_task_sem[task]
            for layer in range(L):
                for head in range(H):
                    rows.append((task, layer, head, float(tab[layer, head]), float(sem[layer, head])))
        return pd.DataFrame(rows, columns=["task", "layer", "head", "score", "sem"])

    def __repr__(self) -> str:
        L, H = self.scores.shape
        extra = f", spearman={self.spearman:.3f}" if self.spearman is not None else ""
        return (f"FVResult(method={self.method!r}, tasks={len(self.per_task)}, heads={L}x{H}, "
                f"max={float(self.scores.nan_to_num(float('-inf')).max()):.4f}{extra})")


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation between two score tables of the same shape (flattened).

    Ties get their average rank; pairs where either value is NaN are left out. Returns NaN when fewer
    than two pairs remain or when either side is constant."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise IclscopeError(f"spearman: the tables have {a.numel()} and {b.numel()} entries")
    keep = ~(a.isnan() | b.isnan())
    a, b = a[keep], b[keep]
    if a.numel() < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float("nan") if denom == 0 else float((ra * rb).sum().item() / denom)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties averaged."""
    order = x.argsort(stable=True)
    xs = x[order]
    ranks = torch.empty_like(x)
    n, i = x.numel(), 0
    while i < n:
        j = i
        while j + 1 < n and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


#: Added to the seed for the corrupted prompts of the "fresh" protocol, so that they are drawn
#: independently of the clean prompts (a seed of their own, the same for every run with that seed).
FRESH_SEED_OFFSET = 100_003


def fv_prompts(model, tasks, k: int = 10, n_clean: int = 100, n_corrupt: int = 25, seed: int = 0,
               corrupt: str | None = None, corrupt_prompts: str | None = None, test_fraction: float | None = None,
               protocol=None, **build_kwargs) -> dict[str, tuple]:
    """Build (clean, corrupted) prompt batches for FV scoring.

    tasks: a list (or name -> task dict) of ``Task`` (word tasks, built with the model's tokenizer) or
    ``TokenTask`` (token ids; pass ``sep_id``, ``bos_id``, ``pad_id`` in ``build_kwargs``).

    The protocol (``iclscope.tasks.Protocol``; default the published one, see docs/protocol.md) decides
    how; ``corrupt``, ``corrupt_prompts`` and ``test_fraction`` override its fields:

    - ``corrupt_prompts="fresh"`` (published): each task is split (``split(task, test_fraction, seed)``);
      clean prompts: n_clean prompts from ``seed``, demonstrations from the train side, queries from the
      held-out side; corrupted prompts: n_corrupt prompts drawn the same way from another seed
      (``seed + FRESH_SEED_OFFSET``), independent of the clean prompts behind the task mean.
    - ``corrupt_prompts="twins"`` (iclscope's variant): every pair serves both pools; the corrupted prompts
      come from the same seed, so they are the first n_corrupt clean prompts with corrupted labels.
    - ``corrupt``: ``"permute"`` (published: a random permutation, a label may stay on its own input),
      ``"cycle"`` (every demo shows its predecessor's label, none stays correct) or ``"shuffle"`` (a
      random derangement).

    Word tasks start with one BOS as the protocol says (``bos``; the model's ``bos_token_id`` is used
    for tokenizers without a BOS token); ``demo_pairs``/``query_pairs`` in ``build_kwargs`` replace the
    split. Returns ``{name: (clean, corrupted)}``.
    """
    from ..tasks.core import Task, TokenTask, build_prompts, build_token_prompts, has_tokenizer, split
    from ..tasks.protocol import Protocol

    proto = Protocol.make(protocol, corrupt=corrupt, corrupt_prompts=corrupt_prompts, test_fraction=test_fraction)
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    out = {}
    for task in items:
        if isinstance(task, TokenTask):
            build, kw = build_token_prompts, dict(build_kwargs)
        elif isinstance(task, Task):
            if not has_tokenizer(model.tokenizer):
                raise IclscopeError(f"task {task.name!r} is a word task, but the model has no tokenizer; "
                                    f"use token tasks (TokenTask) for this model")
            kw = {"add_bos": proto.add_bos, "bos_id": model.bos_token_id, **build_kwargs}

            def build(t, **a):
                return build_prompts(t, model.tokenizer, **a)
        else:
            raise IclscopeError(f"fv_prompts: expected Task or TokenTask, got {type(task).__name__}")
        bad_seed = seed
        if proto.corrupt_prompts == "fresh":
            if "demo_pairs" not in kw and "query_pairs" not in kw:
                kw["demo_pairs"], kw["query_pairs"] = split(task, proto.test_fraction, seed)
            bad_seed = seed + FRESH_SEED_OFFSET
        clean = build(task, k=k, n=n_clean, seed=seed, **kw)
        bad = build(task, k=k, n=n_corrupt, seed=bad_seed, corrupt=proto.corrupt, **kw)
        out[task.name] = (clean, bad)
    return out


def _task_pairs(tasks) -> list[tuple[str, Any, Any]]:
    if isinstance(tasks, Mapping):
        items = [(str(name), *pair) for name, pair in tasks.items()]
    elif isinstance(tasks, tuple) and len(tasks) == 2 and hasattr(tasks[0], "answer_first_token"):
        items = [(tasks[0].task or "task", *tasks)]
    else:
        items = []
        for pair in tasks:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise IclscopeError("FV scores take {task: (clean PromptBatch, corrupted PromptBatch)}, a list of "
                                    "such pairs, or one pair (see iclscope.scores.fv_prompts)")
            items.append((pair[0].task or f"task{len(items)}", *pair))
    if not items:
        raise IclscopeError("FV scores: no tasks given")
    names = [n for n, _, _ in items]
    if len(set(names)) != len(names):
        raise IclscopeError(f"FV scores: task names repeat: {names}")
    for name, clean, bad in items:
        for what, b in (("clean", clean), ("corrupted", bad)):
            if not hasattr(b, "answer_first_token") or not hasattr(b, "input_ids"):
                raise IclscopeError(f"task {name!r}: the {what} prompts must be a PromptBatch, got {type(b).__name__}")
        if getattr(bad, "corrupt", "?") is None:
            raise IclscopeError(f"task {name!r}: the second batch is not corrupted; build it with corrupt='permute', "
                                f"'cycle' or 'shuffle' (see iclscope.scores.fv_prompts)")
        if len(clean) == 0 or len(bad) == 0:
            raise IclscopeError(f"task {name!r}: empty prompt batch")
    return items


def _heads(model, heads) -> list[Head]:
    if heads is None:
        return all_heads(model)
    return check_heads(heads, model, "heads", empty_ok=False)


def _chunks(batch, batch_size: int, device) -> Iterator[tuple[dict, torch.Tensor, slice]]:
    """(inputs, answer first tokens (b,), slice) for pieces of a PromptBatch."""
    for inputs, sl in chunks(batch, batch_size, device):
        yield inputs, batch.answer_first_token[sl].to(device), sl


def task_means(model, clean, batch_size: int = 16) -> torch.Tensor:
    """Mean final-token head outputs over a clean PromptBatch: (n_layers, n_heads, d_head)."""
    batches = [inputs for inputs, _, _ in _chunks(clean, batch_size, model.device)]
    return head_means(model, batches, positions=-1)


def _check_means(model, means, items) -> dict | None:
    if means is None:
        return None
    if not isinstance(means, Mapping):
        raise IclscopeError("means must map each task name to a (n_layers, n_heads, d_head) tensor")
    want = (model.n_layers, model.n_heads, model.d_head)
    for name, _, _ in items:
        if name not in means:
            raise IclscopeError(f"means has no entry for task {name!r}")
        if tuple(means[name].shape) != want:
            raise IclscopeError(f"means[{name!r}] has shape {tuple(means[name].shape)}, the model needs {want}")
    return dict(means)


def _means(model, name, clean, batch_size, given) -> torch.Tensor:
    if given is not None:
        return given[name].to(model.device)
    return task_means(model, clean, batch_size)


def _finish(model, heads, per_prompt: dict, baseline: dict, method: str, **info) -> FVResult:
    per_task, sem = {}, {}
    for name, d in per_prompt.items():
        per_task[name] = d.mean(0)
        n = d.shape[0]
        sem[name] = d.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(d[0], float("nan"))
    scores = torch.stack(list(per_task.values())).mean(0)
    return FVResult(scores, per_task, sem, per_prompt, baseline, method, info=dict(info, heads=heads))


def _progress(total: int, desc: str, progress: bool):
    """A progress display for ``total`` batches (``iclscope.report.progress``: a bar on a terminal, a log
    line every 30 s elsewhere); nothing when ``progress`` is False or ``ICLSCOPE_QUIET=1``."""
    import os

    from ..report.progress import progress as _display

    quiet = not progress or os.environ.get("ICLSCOPE_QUIET", "") not in ("", "0")
    return _display(total=total, desc=desc, unit="batch", quiet=quiet)


# --------------------------------------------------------------------------------------------------
# The three implementations
# --------------------------------------------------------------------------------------------------


def fv_scores_reference(model, tasks, heads: Sequence[Head] | None = None, batch_size: int = 16,
                        means: Mapping | None = None, progress: bool = True) -> FVResult:
    """FV scores the published way: one forward pass per head per prompt batch.

    tasks: ``{name: (clean, corrupted)}`` PromptBatches (see ``fv_prompts``); heads: which heads to score
    (default all; the others are NaN); means: optional precomputed task means ``{task: (n_layers, n_heads,
    d_head)}`` (``task_means``). Returns an ``FVResult`` (method "reference")."""
    items = _task_pairs(tasks)
    heads = _heads(model, heads)
    means_given = _check_means(model, means, items)
    L, H = model.n_layers, model.n_heads
    per_prompt, baseline = {}, {}
    total = sum(math.ceil(len(bad) / batch_size) for _, _, bad in items) * len(heads)
    with _progress(total, "FV (reference)", progress) as bar, torch.no_grad():
        for name, clean, bad in items:
            means = _means(model, name, clean, batch_size, means_given)
            d = torch.full((len(bad), L, H), float("nan"))
            base_all = torch.empty(len(bad))
            for inputs, ans, sl in _chunks(bad, batch_size, model.device):
                base = answer_prob(model(inputs)[:, -1], ans)
                base_all[sl] = base.cpu()
                for layer, h in heads:
                    patch = Patch("z", means, heads=[(layer, h)], positions=[-1])
                    p = answer_prob(model.run(inputs, interventions=[patch])[0][:, -1], ans)
                    d[sl, layer, h] = (p - base).cpu()
                    bar.update(1)
            per_prompt[name], baseline[name] = d, base_all
    return _finish(model, heads, per_prompt, baseline, "reference")


def _row_bytes(model, T: int) -> tuple[int, int]:
    """Rough bytes per (head, prompt) row of a last-token pass: (activations of one token, the keys and
    values of every layer, which rows that do not share one prompt must gather and concatenate)."""
    elem = torch.finfo(model.dtype).bits // 8
    act = (16 * model.d_model + 4 * model.n_heads * T + 2 * model.vocab_size) * 4
    kv = model.n_layers * 2 * model.n_heads * T * model.d_head * elem * 2
    return act, kv


def _row_plan(B: int, n_heads: int, cap: int, kv_fit: int) -> list[tuple[list[int], list[int]]]:
    """Chunks of (prompt index per row, head index per row), prompt-major.

    With many heads (n_heads >= min(cap, 64)) a chunk covers one prompt, its heads split evenly into
    chunks of at most ``cap`` rows: every row shares the prompt's cached keys/values, read in place. With
    few heads a chunk holds several whole prompts (at most ``kv_fit`` rows, since their cached keys/values
    are gathered)."""
    plan = []
    if n_heads >= min(cap, 64):
        n_parts = math.ceil(n_heads / cap)
        size = math.ceil(n_heads / n_parts)
        for b in range(B):
            for s in range(0, n_heads, size):
                hs = list(range(s, min(n_heads, s + size)))
                plan.append(([b] * len(hs), hs))
    else:
        per = max(1, min(cap, kv_fit) // n_heads)
        for b0 in range(0, B, per):
            bs = range(b0, min(B, b0 + per))
            plan.append(([b for b in bs for _ in range(n_heads)], [h for _ in bs for h in range(n_heads)]))
    return plan


def fv_scores(model, tasks, heads: Sequence[Head] | None = None, batch_size: int = 16,
              max_rows: int | None = None, mem_mb: float = 1024, means: Mapping | None = None,
              progress: bool = True) -> FVResult:
    """FV scores, exact and fast: each corrupted prompt batch runs once, keeping every layer's keys and
    values; then only the final token is recomputed for batches of (head, prompt) rows, one patched head
    per row. Equal to ``fv_scores_reference`` up to float error.

    tasks: ``{name: (clean, corrupted)}`` PromptBatches (see ``fv_prompts``); heads: which heads (default
    all; the others are NaN); batch_size: prompts per cached prefix; max_rows: rows per last-token pass
    (default: what fits ``mem_mb`` megabytes, at most 1024; all heads of one prompt share its cached
    keys/values in place when they fill a pass); means: optional precomputed task means
    ``{task: (n_layers, n_heads, d_head)}`` (``task_means``). Returns an ``FVResult`` (method "fast").

    Interventions active on the model (``model.intervene``) apply to the prefix pass and to every last-token
    pass, which equals the full pass for interventions at all positions or at the final one; one at another
    fixed position is refused there (use ``fv_scores_reference``)."""
    items = _task_pairs(tasks)
    heads = _heads(model, heads)
    means_given = _check_means(model, means, items)
    L, H = model.n_layers, model.n_heads
    per_prompt, baseline = {}, {}
    plans: dict = {}
    total = sum(len(bad) for _, _, bad in items) * len(heads)
    with _progress(total, "FV", progress) as bar, torch.no_grad():
        for name, clean, bad in items:
            means = _means(model, name, clean, batch_size, means_given)
            d = torch.full((len(bad), L, H), float("nan"))
            base_all = torch.empty(len(bad))
            for inputs, ans, sl in _chunks(bad, batch_size, model.device):
                prefix = model.prefix_cache(inputs)
                base = answer_prob(prefix.logits, ans)
                base_all[sl] = base.cpu()
                B, T = ans.shape[0], prefix.seq_len
                act, kv = _row_bytes(model, T)
                cap = max_rows or int(max(1, min(1024, mem_mb * 2**20 // act)))
                kv_fit = int(max(1, mem_mb * 2**20 // kv))
                key = (B, cap, kv_fit)
                if key not in plans:
                    plans[key] = _row_plan(B, len(heads), cap, kv_fit)
                for prompt_idx, head_idx in plans[key]:
                    chunk_heads = [heads[i] for i in head_idx]
                    patch = Patch("z", means, heads=chunk_heads, positions=[-1], rows=list(range(len(chunk_heads))))
                    rows = torch.tensor(prompt_idx)
                    logits = model.run_last_token(prefix, rows=rows, interventions=[patch])[0][:, -1]
                    p = (answer_prob(logits, ans[rows.to(ans.device)]) - base[rows.to(base.device)]).cpu()
                    lidx = torch.tensor([lh[0] for lh in chunk_heads])
                    hidx = torch.tensor([lh[1] for lh in chunk_heads])
                    d[sl.start + rows, lidx, hidx] = p
                    bar.update(len(rows))
            per_prompt[name], baseline[name] = d, base_all
    return _finish(model, heads, per_prompt, baseline, "fast")


def fv_scores_attribution(model, tasks, heads: Sequence[Head] | None = None, batch_size: int = 16,
                          compare: Any = False, means: Mapping | None = None, progress: bool = True) -> FVResult:
    """FV scores by attribution patching: one forward and one backward pass per prompt batch.

    score(l, h) ~= (mean_z[l, h] - z_corrupt[l, h]) . dP(answer)/dz[l, h] at the final position, a first-order
    estimate of the exact increase. compare: True computes the exact scores (``fv_scores``) and stores their
    Spearman correlation with the estimate in ``result.spearman`` (and the exact result in
    ``result.info["exact"]``); an ``FVResult`` or a (n_layers, n_heads) table is compared as given. Report that
    correlation wherever attribution scores are used. Returns an ``FVResult`` (method "attribution")."""
    items = _task_pairs(tasks)
    heads = _heads(model, heads)
    means_given = _check_means(model, means, items)
    L, H = model.n_layers, model.n_heads
    keep = torch.zeros(L, H, dtype=torch.bool)
    for layer, h in heads:
        keep[layer, h] = True
    per_prompt, baseline = {}, {}
    total = sum(math.ceil(len(bad) / batch_size) for _, _, bad in items)
    frozen = [p for p in model.module.parameters() if not p.requires_grad]
    for p in frozen:  # a frozen model still needs a graph to differentiate through (no weight gets a .grad)
        p.requires_grad_(True)
    try:
        with _progress(total, "FV (attribution)", progress) as bar, torch.enable_grad():
            _attribute(model, items, batch_size, keep, per_prompt, baseline, bar, means_given)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    result = _finish(model, heads, per_prompt, baseline, "attribution")
    if compare is not False and compare is not None:
        exact = fv_scores(model, tasks, heads=heads, batch_size=batch_size, means=means, progress=progress) \
            if compare is True \
            else compare
        table = exact.scores if isinstance(exact, FVResult) else torch.as_tensor(exact)
        result.spearman = spearman(result.scores, table)
        result.info["exact"] = exact
    return result


def _attribute(model, items, batch_size, keep, per_prompt, baseline, bar, means_given) -> None:
    """The attribution loop of fv_scores_attribution (gradients enabled by the caller)."""
    L, H = model.n_layers, model.n_heads
    for name, clean, bad in items:
        with torch.no_grad():
            means = _means(model, name, clean, batch_size, means_given).float()
        d = torch.full((len(bad), L, H), float("nan"))
        base_all = torch.empty(len(bad))
        for inputs, ans, sl in _chunks(bad, batch_size, model.device):
            # record z at all positions: the recorded tensor must be the one the model goes on with,
            # so that the gradient reaches it (a sliced copy would not be on the path to the logits)
            logits, cache = model.run(inputs, record=["z"], grad=True)
            p = answer_prob(logits[:, -1], ans)
            zs = [cache.site("z", layer) for layer in range(L)]
            grads = torch.autograd.grad(p.sum(), zs)
            for layer in range(L):
                z_last = zs[layer][:, -1].detach().float()  # (B, H, D)
                g = grads[layer][:, -1].float()
                est = ((means[layer].to(z_last.device) - z_last) * g).sum(-1)  # (B, H)
                d[sl, layer] = torch.where(keep[layer], est.cpu(), torch.tensor(float("nan")))
            base_all[sl] = p.detach().cpu()
            bar.update(1)
        per_prompt[name], baseline[name] = d, base_all
