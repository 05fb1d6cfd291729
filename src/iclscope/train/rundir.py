"""What is in a run folder, and how is it written so that a killed run resumes exactly?

    RUN/config.json          the full config (a resume with a different config is refused)
    RUN/metrics.csv          one row per evaluation (fsynced); rows after the saved state are dropped on resume
    RUN/events.*             TensorBoard event files (the same measures)
    RUN/summary.json         final measures and the phase change
    RUN/checkpoints/step_N/  model checkpoints
    RUN/state/               the training state (weights, Adam moments, data RNGs), replaced atomically:
                             written to state.tmp, then state -> state.old, state.tmp -> state
    RUN/final/               the trained model (all seeds of an ensemble in one checkpoint)

An ensemble's per-member files (metrics, events, summary, checkpoints) live in RUN/seed_S/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..errors import IclscopeError


class RunDir:
    """The folder ``out`` of a run of ``cfg`` over ``seeds``. Creating it writes config.json, or checks
    that the one there is ``cfg`` (else IclscopeError naming the differing keys; nothing is changed)."""

    def __init__(self, out: str | Path, cfg: dict, seeds: list[int]):
        self.out = Path(out)
        self.seeds = list(seeds)
        self.R = len(self.seeds)
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_file = self.out / "config.json"
        new = json.loads(json.dumps(cfg))
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            if old != new:
                diff = _diff_keys(old, new)
                raise IclscopeError(f"{self.out} holds a run of a different config (differs in: {', '.join(diff)}); "
                                    f"nothing was changed there: choose another --out")
        else:
            cfg_file.write_text(json.dumps(new, indent=2))

    def member_dir(self, r: int) -> Path:
        """The folder of member r: RUN itself for a single seed, RUN/seed_S for an ensemble."""
        return self.out if self.R == 1 else self.out / f"seed_{self.seeds[r]}"

    # ------------------------------------------------------------------ training state
    def save_state(self, module: torch.nn.Module, opt: torch.optim.Optimizer, gens: list[torch.Generator],
                   step: int, running: tuple) -> None:
        """Weights, optimizer state, data RNG states, step and the running loss (sums, count), atomically."""
        tmp, final, old = self.out / "state.tmp", self.out / "state", self.out / "state.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp / "model.safetensors"))
        opt_state = {}
        for i, p in enumerate(module.parameters()):
            for k, v in opt.state.get(p, {}).items():
                opt_state[f"{i}.{k}"] = v.detach().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        save_file(opt_state, str(tmp / "optim.safetensors"))
        meta = {"step": step, "running": list(running),
                "gens": [base64.b64encode(g.get_state().numpy().tobytes()).decode() for g in gens]}
        (tmp / "state.json").write_text(json.dumps(meta))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def load_state(self, module: torch.nn.Module, opt: torch.optim.Optimizer,
                   gens: list[torch.Generator]) -> tuple[int, tuple] | None:
        """Restore a saved state into module, opt and gens; returns (step, running), or None if none."""
        d = self.out / "state"
        if not d.exists() and (self.out / "state.old").exists():
            d = self.out / "state.old"  # killed between the two renames
        if not (d / "state.json").exists():
            return None
        meta = json.loads((d / "state.json").read_text())
        module.load_state_dict(load_file(str(d / "model.safetensors")))
        flat = load_file(str(d / "optim.safetensors"))
        params = list(module.parameters())
        for key, v in flat.items():
            i, k = key.split(".", 1)
            opt.state[params[int(i)]][k] = v
        for g, s in zip(gens, meta["gens"]):
            g.set_state(torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8))
        return int(meta["step"]), tuple(meta["running"])

    # ------------------------------------------------------------------ metrics, events, summary
    def metrics_path(self, r: int) -> Path:
        return self.member_dir(r) / "metrics.csv"

    def append_metrics(self, r: int, row: dict) -> None:
        """Append one row to member r's metrics.csv (the header first in a new file); fsynced."""
        p = self.metrics_path(r)
        p.parent.mkdir(parents=True, exist_ok=True)
        new = not p.exists() or p.stat().st_size == 0
        with open(p, "a") as f:
            if new:
                f.write(",".join(row) + "\n")
            f.write(",".join(repr(v) if isinstance(v, float) else str(v) for v in row.values()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self, r: int, keep_until: int) -> list[dict]:
        """Rows up to the resumed step; later rows (written after the last saved state) are dropped and
        will be recomputed identically, so none is lost or duplicated."""
        p = self.metrics_path(r)
        if not p.exists() or p.stat().st_size == 0:
            return []
        df = pd.read_csv(p)
        df = df[df.step <= keep_until] if keep_until else df.iloc[0:0]
        tmp = p.with_suffix(".csv.tmp")
        df.to_csv(tmp, index=False) if len(df) else tmp.write_text("")
        tmp.replace(p)
        return df.to_dict("records")

    def event_writers(self, resumed: int) -> list:
        """One TensorBoard SummaryWriter per member; events after step ``resumed`` are purged."""
        from torch.utils.tensorboard import SummaryWriter

        return [SummaryWriter(str(self.member_dir(r)), purge_step=resumed + 1 if resumed else None)
                for r in range(self.R)]

    def write_summary(self, r: int, summary: dict) -> None:
        (self.member_dir(r) / "summary.json").write_text(json.dumps(summary, indent=2))

    # ------------------------------------------------------------------ models
    def save_checkpoints(self, model, step: int, sequences: int, train_config: dict,
                         token_layout: dict | None = None) -> None:
        """Each member's model into its checkpoints/step_N/, with step, sequences, its seed, the config
        and (for token data) the token layout as metadata."""
        layout = {"token_layout": token_layout} if token_layout is not None else {}
        for r in range(self.R):
            m = model if self.R == 1 else model.member(r)
            m.save(self.member_dir(r) / "checkpoints" / f"step_{step:07d}",
                   extra={"step": step, "sequences": sequences, "seed": self.seeds[r], "train_config": train_config,
                          **layout})

    def has_final(self) -> bool:
        return (self.out / "final" / "model.safetensors").exists()

    def save_final(self, model, step: int, token_layout: dict | None = None) -> None:
        """The whole trained ensemble (member r = seed r) into RUN/final, e.g. a frozen source for Graft clamps."""
        layout = {"token_layout": token_layout} if token_layout is not None else {}
        model.save(self.out / "final", extra={"seeds": self.seeds, "step": step, **layout})


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
