"""Training-lab speed: the reference run, the cost of each clamp, stacked against unstacked training,
and the default clamp sweep stacked and unstacked side by side.

    .venv/bin/python benchmarks/train_speed.py [--parts run,data,clamps,breakdown,stack,sweep,lab] [--out DIR]
                                               [--sweep-sequences 6e5] [--threads 2] [--unstacked]

Before / after a change, side by side: run the same parts with PYTHONPATH pointing at each tree's src/
(e.g. a `git worktree` of the older commit), one after the other.

Prints a markdown table (with the date, the machine and /proc/loadavg at each measure) to paste into the
README. On a shared machine read the ratios (stacked / unstacked, clamp / no clamp), measured side by
side, rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from iclscope.experiments.lab import CONDITIONS, clamp_sweep
from iclscope.experiments.lab_study import lab_study
from iclscope.train import Trainer, load_config

CLAMPS = {
    "none": [],
    "prev-token pattern, layer 0": [{"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token"}],
    "label-induction pattern, layer 1": [{"kind": "ClampPattern", "heads": "layer:1", "pattern": "label_induction",
                                          "strength": 0.9}],
    "zero-ablate 4 heads": [{"kind": "Ablate", "heads": [[1, 0], [1, 1], [1, 2], [1, 3]], "how": "zero"}],
    "preserve layer-1 queries": [{"kind": "Preserve", "heads": "layer:1", "site": "q"}],
}


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def load() -> str:
    """The 1-minute load average (the machine may be shared: see the module docstring)."""
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def _rate(t: Trainer, steps: int, repeats: int) -> float:
    best = 0.0
    params = list(t.model.module.parameters())
    with t.model.intervene(t.clamps.static):
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            for _ in range(steps if rep else 50):
                b = t.sample()
                losses = t.loss(b)
                t.opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                t.step_optimizer(params)
            if rep:
                best = max(best, steps / (time.perf_counter() - t0))
    t.close()
    return best


def step_rate(clamps: list, steps: int = 1500, repeats: int = 3, threads: int = 2, compile: bool = False) -> float:
    """Training steps per second of the reference configuration under ``clamps`` (best of repeats);
    ``compile``: through the compiled step (no clamps only; its compile happens in the warm-up)."""
    cfg = load_config(None, [f"train.threads={threads}", f"train.compile={str(compile).lower()}"])
    cfg["clamp"] = clamps
    return _rate(Trainer(cfg, tempfile.mkdtemp(), progress=False, log=lambda *a: None), steps, repeats)


def step_breakdown(compile: bool, steps: int = 2000) -> dict:
    """Milliseconds per step of the reference configuration (1 thread, no clamp) in each part of the
    trainer's loop, and of one evaluation (the mean of 10)."""
    cfg = load_config(None, ["train.threads=1", f"train.compile={str(compile).lower()}"])
    t = Trainer(cfg, tempfile.mkdtemp(), progress=False, log=lambda *a: None)
    params = list(t.model.module.parameters())
    acc = dict.fromkeys(("sample", "forward", "backward", "adam", "checks"), 0.0)
    with t.model.intervene(t.clamps.static):
        for i in range(steps + 100):
            t0 = time.perf_counter()
            b = t.sample()
            t1 = time.perf_counter()
            losses = t.loss(b)
            t2 = time.perf_counter()
            t.opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            t3 = time.perf_counter()
            t.step_optimizer(params)
            t4 = time.perf_counter()
            bool(torch.isfinite(losses).all())
            bool(torch.isfinite(torch.stack([p.detach().sum() for p in params])).all())
            t5 = time.perf_counter()
            if i >= 100:  # after the warm-up (and the compile)
                for k, a, z in (("sample", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("adam", t3, t4),
                                ("checks", t4, t5)):
                    acc[k] += z - a
        t0 = time.perf_counter()
        for _ in range(10):
            t.evaluate()
        ev = (time.perf_counter() - t0) / 10
    t.close()
    out = {k: v / steps * 1e3 for k, v in acc.items()}
    out["total"] = sum(out.values())
    out["eval"] = ev * 1e3
    return out


def stack_step_rate(n_runs: int, seeds: int = 3, steps: int = 300, repeats: int = 2) -> float:
    """Training steps per second of ``n_runs`` runs of ``seeds`` seeds each (the clamp sweep's first-stage
    conditions, cycled: no Graft, which needs a trained source) stacked into one model."""
    names = ["none", "prev_token"]
    jobs = []
    root = Path(tempfile.mkdtemp())
    for i in range(n_runs):
        cfg = load_config(None, ["train.threads=1", "train.compile=false"])
        cfg["clamp"] = CONDITIONS[names[i % 2]]
        cfg["train"]["seeds"] = list(range(seeds))
        jobs.append((cfg, root / f"run{i}"))
    return _rate(Trainer.stack(jobs, progress=False, log=lambda *a: None), steps, repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="run,data,clamps,sweep")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--sweep-sequences", type=float, default=6e5, help="sequences per run of the clamp sweep")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the single-run step rates (clamps)")
    ap.add_argument("--unstacked", action="store_true", help="sweep: also run it unstacked, side by side")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out = Path(args.out or tempfile.mkdtemp(prefix="iclscope-bench-"))
    rows = []
    print(f"# training-lab speed, {datetime.date.today()}, {machine()}\n")
    if "run" in parts:
        # each run its own process; the compiled step once with an empty compile cache (its compile counted
        # whole) and once with the cache that run left (what every later run of this shape pays)
        cache = Path(tempfile.mkdtemp(prefix="inductor-cache-"))
        walls = {}
        for name, mode, env in (("eager steps (train.compile=false)", "false", {}),
                                ("compiled step, empty compile cache", "true", {"TORCHINDUCTOR_CACHE_DIR": str(cache)}),
                                ("compiled step, warm compile cache (the default)", "auto",
                                 {"TORCHINDUCTOR_CACHE_DIR": str(cache)})):
            d = out / f"reference-{mode}"
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "iclscope", "train", "--out", str(d), "--set",
                            f"train.compile={mode}"], check=True, env={**os.environ, **env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[mode] = wall = time.perf_counter() - t0
            s = json.loads((d / "summary.json").read_text())
            pc = s["phase_change"]
            rows.append((f"reference run, 31,250 steps (1e6 sequences), 125 evaluations, {name}",
                         f"{wall:.1f} s incl. start-up ({31250 / wall:.0f} steps/s), load {load()}"))
            rows.append(("  its phase change / final train loss",
                         f"{pc['sequences']:,} sequences / {s['final']['train_loss']:.4f}" if pc else "none"))
        rows.append(("  eager / compiled (warm cache)", f"{walls['false'] / walls['auto']:.2f}x"))
        shutil.rmtree(cache, ignore_errors=True)
    if "data" in parts:
        from iclscope.data.mixture import MixtureData
        from iclscope.data.synthetic import FewShotConfig, FewShotData
        g = torch.Generator().manual_seed(0)
        for name, fn in (("few-shot batch of 32", lambda: FewShotData(FewShotConfig()).sample),
                         ("token-mixture batch of 64", lambda: MixtureData().sample)):
            sample = fn()
            args = (32, "train", g) if "few-shot" in name else (64, g)
            for _ in range(20):
                sample(*args)
            t0 = time.perf_counter()
            for _ in range(500):
                sample(*args)
            rows.append((f"data: one {name}", f"{(time.perf_counter() - t0) / 500 * 1e3:.2f} ms"))
    if "clamps" in parts:  # clamped steps are eager: their cost is against the eager unclamped step
        base = step_rate([], threads=args.threads, compile=False)
        rows.append((f"training step, no clamp, eager ({args.threads} threads)", f"{base:.0f} steps/s, load {load()}"))
        fast = step_rate([], threads=args.threads, compile=True)
        rows.append((f"training step, no clamp, compiled ({args.threads} threads)",
                     f"{fast:.0f} steps/s ({fast / base:.2f}x the eager rate), load {load()}"))
        for name, clamps in CLAMPS.items():
            if name == "none":
                continue
            r = step_rate(clamps, threads=args.threads)
            rows.append((f"training step, clamp: {name}",
                         f"{r:.0f} steps/s ({(base / r - 1) * 100:+.0f} % time), load {load()}"))
    if "breakdown" in parts:  # where a step of the reference run goes, eager and compiled (1 thread)
        for mode in (False, True):
            ms = step_breakdown(compile=mode)
            rows.append((f"one step, {'compiled' if mode else 'eager'} (1 thread): sample / loss forward / "
                         "backward / Adam / finiteness checks = total; one evaluation",
                         " / ".join(f"{ms[k]:.2f}" for k in ("sample", "forward", "backward", "adam", "checks"))
                         + f" = {ms['total']:.2f} ms; {ms['eval']:.0f} ms, load {load()}"))
    if "stack" in parts:
        one = stack_step_rate(1, seeds=1)
        rows.append(("training step, 1 run of 1 seed (threads=1)", f"{one:.0f} steps/s, load {load()}"))
        for n_runs in (2, 6):
            r = stack_step_rate(n_runs)
            rows.append((f"training step, {n_runs} runs x 3 seeds stacked ({3 * n_runs} members)",
                         f"{r:.0f} steps/s = {3 * n_runs * r / one:.1f}x the member-steps/s of one run, load {load()}"))
    if "sweep" in parts:
        n = int(args.sweep_sequences)
        walls = {}
        for stack in (True, False) if args.unstacked else (True,):
            d = out / f"sweep-{'stacked' if stack else 'unstacked'}"
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter()
            clamp_sweep(None, out=d, seeds=[0, 1, 2], sequences=n, log=lambda *a: None, stack=stack)
            walls[stack] = time.perf_counter() - t0
            rows.append((f"default clamp sweep, {'stacked' if stack else 'unstacked (one process per condition)'}: "
                         f"6 conditions x 3 seeds x {n:.0e} sequences", f"{walls[stack]:.0f} s, load {load()}"))
        if args.unstacked:
            rows.append(("  unstacked / stacked", f"{walls[False] / walls[True]:.1f}x"))
    if "lab" in parts:  # the whole second study at its default size, one command
        d = out / "lab"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        lab_study(out=d, log=lambda *a: None)
        rows.append(("`iclscope lab` (reference run, clamp sweep, labels 5/10/15, classes 50/200, additivity; "
                     "3 seeds, 6e5 sequences each)", f"{time.perf_counter() - t0:.0f} s, load {load()}"))
    print("| measure | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
