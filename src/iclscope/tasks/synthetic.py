"""Synthetic token tasks for models that iclscope trains itself (no English vocabulary needed).

Reference section C: a vocabulary of ``n_words`` word tokens and a few stored tasks, each a random
permutation ``f_t`` of the words; a prompt ``x1 f_t(x1) SEP ... xk f_t(xk) SEP xq`` asks for
``f_t(xq)``. Build prompts with :func:`iclscope.tasks.build_token_prompts`.
"""

from __future__ import annotations

import random

from .core import TaskError, TokenTask

__all__ = ["synthetic_token_tasks", "random_mapping_task"]


def random_mapping_task(n_words: int, rng: random.Random, word_offset: int = 0, name: str = "mapping") -> TokenTask:
    """One task mapping word ``word_offset + i`` to ``word_offset + perm[i]`` for a random permutation.

    Returns a :class:`TokenTask` with ``n_words`` single-token pairs ``((x,), (f(x),))`` in word order.
    """
    perm = list(range(n_words))
    rng.shuffle(perm)
    pairs = [((word_offset + i,), (word_offset + perm[i],)) for i in range(n_words)]
    return TokenTask(name=name, pairs=pairs, meta={"kind": "synthetic", "n_words": n_words, "word_offset": word_offset})


def synthetic_token_tasks(n_tasks: int = 8, n_words: int = 64, seed: int = 0, word_offset: int = 0) -> list[TokenTask]:
    """``n_tasks`` stored tasks, each a random permutation of the word ids ``word_offset .. word_offset + n_words - 1``.

    The permutations depend only on (n_tasks, n_words, seed): the same arguments always give the
    same tasks (Python's ``random.Random(seed)``, stable across platforms and versions). Task ``t``
    is named ``"perm{t}"``; its ``meta`` records the seed and index. ``word_offset`` leaves room for
    special tokens (SEP, BOS, padding) below the word ids.

    Returns:
        list of :class:`TokenTask`, each with ``n_words`` pairs ``((x,), (f_t(x),))``.
    """
    if n_tasks < 1 or n_words < 2:
        raise TaskError(f"need n_tasks >= 1 and n_words >= 2, got n_tasks={n_tasks}, n_words={n_words}")
    if word_offset < 0:
        raise TaskError(f"word_offset must be >= 0, got {word_offset}")
    rng = random.Random(seed)
    tasks = []
    for t in range(n_tasks):
        task = random_mapping_task(n_words, rng, word_offset, name=f"perm{t}")
        task.meta.update({"seed": seed, "index": t})
        tasks.append(task)
    return tasks
