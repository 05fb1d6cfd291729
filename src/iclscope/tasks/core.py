"""ICL word tasks: loading, splitting and building few-shot prompts.

A *task* is a list of (input, output) pairs that share one function, e.g. antonym: ("hot", "cold").
On disk a task is a file in the format of Todd et al. ("Function Vectors in Large Language Models"):
a JSON list of ``{"input": ..., "output": ...}`` objects, one file per task, the task's name being the
file's stem. Optional metadata (source, license, kind) sits next to it in ``<name>.meta.json``; the
builder in :mod:`iclscope.tasks.build` writes one for every task it makes, and folders of Todd's
original files, which have none, load as they are.

Prompts follow the study's template by default: demonstrations ``"Q: x\\nA: y\\n\\n"`` repeated ``k``
times, then the query ``"Q: x_q\\nA:"``. The answer the model should produce is ``" " + y_q``; its
first token is found in context (tokens of ``prompt + " " + answer`` minus tokens of ``prompt``) so
that the tokenizer's leading-space and merge conventions are respected.

Token-id tasks (:class:`TokenTask`) serve models that have no tokenizer: a prompt is the id sequence
``x1 y1 SEP x2 y2 SEP ... xk yk SEP xq``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import IclscopeError
from ..store import inside, safe_name, write_text

__all__ = [
    "TaskError",
    "Task",
    "TokenTask",
    "Template",
    "DEFAULT_TEMPLATE",
    "PromptBatch",
    "load_task",
    "load_tasks",
    "save_task",
    "split",
    "check_scorable",
    "build_prompts",
    "build_token_prompts",
    "tokenizer_adds_bos",
    "has_tokenizer",
    "CORRUPTIONS",
    "BOS_MODES",
]

#: Corruptions of the demonstration labels that ``build_prompts`` understands: ``"permute"`` (the
#: published one: a random permutation, a label may stay on its own input), ``"shuffle"`` (a random
#: permutation that moves every label where possible) and ``"cycle"`` (demo i shows demo i-1's label).
CORRUPTIONS = (None, "permute", "shuffle", "cycle")

#: What ``build_prompts(add_bos=...)`` accepts besides True/False: None or ``"published"`` (exactly one
#: BOS at the start of every prompt whenever there is a BOS token, as the studies' code does) and
#: ``"tokenizer"`` (a BOS only where the tokenizer adds one itself, e.g. Llama's; none for GPT-2).
BOS_MODES = (None, "published", "tokenizer", True, False)

META_SUFFIX = ".meta.json"


class TaskError(IclscopeError):
    """A task file, folder or prompt request that cannot be used; the message says where and why."""


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


@dataclass
class Task:
    """A word task: string pairs that share one function.

    Attributes:
        name: the task's name (the file's stem when loaded from disk).
        pairs: list of (input, output) strings.
        meta: free-form metadata; the keys iclscope writes and reads are ``source``, ``license`` and
            ``kind`` (``"abstractive"``: the output is not in the input; ``"extractive"``: it is).
    """

    name: str
    pairs: list[tuple[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def kind(self) -> str | None:
        """``"abstractive"``, ``"extractive"`` or None when unknown."""
        return self.meta.get("kind")


@dataclass
class TokenTask:
    """A task over token ids, for models that have no tokenizer.

    Attributes:
        name: the task's name.
        pairs: list of (input ids, output ids); each side a tuple of ints (length >= 1).
        meta: free-form metadata (e.g. how a synthetic task was generated).
    """

    name: str
    pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = [(_as_ids(x), _as_ids(y)) for x, y in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)


def _as_ids(v: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,)
    if isinstance(v, torch.Tensor):
        return tuple(int(t) for t in v.reshape(-1).tolist())
    return tuple(int(t) for t in v)


# --------------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------------


def _describe(entry: Any, limit: int = 80) -> str:
    text = json.dumps(entry, ensure_ascii=False) if not isinstance(entry, str) else repr(entry)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_entry(entry: Any) -> tuple[str, str] | str:
    """Return the (input, output) pair of one Todd-format entry, or a reason it is bad."""
    if not isinstance(entry, dict):
        return f"expected an object with 'input' and 'output', got {type(entry).__name__}"
    missing = [key for key in ("input", "output") if key not in entry]
    if missing:
        return f"missing key(s) {', '.join(repr(m) for m in missing)}"
    x, y = entry["input"], entry["output"]
    if isinstance(y, list):  # some of Todd's files list several acceptable outputs: take the first
        if not y:
            return "'output' is an empty list"
        y = y[0]
    if not isinstance(x, str):
        return f"'input' must be a string, got {type(x).__name__}"
    if not isinstance(y, str):
        return f"'output' must be a string (or a list whose first item is one), got {type(y).__name__}"
    return x, y


def load_task(path: str | Path) -> Task:
    """Load one task file in Todd et al.'s format.

    The file is a JSON list of ``{"input": str, "output": str | list[str]}``; a list output stands
    for several acceptable answers and the first is taken. Metadata, if any, is read from the sibling
    ``<name>.meta.json`` (a JSON object); without it ``meta`` holds only ``path`` (and ``kind`` when the
    parent folder is named ``abstractive`` or ``extractive``, as in Todd's ``dataset_files``).

    Raises:
        TaskError: the file is missing, not JSON, not a list, empty, or has a bad entry; the message
            names the file and the index of the first bad entry.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read task file ({exc})") from exc
    if not text.strip():
        raise TaskError(f"{path}: empty file (expected a JSON list of {{'input', 'output'}} objects)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise TaskError(
            f"{path}: expected a JSON list of {{'input', 'output'}} objects, got {type(data).__name__}"
        )
    if not data:
        raise TaskError(f"{path}: empty task (the list has no entries)")
    pairs: list[tuple[str, str]] = []
    for i, entry in enumerate(data):
        parsed = _parse_entry(entry)
        if isinstance(parsed, str):
            raise TaskError(f"{path}: entry {i} is bad: {parsed}: {_describe(entry)}")
        pairs.append(parsed)

    name = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    meta: dict[str, Any] = {}
    meta_path = path.with_name(name + META_SUFFIX)
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TaskError(f"{meta_path}: cannot read task metadata ({exc})") from exc
        if not isinstance(meta, dict):
            raise TaskError(f"{meta_path}: metadata must be a JSON object, got {type(meta).__name__}")
    meta = dict(meta)
    meta["path"] = str(path)
    if "kind" not in meta and path.parent.name in ("abstractive", "extractive"):
        meta["kind"] = path.parent.name
    return Task(name=name, pairs=pairs, meta=meta)


#: Subfolders of Todd et al.'s ``dataset_files/`` that hold inputs for building tasks, not task lists.
NON_TASK_FOLDERS = ("generate",)


def load_tasks(folder: str | Path, names: Sequence[str] | None = None, recursive: bool = True) -> dict[str, Task]:
    """Load every task file (``*.json`` except ``*.meta.json``) in a folder.

    Args:
        folder: a folder of task files, e.g. the output of :func:`iclscope.tasks.build_tasks` or
            Todd et al.'s ``dataset_files`` (whose ``abstractive/`` and ``extractive/`` subfolders are
            searched when ``recursive``; its ``generate/`` subfolder holds inputs for building tasks,
            not task lists, and is skipped with a warning naming it).
        names: load only these tasks (each must exist).
        recursive: also search subfolders.

    Returns:
        ``{name: Task}`` sorted by name.

    Raises:
        TaskError: the folder does not exist, has no task files, two files share a task name, a
            requested name is missing, or a file is bad (see :func:`load_task`).
    """
    import warnings

    folder = Path(folder)
    if not folder.is_dir():
        raise TaskError(f"{folder}: no such folder of tasks")
    pattern = "**/*.json" if recursive else "*.json"
    found = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.endswith(META_SUFFIX))
    skipped = sorted({p.relative_to(folder).parts[0] for p in found
                      if len(p.relative_to(folder).parts) > 1 and p.relative_to(folder).parts[0] in NON_TASK_FOLDERS})
    files = [p for p in found if not (len(p.relative_to(folder).parts) > 1
                                      and p.relative_to(folder).parts[0] in NON_TASK_FOLDERS)]
    for sub in skipped:
        warnings.warn(f"{folder / sub}: skipped (inputs for building tasks, not task lists)", stacklevel=2)
    if not files:
        raise TaskError(f"{folder}: no .json task files found (build some with `iclscope.tasks.build_tasks`)")
    by_name: dict[str, Path] = {}
    for p in files:
        name = p.name[: -len(".json")]
        if name in by_name:
            raise TaskError(f"{folder}: two files define task {name!r}: {by_name[name]} and {p}")
        by_name[name] = p
    if names is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise TaskError(f"{folder}: no task file for {', '.join(missing)} (found: {', '.join(sorted(by_name))})")
        by_name = {n: by_name[n] for n in names}
    return {n: load_task(by_name[n]) for n in sorted(by_name)}


def save_task(task: Task, folder: str | Path) -> Path:
    """Write ``task`` as ``<folder>/<name>.json`` (Todd format) plus ``<name>.meta.json`` when it has meta,
    each atomically; the name goes through ``store.safe_name``.

    Returns the path of the task file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = inside(folder, f"{safe_name(task.name)}.json")
    entries = [{"input": x, "output": y} for x, y in task.pairs]
    meta = {k: v for k, v in task.meta.items() if k != "path"}
    if meta:  # the meta file first: a task file is never left without the meta it was written with
        meta["n_pairs"] = len(task.pairs)
        write_text(inside(folder, f"{safe_name(task.name)}{META_SUFFIX}"),
                   json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    write_text(path, json.dumps(entries, ensure_ascii=False, indent=1) + "\n")  # atomic: old or new, never half
    return path


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def split(task: Task | TokenTask | Sequence, test_fraction: float = 0.3, seed: int = 0) -> tuple[list, list]:
    """Deterministic random split of a task's pairs into (train, test).

    ``round(len * test_fraction)`` pairs go to test, kept in ``[1, len - 1]`` when the task has at
    least two pairs so that neither side is empty. The same (task, fraction, seed) always gives the
    same split; pairs keep their original order within each side.
    """
    pairs = list(task.pairs) if isinstance(task, (Task, TokenTask)) else list(task)
    if not 0.0 <= test_fraction <= 1.0:
        raise TaskError(f"test_fraction must be in [0, 1], got {test_fraction}")
    n = len(pairs)
    n_test = int(round(n * test_fraction))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])
    train = [p for i, p in enumerate(pairs) if i not in test_idx]
    test = [p for i, p in enumerate(pairs) if i in test_idx]
    return train, test


# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """How demonstrations and the query are written.

    ``demo`` contains ``{x}`` once, then ``{y}`` once; a prompt is ``prefix`` + one ``demo`` per
    demonstration + the query, where the query is ``demo`` cut just before ``{y}`` with trailing
    spaces removed. The removed spaces lead the answer: with the default ``"Q: {x}\\nA: {y}\\n\\n"``
    the query is ``"Q: {x}\\nA:"`` and the model should continue with ``" " + y``. With
    ``"{x} -> {y}\\n"`` the query is ``"{x} ->"`` and the continuation ``" " + y``; with
    ``"{x}\\t{y}\\n"`` the continuation is ``y`` itself.
    """

    demo: str = "Q: {x}\nA: {y}\n\n"
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.demo.count("{x}") != 1 or self.demo.count("{y}") != 1 or self.demo.index("{x}") > self.demo.index("{y}"):
            raise TaskError(f"template {self.demo!r} must contain '{{x}}' once, followed by '{{y}}' once")

    @property
    def _head(self) -> str:
        return self.demo[: self.demo.index("{y}")]

    @property
    def query(self) -> str:
        """The query pattern, with ``{x}``: ``demo`` before ``{y}``, trailing spaces removed."""
        return self._head.rstrip(" ")

    @property
    def answer_lead(self) -> str:
        """What precedes the answer in the model's continuation (``" "`` for the default template)."""
        return self._head[len(self.query):]

    def render_demo(self, x: str, y: str) -> str:
        return _fill(self.demo, x, y)

    def render_query(self, x: str) -> str:
        return _fill(self.query, x, None)

    def render(self, demos: Sequence[tuple[str, str]], query: str) -> str:
        """The full prompt text: prefix, demonstrations, query (no BOS)."""
        return self.prefix + "".join(self.render_demo(x, y) for x, y in demos) + self.render_query(query)


def _fill(pattern: str, x: str, y: str | None) -> str:
    # One pass, so braces inside words are never re-interpreted.
    return re.sub(r"\{x\}|\{y\}", lambda m: x if m.group(0) == "{x}" else (y or ""), pattern)


#: The template of the study (Todd et al.; Yin & Steinhardt): "Q: x\nA: y\n\n" ... "Q: x_q\nA:".
DEFAULT_TEMPLATE = Template()


# --------------------------------------------------------------------------------------------------
# Prompt batches
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptBatch:
    """A batch of few-shot prompts, left-padded so that position ``-1`` is every prompt's last token.

    Attributes:
        input_ids: (B, T) int64, left-padded with ``pad_id``.
        attention_mask: (B, T) int64, 1 on real tokens, 0 on padding.
        answer_first_token: (B,) int64, the first token the model should produce for each prompt.
        answers: length-B list of correct answers (str for word tasks, tuple of ids for token tasks).
        queries: length-B list of query inputs.
        texts: length-B prompt texts without BOS (None for token tasks).
        answer_ids: length-B list of the answer's full token ids in context (for multi-token scoring).
        demos: length-B list of the demonstrations shown, each a list of (input, shown label); under
            corruption the shown labels are the permuted ones.
        dropped: pairs left out as unscorable, as (pair, reason).
        corrupt: the corruption used (None, "shuffle" or "cycle").
        k: demonstrations per prompt.
        pad_id: the id used for padding.
        bos: whether a BOS token starts every prompt.
        task: the task's name.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_first_token: torch.Tensor
    answers: list
    queries: list
    texts: list[str] | None
    answer_ids: list[list[int]]
    demos: list[list[tuple]]
    dropped: list[tuple[tuple, str]] = field(default_factory=list)
    corrupt: str | None = None
    k: int = 0
    pad_id: int = 0
    bos: bool = False
    task: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The inputs of ``Model.run``: input_ids and attention_mask, each (B, T)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) int64 number of real tokens per prompt."""
        return self.attention_mask.sum(dim=1)

    def position_ids(self) -> torch.Tensor:
        """(B, T) int64 positions counted from each prompt's first real token (0 on padding).

        Pass these to models with absolute position embeddings (GPT-2, OPT) so that left padding
        does not shift positions.
        """
        return (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    def to(self, device: torch.device | str) -> "PromptBatch":
        """A copy with the tensors on ``device``."""
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            answer_first_token=self.answer_first_token.to(device),
        )


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to (B, T) int64 ids and an attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------------
# Drawing demonstrations and queries (shared by word and token tasks)
# --------------------------------------------------------------------------------------------------


def _corrupt_labels(labels: list, mode: str, rng: random.Random) -> list:
    """Permute demonstration labels.

    ``"permute"`` (the published corruption, Todd et al.'s ``shuffle_labels``): a uniformly random
    permutation; a label may stay on its own input. ``"cycle"``: demo i shows the label of demo i-1
    (mod k), so none stays correct when the labels are distinct. ``"shuffle"``: a random permutation
    with no demo keeping a label equal to its own (rejection sampling; when no such permutation
    exists, e.g. all labels equal, the one with the fewest matches found is used).
    """
    k = len(labels)
    if mode == "cycle":
        return [labels[(i - 1) % k] for i in range(k)]
    if mode == "permute":
        perm = list(range(k))
        rng.shuffle(perm)
        return [labels[perm[i]] for i in range(k)]
    best_perm, best_fixed = None, k + 1
    for _ in range(1000):
        perm = list(range(k))
        rng.shuffle(perm)
        fixed = sum(labels[perm[i]] == labels[i] for i in range(k))
        if fixed < best_fixed:
            best_perm, best_fixed = perm, fixed
        if fixed == 0:
            break
    return [labels[best_perm[i]] for i in range(k)]


def _draw(
    demo_pool: Sequence[tuple],
    query_pool: Sequence[tuple],
    k: int,
    seed: int,
    corrupt: str | None,
):
    """Yield (query pair, demonstrations as (input, shown label)) for prompts, endlessly.

    Queries run through a seeded permutation of ``query_pool`` (every pair once before any repeats).
    Demonstrations are ``k`` pairs from ``demo_pool`` whose input differs from the query's, with
    pairwise distinct outputs whenever the pool allows it (so that corrupted labels can all be
    wrong); their order is random. The draws do not depend on ``corrupt``: the same seed gives the
    same queries and demonstration inputs for clean and corrupted prompts, which differ only in the
    labels shown.
    """
    rng = random.Random(seed)
    rng_corrupt = random.Random(f"iclscope-corrupt-{seed}")
    order: list[int] = []
    while True:
        if not order:
            order = list(range(len(query_pool)))
            rng.shuffle(order)
        q = query_pool[order.pop()]
        candidates = [p for p in demo_pool if p[0] != q[0]]
        if len(candidates) < k:
            raise TaskError(
                f"query {q[0]!r} leaves only {len(candidates)} demonstration pairs with a different input; need k={k}"
            )
        rng.shuffle(candidates)
        chosen, rest, seen = [], [], set()
        for p in candidates:
            if len(chosen) == k:
                break
            if p[1] in seen:
                rest.append(p)
            else:
                seen.add(p[1])
                chosen.append(p)
        chosen += rest[: k - len(chosen)]
        rng.shuffle(chosen)
        labels = [p[1] for p in chosen]
        if corrupt is not None:
            labels = _corrupt_labels(labels, corrupt, rng_corrupt)
        yield q, [(p[0], lab) for p, lab in zip(chosen, labels)]


def _check_request(k: int, n: int, corrupt: str | None) -> None:
    if corrupt not in CORRUPTIONS:
        raise TaskError(f"corrupt must be one of {CORRUPTIONS}, got {corrupt!r}")
    if k < 0 or n < 1:
        raise TaskError(f"need k >= 0 and n >= 1, got k={k}, n={n}")
    if corrupt is not None and k < 2:
        raise TaskError(f"corrupt={corrupt!r} needs k >= 2 demonstrations to move labels between, got k={k}")


def _pools(pairs: Sequence, demo_pairs: Sequence | None, query_pairs: Sequence | None, k: int, what: str):
    demo_pool = list(pairs if demo_pairs is None else demo_pairs)
    query_pool = list(pairs if query_pairs is None else query_pairs)
    same = demo_pairs is None and query_pairs is None
    if same and len(demo_pool) < k + 1:
        raise TaskError(f"{what}: {len(demo_pool)} usable pairs, fewer than k+1 = {k + 1} (k demonstrations + a query)")
    if not same and (len(demo_pool) < k or not query_pool):
        raise TaskError(
            f"{what}: {len(demo_pool)} usable demonstration pairs and {len(query_pool)} usable queries; need >= k = {k} and >= 1"
        )
    return demo_pool, query_pool


# --------------------------------------------------------------------------------------------------
# Word tasks over a Hugging Face tokenizer
# --------------------------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def has_tokenizer(tokenizer) -> bool:
    """Whether ``tokenizer`` is a usable tokenizer: not None and not empty (an empty vocabulary is no
    tokenizer: it cannot encode a word task)."""
    if tokenizer is None:
        return False
    try:
        return len(tokenizer) > 0
    except TypeError:  # an object without a length: trust it
        return True


def _bos_wanted(tokenizer, add_bos, bos_id: int | None) -> tuple[bool, int | None]:
    """(whether prompts start with a BOS, its id) for ``build_prompts``'s ``add_bos``."""
    if add_bos not in BOS_MODES or (add_bos is not None and not isinstance(add_bos, (bool, str))):
        raise TaskError(f"add_bos must be one of None, 'published', 'tokenizer', True, False; got {add_bos!r}")
    if bos_id is None:
        bos_id = getattr(tokenizer, "bos_token_id", None)
    if add_bos is None or add_bos == "published":
        return bos_id is not None, bos_id
    if add_bos == "tokenizer":
        return tokenizer_adds_bos(tokenizer), getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos_id is None:
        raise TaskError("add_bos=True but the tokenizer has no bos_token (pass bos_id)")
    return bool(add_bos), bos_id


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` (with special tokens) starts with the tokenizer's BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _answer_tokens(tokenizer, prompts: Sequence[str], continuations: Sequence[str]) -> list[tuple[list[int], list[int]] | str]:
    """For each (prompt, continuation): the prompt's tokens and the continuation's tokens in context
    (tokens of ``prompt + continuation`` minus those of ``prompt``), or why it cannot be scored."""
    if not prompts:
        return []
    enc_p = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    enc_f = tokenizer([p + c for p, c in zip(prompts, continuations)], add_special_tokens=False)["input_ids"]
    out: list[tuple[list[int], list[int]] | str] = []
    for p, full in zip(enc_p, enc_f):
        p, full = list(p), list(full)
        if full[: len(p)] != p:
            out.append("appending the answer changes how the prompt's end is tokenized (tokens merge across the boundary)")
            continue
        ans = full[len(p):]
        if not ans:
            out.append("the answer tokenizes to nothing")
        elif not tokenizer.decode([ans[0]]).strip():
            out.append(f"the answer's first token {tokenizer.convert_ids_to_tokens(ans[0])!r} is whitespace only")
        else:
            out.append((p, ans))
    return out


def _pair_problem(x: str, y: str) -> str | None:
    if not isinstance(x, str) or not x.strip():
        return "empty input"
    if not isinstance(y, str) or not y.strip():
        return "empty answer"
    return None


def check_scorable(
    task: Task | Sequence[tuple[str, str]],
    tokenizer,
    template: Template = DEFAULT_TEMPLATE,
) -> tuple[list[tuple[str, str]], list[tuple[tuple[str, str], str]]]:
    """Split a task's pairs into those whose answers can be scored by their first token, and the rest.

    A pair is unscorable when its input or answer is empty, when ``answer_lead + answer`` tokenizes
    to nothing after the query, when appending it changes the tokens of the query's end (so the
    prompt's last token would not be the one the model sees), or when its first token is only
    whitespace (e.g. a bare ``"Ġ"``: it would be shared by unrelated answers). The check renders
    the query alone, ``prefix + query(x)``; :func:`build_prompts` re-checks in full context.

    Returns:
        (ok_pairs, bad) where ``bad`` lists ``((input, output), reason)``.
    """
    pairs = [tuple(p) for p in (task.pairs if isinstance(task, Task) else task)]
    problems: list[str | None] = [_pair_problem(x, y) for x, y in pairs]
    todo = [i for i, pr in enumerate(problems) if pr is None]
    results = _answer_tokens(
        tokenizer,
        [template.prefix + template.render_query(pairs[i][0]) for i in todo],
        [template.answer_lead + pairs[i][1] for i in todo],
    )
    for i, r in zip(todo, results):
        if isinstance(r, str):
            problems[i] = r
    ok = [p for p, pr in zip(pairs, problems) if pr is None]
    bad = [(p, pr) for p, pr in zip(pairs, problems) if pr is not None]
    return ok, bad


def build_prompts(
    task: Task,
    tokenizer,
    k: int = 10,
    n: int = 100,
    seed: int = 0,
    corrupt: str | None = None,
    template: Template = DEFAULT_TEMPLATE,
    add_bos: bool | str | None = None,
    demo_pairs: Sequence[tuple[str, str]] | None = None,
    query_pairs: Sequence[tuple[str, str]] | None = None,
    bos_id: int | None = None,
) -> PromptBatch:
    """Build ``n`` left-padded ``k``-shot prompts for a word task.

    Each prompt is ``template.prefix`` + k demonstrations + the query (default template:
    ``"Q: x1\\nA: y1\\n\\n" ... "Q: xq\\nA:"``). Queries cycle through a seeded permutation of the
    query pairs; demonstrations are drawn from the demonstration pairs, never with the query's
    input, with distinct outputs where possible (see ``_draw``). Unscorable pairs (see
    :func:`check_scorable`) are dropped first and listed in ``PromptBatch.dropped``.

    Args:
        task: the task; its pairs serve as both pools unless ``demo_pairs``/``query_pairs`` are given
            (e.g. the two sides of :func:`split`).
        tokenizer: any Hugging Face ``PreTrainedTokenizerBase``.
        k: demonstrations per prompt.
        n: prompts (B).
        seed: seed of the draws; the same seed gives the same queries and demonstration inputs
            whatever ``corrupt`` is.
        corrupt: None, ``"permute"`` (the published corruption: a random permutation of the
            labels, a label may stay on its own input), ``"shuffle"`` (labels permuted so that none
            stays on its own input where possible) or ``"cycle"`` (demo i shows the label of demo
            i-1). The query's answer is always the correct one.
        template: how demonstrations and query are written.
        add_bos: None or ``"published"`` (default, the studies' protocol): every prompt starts with
            exactly one BOS token whenever there is one (GPT-2, GPT-NeoX/Pythia, GPT-J and OLMo
            tokenizers add none, so it is prepended, as the published code prepends the BOS text;
            Llama's tokenizer adds its own, the same single token); ``"tokenizer"``: a BOS only where
            the tokenizer adds one itself; True: always (error without a BOS token); False: never.
        demo_pairs / query_pairs: separate pools for demonstrations and queries.
        bos_id: the BOS id to use (default the tokenizer's ``bos_token_id``; pass the model's
            ``bos_token_id`` for tokenizers that have none, e.g. Qwen2's, whose models use
            ``<|endoftext|>``).

    Returns:
        A :class:`PromptBatch` with ``input_ids`` (B, T), ``attention_mask`` (B, T),
        ``answer_first_token`` (B,), ``texts``, ``answers``, ``queries``, ``demos``, ``dropped``.

    Raises:
        TaskError: bad arguments, or fewer usable pairs than k+1 (or than k demonstrations and one
            query with separate pools).
    """
    _check_request(k, n, corrupt)
    if not has_tokenizer(tokenizer):
        raise TaskError(f"task {task.name!r} is a word task and needs a tokenizer; "
                        f"got {'none' if tokenizer is None else 'an empty one'}")
    want_bos, bos_id = _bos_wanted(tokenizer, add_bos, bos_id)

    dropped: list[tuple[tuple, str]] = []
    checked: dict[tuple[str, str], bool] = {}

    def usable(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        todo = [tuple(p) for p in pairs if tuple(p) not in checked]
        ok, bad = check_scorable(todo, tokenizer, template)
        checked.update({p: True for p in ok})
        checked.update({p: False for p, _ in bad})
        dropped.extend(bad)
        return [tuple(p) for p in pairs if checked[tuple(p)]]

    base = usable(task.pairs) if demo_pairs is None or query_pairs is None else []
    demo_pool, query_pool = _pools(
        base,
        None if demo_pairs is None else usable(demo_pairs),
        None if query_pairs is None else usable(query_pairs),
        k,
        f"task {task.name!r}",
    )

    texts, seqs, firsts, answers, queries, answer_ids, demos = [], [], [], [], [], [], []
    draws = _draw(demo_pool, query_pool, k, seed, corrupt)
    for _round in range(20):
        if len(texts) == n:
            break
        batch = [next(draws) for _ in range(n - len(texts))]
        rendered = [template.render(shown, qx) for (qx, _), shown in batch]
        results = _answer_tokens(tokenizer, rendered, [template.answer_lead + qy for (_, qy), _ in batch])
        for ((qx, qy), shown), text, result in zip(batch, rendered, results):
            if isinstance(result, str):  # rare: fine alone, but the boundary merges in this context
                dropped.append(((qx, qy), result + " (in a full prompt)"))
                continue
            prompt_ids, ans = result
            seqs.append(([bos_id] if want_bos else []) + prompt_ids)
            texts.append(text)
            firsts.append(ans[0])
            answer_ids.append(ans)
            answers.append(qy)
            queries.append(qx)
            demos.append(shown)
    if len(texts) < n:
        raise TaskError(f"task {task.name!r}: could not build {n} scorable prompts (see the reasons in PromptBatch.dropped)")

    pad_id = next(
        (t for t in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None), bos_id) if t is not None),
        0,
    )
    input_ids, attention_mask = _left_pad(seqs, pad_id)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        answer_first_token=torch.tensor(firsts, dtype=torch.long),
        answers=answers,
        queries=queries,
        texts=texts,
        answer_ids=answer_ids,
        demos=demos,
        dropped=dropped,
        corrupt=corrupt,
        k=k,
        pad_id=pad_id,
        bos=want_bos,
        task=task.name,
    )


# --------------------------------------------------------------------------------------------------
# Token-id tasks
# --------------------------------------------------------------------------------------------------


def build_token_prompts(
    task: TokenTask,
    k: int = 8,
    n: int = 100,
    seed: int = 0,
    sep_id: int = 0,
    corrupt: str | None = None,
    bos_id: int | None = None,
    pad_id: int = 0,
    demo_pairs: Sequence | None = None,
    query_pairs: Sequence | None = None,
) -> PromptBatch:
    """Build ``n`` left-padded ``k``-shot prompts over token ids: ``[BOS] x1 y1 SEP ... xk yk SEP xq``.

    The draws follow :func:`build_prompts` (query never among the demonstrations, distinct demo
    outputs where possible, same draws for clean and corrupted prompts of one seed). The answer's
    first token is ``yq[0]``; ``texts`` is None. Pairs with an empty input or output are dropped
    and reported in ``dropped``.

    Args:
        task: a :class:`TokenTask`.
        k, n, seed, corrupt, demo_pairs, query_pairs: as in :func:`build_prompts`.
        sep_id: the separator id written after each demonstration.
        bos_id: an id to start every prompt with (None: none).
        pad_id: the id used for left padding (masked out by ``attention_mask``).

    Returns:
        A :class:`PromptBatch`: ``input_ids`` (B, T), ``attention_mask`` (B, T), ``answer_first_token`` (B,).
    """
    _check_request(k, n, corrupt)
    dropped: list[tuple[tuple, str]] = []

    def usable(pairs: Sequence) -> list:
        out = []
        for x, y in pairs:
            x, y = _as_ids(x), _as_ids(y)
            if not x or not y:
                dropped.append(((x, y), "empty input" if not x else "empty output"))
            else:
                out.append((x, y))
        return out

    base = usable(task.pairs) if demo_pairs is None or query_pairs is None else []
    demo_pool, query_pool = _pools(
        base,
        None if demo_pairs is None else usable(demo_pairs),
        None if query_pairs is None else usable(query_pairs),
        k,
        f"token task {task.name!r}",
    )
    seqs, firsts, answers, queries, answer_ids, demos = [], [], [], [], [], []
    draws = _draw(demo_pool, query_pool, k, seed, corrupt)
    for _ in range(n):
        (qx, qy), shown = next(draws)
        ids: list[int] = [] if bos_id is None else [bos_id]
        for x, y in shown:
            ids += [*x, *y, sep_id]
        ids += list(qx)
        seqs.append(ids)
        firsts.append(qy[0])
        answer_ids.append(list(qy))
        answers.append(qy)
        queries.append(qx)
        demos.append(shown)
    input_ids, attention_mask = _left_pad(seqs, pad_id)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        answer_first_token=torch.tensor(firsts, dtype=torch.long),
        answers=answers,
        queries=queries,
        texts=None,
        answer_ids=answer_ids,
        demos=demos,
        dropped=dropped,
        corrupt=corrupt,
        k=k,
        pad_id=pad_id,
        bos=bos_id is not None,
        task=task.name,
    )
