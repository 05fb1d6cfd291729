"""The ablation study (Yin & Steinhardt 2025): mean-ablate the top heads of each ranking (with exclusion)
and random heads, and measure what the model loses: few-shot accuracy on the evaluation tasks (first
token; optionally greedy generation scored by token F1) and the token-loss difference on natural text.

The protocol, both measures, the fast path and the interval are explained in docs/ablation.md.

Settings. A setting is a set of heads: the top k of a ranking, k = round(fraction x all heads). Settings
with the same head set (every ranking at k = 0; fractions that round to the same k) are computed once and
the result is written for each (ranking, fraction) they stand for, so the table keeps the fraction -> k
mapping.

Fast path (``positions="final"``). Ablating heads at the final position cannot change any earlier
position (attention is causal), so each task's prompts run once (``Model.prefix_cache``) and every
setting is a batch of final-token rows against that cache (``Model.run_last_token``), one head set per
row (``Ablate(..., rows=...)``); the result equals a full forward pass per setting (``icl_accuracy``) up
to float rounding. ``positions="all"`` changes earlier positions, so it takes the full-pass path.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from ... import Ablate
from ...batch import rows as batch_rows
from ...errors import IclscopeError
from ...evaluate import icl_accuracy, score_generated, text_chunks, token_loss_difference
from ...heads import ranked_heads
from ...readout import answer_prob, answer_rank
from ...report.figures import save_figure
from .scoring import score_grid
from .tasks import FRACTIONS

MEASURES = ("first_token", "generate_f1", "token_loss")
DEFAULT_MEASURES = ("first_token", "token_loss")
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "data" / "text"  # King James Genesis, public domain
TOKEN_LOSS_TOKENS = (50, 500)  # Olsson et al.: loss at token 500 minus loss at token 50
ROW_BUDGET = 256 * 2 ** 20  # bytes of transient memory one chunk of rows may take (keys/values, logits)
MAX_ROWS = 1024
INTERVAL = "95 % t interval over seeds (mean ± t(0.975, n-1) · s / √n)"


def head_count(fraction: float, n_total: int) -> int:
    """Heads ablated for a fraction of all heads: round(fraction x n_total) (Python rounding)."""
    return int(round(fraction * n_total))


def check_measures(measures: Sequence[str], text_dir=None) -> tuple[str, ...]:
    """The measures, checked (one-line IclscopeError naming the culprit); ``text_dir`` must exist if given."""
    if isinstance(measures, str):
        measures = [m.strip() for m in measures.split(",") if m.strip()]
    ms = tuple(dict.fromkeys(measures))
    bad = [m for m in ms if m not in MEASURES]
    if bad:
        raise IclscopeError(f"--measures: unknown measure {bad[0]!r}; choose from {', '.join(MEASURES)}")
    if "first_token" not in ms:
        raise IclscopeError("--measures must include first_token (the study's main measure)")
    if text_dir is not None and not Path(text_dir).expanduser().exists():
        raise IclscopeError(f"--text-dir {text_dir}: no such file or folder of .txt files")
    return ms


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """One row group of the table: ``ranking`` (name), ``seed`` (-1 unless random), ``fraction``, ``k``,
    ``heads`` (the ablated heads, sorted)."""

    ranking: str
    seed: int
    fraction: float
    k: int
    heads: tuple


def rankings(model, table: pd.DataFrame, exclusion: float = 0.02, random_seeds: int = 5) -> dict[str, list]:
    """{name: heads in ablation order}: induction, fv, each with exclusion (the top ``exclusion`` fraction by
    the other score dropped from the candidates first), and random orders ``random#<seed>``."""
    n_total = model.n_layers * model.n_heads
    ind, fv = score_grid(table, "induction", model), score_grid(table, "fv", model)
    n_ex = max(1, round(exclusion * n_total))
    out = {"induction": ranked_heads(ind), "fv": ranked_heads(fv),
           "induction (excl. top FV)": ranked_heads(ind, ranked_heads(fv)[:n_ex]),
           "fv (excl. top induction)": ranked_heads(fv, ranked_heads(ind)[:n_ex])}
    all_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    for s in range(random_seeds):
        out[f"random#{s}"] = random.Random(s).sample(all_heads, len(all_heads))
    return out


def ablation_settings(model, table: pd.DataFrame, fractions=FRACTIONS, exclusion: float = 0.02,
                      random_seeds: int = 5) -> tuple[list[Setting], list[tuple]]:
    """(settings, head_sets): every (ranking, fraction) setting, and the distinct head sets they use (each
    computed once; ``Setting.heads`` is one of them)."""
    n_total = model.n_layers * model.n_heads
    settings, seen = [], {}
    for name, order in rankings(model, table, exclusion, random_seeds).items():
        ranking, seed = (name.split("#")[0], int(name.split("#")[1])) if "#" in name else (name, -1)
        for frac in fractions:
            k = head_count(frac, n_total)
            heads = tuple(sorted(tuple(map(int, h)) for h in order[:k]))
            seen.setdefault(heads, len(seen))
            settings.append(Setting(ranking, seed, float(frac), k, heads))
    return settings, list(seen)


def task_means(model, eval_prompts: dict, positions: str = "final") -> torch.Tensor:
    """(n_layers, n_heads, d_head) mean head output z over every evaluation prompt of every task (weighted by
    prompt count; task-agnostic), at the final position (``positions="final"``) or over all positions."""
    from ...models import head_means

    pos = [-1] if positions == "final" else None
    sums, count = None, 0
    with torch.no_grad():
        for batch in eval_prompts.values():
            inputs = {"input_ids": batch.input_ids.to(model.device), "attention_mask": batch.attention_mask.to(model.device)}
            m = head_means(model, [inputs], positions=pos)
            sums = m * len(batch) if sums is None else sums + m * len(batch)
            count += len(batch)
    return sums / count


def _ablate(head_sets: Sequence[tuple], row_sets: Sequence[int], how: str, mean, positions) -> list:
    """One Ablate for a chunk of rows: row r ablates head_sets[row_sets[r]] (no entries: left alone)."""
    heads, rws = [], []
    for r, s in enumerate(row_sets):
        heads += list(head_sets[s])
        rws += [r] * len(head_sets[s])
    return [Ablate(heads, how=how, mean=mean if how == "mean" else None, positions=positions, rows=rws)] if heads else []


def rows_per_chunk(model, seq_len: int, budget: int = ROW_BUDGET) -> int:
    """How many rows of one pass fit ``budget`` bytes of transient memory: per row, one layer's keys and
    values over ``seq_len`` (gathered for the row, twice for the attention's work) and the logits."""
    elem = torch.finfo(model.dtype).bits // 8
    per_row = 4 * seq_len * model.n_kv_heads * model.d_head * elem + 2 * model.vocab_size * 4 \
        + 8 * seq_len * model.d_model * elem
    return int(max(1, min(MAX_ROWS, budget // per_row)))


# ------------------------------------------------------------------------------------------------ measures


def final_token_accuracy(model, batch, head_sets: Sequence[tuple], how: str = "mean", mean=None,
                         prompt_batch: int = 32, budget: int = ROW_BUDGET) -> dict[str, torch.Tensor]:
    """First-token accuracy of a PromptBatch under each head set ablated at the final position, on the
    final-token path: one prefix pass per ``prompt_batch`` prompts, then (head set, prompt) rows of
    final-token passes, chunked to ``budget`` bytes.

    Returns {"correct": (S, N) bool, "rank": (S, N) int64, "prob": (S, N) float32}; row s equals
    ``icl_accuracy(model, batch, [Ablate(head_sets[s], how, mean, positions=[-1])])``."""
    S, N = len(head_sets), len(batch)
    rank, prob = torch.empty(S, N, dtype=torch.long), torch.empty(S, N)
    per = rows_per_chunk(model, batch.input_ids.shape[1], budget)
    with torch.no_grad():
        for p0 in range(0, N, prompt_batch):
            sl = slice(p0, min(N, p0 + prompt_batch))
            prefix = model.prefix_cache(batch_rows(batch, sl, model.device))
            n = sl.stop - sl.start
            pairs = [(s, i) for s in range(S) for i in range(n)]
            for c in range(0, len(pairs), per):
                chunk = pairs[c:c + per]
                ivs = _ablate(head_sets, [s for s, _ in chunk], how, mean, [-1])
                idx = torch.tensor([i for _, i in chunk])
                logits = model.run_last_token(prefix, rows=idx, interventions=ivs)[0][:, -1].float()
                ans = batch.answer_first_token[sl][idx].to(logits.device)
                si = torch.tensor([s for s, _ in chunk])
                rank[si, p0 + idx] = answer_rank(logits, ans).cpu()
                prob[si, p0 + idx] = answer_prob(logits, ans).cpu()
    return {"correct": rank == 0, "rank": rank, "prob": prob}


def full_pass_accuracy(model, batch, head_sets: Sequence[tuple], how: str = "mean", mean=None,
                       positions=None) -> dict[str, torch.Tensor]:
    """As ``final_token_accuracy`` with one full ``icl_accuracy`` pass per head set (any ``positions``,
    e.g. None = every position); the path for ablations that change earlier positions."""
    out = []
    for hs in head_sets:
        ivs = [Ablate(list(hs), how=how, mean=mean if how == "mean" else None, positions=positions)] if hs else []
        out.append(icl_accuracy(model, batch, interventions=ivs))
    return {"correct": torch.stack([o["correct"] for o in out]), "rank": torch.stack([o["rank"] for o in out]),
            "prob": torch.stack([o["prob"] for o in out])}


def generate_rows(model, batch, head_sets: Sequence[tuple], how: str = "mean", mean=None, positions: str = "final",
                  max_new_tokens: int = 5, budget: int = ROW_BUDGET) -> torch.Tensor:
    """Greedy decoding of every prompt under every head set, (head set, prompt) pairs as batch rows.

    The ablation acts at every position that predicts an answer token: the prompt's final position and
    every generated one (``positions="final"``: ``positions=slice(P - 1, None)`` in the growing sequence),
    or at every position (``"all"``). One full pass per new token (no key/value cache).
    Returns (S, N, max_new_tokens) int64; [s] equals the ``generated`` of ``icl_generate_f1(model, batch,
    max_new_tokens, [Ablate(head_sets[s], how, mean, positions=slice(P - 1, None))])``."""
    S, N = len(head_sets), len(batch)
    P = batch.input_ids.shape[1]
    pos = slice(P - 1, None) if positions == "final" else None
    out = torch.empty(S, N, max_new_tokens, dtype=torch.long)
    per = rows_per_chunk(model, P + max_new_tokens, budget)
    pairs = [(s, i) for s in range(S) for i in range(N)]
    with torch.no_grad():
        for c in range(0, len(pairs), per):
            chunk = pairs[c:c + per]
            ivs = _ablate(head_sets, [s for s, _ in chunk], how, mean, pos)
            idx = torch.tensor([i for _, i in chunk])
            ids = batch.input_ids[idx].to(model.device)
            mask = batch.attention_mask[idx].to(model.device)
            si = torch.tensor([s for s, _ in chunk])
            for step in range(max_new_tokens):
                nxt = model.run({"input_ids": ids, "attention_mask": mask}, interventions=ivs)[0][:, -1].argmax(-1)
                out[si, idx, step] = nxt.cpu()
                ids = torch.cat([ids, nxt[:, None]], 1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out


@dataclass
class TextCorpus:
    """Natural-text chunks for the token-loss difference: ``ids`` (n, late + 1) int64 or None when skipped,
    ``early``/``late`` (the tokens whose losses are compared), ``source`` (path), ``notes`` (list of str)."""

    ids: torch.Tensor | None
    early: int
    late: int
    source: str | None
    notes: list = field(default_factory=list)


def text_corpus(model, text_dir=None, n_chunks: int = 16) -> TextCorpus:
    """The chunks the token-loss measure reads: ``text_dir`` (a .txt file or folder) or the shipped default
    (King James Genesis, public domain), cut into ``n_chunks`` chunks of ``late + 1`` tokens. Tokens 50 and
    500 (Olsson et al.); when the model's context is shorter, ``late = n_ctx - 1`` (and ``early`` 50, or a
    tenth of ``late`` when that is not below it), with a note. Skipped (``ids`` None, one note) when the model
    has no tokenizer or no text is available."""
    early, late = TOKEN_LOSS_TOKENS
    notes = []
    n_ctx = model.n_ctx
    if n_ctx is not None and n_ctx - 1 < late:
        late = n_ctx - 1
        if early >= late:
            early = max(1, late // 10)
        notes.append(f"token-loss difference: the model's context is {n_ctx} tokens, so tokens {early} and {late} "
                     f"are compared instead of 50 and 500")
    src = Path(text_dir).expanduser() if text_dir is not None else DEFAULT_TEXT
    if model.tokenizer is None:
        return TextCorpus(None, early, late, None, ["token-loss difference skipped: the model has no tokenizer to "
                                                    "read natural text"])
    if not src.exists() or (src.is_dir() and not any(src.rglob("*.txt"))):
        return TextCorpus(None, early, late, None, [f"token-loss difference skipped: no text corpus ({src} holds "
                                                    f"no .txt files); give --text-dir"])
    try:
        chunks = text_chunks(model, src, ctx=late + 1, n_docs=n_chunks, late=late)
    except IclscopeError as e:
        return TextCorpus(None, early, late, str(src), [f"token-loss difference skipped: {e}"])
    if len(chunks) < n_chunks:
        notes.append(f"token-loss difference: {src} gave {len(chunks)} chunks of {late + 1} tokens, not {n_chunks}")
    return TextCorpus(torch.tensor(chunks, dtype=torch.long), early, late, str(src), notes)


def token_loss_rows(model, corpus: TextCorpus, head_sets: Sequence[tuple], how: str = "mean",
                    batch_size: int = 8) -> list[dict]:
    """The token-loss difference under each head set ablated at EVERY position (as the study does), mean
    ablation with each head's mean output over every position of the text chunks. Returns one dict per
    head set: difference, loss_early, loss_late, sem, n_chunks."""
    from ...models import head_means

    mean = head_means(model, corpus.ids.to(model.device), positions=None, batch_size=batch_size) \
        if how == "mean" else None
    out = []
    for hs in head_sets:
        ivs = [Ablate(list(hs), how=how, mean=mean, positions=None)] if hs else []
        r = token_loss_difference(model, corpus.ids, ctx=corpus.late + 1, early=corpus.early, late=corpus.late,
                                  interventions=ivs, batch_size=batch_size)
        out.append({k: r[k] for k in ("difference", "loss_early", "loss_late", "sem", "n_chunks")})
    return out


# ------------------------------------------------------------------------------------------------ the study


@dataclass
class AblationResults:
    """``per_task``: one row per (ranking, fraction, seed, task): k, accuracy (first token) and, with
    generate_f1, f1 and exact_match. ``token_loss``: one row per (ranking, fraction, seed): k, difference,
    loss_early, loss_late, sem, n_chunks, early, late, corpus (None when not measured or skipped).
    ``notes``: what was scaled or skipped. ``protocol``: every choice, for config.json."""

    per_task: pd.DataFrame
    token_loss: pd.DataFrame | None
    notes: list
    protocol: dict


def ablation_study(model, eval_prompts: dict, table: pd.DataFrame, fractions=FRACTIONS, how: str = "mean",
                   positions: str = "final", exclusion: float = 0.02, random_seeds: int = 5, log=print,
                   measures: Sequence[str] = DEFAULT_MEASURES, text_dir=None, max_new_tokens: int = 5,
                   n_text_chunks: int = 16, budget: int = ROW_BUDGET) -> "AblationResults":
    """Few-shot accuracy (and the other measures) with the top-k heads ablated, k a fraction of all heads.

    Rankings: see ``rankings``. Mean ablation (``how="mean"``) replaces a head's output by its mean over
    every evaluation prompt of every task at the final position (``positions="final"``, the study's
    protocol; on the final-token path) or over all positions (``"all"``; full passes); ``how="zero"``
    zero-ablates. ``measures``: "first_token" (always), "generate_f1" (greedy decoding of
    ``max_new_tokens`` tokens, token F1 and exact match; slower) and "token_loss" (the token-loss difference
    on ``text_dir`` or the shipped text, ablating at every position; skipped with a note when the model
    has no tokenizer). ``budget``: bytes of transient memory per chunk of batch rows. Returns an
    ``AblationResults``."""
    measures = check_measures(measures, text_dir)
    if positions not in ("final", "all"):
        raise IclscopeError(f"positions {positions!r}: choose final or all")
    settings, head_sets = ablation_settings(model, table, fractions, exclusion, random_seeds)
    mean = task_means(model, eval_prompts, positions) if how == "mean" else None
    ks = sorted({s.k for s in settings})
    log(f"  ablation study: {len(settings)} settings, {len(head_sets)} distinct head sets (k = "
        f"{', '.join(map(str, ks))} heads), {len(eval_prompts)} tasks; "
        f"{'final-token path' if positions == 'final' else 'full passes (positions=all)'}")
    import os

    from ...report.progress import progress

    quiet = os.environ.get("ICLSCOPE_QUIET", "") not in ("", "0")
    acc, gen = {}, {}
    for t, batch in progress(total=len(eval_prompts), desc="ablation study", unit="task", quiet=quiet,
                             iterable=list(eval_prompts.items())):
        if positions == "final":
            acc[t] = final_token_accuracy(model, batch, head_sets, how, mean, budget=budget)
        else:
            acc[t] = full_pass_accuracy(model, batch, head_sets, how, mean, positions=None)
        if "generate_f1" in measures:
            ids = generate_rows(model, batch, head_sets, how, mean, positions, max_new_tokens, budget)
            gen[t] = [score_generated(model, batch, ids[s]) for s in range(len(head_sets))]
    index = {hs: i for i, hs in enumerate(head_sets)}
    rows = []
    for st in settings:
        s = index[st.heads]
        for t in eval_prompts:
            row = {"ranking": st.ranking, "fraction": st.fraction, "k": st.k, "seed": st.seed, "task": t,
                   "accuracy": float(acc[t]["correct"][s].float().mean())}
            if gen:
                row.update(f1=gen[t][s]["mean_f1"], exact_match=gen[t][s]["exact_match"])
            rows.append(row)
    notes, tl = [], None
    corpus = None
    if "token_loss" in measures:
        corpus = text_corpus(model, text_dir, n_text_chunks)
        notes += corpus.notes
        if corpus.ids is not None:
            log(f"  token-loss difference: tokens {corpus.early} and {corpus.late}, {len(corpus.ids)} chunks of "
                f"{corpus.source}, {len(head_sets)} head sets ablated at every position")
            res = token_loss_rows(model, corpus, head_sets, how)
            tl = pd.DataFrame([{"ranking": st.ranking, "fraction": st.fraction, "k": st.k, "seed": st.seed,
                                **res[index[st.heads]], "early": corpus.early, "late": corpus.late,
                                "corpus": corpus.source} for st in settings])
    for n in notes:
        log("  " + n)
    protocol = {"measures": list(measures), "how": how, "positions": positions, "exclusion": exclusion,
                "random_seeds": random_seeds, "mean": ("task-agnostic mean of each head's output over every "
                                                       "evaluation prompt, at the "
                                                       + ("final position" if positions == "final" else "all positions"))
                if how == "mean" else None,
                "path": "final-token (prefix cache)" if positions == "final" else "full passes",
                "generate": {"max_new_tokens": max_new_tokens, "greedy": True,
                             "ablated_positions": "prompt's final and every generated" if positions == "final"
                             else "all"} if "generate_f1" in measures else None,
                "token_loss": None if corpus is None else {
                    "early": corpus.early, "late": corpus.late, "corpus": corpus.source,
                    "n_chunks": None if corpus.ids is None else len(corpus.ids), "ablated_positions": "all",
                    "mean": "each head's mean output over every position of the text chunks" if how == "mean" else None},
                "interval": INTERVAL, "distinct_head_sets": len(head_sets)}
    return AblationResults(pd.DataFrame(rows), tl, notes, protocol)


# ------------------------------------------------------------------------------------------------ summaries


def ablation_summary(df: pd.DataFrame, value: str = "accuracy", level: float = 0.95) -> pd.DataFrame:
    """One row per (ranking, fraction): k, the mean of ``value`` (over tasks, then over seeds), and for the
    random baseline a t interval over its seeds (``level``; scipy.stats.t with n - 1 degrees of freedom):
    n_seeds, sd, ci_low, ci_high, interval (its name). Other rankings have one seed and no interval."""
    from scipy import stats

    by = ["ranking", "fraction", "k", "seed"]
    if "task" in df.columns:
        per_seed = df.groupby(by, dropna=False)[value].mean().reset_index()
    else:
        per_seed = df[by + [value]]
    out = []
    for (ranking, frac, k), g in per_seed.groupby(["ranking", "fraction", "k"], sort=False):
        v = g[value].to_numpy(dtype=float)
        n = len(v)
        row = {"ranking": ranking, "fraction": frac, "percent": round(100 * frac, 2), "k": int(k),
               value: float(v.mean()), "n_seeds": n, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "interval": ""}
        if n > 1:
            sd = float(v.std(ddof=1))
            half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
            row.update(sd=sd, ci_low=float(v.mean()) - half, ci_high=float(v.mean()) + half,
                       interval=f"{round(100 * level)} % t interval, {n} seeds (t({0.5 + level / 2:.3f}, {n - 1}) = "
                                f"{stats.t.ppf(0.5 + level / 2, n - 1):.3f})")
        out.append(row)
    return pd.DataFrame(out)


def _panel(ax, df: pd.DataFrame, title: str, value: str = "accuracy", ylabel: str = "few-shot accuracy") -> None:
    """``value`` against the heads ablated (x: percent of all heads, ticks labelled with k and percent);
    one line per ranking, random rankings as their mean over seeds with a 95 % t band."""
    s = ablation_summary(df, value)
    for name, g in s.groupby("ranking", sort=False):
        g = g.sort_values("fraction")
        x = g.percent.to_numpy()
        if name == "random":
            n = int(g.n_seeds.max())
            ax.plot(x, g[value], color="grey", ls="--", label=f"random heads ({n} seeds, 95 % t interval)")
            if n > 1:
                ax.fill_between(x, g.ci_low, g.ci_high, color="grey", alpha=0.2)
        else:
            color = "tab:orange" if name.startswith("fv") else "tab:blue"
            excl = "excl." in name
            ax.plot(x, g[value], color=color, ls="--" if excl else "-", marker="s" if excl else "o",
                    ms=4 if excl else 6, lw=1.2 if excl else 2, label=name)
    ticks = s.drop_duplicates("fraction").sort_values("fraction")
    ax.set_xticks(ticks.percent.to_numpy())
    ax.set_xticklabels([f"{k}\n{p:g}%" for k, p in zip(ticks.k, ticks.percent)], fontsize=7)
    ax.set_xlabel("heads ablated: number (top) and % of all heads (bottom)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if value in ("accuracy", "f1", "exact_match"):
        ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)


def ablation_figure(df: pd.DataFrame, path: Path, title: str, token_loss: pd.DataFrame | None = None) -> Path:
    """Accuracy against the heads ablated (number and percent), one line per ranking (random: mean over
    seeds with a 95 % t band); one panel for the task prompts, one for the copying prompts ("copy:" tasks)
    when present, one for generation F1 when measured, and one for the token-loss difference when given."""
    import matplotlib.pyplot as plt

    copy = df.task.str.startswith("copy:")
    panels = [(df[~copy], "accuracy", "few-shot accuracy (mean over tasks)",
               "task prompts (novel queries)" if copy.any() else "task prompts")]
    if copy.any():
        panels.append((df[copy], "accuracy", "few-shot accuracy", "fresh mapping, repeated query (copying)"))
    if "f1" in df.columns and df.f1.notna().any():
        panels.append((df[~copy], "f1", "greedy-generation token F1", "task prompts: generation (token F1)"))
    if token_loss is not None and len(token_loss):
        e, l = int(token_loss.early.iloc[0]), int(token_loss.late.iloc[0])
        panels.append((token_loss, "difference", f"loss(token {l}) - loss(token {e})",
                       "token-loss difference (ablated at every position)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False, layout="constrained")
    for ax, (part, value, ylabel, label) in zip(axes[0], panels):
        _panel(ax, part, f"{title}\n{label}", value, ylabel)
    return save_figure(fig, path)
