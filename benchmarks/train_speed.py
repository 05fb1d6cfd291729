"""Training-lab speed: the reference run, the cost of each clamp, and the default clamp sweep.

    .venv/bin/python benchmarks/train_speed.py [--parts run,clamps,sweep] [--out DIR]

Prints a markdown table (with the date and the machine) to paste into the README. Run it on a quiet
machine: timings of other work running beside it mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from iclscope.experiments.lab import clamp_sweep
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


def step_rate(clamps: list, steps: int = 1500, repeats: int = 3) -> float:
    """Training steps per second of the reference configuration under ``clamps`` (best of repeats)."""
    cfg = load_config(None, ["train.threads=2"])
    cfg["clamp"] = clamps
    t = Trainer(cfg, tempfile.mkdtemp(), progress=False, log=lambda *a: None)
    best = 0.0
    with t.model.intervene(t.clamps.static):
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            for _ in range(steps if rep else 100):
                b = t.sample()
                losses = t.loss(b)
                t.opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                t.opt.step()
            if rep:
                best = max(best, steps / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="run,data,clamps,sweep")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out = Path(args.out or tempfile.mkdtemp(prefix="iclscope-bench-"))
    rows = []
    print(f"# training-lab speed, {datetime.date.today()}, {machine()}\n")
    if "run" in parts:
        d = out / "reference"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        [s] = Trainer(load_config(), d, progress=False, log=lambda *a: None).train()
        wall = time.perf_counter() - t0
        pc = s["phase_change"]
        rows.append(("reference run, 31,250 steps (1e6 sequences), evaluations every 250 steps included",
                     f"{wall:.1f} s ({31250 / wall:.0f} steps/s)"))
        rows.append(("  its phase change / final train loss",
                     f"{pc['sequences']:,} sequences / {s['final']['train_loss']:.4f}" if pc else "none"))
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
    if "clamps" in parts:
        base = step_rate([])
        rows.append(("training step, no clamp", f"{base:.0f} steps/s"))
        for name, clamps in CLAMPS.items():
            if name == "none":
                continue
            r = step_rate(clamps)
            rows.append((f"training step, clamp: {name}", f"{r:.0f} steps/s ({(base / r - 1) * 100:+.0f} % time)"))
    if "sweep" in parts:
        d = out / "sweep"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        clamp_sweep(None, out=d, seeds=[0, 1, 2], sequences=600_000, log=lambda *a: None)
        wall = time.perf_counter() - t0
        rows.append(("default clamp sweep: 6 conditions x 3 seeds x 6e5 sequences", f"{wall:.0f} s"))
    print("| measure | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
