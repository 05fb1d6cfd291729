"""FV scores: the published loop (one forward pass per head per prompt batch) vs iclscope's default
(final token only, against a cached prefix, one patched head per batch row).

    .venv/bin/python benchmarks/fv_speed.py                 # GPT-2-small-sized random model, 8 prompts
    .venv/bin/python benchmarks/fv_speed.py --prompts 25 --ref-heads 0   # full reference (slow)

The model is ``random:gpt2:layers=12,heads=12,d_model=768`` (GPT-2 small's shape, random weights,
byte-level tokenizer); the task is synthetic (3-6 letter strings -> upper case) with 10-shot prompts in
the study's "Q: x\\nA:y" layout (no space before the answer: with a byte tokenizer a leading space
would be the answer's first token). The reference loop is slow on a CPU: by default it runs on
``--ref-heads`` heads spread over the layers and its time for all heads is extrapolated per head (the
table says so). Both methods score the same heads on the same prompts; the max abs difference is
taken over those. Peak memory is the growth of the resident set over the run of each method
(Linux: VmHWM after resetting it via /proc/self/clear_refs; elsewhere ru_maxrss, which never resets).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import resource
import sys
import time

import torch


def _rss_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident-set growth (MiB) over a block."""

    def __enter__(self):
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.reset = True
        except OSError:
            pass
        self.start = _rss_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        peak = _rss_kb("VmHWM") if self.reset else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = max(0, peak - self.start) / 1024
        self.peak_mib = peak / 1024
        return False


def synthetic_task(n_pairs: int = 60, seed: int = 0):
    from iclscope.tasks import Task

    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n_pairs:
        words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6))))
    return Task("upper", [(w, w.upper()) for w in sorted(words)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:gpt2:layers=12,heads=12,d_model=768")
    ap.add_argument("--prompts", type=int, default=8, help="corrupted prompts scored (default 8)")
    ap.add_argument("--clean", type=int, default=16, help="clean prompts for the task means (default 16)")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ref-heads", type=int, default=12,
                    help="heads the reference loop runs on, time extrapolated to all (0: all heads, no extrapolation)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import iclscope
    from iclscope.scores import fv_prompts, fv_scores, fv_scores_reference
    from iclscope.tasks import Template

    if args.threads:
        torch.set_num_threads(args.threads)
    model = iclscope.load(args.model)
    tasks = fv_prompts(model, [synthetic_task()], k=args.shots, n_clean=args.clean, n_corrupt=args.prompts,
                       template=Template("Q: {x}\nA:{y}\n\n"))
    clean, bad = next(iter(tasks.values()))
    n_all = model.n_layers * model.n_heads
    if args.ref_heads and args.ref_heads < n_all:
        step = n_all / args.ref_heads
        idx = sorted({int(i * step + (i * 7) % max(1, int(step))) for i in range(args.ref_heads)})
        ref_heads = [(i // model.n_heads, i % model.n_heads) for i in idx]
    else:
        ref_heads = None

    from iclscope.scores import task_means

    with torch.no_grad():  # warm up the fast path once (allocator, kernels), untimed
        fv_scores(model, {"w": (clean, bad)}, heads=[(0, 0)], batch_size=args.batch_size, progress=False)
    t0 = time.perf_counter()
    means = {name: task_means(model, c, args.batch_size) for name, (c, _) in tasks.items()}
    t_means = time.perf_counter() - t0  # a cost both methods share: computed once, passed to both

    with PeakMemory() as mem_fast:
        t0 = time.perf_counter()
        fast = fv_scores(model, tasks, batch_size=args.batch_size, means=means, progress=False)
        t_fast = time.perf_counter() - t0
    with PeakMemory() as mem_ref:
        t0 = time.perf_counter()
        ref = fv_scores_reference(model, tasks, heads=ref_heads, batch_size=args.batch_size, means=means,
                                  progress=False)
        t_ref = time.perf_counter() - t0
    n_ref = n_all if ref_heads is None else len(ref_heads)
    t_ref_all = t_ref * n_all / n_ref
    scored = ~ref.scores.isnan()
    diff = (ref.scores[scored] - fast.scores[scored]).abs().max().item()
    name = next(iter(tasks))
    pdiff = (ref.per_prompt[name] - fast.per_prompt[name])[:, scored].abs().max().item()

    T = bad.input_ids.shape[1]
    extrap = n_ref < n_all
    print(f"## FV scores: reference loop vs final-token fast path ({datetime.date.today().isoformat()})\n")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(other processes share these cores)")
    print(f"model: {args.model} ({model.n_layers}x{model.n_heads} heads, dtype {model.dtype}); "
          f"{args.prompts} corrupted {args.shots}-shot prompts of {T} tokens (padded), "
          f"{args.clean} clean prompts for the means, batch {args.batch_size}\n")
    print("| method | heads run | time (s) | time for all heads (s) | peak RSS (MiB) | peak RSS growth (MiB) |")
    print("|---|---|---|---|---|---|")
    print(f"| task means ({args.clean} clean prompts; shared, computed once) | all | {t_means:.1f} | {t_means:.1f} "
          f"| - | - |")
    print(f"| reference (one pass per head per batch) | {n_ref} | {t_ref:.1f} | "
          f"{t_ref_all:.1f}{' (extrapolated per head)' if extrap else ''} | {mem_ref.peak_mib:.0f} | "
          f"{mem_ref.mib:.0f} |")
    print(f"| fv_scores (cached prefix, last token only) | {n_all} | {t_fast:.2f} | {t_fast:.2f} | "
          f"{mem_fast.peak_mib:.0f} | {mem_fast.mib:.0f} |")
    print()
    note = " (reference time extrapolated)" if extrap else ""
    print(f"speed-up, scoring (means given to both): {t_ref_all / t_fast:.0f}x{note}")
    print(f"speed-up, end to end (means included in both): {(t_ref_all + t_means) / (t_fast + t_means):.0f}x{note}")
    print(f"max abs difference of the scores over the {n_ref} heads both ran: {diff:.2e} "
          f"(per prompt: {pdiff:.2e}); largest |score|: {fast.scores.abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
