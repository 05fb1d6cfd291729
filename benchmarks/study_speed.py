"""The whole per-model protocol of the head atlas, timed on random-init models of the study's real shapes.

One `run_atlas` per model: induction / previous-token / duplicate scores, FV scores on the scoring tasks
(task means over n_clean prompts, then the final-token patching of every head), the ablation study on the
evaluation tasks (4 rankings + 5 random seeds over the default fractions, on the final-token path), and
function vectors at every layer. The time does not depend on the weights, so random weights stand in for
the pretrained ones; the vocabulary is the real one (GPT-2: 50257, Pythia: 50304). The tasks are the
built-in synthetic token tasks (a model without a tokenizer), 10-shot.

    .venv/bin/python benchmarks/study_speed.py                       # GPT-2-small and Pythia-160m shapes, 12 tasks
    .venv/bin/python benchmarks/study_speed.py --shapes gpt2-small --tasks 4 --n-clean 25
    .venv/bin/python benchmarks/study_speed.py --shapes all --dtype bfloat16 --device cuda   # the 12 shapes, GPU

Prints one line per model (seconds per stage from the atlas's own log, total) and, with --extrapolate,
the whole study's time: every shape's final checkpoint plus 7 more checkpoints of each Pythia model.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import torch

# (family, layers, heads, d_model, vocab, n_ctx): the 12 models of Yin & Steinhardt's study
SHAPES = {
    "gpt2-small": ("gpt2", 12, 12, 768, 50257, 1024), "gpt2-medium": ("gpt2", 24, 16, 1024, 50257, 1024),
    "gpt2-large": ("gpt2", 36, 20, 1280, 50257, 1024), "gpt2-xl": ("gpt2", 48, 25, 1600, 50257, 1024),
    "pythia-70m": ("gpt_neox", 6, 8, 512, 50304, 2048), "pythia-160m": ("gpt_neox", 12, 12, 768, 50304, 2048),
    "pythia-410m": ("gpt_neox", 24, 16, 1024, 50304, 2048), "pythia-1b": ("gpt_neox", 16, 8, 2048, 50304, 2048),
    "pythia-1.4b": ("gpt_neox", 24, 16, 2048, 50304, 2048), "pythia-2.8b": ("gpt_neox", 32, 32, 2560, 50304, 2048),
    "pythia-6.9b": ("gpt_neox", 32, 32, 4096, 50432, 2048), "llama-2-7b": ("llama", 32, 32, 4096, 32000, 4096),
}
PYTHIA_EXTRA_CHECKPOINTS = 7  # 8 checkpoints per Pythia model in the study: the final one and 7 more


def build(shape: str, dtype, device):
    from transformers import AutoModelForCausalLM

    from iclscope.models.hf.model import HFModel
    from iclscope.models.hf.random import random_config

    family, L, H, d, V, n_ctx = SHAPES[shape]
    kw = {"kv_heads": H} if family == "llama" else {}
    cfg = random_config(family, layers=L, heads=H, d_model=d, vocab=V, n_ctx=n_ctx, bos_id=0, eos_id=0, **kw)
    torch.manual_seed(0)
    module = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    return HFModel(module, None, name=f"random {shape} shape")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="gpt2-small,pythia-160m", help="comma-separated, or all")
    ap.add_argument("--tasks", type=int, default=12, help="synthetic token tasks (half score, half evaluate)")
    ap.add_argument("--n-clean", type=int, default=100)
    ap.add_argument("--n-corrupt", type=int, default=25)
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--extrapolate", action="store_true", help="print the whole study's extrapolated time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("ICLSCOPE_QUIET", "1")

    from iclscope.experiments.atlas import command, run_atlas
    from iclscope.experiments.atlas.tasks import default_tasks

    # run_atlas takes the built-in synthetic tasks (8 by default); the benchmark asks for --tasks of them
    command.default_tasks = functools.partial(default_tasks, n_tasks=args.tasks)
    dtype = getattr(torch, args.dtype)
    shapes = list(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    load = open("/proc/loadavg").read().split()[:3]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, dtype {args.dtype}; "
          f"{args.tasks} tasks, n_clean {args.n_clean}, n_corrupt {args.n_corrupt}, n_eval {args.n_eval}; "
          f"load {load}")
    times = {}
    for shape in shapes:
        model = build(shape, dtype, args.device)
        lines = []

        def log(msg, _lines=lines, _t0=time.time()):
            _lines.append(f"  [{time.time() - _t0:7.1f} s] {msg.splitlines()[0] if msg else ''}")

        t0 = time.time()
        with tempfile.TemporaryDirectory() as out:
            run_atlas(shape, os.path.join(out, "atlas"), model=model, n_clean=args.n_clean, n_corrupt=args.n_corrupt,
                      n_eval=args.n_eval, measures=("first_token",), log=log)
        times[shape] = time.time() - t0
        print(f"{shape}: {times[shape]:.0f} s ({model.n_layers} layers x {model.n_heads} heads, "
              f"d_model {model.d_model})")
        print("\n".join(lines))
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.extrapolate:
        total = sum(times.values()) + PYTHIA_EXTRA_CHECKPOINTS * sum(t for s, t in times.items() if s.startswith("pythia"))
        print(f"whole study (final checkpoints + {PYTHIA_EXTRA_CHECKPOINTS} more per Pythia model, of the shapes run): "
              f"{total / 60:.1f} min")
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
