"""How is a run trained? The ``Trainer`` loop: sample, loss, optimizer step, evaluate, save, resume.

It knows nothing of the data: the objective (``objectives.OBJECTIVES[data.kind]``) samples batches,
computes the per-member loss and the evaluation measures; the run folder (``rundir.RunDir``) holds the
files. Several seeds train side by side as one ensemble (stacked weights, one optimizer step for all).
Clamps (``clamps.Clamps``) act inside the differentiated function at every step, and in evaluation
unless ``eval.clamps = false``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from ..errors import IclscopeError
from ..models.tiny import TinyModel
from .clamps import Clamps
from .config import data_config, model_config, validate_config
from .objectives import EVAL_SEED, OBJECTIVES, Objective, concat_batches, stack_objectives
from ..report.progress import progress
from ..report.tensorboard import add_figure, group_tag, write_hparams
from .phase import phase_summary
from .rundir import RunDir


# train.compile = "auto" compiles the step of runs this long: the compile takes ~15-25 s the first time
# for a shape (~3 s from torch's on-disk cache) and saves ~1.5 ms a step on the few-shot reference model,
# so from here on it pays back even on a machine that has never compiled it (the demo's shorter runs,
# ~4000 steps, stay eager)
COMPILE_MIN_STEPS = 10_000


class TrainingDiverged(IclscopeError):
    """Training stopped because the loss (or a weight after an optimizer step) was not finite. The message
    is one line naming the step; the run folder keeps the last good state and its checkpoints, and nothing
    non-finite was written. A run-time fault, not bad input: the CLI exits 1 on it."""

    exit_code = 1


def stack_key(cfg: dict) -> str:
    """What runs of one stack must share (two validated configs with the same key train as one stacked
    model): the model's shape (width, layers, heads, input size, context; the label vocabulary too, except
    for data kinds whose objective pads it: few-shot), the data kind and sequence length, and every [train]
    and [eval] setting but the seeds, the learning rate and the thread count. The clamps, the other data
    settings (classes, number of labels, burstiness, noise, ...) and the learning rate may differ member
    by member."""
    data = data_config(cfg)
    model = asdict(model_config(cfg))
    if OBJECTIVES[cfg["data"]["kind"]].pads_vocab:
        model.pop("vocab_size")  # padded to the stack's largest and masked (``Trainer``)
    train_keys = {k: v for k, v in cfg["train"].items() if k not in ("seeds", "lr", "threads", "compile")}
    return json.dumps({"model": model, "kind": cfg["data"]["kind"], "seq_len": data.seq_len,
                       "train": train_keys, "eval": cfg["eval"]}, sort_keys=True, default=str)


def _grafts(cfg: dict) -> bool:
    return any(c.get("kind") == "Graft" for c in cfg["clamp"])


def _split_for_grafts(group: list) -> list[list]:
    """One stack's jobs, split so that every run with a Graft clamp has the largest vocabulary of its stack
    (a Graft source must match the stacked model's padded shape): the runs that graft, by vocabulary size;
    the others join the grafting runs of the largest size when theirs is not larger, else a stack of
    their own."""
    sizes = [model_config(cfg).vocab_size for cfg, _ in group]
    graft_sizes = [v for (cfg, _), v in zip(group, sizes) if _grafts(cfg)]
    if not graft_sizes or len(set(sizes)) == 1:
        return [group]
    top = max(graft_sizes)
    parts: dict = {}
    for job, v in zip(group, sizes):
        key = v if _grafts(job[0]) else top if v <= top else "rest"
        parts.setdefault(key, []).append(job)
    return list(parts.values())


def stack_groups(jobs: list[tuple[dict, Path]]) -> list[list[tuple[dict, Path]]]:
    """Jobs (validated config, run folder) grouped into as few stacks as their shapes allow (``stack_key``),
    and, among runs that resume, the same saved step (a stack resumes all its runs at one step). Runs that
    differ in their label vocabulary share a stack (padded), except that a run with a Graft clamp needs
    the largest vocabulary of its stack. Order is kept within a group."""
    groups: dict = {}
    for cfg, out in jobs:
        saved = None
        state = Path(out) / "state" / "state.json"
        if state.exists():
            try:
                saved = int(json.loads(state.read_text())["step"])
            except (OSError, ValueError, KeyError, TypeError):
                saved = None
        groups.setdefault((stack_key(cfg), saved), []).append((cfg, Path(out)))
    return [part for group in groups.values() for part in _split_for_grafts(group)]


class _Run:
    """One run of a stack: its config, folder, seeds, members (``lo`` .. ``lo + R - 1`` of the model) and
    own vocabulary size (``vocab``; the stack's model may be padded to a larger one)."""

    def __init__(self, cfg: dict, out: Path, lo: int):
        self.cfg, self.out = cfg, Path(out)
        self.seeds = list(cfg["train"]["seeds"])
        self.R, self.lo = len(self.seeds), lo
        self.members = slice(lo, lo + self.R)
        self.vocab = model_config(cfg).vocab_size
        self.run_dir: RunDir | None = None


class Trainer:
    """Train one config (an ensemble over its seeds) into a run folder, or several runs stacked into one
    model (``Trainer.stack``); resumes where it stopped.

    Everything that can refuse the config (validation, data and features, model, clamps, evaluation sets)
    runs before the run folder is opened, so a refused config writes nothing. The folder (``RunDir``) is
    then open and locked until ``train()`` returns or raises (or ``close()``).

    Stacks. ``Trainer.stack([(cfg, out), ...])`` trains several runs of one shape (``stack_key``) as one
    ensemble: run i owns members lo_i .. lo_i + R_i - 1 (its seeds, initialised as when alone), its own
    data (a generator per seed, its own evaluation sets), its own clamps (addressing its members), its
    own learning rate and (few-shot) its own label vocabulary; each op of a step is one batched op for all
    members, so the per-op overhead that dominates a model this small is paid once per stack. Each run
    writes its own folder exactly as when trained alone (state/ holds its slice of the weights and Adam
    moments), so a run of a stack and the same run alone give the same metrics (to float rounding) and
    resume alike.

    Label vocabularies (data.n_labels) that differ: the embedding and unembedding are padded to the
    largest, V. Member r is initialised as a model of its own size v_r (its seed's numbers) with zeros in
    the padding, and its logits beyond v_r are -inf (``TinyTransformer.vocab_mask``), so its softmax,
    cross-entropy and argmax (every use of logits by the few-shot objective) are its unpadded model's and
    its padding gets no gradient. Checkpoints, final/ and state/ (weights and Adam moments) hold each
    run's own vocabulary only, so they are those of the run alone. A run with a Graft clamp needs the
    stack's largest vocabulary (its source must match the stacked shape; ``stack_groups`` sees to it).

    Per-member learning rate: Adam and AdamW are elementwise and their update is linear in the learning
    rate (AdamW: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)), so one step at the largest rate L
    followed by scaling each member's change by lr_i / L is that member's step at lr_i exactly (up to float
    rounding); the moments do not depend on the rate. Equal rates skip the scaling."""

    def __init__(self, cfg: dict, out: str | Path, progress: bool = True, log=print):
        self._setup([(cfg, out)], progress, log)

    @classmethod
    def stack(cls, jobs: list[tuple[dict, str | Path]], progress: bool = True, log=print) -> "Trainer":
        """A trainer of several runs (config, folder) stacked into one model; they must share
        ``stack_key`` (``stack_groups`` groups jobs that way). ``train()`` returns every run's summaries,
        run after run."""
        t = cls.__new__(cls)
        t._setup(list(jobs), progress, log)
        return t

    def _setup(self, jobs, progress, log) -> None:
        if not jobs:
            raise IclscopeError("Trainer.stack: no runs given")
        cfgs = [validate_config(c) for c, _ in jobs]
        outs = [Path(o) for _, o in jobs]
        if len({str(o.resolve()) for o in outs}) != len(outs):
            raise IclscopeError("Trainer.stack: two runs of the stack have the same folder")
        key = stack_key(cfgs[0])
        for c, o in zip(cfgs[1:], outs[1:]):
            if stack_key(c) != key:
                raise IclscopeError(f"Trainer.stack: run {o} differs from {outs[0]} in shape or settings (model, "
                                    f"data kind or length, train/eval settings); train it in another stack")
        self.cfg = cfgs[0]
        self.progress, self.log = progress, log
        self.runs: list[_Run] = []
        lo = 0
        for c, o in zip(cfgs, outs):
            self.runs.append(_Run(c, o, lo))
            lo += self.runs[-1].R
        t, e = self.cfg["train"], self.cfg["eval"]
        self.seeds = [s for run in self.runs for s in run.seeds]
        self.R = len(self.seeds)
        self.out = outs[0]
        torch.set_num_threads(int(t["threads"]))
        kind = self.cfg["data"]["kind"]
        parts = [OBJECTIVES[kind](data_config(run.cfg), run.R) for run in self.runs]
        sizes = [run.vocab for run in self.runs for _ in run.seeds]
        V = max(sizes)
        self.padded = min(sizes) < V  # label vocabularies padded to V, each member's padding masked
        for run in self.runs:
            if self.padded and run.vocab < V and _grafts(run.cfg):
                raise IclscopeError(f"Trainer.stack: run {run.out} has a Graft clamp and {run.vocab} labels, fewer "
                                    f"than the stack's largest vocabulary ({V}), to which its source cannot be "
                                    f"padded; train it in another stack (stack_groups separates it)")
        self.model = TinyModel(replace(model_config(self.cfg), vocab_size=V), seeds=self.seeds,
                               vocab_sizes=sizes if self.padded else None)
        self.model.module.train()
        lrs = [float(run.cfg["train"]["lr"]) for run in self.runs for _ in run.seeds]
        top = max(lrs)
        self.lr_scale = None if len(set(lrs)) == 1 else torch.tensor([x / top for x in lrs])
        opt_cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.module.parameters(), lr=top, betas=tuple(t["betas"]),
                           eps=float(t["eps"]), weight_decay=float(t["weight_decay"]), fused=True)
        self.B = int(t["batch_size"])
        self.total_steps = int(math.ceil(int(t["sequences"]) / self.B))
        self.gens = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        sources: dict = {}
        whole = len(self.runs) == 1
        self.clamps = Clamps.merge([Clamps(run.cfg["clamp"], self.model, run.out,
                                           members=None if whole else list(range(run.lo, run.lo + run.R)),
                                           sources=sources) for run in self.runs])
        for part in parts:  # each run's own evaluation sets, from the same generator seed as when alone
            part.build_eval_sets(int(e["batch"]), int(e["induction_len"]), torch.Generator().manual_seed(EVAL_SEED))
        self.objective = stack_objectives(parts)
        self.saved_step = None
        opened = []
        try:
            for run in self.runs:  # last: the first writes
                run.run_dir = RunDir(run.out, run.cfg, run.seeds)
                opened.append(run.run_dir)
        except BaseException:
            for rd in opened:
                rd.close()
            raise
        self.run_dir = self.runs[0].run_dir
        self._compiled = self._compile_step()

    def close(self) -> None:
        """Release the run folders' locks (``train()`` does this itself)."""
        for run in self.runs:
            run.run_dir.close()

    # ------------------------------------------------------------------ steps
    def sample(self):
        """One training batch per member from its own generator (and its run's data), concatenated: (R*B, ...)."""
        objs = self.objective.member_objectives
        batches = [o.sample(self.B, g) for o, g in zip(objs, self.gens)]
        return concat_batches(batches) if self.R > 1 else batches[0]

    def loss(self, batch) -> torch.Tensor:
        """(R,) each member's mean training loss (the objective's); their sum trains every member on its own.
        Through the compiled step when there is one (``train.compile``), else ``objective.loss``."""
        inputs = None if self._compiled is None else self.objective.plain_inputs(batch)
        if inputs is not None:
            try:
                return self._compiled(*inputs)
            except IclscopeError:
                raise
            except Exception as e:  # noqa: BLE001 - no compiler, an unsupported op: the eager step is the same
                first = (str(e).strip().splitlines() or [""])[0][:200]
                self.log(f"train.compile: the compiled step failed ({type(e).__name__}: {first}); training without it")
                self._compiled = None
        return self.objective.loss(self.model, batch, self.clamps)

    def _compile_step(self):
        """The objective's hook-free loss (``plain_loss``) compiled by ``torch.compile`` as one graph, or
        None (eager steps). ``train.compile``: false never; true whenever the stack has no clamps; "auto"
        (default) when it has none and trains at least ``COMPILE_MIN_STEPS`` steps. Clamped runs train
        eagerly (their interventions change from batch to batch). The compiled kernels round differently
        from the eager ops (float32 rounding, not the protocol): a run keeps its setting on resume."""
        want = self.cfg["train"].get("compile", "auto")
        if want is False or self.clamps.static or self.clamps.dynamic:
            return None
        if any(run.run_dir.eager for run in self.runs):  # a folder from before train.compile: as it began
            return None
        if type(self.objective).plain_inputs is Objective.plain_inputs:
            return None
        if want == "auto" and self.total_steps < COMPILE_MIN_STEPS:
            return None
        objective, module = self.objective, self.model.module

        def step_loss(*inputs):
            return objective.plain_loss(module, *inputs)

        # on CPU the C++ wrapper calls the generated kernels without a Python line per kernel
        options = {"cpp_wrapper": True} if self.model.device.type == "cpu" else None
        return torch.compile(step_loss, fullgraph=True, dynamic=False, options=options)

    def step_optimizer(self, params: list[torch.Tensor]) -> None:
        """One optimizer step; with per-member learning rates, each member's change scaled to its own rate
        (see the class docstring)."""
        if self.lr_scale is None:
            self.opt.step()
            return
        before = [p.detach().clone() for p in params]
        self.opt.step()
        with torch.no_grad():
            for p, b in zip(params, before):
                scale = self.lr_scale.to(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))
                p.copy_(torch.addcmul(b, p - b, scale))

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
        """Train to the end (resuming from a saved state); returns one summary per member (run after run in
        a stack). A finished run of the same config is reused (nothing trained); see ``rundir`` for
        extending a finished run. Raises TrainingDiverged (one line naming the step) if the loss or the
        weights stop being finite."""
        try:
            status = [run.run_dir.status for run in self.runs]
            if all(s == "reused" for s in status):
                summaries = []
                for run in self.runs:
                    self.log(f"reusing finished run {run.out} (same config; nothing trained)")
                    summaries += [run.run_dir.read_summary(r) for r in range(run.R)]
                    run.run_dir.mark_finished()
                return summaries
            if "reused" in status:
                done = [str(run.out) for run, s in zip(self.runs, status) if s == "reused"]
                raise IclscopeError(f"Trainer.stack: {', '.join(done)} already finished with this config; leave "
                                    f"finished runs out of a stack (nothing was changed)")
            for run in self.runs:
                if run.run_dir.status == "extended":
                    self.log(f"extending finished run {run.out} from {run.run_dir.extended_from:,} to "
                             f"{run.cfg['train']['sequences']:,} sequences")
            summaries = self._train()
            for run in self.runs:
                run.run_dir.mark_finished()  # last: the run is complete
            return summaries
        finally:
            self.close()

    def _slice(self, run: _Run) -> slice | None:
        return None if len(self.runs) == 1 else run.members

    def _vocab(self, run: _Run) -> int | None:
        """The run's own vocabulary size when the stack's is padded (its files hold only that); else None."""
        return run.vocab if self.padded else None

    def _train(self) -> list[dict]:

        self.step = 0
        loaded = [run.run_dir.load_state(self.model.module, self.opt, self.gens[run.members], self._slice(run),
                                         vocab=self._vocab(run))
                  for run in self.runs]
        steps = {None if x is None else x[0] for x in loaded}
        if len(steps) != 1:
            raise IclscopeError("Trainer.stack: the runs' saved states are at different steps ("
                                + ", ".join(f"{run.out}: {x[0] if x else 'none'}" for run, x in zip(self.runs, loaded))
                                + "); train them in separate stacks (lab sweeps do)")
        if loaded[0]:
            self.step = loaded[0][0]
            self.saved_step = self.step
            sums = [v for run, x in zip(self.runs, loaded)
                    for v in torch.tensor(x[1][0], dtype=torch.float64).reshape(-1).expand(run.R).tolist()]
            running = (sums, loaded[0][1][1])
        else:
            running = ([0.0] * self.R, 0)
        resumed = self.step
        if resumed:
            self.log(f"resuming {', '.join(str(run.out) for run in self.runs)} at step {resumed} of {self.total_steps}")
        every = max(1, int(self.cfg["eval"]["every"]))
        ckpts = self.checkpoint_steps()
        rows = [run.run_dir.read_metrics(r, keep_until=resumed if loaded[0] else None)
                for run in self.runs for r in range(run.R)]
        writers = [w for run in self.runs for w in run.run_dir.event_writers(resumed)]
        loss_sum, loss_n = torch.tensor(running[0], dtype=torch.float64), running[1]
        params = list(self.model.module.parameters())
        t0 = time.time()
        # a bar on a terminal; a log line every 30 s (step, rate, ETA, loss) when the output is a file or a pipe
        bar = progress(self.total_steps, self.cfg.get("name", "train"), quiet=not self.progress, unit="step",
                       initial=self.step)
        try:
            with self.model.intervene(self.clamps.static):
                if not loaded[0]:  # a state saved at step 0 already has its step-0 row and checkpoint
                    self._evaluate_and_log(rows, writers, None, ckpts)
                    self._save_state(([0.0] * self.R, 0))
                while self.step < self.total_steps:
                    batch = self.sample()
                    losses = self.loss(batch)
                    if not bool(torch.isfinite(losses).all()):
                        raise self._diverged("the training loss is", losses.detach())
                    self.opt.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    self.step_optimizer(params)
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
        for run in self.runs:
            run.run_dir.save_final(self._sub(run), self.step, self.objective.token_layout)
        seconds = time.time() - t0
        return [self._summarize(run, r, rows[run.lo + r], seconds, resumed) for run in self.runs for r in range(run.R)]

    def _sub(self, run: _Run) -> TinyModel:
        """The run's members as a model of their own (the model itself when the stack is one run), of the
        run's own vocabulary size (``TinyModel.members`` unpads)."""
        return self.model if len(self.runs) == 1 else self.model.members(range(run.lo, run.lo + run.R))

    def _diverged(self, what: str, losses: torch.Tensor | None) -> TrainingDiverged:
        step = self.step + 1
        stacked = len(self.runs) > 1
        if losses is not None:
            names = [f"seed {s}" + (f" of {run.out}" if stacked else "") for run in self.runs for s in run.seeds]
            bad = [f"{v} ({n})" for v, n in zip(losses.reshape(-1).tolist(), names) if not math.isfinite(v)]
            what = f"{what} {', '.join(bad)}"
        else:
            what = f"{what} non-finite after the optimizer step"
        kept = (f"the last good state (step {self.saved_step}) and its checkpoints are kept"
                if self.saved_step is not None else "no state was saved yet")
        where = ", ".join(str(run.out) for run in self.runs)
        return TrainingDiverged(f"training diverged at step {step} of {self.total_steps}: {what}; stopped, nothing "
                                f"non-finite was written; {kept} in {where}: lower train.lr and train into a "
                                f"new --out")

    def _save_state(self, running: tuple) -> None:
        sums, n = running
        for run in self.runs:
            run.run_dir.save_state(self.model.module, self.opt, self.gens[run.members], self.step,
                                   (sums[run.members], n), members=self._slice(run), vocab=self._vocab(run))
        self.saved_step = self.step

    def _evaluate_and_log(self, rows, writers, train_loss, ckpts) -> None:
        measures = self.evaluate()
        for run in self.runs:
            for r in range(run.R):
                j = run.lo + r
                row = {"step": self.step, "sequences": self.step * self.B,
                       "train_loss": train_loss[j] if train_loss is not None else measures[j]["train_eval_loss"],
                       **measures[j]}
                rows[j].append(row)
                run.run_dir.append_metrics(r, row)
                for k, v in row.items():
                    if k not in ("step", "sequences") and v is not None and math.isfinite(v):
                        writers[j].add_scalar(group_tag(k), v, self.step)  # loss/, accuracy/, heads/ ...
                writers[j].flush()
        if self.step in ckpts:
            self._save_checkpoints()

    def _save_checkpoints(self) -> None:
        for run in self.runs:
            run.run_dir.save_checkpoints(self._sub(run), self.step, self.step * self.B, run.cfg,
                                         self.objective.token_layout)

    def _summarize(self, run: _Run, r: int, rows: list[dict], seconds: float, resumed: int) -> dict:
        df = pd.DataFrame(rows)
        last = df.iloc[-1].to_dict()
        thr = self.objective.phase_threshold(run.cfg["eval"])
        ps = phase_summary(df.sequences, df.train_loss, df.step, thr)  # every transition, and the phase change
        strengths = {k: v for k, v in last.items() if k.startswith("ind_strength_")}
        summary = {"seed": run.seeds[r], "steps": int(last["step"]), "sequences": int(last["sequences"]),
                   "final": {k: v for k, v in last.items() if k.endswith(("_loss", "_acc"))},
                   "induction_strength": strengths,
                   "heads_strength_above_0.3": int(sum(v > 0.3 for v in strengths.values())),
                   "phase_change": ps["phase_change"], "transitions": ps["transitions"], "seconds_this_session": round(seconds, 1), "resumed_from_step": resumed,
                   "ensemble_size": run.R}
        run.run_dir.write_summary(r, summary)
        self._hparams(run, r, summary)
        return summary

    def _hparams(self, run: _Run, r: int, summary: dict) -> None:
        """The run's settings and final measures in TensorBoard's HPARAMS tab (one row per member)."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run.run_dir.member_dir(r))) as w:
            write_hparams(w, {**run.cfg, "seed": run.seeds[r]}, summary["final"])
            add_figure(w, "figures/loss", self._loss_figure(run, r, summary), summary["steps"])

    @staticmethod
    def _loss_figure(run: _Run, r: int, summary: dict):
        """Train loss against sequences seen, every detected transition shaded (for TensorBoard's images)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df = pd.read_csv(run.run_dir.member_dir(r) / "metrics.csv")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(df.sequences, df.train_loss, lw=1.5, label="train loss")
        for t in summary.get("transitions") or []:
            ax.axvspan(t["start_sequences"], t["end_sequences"], alpha=0.15, color="crimson")
        ax.set_yscale("log")
        ax.set_xlabel("sequences seen")
        ax.set_ylabel("loss")
        ax.set_title(f"{run.cfg.get('name', 'train')}, seed {run.seeds[r]}")
        return fig


def train(cfg: dict, out: str | Path, progress: bool = True, log=print) -> list[dict]:
    """Train ``cfg`` into ``out`` (resuming if a state is there, reusing a finished run of the same config).
    Returns one summary per seed."""
    return Trainer(cfg, out, progress=progress, log=log).train()
