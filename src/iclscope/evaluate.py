"""ICL evaluation: first-token accuracy, greedy-decoding F1 / exact match, and the token-loss difference.

Every function takes ``interventions`` (a list of iclscope interventions, e.g. ``Ablate(heads, how="mean",
mean=means, positions=-1)``), applied to every forward pass it makes, so ablation studies reuse them as
they are. All return plain tensors and dicts.

- ``icl_accuracy``: for each prompt of a ``PromptBatch``, the rank of the answer's first token among the
  final-position logits (0 = the model's top choice; ties broken by token id, as argmax does), its
  probability, and top-1 correctness.
- ``icl_generate_f1``: greedy decoding of a few tokens, cut at the end of the answer line, then token F1
  and exact match against the gold answer after normalisation (strip, lower case). Each step is a full
  forward pass over the prompt plus the tokens generated so far, so an intervention's positions count in
  that sequence: ``positions=-1`` is the newest token at every step; to act on the prompt's final token at
  every step, give its absolute position ``batch.input_ids.shape[1] - 1``.
- ``token_loss_difference`` (Olsson et al. 2022): the mean loss at token ``late`` minus the mean loss at
  token ``early`` of natural-text chunks (negative when the model uses long context).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Sequence

import torch

from .batch import rows as batch_rows
from .errors import IclscopeError
from .readout import answer_prob, answer_rank

__all__ = ["icl_accuracy", "icl_generate_f1", "score_generated", "token_f1", "normalize_answer", "token_loss_difference", "text_chunks",
           "load_text_documents"]


def _check_batch(batch, what: str) -> None:
    if not hasattr(batch, "input_ids") or not hasattr(batch, "answer_first_token"):
        raise IclscopeError(f"{what} takes a PromptBatch (iclscope.tasks.build_prompts / build_token_prompts), "
                            f"got {type(batch).__name__}")
    if len(batch) == 0:
        raise IclscopeError(f"{what}: the prompt batch is empty")


# --------------------------------------------------------------------------------------------------
# First-token accuracy
# --------------------------------------------------------------------------------------------------


def icl_accuracy(model, batch, interventions: Sequence = (), batch_size: int = 32) -> dict[str, Any]:
    """First-token ICL accuracy of a PromptBatch.

    Returns a dict: ``correct`` (N,) bool (the answer's first token is the top-1 prediction), ``rank``
    (N,) int64 (0 = top; tokens with a higher logit, plus tied ones with a lower id, come first), ``prob``
    (N,) float32 (softmax over the vocabulary), ``accuracy`` (float, the mean of ``correct``)."""
    _check_batch(batch, "icl_accuracy")
    N = len(batch)
    ranks, probs = torch.empty(N, dtype=torch.long), torch.empty(N)
    with torch.no_grad():
        for i in range(0, N, batch_size):
            sl = slice(i, min(N, i + batch_size))
            logits = model.run(batch_rows(batch, sl, model.device), interventions=interventions)[0][:, -1].float()
            ans = batch.answer_first_token[sl].to(logits.device)
            ranks[sl] = answer_rank(logits, ans).cpu()
            probs[sl] = answer_prob(logits, ans).cpu()
    correct = ranks == 0
    return {"correct": correct, "rank": ranks, "prob": probs, "accuracy": float(correct.float().mean())}


# --------------------------------------------------------------------------------------------------
# Greedy decoding, token F1, exact match
# --------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Strip surrounding whitespace and lower-case."""
    return text.strip().lower()


def token_f1(prediction: str | Sequence, gold: str | Sequence) -> float:
    """Token-overlap F1 (SQuAD style). Strings are normalised (``normalize_answer``) and split on
    whitespace; sequences of token ids are compared as they are. Two empty answers score 1."""
    p = normalize_answer(prediction).split() if isinstance(prediction, str) else list(prediction)
    g = normalize_answer(gold).split() if isinstance(gold, str) else list(gold)
    if not p or not g:
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(p), overlap / len(g)
    return 2 * precision * recall / (precision + recall)


def _greedy(model, batch, max_new_tokens: int, interventions, batch_size: int) -> torch.Tensor:
    """(N, max_new_tokens) greedily decoded ids, one full pass per step."""
    N = len(batch)
    out = torch.empty(N, max_new_tokens, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, N, batch_size):
            sl = slice(i, min(N, i + batch_size))
            inputs = batch_rows(batch, sl, model.device)
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            for step in range(max_new_tokens):
                d = {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}
                nxt = model.run(d, interventions=interventions)[0][:, -1].argmax(-1)
                out[sl, step] = nxt.cpu()
                ids = torch.cat([ids, nxt[:, None]], 1)
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out


def icl_generate_f1(model, batch, max_new_tokens: int = 5, interventions: Sequence = (), batch_size: int = 32,
                    stop: str = "\n", stop_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Greedy-decoding ICL score of a PromptBatch: token F1 and exact match of the decoded answer.

    Word tasks (``batch.texts`` set) need the model's tokenizer: the generated tokens are decoded, cut at
    the first ``stop`` string (default a newline: the template's answer line ends there), normalised (strip,
    lower case) and compared with the gold answer. Token tasks: the generated ids are cut at the first id in
    ``stop_ids`` when given, else to the gold answer's length, and compared id by id.

    Returns a dict: ``prediction`` (list of str, or of id tuples), ``f1`` (N,) float32, ``exact`` (N,) bool,
    ``mean_f1`` and ``exact_match`` (floats), ``generated`` (N, max_new_tokens) int64 raw ids.
    """
    _check_batch(batch, "icl_generate_f1")
    if max_new_tokens < 1:
        raise IclscopeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    text = getattr(batch, "texts", None) is not None
    if text and model.tokenizer is None:
        raise IclscopeError("icl_generate_f1: a word-task batch needs the model's tokenizer to decode answers, "
                            "and this model has none; use token tasks")
    gen = _greedy(model, batch, max_new_tokens, interventions, batch_size)
    return score_generated(model, batch, gen, stop=stop, stop_ids=stop_ids)


def score_generated(model, batch, gen: torch.Tensor, stop: str = "\n",
                    stop_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Token F1 and exact match of decoded ids ``gen`` (N, n_new) against a PromptBatch's answers, as
    ``icl_generate_f1`` scores them (the same cut, normalisation and dict); for decoders other than its own
    (e.g. many ablation settings decoded as batch rows)."""
    text = getattr(batch, "texts", None) is not None
    preds: list = []
    f1s, exact = torch.empty(len(batch)), torch.zeros(len(batch), dtype=torch.bool)
    for i, row in enumerate(gen.tolist()):
        gold = batch.answers[i]
        if text:
            decoded = model.tokenizer.decode(row)
            if stop:  # a stop before any answer (e.g. "\n" first) leaves an empty answer, as it should
                decoded = decoded.split(stop, 1)[0]
            pred: Any = normalize_answer(decoded)
            exact[i] = pred == normalize_answer(str(gold))
            f1s[i] = token_f1(pred, str(gold))
        else:
            gold_ids = list(gold)
            if stop_ids is not None:
                cut = next((j for j, t in enumerate(row) if t in set(stop_ids)), len(row))
                row = row[:cut]
            else:
                row = row[:len(gold_ids)]
            pred = tuple(row)
            exact[i] = list(pred) == gold_ids
            f1s[i] = token_f1(pred, gold_ids)
        preds.append(pred)
    return {"prediction": preds, "f1": f1s, "exact": exact, "mean_f1": float(f1s.mean()),
            "exact_match": float(exact.float().mean()), "generated": gen}


# --------------------------------------------------------------------------------------------------
# Token-loss difference
# --------------------------------------------------------------------------------------------------


def load_text_documents(path: str | Path, max_files: int | None = None) -> list[str]:
    """The text of a .txt file, or of every .txt file under a folder (recursively, sorted): one document each."""
    path = Path(path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise IclscopeError(f"{path}: the folder holds no .txt files")
    else:
        raise IclscopeError(f"{path}: no such file or folder of .txt files")
    docs = []
    for f in files[:max_files]:
        try:
            docs.append(f.read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise IclscopeError(f"{f}: cannot read: {e}") from None
    return docs


def _documents(model, source, add_bos) -> tuple[list[list[int]], bool]:
    """Token-id documents from a path, a list of strings, a (N, L) id tensor or a list of id lists.
    Returns (docs, tokenized_here)."""
    if isinstance(source, torch.Tensor):
        if source.dim() == 1:
            source = source[None]
        if source.dim() != 2 or source.dtype not in (torch.int64, torch.int32):
            raise IclscopeError(f"token ids must be an integer (N, L) tensor, got {tuple(source.shape)} {source.dtype}")
        return [list(map(int, row)) for row in source.tolist()], False
    if isinstance(source, (str, Path)):
        texts = load_text_documents(source)
    elif isinstance(source, Sequence) and source and all(isinstance(s, str) for s in source):
        texts = list(source)
    elif isinstance(source, Sequence) and source and all(isinstance(s, (list, tuple)) for s in source):
        return [list(map(int, s)) for s in source], False
    else:
        raise IclscopeError("token_loss_difference takes a .txt file or folder, a list of texts, a (N, L) tensor "
                            "of token ids, or a list of id lists")
    tok = model.tokenizer
    if tok is None:
        raise IclscopeError("token_loss_difference: this model has no tokenizer, so it cannot read text; "
                            "pass pre-tokenised ids (a (N, L) tensor or a list of id lists)")
    docs = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return docs, True


def text_chunks(model, texts_or_path: Any, ctx: int, n_docs: int | None = None, add_bos: bool | None = None,
                late: int | None = None) -> list[list[int]]:
    """The chunks ``token_loss_difference`` reads: every document cut into consecutive pieces of ``ctx``
    tokens (BOS first when ``add_bos``, counting in ``ctx``; a shorter remainder dropped), at most
    ``n_docs`` of them. Sources as for ``token_loss_difference``. Returns a list of id lists."""
    docs, from_text = _documents(model, texts_or_path, add_bos)
    if add_bos is None:
        from .tasks.core import tokenizer_adds_bos

        add_bos = from_text and tokenizer_adds_bos(model.tokenizer)
    bos = model.bos_token_id if add_bos else None
    if add_bos and bos is None:
        raise IclscopeError("add_bos=True but the model has no BOS token")
    step = ctx - (1 if bos is not None else 0)
    chunks: list[list[int]] = []
    for d in docs:
        for s in range(0, len(d) - step + 1, step):
            chunks.append(([bos] if bos is not None else []) + d[s:s + step])
            if n_docs is not None and len(chunks) >= n_docs:
                break
        if n_docs is not None and len(chunks) >= n_docs:
            break
    if not chunks:
        longest = max((len(d) for d in docs), default=0)
        late = ctx - 1 if late is None else late
        raise IclscopeError(f"the text is too short: no document has {step} tokens for one chunk of ctx={ctx} "
                            f"(the longest has {longest}); give more text or a smaller ctx (> late={late})")
    return chunks


def token_loss_difference(model, texts_or_path: Any, n_docs: int | None = None, ctx: int = 1024,
                          early: int = 50, late: int = 500, interventions: Sequence = (), batch_size: int = 8,
                          add_bos: bool | None = None) -> dict[str, Any]:
    """Olsson et al.'s token-loss difference: mean loss at token ``late`` minus mean loss at token ``early``.

    texts_or_path: a .txt file or a folder of them (one document per file), a list of strings, or
    pre-tokenised ids (a (N, L) tensor: N documents; or a list of id lists). Every document is cut into
    consecutive chunks of ``ctx`` tokens (a shorter remainder is dropped); at most ``n_docs`` chunks are
    used (default all). Text is tokenised with the model's tokenizer, and each chunk starts with the BOS
    token when ``add_bos`` (None: when the tokenizer adds one by default; never for pre-tokenised ids
    unless add_bos=True), BOS counting in the ``ctx`` tokens. The loss at token i is -log p(x_i | x_<i),
    read from position i-1. Only the first ``late + 1`` tokens of a chunk are run (later ones cannot change
    these losses), so negative intervention positions count back from token ``late``.

    Returns a dict: ``difference`` (float, mean of loss[late] - loss[early]), ``loss_early``, ``loss_late``
    (floats), ``per_chunk`` (n,) float32 differences, ``sem`` (float, standard error of the difference),
    ``n_chunks`` (int).
    """
    if not 1 <= early < late:
        raise IclscopeError(f"need 1 <= early < late, got early={early}, late={late}")
    if ctx <= late:
        raise IclscopeError(f"ctx={ctx} must exceed late={late} (the loss at token {late} needs {late + 1} tokens)")
    chunks = text_chunks(model, texts_or_path, ctx=ctx, n_docs=n_docs, add_bos=add_bos, late=late)
    ids = torch.tensor([c[:late + 1] for c in chunks], dtype=torch.long)
    le, ll = [], []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            x = ids[i:i + batch_size].to(model.device)
            logits = model.run(x, interventions=interventions)[0]
            logp = torch.log_softmax(logits[:, [early - 1, late - 1]].float(), -1)  # (B, 2, vocab)
            tgt = x[:, [early, late]]
            loss = -logp.gather(-1, tgt[..., None])[..., 0]  # (B, 2)
            le.append(loss[:, 0].cpu())
            ll.append(loss[:, 1].cpu())
    loss_early, loss_late = torch.cat(le), torch.cat(ll)
    per = loss_late - loss_early
    n = per.numel()
    sem = float(per.std(unbiased=True) / n ** 0.5) if n > 1 else float("nan")
    return {"difference": float(per.mean()), "loss_early": float(loss_early.mean()),
            "loss_late": float(loss_late.mean()), "per_chunk": per, "sem": sem, "n_chunks": n}
