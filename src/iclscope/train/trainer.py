"""How is a run trained? The ``Trainer`` loop: sample, loss, optimizer step, evaluate, save, resume.

It knows nothing of the data: the objective (``objectives.OBJECTIVES[data.kind]``) samples batches,
computes the per-member loss and the evaluation measures; the run folder (``rundir.RunDir``) holds the
files. Several seeds train side by side as one ensemble (stacked weights, one optimizer step for all).
Clamps (``clamps.Clamps``) act inside the differentiated function at every step, and in evaluation
unless ``eval.clamps = false``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import pandas as pd
import torch

from ..models.tiny import TinyModel
from .clamps import Clamps
from .config import data_config, model_config, validate_config
from .objectives import EVAL_SEED, OBJECTIVES, concat_batches
from .phase import detect_phase_change
from .rundir import RunDir


class Trainer:
    """Train one config (an ensemble over its seeds) into a run folder; resumes where it stopped."""

    def __init__(self, cfg: dict, out: str | Path, progress: bool = True, log=print):
        self.cfg = validate_config(cfg)
        self.progress, self.log = progress, log
        t, e = self.cfg["train"], self.cfg["eval"]
        self.seeds = list(t["seeds"])
        self.R = len(self.seeds)
        self.run_dir = RunDir(out, self.cfg, self.seeds)
        self.out = self.run_dir.out
        torch.set_num_threads(int(t["threads"]))
        self.objective = OBJECTIVES[self.cfg["data"]["kind"]](data_config(self.cfg), self.R)
        self.model = TinyModel(model_config(self.cfg), seeds=self.seeds)
        self.model.module.train()
        opt_cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.module.parameters(), lr=float(t["lr"]), betas=tuple(t["betas"]),
                           eps=float(t["eps"]), weight_decay=float(t["weight_decay"]), fused=True)
        self.B = int(t["batch_size"])
        self.total_steps = int(math.ceil(int(t["sequences"]) / self.B))
        self.gens = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self.clamps = Clamps(self.cfg["clamp"], self.model, self.out)
        self.objective.build_eval_sets(int(e["batch"]), int(e["induction_len"]),
                                       torch.Generator().manual_seed(EVAL_SEED))

    # ------------------------------------------------------------------ steps
    def sample(self):
        """One training batch per member from its own generator, concatenated: (R*B, ...)."""
        batches = [self.objective.sample(self.B, g) for g in self.gens]
        return concat_batches(batches) if self.R > 1 else batches[0]

    def loss(self, batch) -> torch.Tensor:
        """(R,) each member's mean training loss (the objective's); their sum trains every member on its own."""
        return self.objective.loss(self.model, batch, self.clamps)

    @torch.no_grad()
    def evaluate(self) -> list[dict]:
        """The objective's measures, one dict per member, in eval mode (with the clamps unless eval.clamps
        is false)."""
        use_clamps = self.cfg["eval"]["clamps"]
        was = self.model.module.training
        self.model.module.eval()
        static = self.clamps.static if use_clamps else []
        with self.model.intervene(static) if static else contextlib.nullcontext():
            out = self.objective.evaluate(self.model, self.clamps if use_clamps else None)
        self.model.module.train(was)
        return out

    # ------------------------------------------------------------------ loop
    def checkpoint_steps(self) -> set[int]:
        """Every eval.checkpoint_every steps, powers of two (eval.log_checkpoints) and the last step."""
        e = self.cfg["eval"]
        steps = set(range(0, self.total_steps + 1, max(1, int(e["checkpoint_every"]))))
        if e["log_checkpoints"]:
            k = 1
            while k <= self.total_steps:
                steps.add(k)
                k *= 2
        steps.add(self.total_steps)
        return steps

    def train(self) -> list[dict]:
        """Train to the end (resuming from a saved state); returns one summary per member."""
        from tqdm.auto import tqdm

        rd = self.run_dir
        self.step = 0
        loaded = rd.load_state(self.model.module, self.opt, self.gens)
        if loaded:
            self.step, running = loaded
        else:
            running = ([0.0] * self.R, 0)
        resumed = self.step
        if resumed:
            self.log(f"resuming {self.out} at step {resumed} of {self.total_steps}")
        every = max(1, int(self.cfg["eval"]["every"]))
        ckpts = self.checkpoint_steps()
        rows = [rd.read_metrics(r, keep_until=resumed) for r in range(self.R)]
        writers = rd.event_writers(resumed)
        loss_sum, loss_n = torch.tensor(running[0], dtype=torch.float64).reshape(-1).expand(self.R).clone(), running[1]
        t0 = time.time()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=None if self.progress else True, unit="step",
                   desc=self.cfg.get("name", "train"), dynamic_ncols=True, mininterval=1.0)
        try:
            with self.model.intervene(self.clamps.static):
                if self.step == 0:
                    self._evaluate_and_log(rows, writers, None, ckpts)
                    self._save_state(([0.0] * self.R, 0))
                while self.step < self.total_steps:
                    batch = self.sample()
                    losses = self.loss(batch)
                    self.opt.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    self.opt.step()
                    self.step += 1
                    loss_sum += losses.detach()
                    loss_n += 1
                    if self.step % every == 0 or self.step == self.total_steps or self.step in ckpts:
                        train_loss = (loss_sum / max(loss_n, 1)).tolist()  # per member
                        if self.step % every == 0 or self.step == self.total_steps:
                            self._evaluate_and_log(rows, writers, train_loss, ckpts)
                            loss_sum, loss_n = torch.zeros(self.R, dtype=torch.float64), 0
                        elif self.step in ckpts:
                            self._save_checkpoints()
                        self._save_state((loss_sum.tolist(), loss_n))
                        bar.set_postfix(loss=f"{sum(train_loss) / self.R:.4f}")
                    bar.update(1)
        finally:
            bar.close()
            for w in writers:
                w.close()
        if self.step >= self.total_steps and not rd.has_final():
            rd.save_final(self.model, self.step, self.objective.token_layout)
        return [self._summarize(r, rows[r], time.time() - t0, resumed) for r in range(self.R)]

    def _save_state(self, running: tuple) -> None:
        self.run_dir.save_state(self.model.module, self.opt, self.gens, self.step, running)

    def _evaluate_and_log(self, rows, writers, train_loss, ckpts) -> None:
        measures = self.evaluate()
        for r in range(self.R):
            row = {"step": self.step, "sequences": self.step * self.B,
                   "train_loss": train_loss[r] if train_loss is not None else measures[r]["train_eval_loss"],
                   **measures[r]}
            rows[r].append(row)
            self.run_dir.append_metrics(r, row)
            for k, v in row.items():
                if k not in ("step", "sequences") and v is not None and math.isfinite(v):
                    writers[r].add_scalar(k, v, self.step)
            writers[r].flush()
        if self.step in ckpts:
            self._save_checkpoints()

    def _save_checkpoints(self) -> None:
        self.run_dir.save_checkpoints(self.model, self.step, self.step * self.B, self.cfg, self.objective.token_layout)

    def _summarize(self, r: int, rows: list[dict], seconds: float, resumed: int) -> dict:
        df = pd.DataFrame(rows)
        last = df.iloc[-1].to_dict()
        thr = self.objective.phase_threshold(self.cfg["eval"])
        phase = detect_phase_change(df.sequences, df.train_loss, df.step, thr)
        strengths = {k: v for k, v in last.items() if k.startswith("ind_strength_")}
        summary = {"seed": self.seeds[r], "steps": int(last["step"]), "sequences": int(last["sequences"]),
                   "final": {k: v for k, v in last.items() if k.endswith(("_loss", "_acc"))},
                   "induction_strength": strengths,
                   "heads_strength_above_0.3": int(sum(v > 0.3 for v in strengths.values())),
                   "phase_change": phase, "seconds_this_session": round(seconds, 1), "resumed_from_step": resumed,
                   "ensemble_size": self.R}
        self.run_dir.write_summary(r, summary)
        return summary


def train(cfg: dict, out: str | Path, progress: bool = True, log=print) -> list[dict]:
    """Train ``cfg`` into ``out`` (resuming if a state is there). Returns one summary per seed."""
    return Trainer(cfg, out, progress=progress, log=log).train()
