"""A synthetic multi-task ICL mixture in which both induction heads and function-vector heads emerge.

Reference section C. A small token LM trained on this stream learns two routes to the answer of a
few-shot prompt ``BOS x1 y1 SEP x2 y2 SEP ... xk yk SEP xq``:

- copying (induction heads): when the query ``xq`` repeats a demo input, copy the label that followed
  it;
- task inference (function-vector heads): infer which stored task ``f_t`` the demos follow, and apply
  it to ``xq`` even when ``xq`` is not among the demos.

The training mixture (:meth:`MixtureData.sample`) draws each sequence from one of three kinds:

0. **stored** (``p_stored``): one of ``n_tasks`` stored tasks, each a fixed random permutation ``f_t``
   of the words (exactly :func:`iclscope.tasks.synthetic_token_tasks`). Demo inputs repeat an earlier
   demo input with probability ``p_demo_repeat``; the query repeats a demo input with probability
   ``p_query_repeat``, else it is a word not among the demos. Loss: the query position (predict
   ``f_t(xq)``).
1. **fresh** (``p_fresh``): a new random permutation per prompt; the query always repeats a demo
   input, so copying is the only route. Loss: the query position (predict the copied label).
2. **segments** (``p_segments``): ``BOS`` then random words in which a segment of random length
   (``segment_min .. segment_max``) at a random position is repeated later at a random position.
   Loss: at the positions whose next token is a copyable token of the second occurrence (every token
   of the copy after its first).

Token ids: ``SEP = 0``, ``BOS = 1``, words ``WORD_OFFSET = 2 .. n_words + 1``; ``vocab_size = n_words + 2``.
Every sequence (all kinds) has the same length ``T = 3k + 2``: position 0 is BOS, demo ``j``
(0-based) puts its input at ``1 + 3j``, its label at ``2 + 3j`` and SEP at ``3 + 3j``; the query sits
at ``T - 1``. This is exactly the layout of ``build_token_prompts(task, k, sep_id=SEP, bos_id=BOS)``.

Targets follow the next-token convention: ``targets[b, i]`` is the token that should follow position
``i`` (``tokens[b, i + 1]`` inside the sequence; the answer at the final position of a prompt; -1 at
the final position of a segment sequence). The loss is taken where ``loss_mask`` is True:

    >>> data = MixtureData(MixtureConfig())
    >>> batch = data.sample(64, torch.Generator().manual_seed(0))
    >>> logits = model(batch.tokens)                                   # (B, T, V)
    >>> loss = F.cross_entropy(logits.flatten(0, 1), batch.masked_targets().flatten(), ignore_index=-1)

Evaluation conditions (:meth:`MixtureData.condition`, loss at the final position only; the demo inputs
are distinct, as in ``build_token_prompts``): ``"stored_repeat"`` (a) stored task, repeated query, both
routes work; ``"stored_novel"`` (b) stored task, query not among the demos, needs the task inferred;
``"fresh_repeat"`` (c) fresh mapping, repeated query, needs copying; ``"conflict"`` (d) stored task,
repeated query whose demo label is replaced by a wrong word: ``targets[:, -1]`` is the task's answer
``f_t(xq)`` and ``alt_target`` the copied wrong word, so the prediction tells which route wins.

Everything is vectorised over the batch (no Python loop in :meth:`MixtureData.sample`), seeded by the
``torch.Generator`` passed in, and built on the CPU (move it with :meth:`TokenBatch.to`).

Why one file of ~450 lines: the mixture's sampler and its four evaluation conditions share the prompt
builder, and the conditions are only meaningful beside the training distribution they probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Union

import torch

from ..errors import IclscopeError
from ..tasks import PromptBatch, TokenTask, synthetic_token_tasks
from .synthetic import random_segment_repeats

__all__ = [
    "SEP", "BOS", "WORD_OFFSET", "KINDS", "CONDITIONS", "MixtureConfig", "TokenBatch", "MixtureData",
]

SEP = 0
"""Separator after each demonstration."""
BOS = 1
"""Beginning of every sequence."""
WORD_OFFSET = 2
"""Word ``i`` (0-based) is token ``WORD_OFFSET + i``."""

KINDS = ("stored", "fresh", "segments")
"""Names of the values of :attr:`TokenBatch.kind` (0, 1, 2)."""

CONDITIONS = ("stored_repeat", "stored_novel", "fresh_repeat", "conflict")
"""The evaluation conditions :meth:`MixtureData.condition` knows: (a), (b), (c), (d) of reference section C."""

_STORED, _FRESH, _SEGMENTS = 0, 1, 2


@dataclass
class MixtureConfig:
    """What the mixture looks like.

    - n_words: word tokens (64); ``vocab_size = n_words + 2``. Must be at least ``k + 1``.
    - n_tasks: stored tasks (8), ``synthetic_token_tasks(n_tasks, n_words, seed=task_seed, word_offset=2)``.
    - task_seed: seed of the stored tasks' permutations (0).
    - k: demonstrations per prompt (8); ``T = 3k + 2``.
    - p_stored / p_fresh / p_segments: shares of the three kinds (0.65 / 0.20 / 0.15, sum 1).
    - p_demo_repeat: in stored-task prompts, probability that a demo input (after the first) repeats an
      earlier demo input (0.3; the repeated one is uniform over the distinct inputs so far).
    - p_query_repeat: in stored-task prompts, probability that the query repeats a demo input (0.5);
      otherwise it is a word not among the demos.
    - p_fresh_demo_repeat: as p_demo_repeat, for fresh-mapping prompts (0.0: distinct demo inputs, as in
      the "fresh_repeat" condition). Their query always repeats a demo input.
    - segment_min / segment_max: length range of the repeated segment in segment sequences (4 .. 12;
      segment_max None: ``min(12, (T - 1) // 2)``). Need ``2 <= segment_min <= segment_max <= (T - 1) // 2``.
    - seed: seeds the generator :class:`MixtureData` uses when none is passed (0).
    """

    n_words: int = 64
    n_tasks: int = 8
    task_seed: int = 0
    k: int = 8
    p_stored: float = 0.65
    p_fresh: float = 0.20
    p_segments: float = 0.15
    p_demo_repeat: float = 0.3
    p_query_repeat: float = 0.5
    p_fresh_demo_repeat: float = 0.0
    segment_min: int = 4
    segment_max: Optional[int] = None
    loss_on: str = "query"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss_on not in ("query", "labels"):
            raise IclscopeError(f"loss_on must be 'query' or 'labels', got {self.loss_on!r}")
        for name in ("n_words", "n_tasks", "k", "segment_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise IclscopeError(f"MixtureConfig.{name} must be an int, got {value!r}")
        if self.k < 1:
            raise IclscopeError(f"MixtureConfig.k (demonstrations per prompt) must be >= 1, got {self.k}")
        if self.n_tasks < 1:
            raise IclscopeError(f"MixtureConfig.n_tasks must be >= 1, got {self.n_tasks}")
        if self.n_words < self.k + 1 or self.n_words < 2:
            raise IclscopeError(f"MixtureConfig.n_words={self.n_words} is too few: a prompt needs k + 1 = "
                                f"{self.k + 1} distinct words (k demo inputs and a novel query)")
        for name in ("p_stored", "p_fresh", "p_segments", "p_demo_repeat", "p_query_repeat", "p_fresh_demo_repeat"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
                raise IclscopeError(f"MixtureConfig.{name} is a probability in [0, 1], got {value!r}")
        total = self.p_stored + self.p_fresh + self.p_segments
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise IclscopeError(f"MixtureConfig: p_stored + p_fresh + p_segments must sum to 1, got "
                                f"{self.p_stored} + {self.p_fresh} + {self.p_segments} = {total}")
        room = (self.seq_len - 1) // 2
        smax = self.segment_max
        if smax is not None and (isinstance(smax, bool) or not isinstance(smax, int)):
            raise IclscopeError(f"MixtureConfig.segment_max must be an int or None, got {self.segment_max!r}")
        lo, hi = self.segment_min, self.segment_range[1]
        if not 2 <= lo <= hi <= room:
            raise IclscopeError(f"MixtureConfig: need 2 <= segment_min <= segment_max <= (T - 1) // 2 = {room} "
                                f"(T = 3k + 2 = {self.seq_len}); got segment_min={lo}, segment_max={hi}")

    @property
    def seq_len(self) -> int:
        """T = 1 + 3k + 1: BOS, k demos of (x, y, SEP), the query."""
        return 3 * self.k + 2

    @property
    def vocab_size(self) -> int:
        """n_words + 2 (SEP, BOS, words)."""
        return self.n_words + WORD_OFFSET

    @property
    def segment_range(self) -> tuple[int, int]:
        """(min, max) length of the repeated segment of segment sequences."""
        hi = min(12, (self.seq_len - 1) // 2) if self.segment_max is None else self.segment_max
        return self.segment_min, hi


@dataclass
class TokenBatch:
    """A batch of mixture sequences, all of length T.

    tokens: (B, T) int64 token ids.
    targets: (B, T) int64, the next-token target at each position (``tokens[:, i + 1]``; at the final
        position the prompt's answer, -1 for segment sequences). Wherever ``loss_mask`` is True it is the
        answer the model should give there.
    loss_mask: (B, T) bool, where the loss is taken.
    kind: (B,) int64, 0 stored task, 1 fresh mapping, 2 repeated segments (see ``KINDS``).
    task: (B,) int64, the stored task's index for kind 0, else -1.
    alt_target: (B,) int64, what copying gives at the final position: the label shown after the most
        recent demo whose input equals the query (in "conflict" the wrong word); -1 when the query is
        not among the demo inputs and for segment sequences.
    copy_pos: (B,) int64, position of that label (where an induction head at the query attends); -1 when none.
    segments: (B, 3) int64, ``[src, dst, L]`` of segment sequences (the segment at ``src .. src+L-1`` is
        repeated at ``dst .. dst+L-1``); -1 for prompts.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    kind: torch.Tensor
    task: torch.Tensor
    alt_target: torch.Tensor
    copy_pos: torch.Tensor
    segments: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return self.batch_size

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The inputs of ``Model.run``: tokens (B, T)."""
        return {"tokens": self.tokens}

    @property
    def answer(self) -> torch.Tensor:
        """(B,) int64 target at the final position (the prompt's answer; -1 for segment sequences)."""
        return self.targets[:, -1]

    def masked_targets(self) -> torch.Tensor:
        """(B, T) int64 targets, -1 wherever ``loss_mask`` is False (for ``cross_entropy(..., ignore_index=-1)``)."""
        return self.targets.masked_fill(~self.loss_mask, -1)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "TokenBatch":
        """A copy with every tensor on ``device``."""
        return TokenBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def to_prompt_batch(self, task: str = "") -> PromptBatch:
        """The prompts as a :class:`iclscope.tasks.PromptBatch` (no padding), for ``iclscope.evaluate``.

        ``answer_first_token`` is the final target; ``demos`` lists the (x, shown y) pairs as 1-tuples of
        ids like ``build_token_prompts``. Raises IclscopeError when the batch holds segment sequences.
        """
        if bool((self.kind == _SEGMENTS).any()):
            raise IclscopeError("to_prompt_batch: the batch holds segment sequences, which are not prompts")
        tokens = self.tokens.cpu()
        T = tokens.shape[1]
        k = (T - 2) // 3
        body = tokens[:, 1:1 + 3 * k].reshape(-1, k, 3)
        xs, ys = body[:, :, 0].tolist(), body[:, :, 1].tolist()
        queries = [(q,) for q in tokens[:, -1].tolist()]
        answers = [(a,) for a in self.targets[:, -1].cpu().tolist()]
        return PromptBatch(
            input_ids=tokens.clone(),
            attention_mask=torch.ones_like(tokens),
            answer_first_token=self.targets[:, -1].cpu().clone(),
            answers=answers,
            queries=queries,
            texts=None,
            answer_ids=[list(a) for a in answers],
            demos=[[((x,), (y,)) for x, y in zip(xr, yr)] for xr, yr in zip(xs, ys)],
            k=k,
            pad_id=SEP,
            bos=True,
            task=task,
        )


class MixtureData:
    """Streams of mixture sequences for training (:meth:`sample`) and the four evaluation conditions
    (:meth:`condition`).

    Attributes:
        config: the :class:`MixtureConfig`.
        tasks: the stored tasks, ``synthetic_token_tasks(n_tasks, n_words, seed=task_seed, word_offset=WORD_OFFSET)``.
        task_maps: (n_tasks, vocab_size) int64, ``task_maps[t, x] = f_t(x)`` for word tokens ``x``, -1 for SEP/BOS.
        generator: the generator used when none is passed, seeded with ``config.seed``.
    """

    def __init__(self, config: Optional[MixtureConfig] = None):
        self.config = config = MixtureConfig() if config is None else config
        self.tasks: list[TokenTask] = synthetic_token_tasks(config.n_tasks, config.n_words, seed=config.task_seed,
                                                             word_offset=WORD_OFFSET)
        W = config.n_words
        perm = torch.empty(config.n_tasks, W, dtype=torch.long)  # word index -> word index
        for t, task in enumerate(self.tasks):
            xs = [x[0] - WORD_OFFSET for x, _ in task.pairs]
            if sorted(xs) != list(range(W)):
                raise IclscopeError(f"stored task {task.name} does not cover the {W} words once each")
            perm[t, torch.tensor(xs)] = torch.tensor([y[0] - WORD_OFFSET for _, y in task.pairs])
        self._perm_flat = perm.reshape(-1)
        self.task_maps = torch.full((config.n_tasks, config.vocab_size), -1, dtype=torch.long)
        self.task_maps[:, WORD_OFFSET:] = perm + WORD_OFFSET
        self.generator = torch.Generator().manual_seed(config.seed)
        T = config.seq_len
        self._final_mask = torch.zeros(T, dtype=torch.bool)
        self._final_mask[-1] = True
        self._positions = torch.arange(T)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # ------------------------------------------------------------------------------------------------
    # Public streams
    # ------------------------------------------------------------------------------------------------

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> TokenBatch:
        """A training batch: each row stored / fresh / segments with probabilities p_stored / p_fresh / p_segments.

        The same generator state gives the same batch. Returns a :class:`TokenBatch` of ``batch_size`` rows.
        """
        B = _check_batch_size(batch_size)
        g = self.generator if generator is None else generator
        cfg = self.config
        u = torch.rand(B, generator=g)
        kind = (u >= cfg.p_stored).long() + (u >= cfg.p_stored + cfg.p_fresh).long()
        fresh = kind == _FRESH
        p_demo = torch.where(fresh, cfg.p_fresh_demo_repeat, cfg.p_demo_repeat)
        q_repeat = fresh | (torch.rand(B, generator=g) < cfg.p_query_repeat)
        prompts = self._prompts(B, g, fresh, p_demo, q_repeat)
        if cfg.loss_on == "labels":
            prompts.loss_mask = prompts.loss_mask | self._label_mask(prompts.tokens, fresh)
        if cfg.p_segments <= 0:
            return prompts
        seg = self._segments(B, g)
        is_seg = kind == _SEGMENTS
        col = is_seg[:, None]
        return TokenBatch(
            tokens=torch.where(col, seg.tokens, prompts.tokens),
            targets=torch.where(col, seg.targets, prompts.targets),
            loss_mask=torch.where(col, seg.loss_mask, prompts.loss_mask),
            kind=kind,
            task=torch.where(is_seg, -1, prompts.task),
            alt_target=torch.where(is_seg, -1, prompts.alt_target),
            copy_pos=torch.where(is_seg, -1, prompts.copy_pos),
            segments=torch.where(col, seg.segments, prompts.segments),
        )

    def _label_mask(self, tokens: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the demo-input positions whose next token (the label) is scored with
        loss_on = "labels": every demo of a stored-task prompt (the task is inferable from the earlier
        demos), and in fresh-mapping prompts only demos whose input occurred before (copyable)."""
        B, T = tokens.shape
        xpos = torch.arange(self.config.k) * 3 + 1  # demo inputs; their labels follow
        xs = tokens[:, xpos]  # (B, k)
        earlier = (xs[:, :, None] == xs[:, None, :]) & torch.ones(len(xpos), len(xpos), dtype=torch.bool).tril(-1)
        repeated = earlier.any(-1)  # (B, k)
        scored = torch.where(fresh[:, None], repeated, torch.ones_like(repeated))
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, xpos] = scored
        return mask

    def condition(self, name: str, batch_size: int, generator: Optional[torch.Generator] = None,
                  task: Optional[int] = None) -> TokenBatch:
        """A batch of one evaluation condition; the loss mask holds the final position only.

        name: one of ``CONDITIONS``: "stored_repeat" (a), "stored_novel" (b), "fresh_repeat" (c), "conflict" (d).
        task: for the stored-task conditions, use only this task index (None: uniform over the tasks).
        Demo inputs are distinct in every condition. In "conflict" the demo whose input is the query shows
        a wrong label, a word that no demo shows (``alt_target``), while ``targets[:, -1]`` is ``f_t(xq)``.
        """
        if name not in CONDITIONS:
            raise IclscopeError(f"unknown condition {name!r}; choose one of {', '.join(CONDITIONS)}")
        B = _check_batch_size(batch_size)
        g = self.generator if generator is None else generator
        if task is not None:
            if name == "fresh_repeat":
                raise IclscopeError("condition 'fresh_repeat' uses fresh mappings; it takes no task")
            if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.config.n_tasks:
                raise IclscopeError(f"task must be an index in 0..{self.config.n_tasks - 1}, got {task!r}")
        fresh = torch.full((B,), name == "fresh_repeat")
        q_repeat = torch.full((B,), name != "stored_novel")
        return self._prompts(B, g, fresh, 0.0, q_repeat, conflict=name == "conflict", task=task)

    # ------------------------------------------------------------------------------------------------
    # Builders
    # ------------------------------------------------------------------------------------------------

    def _prompts(self, B: int, g: torch.Generator, fresh: torch.Tensor, p_demo: Union[float, torch.Tensor],
                 q_repeat: torch.Tensor, conflict: bool = False, task: Optional[int] = None) -> TokenBatch:
        """Prompts for every row; stored-task labels where ``fresh`` is False, a fresh permutation where True.

        fresh, q_repeat: (B,) bool. p_demo: demo-repeat probability, a float or (B,) tensor.
        """
        cfg = self.config
        K, W = cfg.k, cfg.n_words
        ar = torch.arange(K)
        # k + 1 distinct words per row (uniform ordered tuple): the candidates for new demo inputs and a novel query
        words = torch.rand(B, W, generator=g).topk(K + 1, dim=1).indices  # (B, K+1) word indices
        # which distinct word each demo shows: a new one, or (with p_demo, never the first) one seen before
        if isinstance(p_demo, torch.Tensor) or p_demo > 0:
            p = p_demo[:, None] if isinstance(p_demo, torch.Tensor) else p_demo
            r = torch.rand(B, K, generator=g) < p
            r[:, 0] = False
            new = (~r).long()
            seen = new.cumsum(1) - new  # distinct inputs before demo j (>= 1 where r)
            old = (torch.rand(B, K, generator=g) * seen).long().clamp(max=(seen - 1).clamp(min=0))
            d = torch.where(r, old, seen)  # (B, K) index into `words`
            n_distinct = seen[:, -1] + new[:, -1]  # (B,)
        else:
            d = ar.expand(B, K)
            n_distinct = torch.full((B,), K)
        # the query: one of the distinct demo inputs, or the next unused word
        pick = (torch.rand(B, generator=g) * n_distinct).long().clamp(max=n_distinct - 1)
        dq = torch.where(q_repeat, pick, n_distinct)  # (B,)
        # labels of the k + 1 distinct words: stored task f_t, or a fresh permutation (distinct labels)
        if task is None:
            t = torch.randint(0, cfg.n_tasks, (B,), generator=g)
        else:
            t = torch.full((B,), task)
        labels = self._perm_flat[t[:, None] * W + words]  # (B, K+1)
        if bool(fresh.any()):
            fresh_labels = torch.rand(B, W, generator=g).topk(K + 1, dim=1).indices
            labels = torch.where(fresh[:, None], fresh_labels, labels)
        x = words.gather(1, d)  # (B, K)
        y = labels.gather(1, d)  # (B, K)
        xq = words.gather(1, dq[:, None])[:, 0]  # (B,)
        yq = labels.gather(1, dq[:, None])[:, 0]  # (B,)
        # the most recent demo whose input is the query's
        match = torch.where(d == dq[:, None], ar, -1).amax(1)  # (B,) demo index or -1
        has = match >= 0
        if conflict:  # replace the matching demo's label by a word no demo shows
            keys = torch.rand(B, W, generator=g)
            keys.scatter_(1, y, -1.0)
            wrong = keys.argmax(1)
            y = torch.where((ar[None, :] == match[:, None]), wrong[:, None], y)
        copied = torch.where(has, y.gather(1, match.clamp(min=0)[:, None])[:, 0] + WORD_OFFSET, -1)
        body = torch.stack([x + WORD_OFFSET, y + WORD_OFFSET, torch.full_like(x, SEP)], dim=2).reshape(B, 3 * K)
        tokens = torch.cat([torch.full((B, 1), BOS), body, (xq + WORD_OFFSET)[:, None]], dim=1)
        answer = yq + WORD_OFFSET
        targets = torch.cat([tokens[:, 1:], answer[:, None]], dim=1)
        return TokenBatch(
            tokens=tokens,
            targets=targets,
            loss_mask=self._final_mask.expand(B, -1).clone(),
            kind=fresh.long(),  # 0 stored, 1 fresh
            task=torch.where(fresh, -1, t),
            alt_target=copied,
            copy_pos=torch.where(has, 2 + 3 * match, -1),
            segments=torch.full((B, 3), -1),
        )

    def _segments(self, B: int, g: torch.Generator) -> TokenBatch:
        """BOS then random words with one segment repeated; loss where the next token is copyable."""
        cfg = self.config
        T = cfg.seq_len
        lo, hi = cfg.segment_range
        tokens, segs = random_segment_repeats(B, T - 1, cfg.vocab_size, g, min_segment=lo, max_segment=hi,
                                              bos_id=BOS, min_token=WORD_OFFSET, return_segments=True)
        dst, L = segs[:, 1:2], segs[:, 2:3]
        pos = self._positions[None, :]
        # the copy occupies dst .. dst+L-1; its tokens after the first are predicted from dst .. dst+L-2
        mask = (pos >= dst) & (pos <= dst + L - 2)
        targets = torch.cat([tokens[:, 1:], torch.full((B, 1), -1)], dim=1)
        minus = torch.full((B,), -1)
        return TokenBatch(tokens=tokens, targets=targets, loss_mask=mask, kind=torch.full((B,), _SEGMENTS),
                          task=minus, alt_target=minus, copy_pos=minus, segments=segs)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise IclscopeError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size
