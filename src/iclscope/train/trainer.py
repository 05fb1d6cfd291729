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

from ..errors import IclscopeError
from ..models.tiny import TinyModel
from .clamps import Clamps
from .config import data_config, model_config, validate_config
from .objectives import EVAL_SEED, OBJECTIVES, concat_batches
from .phase import detect_phase_change
from .rundir import RunDir


class TrainingDiverged(IclscopeError):
    """Training stopped because the loss (or a weight after an optimizer step) was not finite. The message
    is one line naming the step; the run folder keeps the last good state and its checkpoints, and nothing
    non-finite was written. A run-time fault, not bad input: the CLI exits 1 on it."""

    exit_code = 1


class Trainer:
    """Train one config (an ensemble over its seeds) into a run folder; resumes where it stopped.

    Everything that can refuse the config (validation, data and features, model, clamps, evaluation sets)
    runs before the run folder is opened, so a refused config writes nothing. The folder (``RunDir``) is
    then open and locked until ``train()`` returns or raises (or ``close()``)."""

    def __init__(self, cfg: dict, out: str | Path, progress: bool = True, log=print):
        self.cfg = validate_config(cfg)
        self.progress, self.log = progress, log
        t, e = self.cfg["train"], self.cfg["eval"]
        self.seeds = list(t["seeds"])
        self.R = len(self.seeds)
        self.out = Path(out)
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
        self.saved_step = None
        self.run_dir = RunDir(self.out, self.cfg, self.seeds)  # last: the first write

    def close(self) -> None:
        """Release the run folder's lock (``train()`` does this itself)."""
        self.run_dir.close()

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
        """Train to the end (resuming from a saved state); returns one summary per member. A finished run
        of the same config is reused (nothing trained); see ``rundir`` for extending a finished run.
        Raises TrainingDiverged (one line naming the step) if the loss or the weights stop being finite."""
        rd = self.run_dir
        try:
            if rd.status == "reused":
                self.log(f"reusing finished run {self.out} (same config; nothing trained)")
                summaries = [rd.read_summary(r) for r in range(self.R)]
                rd.mark_finished()
                return summaries
            if rd.status == "extended":
                self.log(f"extending finished run {self.out} from {rd.extended_from:,} to "
                         f"{self.cfg['train']['sequences']:,} sequences")
            summaries = self._train()
            rd.mark_finished()  # last: the run is complete
            return summaries
        finally:
            rd.close()

    def _train(self) -> list[dict]:
        from tqdm.auto import tqdm

        rd = self.run_dir
        self.step = 0
        loaded = rd.load_state(self.model.module, self.opt, self.gens)
        if loaded:
            self.step, running = loaded
            self.saved_step = self.step
        else:
            running = ([0.0] * self.R, 0)
        resumed = self.step
        if resumed:
            self.log(f"resuming {self.out} at step {resumed} of {self.total_steps}")
        every = max(1, int(self.cfg["eval"]["every"]))
        ckpts = self.checkpoint_steps()
        rows = [rd.read_metrics(r, keep_until=resumed if loaded else None) for r in range(self.R)]
        writers = rd.event_writers(resumed)
        loss_sum, loss_n = torch.tensor(running[0], dtype=torch.float64).reshape(-1).expand(self.R).clone(), running[1]
        params = list(self.model.module.parameters())
        t0 = time.time()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=None if self.progress else True, unit="step",
                   desc=self.cfg.get("name", "train"), dynamic_ncols=True, mininterval=1.0)
        try:
            with self.model.intervene(self.clamps.static):
                if not loaded:  # a state saved at step 0 already has its step-0 row and checkpoint
                    self._evaluate_and_log(rows, writers, None, ckpts)
                    self._save_state(([0.0] * self.R, 0))
                while self.step < self.total_steps:
                    batch = self.sample()
                    losses = self.loss(batch)
                    if not bool(torch.isfinite(losses).all()):
                        raise self._diverged("the training loss is", losses.detach())
                    self.opt.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    self.opt.step()
                    if not bool(torch.isfinite(torch.stack([p.detach().sum() for p in params])).all()):
                        raise self._diverged("a weight became", None)
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
        rd.save_final(self.model, self.step, self.objective.token_layout)
        return [self._summarize(r, rows[r], time.time() - t0, resumed) for r in range(self.R)]

    def _diverged(self, what: str, losses: torch.Tensor | None) -> TrainingDiverged:
        step = self.step + 1
        if losses is not None:
            bad = [f"{v} (seed {s})" for v, s in zip(losses.reshape(-1).tolist(), self.seeds) if not math.isfinite(v)]
            what = f"{what} {', '.join(bad)}"
        else:
            what = f"{what} non-finite after the optimizer step"
        kept = (f"the last good state (step {self.saved_step}) and its checkpoints are kept"
                if self.saved_step is not None else "no state was saved yet")
        return TrainingDiverged(f"training diverged at step {step} of {self.total_steps}: {what}; stopped, nothing "
                                f"non-finite was written; {kept} in {self.out}: lower train.lr and train into a "
                                f"new --out")

    def _save_state(self, running: tuple) -> None:
        self.run_dir.save_state(self.model.module, self.opt, self.gens, self.step, running)
        self.saved_step = self.step

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
    """Train ``cfg`` into ``out`` (resuming if a state is there, reusing a finished run of the same config).
    Returns one summary per seed."""
    return Trainer(cfg, out, progress=progress, log=log).train()
