"""Induction scores of every head: one batched forward pass per batch (``iclscope.scores.induction_scores``)
vs one forward pass per sequence.

    .venv/bin/python benchmarks/induction_speed.py                      # GPT-2-small-sized random model
    .venv/bin/python benchmarks/induction_speed.py --model random:gpt_neox:layers=6,heads=8,d_model=512

Sequences are [BOS, r1..r50, r1..r50] of random token ids (scored as ids, never re-tokenised). Both ways
count every query that has a previous occurrence once: the per-sequence scores are combined weighted by
their number of counted queries, so the two results must agree to float precision.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch


def sequences(n: int, half: int, vocab: int, bos: int | None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    hi = vocab if bos is None else bos  # keep BOS out of the random tokens when it is the last id
    r = torch.randint(0, max(2, min(hi, vocab)), (n, half), generator=g)
    seq = torch.cat([r, r], 1)
    if bos is not None:
        seq = torch.cat([torch.full((n, 1), bos, dtype=torch.long), seq], 1)
    return seq


def weighted(model, tokens: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float]:
    from iclscope.patterns import induction_targets
    from iclscope.scores import induction_scores

    total = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    count = 0
    t0 = time.perf_counter()
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size]
        n = int((induction_targets(x) >= 0).sum())
        if n:
            total += induction_scores(model, x).double() * n
            count += n
    return (total / max(count, 1)).float(), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:gpt2:layers=12,heads=12,d_model=768")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--half", type=int, default=50, help="length of the repeated random segment")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import iclscope

    if args.threads:
        torch.set_num_threads(args.threads)
    model = iclscope.load(args.model)
    tokens = sequences(args.sequences, args.half, model.vocab_size, model.bos_token_id)
    with torch.no_grad():
        weighted(model, tokens[:2], 2)  # warm-up, untimed
        batched, t_batched = weighted(model, tokens, args.batch_size)
        single, t_single = weighted(model, tokens, 1)
    diff = (batched - single).abs().max().item()
    print(f"## Induction scores: batched vs one pass per sequence ({datetime.date.today().isoformat()})\n")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(other processes share these cores)")
    print(f"model: {args.model} ({model.n_layers}x{model.n_heads} heads); {args.sequences} sequences of "
          f"{tokens.shape[1]} tokens\n")
    print("| method | passes | time (s) | sequences/s |")
    print("|---|---|---|---|")
    n_b = -(-args.sequences // args.batch_size)
    print(f"| batched (batch {args.batch_size}) | {n_b} | {t_batched:.2f} | {args.sequences / t_batched:.1f} |")
    print(f"| one pass per sequence | {args.sequences} | {t_single:.2f} | {args.sequences / t_single:.1f} |")
    print()
    print(f"speed-up: {t_single / t_batched:.1f}x; max abs difference of the scores: {diff:.1e}; "
          f"top head {divmod(int(batched.argmax()), model.n_heads)} scores {batched.max().item():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
