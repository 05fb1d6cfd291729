"""What is in a run folder, and how is it written so that a killed run resumes exactly?

    RUN/.iclscope.json       ownership marker (the folder is a ``report.results.ResultsDir``, command "train")
    RUN/.iclscope.lock       OS lock held for the whole training: a second ``train`` on RUN fails at once
    RUN/config.json          the full config, written atomically (a rerun with another config is refused)
    RUN/metrics.csv          one row per evaluation, appended and fsynced; on resume the rows after the saved
                             state (and a row cut by a kill) are dropped, the file replaced atomically
    RUN/events.*             TensorBoard event files (the same measures)
    RUN/summary.json         final measures and the phase change (strict JSON: null, never NaN)
    RUN/checkpoints/step_N/  model checkpoints, each renamed into place whole (weights + JSON)
    RUN/state/               the training state (weights, Adam moments, data RNGs), renamed into place whole
    RUN/final/               the trained model (all seeds of an ensemble in one checkpoint), renamed in whole
    RUN/.iclscope-finished.json  written last: the run is finished (never judged by final/ existing)

An ensemble's per-member files (metrics, events, summary, checkpoints) live in RUN/seed_S/.

Rerunning a folder:

* same config, finished: reused (nothing is trained or rewritten; the summaries are read back);
* same config, not finished: resumed from state/ (exactly: the same rows as an uninterrupted run);
* a config that differs ONLY in ``train.sequences``, and asks for more: the run is extended from its saved
  state to the new length. Its rows so far are kept, so an extended finished run has one more evaluation
  row (and checkpoint) at the old last step than a run trained to the new length at once, and the train
  loss of the next row averages the steps after it;
* any other difference: refused, naming the differing keys; nothing is changed.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import store
from ..errors import IclscopeError
from ..models.tiny import vocab_slice
from ..report.results import CONFIG, ResultsDir, diff_keys
from ..store import fault_point


def config_as_saved(old: dict | None, cfg: dict) -> dict:
    """``cfg`` as JSON, as a run folder whose config.json holds ``old`` keeps it: a folder written before
    ``train.compile`` existed (its runs trained eagerly) keeps its config without that key when ``cfg``
    asks for nothing else ("auto" or false), so it is resumed, extended or reused as before, eagerly."""
    new = json.loads(store.dumps_json(cfg))
    if predates_compile(old, new):
        new["train"].pop("compile", None)
    return new


def predates_compile(old: dict | None, new: dict) -> bool:
    """Whether the saved config ``old`` predates ``train.compile`` and ``new`` leaves it at "auto" or false."""
    return (isinstance(old, dict) and isinstance(old.get("train"), dict) and "compile" not in old["train"]
            and isinstance(new.get("train"), dict) and new["train"].get("compile", "auto") in ("auto", False))


class RunDir:
    """The folder ``out`` of a run of ``cfg`` over ``seeds``, open and locked (a ``ResultsDir`` with
    command "train") until ``close()``. Opening it refuses a foreign non-empty folder, a folder in use by
    another process, and a run of a different config (naming the differing keys); see the module docstring
    for what a rerun does. ``status`` is "new", "resumed", "reused" or "extended". ``eager``: the folder
    predates ``train.compile`` (``config_as_saved``), so its run goes on training eagerly."""

    def __init__(self, out: str | Path, cfg: dict, seeds: list[int]):
        self.out = Path(out)
        self.seeds = list(seeds)
        self.R = len(self.seeds)
        old = self._old_config()
        new = config_as_saved(old, cfg)
        self.eager = predates_compile(old, json.loads(store.dumps_json(cfg)))
        self.extended_from = None
        overwrite = False
        if old is not None and old != new and diff_keys(old, new) == ["train.sequences"]:
            a, b = old["train"]["sequences"], new["train"]["sequences"]
            if isinstance(a, (int, float)) and float(b) > float(a):
                overwrite, self.extended_from = True, a
        try:
            self.res = ResultsDir(self.out, new, overwrite=overwrite, command="train")
        except IclscopeError as e:
            if old is not None and "different config" in str(e) and diff_keys(old, new) == ["train.sequences"]:
                raise IclscopeError(f"{self.out} holds a run of train.sequences = {old['train']['sequences']}; a "
                                    f"rerun may only extend it (ask for more), not shorten it to "
                                    f"{new['train']['sequences']}; nothing was changed there") from None
            raise
        finished = self.res.was_finished
        self.status = ("extended" if self.extended_from is not None else "reused" if finished
                       else "resumed" if (self.out / "state").exists() else "new")

    def _old_config(self) -> dict | None:
        try:
            return json.loads((self.out / CONFIG).read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        self.res.close()

    def mark_finished(self) -> None:
        """The run is complete: the finished marker, written after every other file."""
        self.res.mark_finished({"steps_info": "see summary.json"})

    def member_dir(self, r: int) -> Path:
        """The folder of member r: RUN itself for a single seed, RUN/seed_S for an ensemble."""
        return self.out if self.R == 1 else self.out / f"seed_{self.seeds[r]}"

    # ------------------------------------------------------------------ training state
    def save_state(self, module: torch.nn.Module, opt: torch.optim.Optimizer, gens: list[torch.Generator],
                   step: int, running: tuple, members: slice | None = None, vocab: int | None = None) -> None:
        """Weights, optimizer state, data RNG states, step and the running loss (sums, count): RUN/state is
        replaced whole (a temporary folder renamed into place). ``members``: this run's slice of a stacked
        model (every weight and Adam moment has the ensemble axis first); ``vocab``: this run's own
        vocabulary size in a stack padded to a larger one (the embedding, unembedding and their moments are
        cut to it: ``models.tiny.VOCAB_AXES``). The files are those of the run trained alone."""
        sl = members if members is not None else slice(None)
        weights = {k: v.detach()[_index(k, sl, vocab)].contiguous().cpu() for k, v in module.state_dict().items()}
        opt_state = {}
        for i, (name, p) in enumerate(module.named_parameters()):
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    v = v.detach()[_index(name, sl, vocab)] if v.dim() else v.detach()
                    opt_state[f"{i}.{k}"] = v.contiguous().cpu()
                else:
                    opt_state[f"{i}.{k}"] = torch.tensor(v)
        meta = {"step": step, "running": list(running),
                "gens": [base64.b64encode(g.get_state().numpy().tobytes()).decode() for g in gens]}

        def fill(folder: Path) -> None:
            save_file(weights, str(folder / "model.safetensors"))
            fault_point("state:after-weights")
            save_file(opt_state, str(folder / "optim.safetensors"))
            (folder / "state.json").write_text(store.dumps_json(meta))

        store.write_folder_atomically(self.out / "state", fill)

    def saved_step(self) -> int | None:
        """The step of the saved training state (None: none saved)."""
        d = self.out / "state"
        store.recover_folder(d)
        try:
            return int(json.loads((d / "state.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load_state(self, module: torch.nn.Module, opt: torch.optim.Optimizer,
                   gens: list[torch.Generator], members: slice | None = None,
                   vocab: int | None = None) -> tuple[int, tuple] | None:
        """Restore a saved state into module, opt and gens; returns (step, running), or None if none.
        ``members``: this run's slice of a stacked model, ``vocab``: its own vocabulary size in a padded
        stack (as in ``save_state``: the padding keeps its zeros, in weights and moments)."""
        whole = members is None and vocab is None
        sl = members if members is not None else slice(None)
        d = self.out / "state"
        store.recover_folder(d)
        if not (d / "state.json").exists():
            return None
        try:
            meta = json.loads((d / "state.json").read_text())
            weights = load_file(str(d / "model.safetensors"))
            if whole:
                module.load_state_dict(weights)
            else:
                with torch.no_grad():
                    for k, v in module.state_dict().items():
                        v[_index(k, sl, vocab)] = weights[k].to(v.device, v.dtype)
            flat = load_file(str(d / "optim.safetensors"))
        except Exception as e:  # cannot happen with whole-folder renames; say so in one line if it does
            raise IclscopeError(f"{d}: the saved training state is unreadable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); delete {d} to restart") from None
        params = list(module.named_parameters())
        for key, v in flat.items():
            i, k = key.split(".", 1)
            name, p = params[int(i)]
            if whole or not v.dim():
                opt.state[p][k] = v
            else:  # fill this run's slice of the stacked moment (zeros until every run has filled its own)
                full = opt.state[p].get(k)
                if full is None or full.shape != p.shape:
                    full = opt.state[p][k] = torch.zeros_like(p, memory_format=torch.preserve_format)
                full[_index(name, sl, vocab)] = v.to(full.device, full.dtype)
        for g, s in zip(gens, meta["gens"]):
            g.set_state(torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8))
        return int(meta["step"]), tuple(meta["running"])

    # ------------------------------------------------------------------ metrics, events, summary
    def metrics_path(self, r: int) -> Path:
        return self.member_dir(r) / "metrics.csv"

    def append_metrics(self, r: int, row: dict) -> None:
        """Append one row to member r's metrics.csv (the header first in a new file); fsynced. A row cut by
        a kill is dropped on resume (``read_metrics``)."""
        p = self.metrics_path(r)
        p.parent.mkdir(parents=True, exist_ok=True)
        header = ",".join(row) + "\n"
        if not p.exists() or p.stat().st_size == 0:
            store.write_text(p, header, kind="csv")
        line = ",".join(_cell(v) for v in row.values()) + "\n"
        with open(p, "a") as f:
            half = len(line) // 2
            f.write(line[:half])
            f.flush()
            fault_point("metrics:mid-append")
            fault_point(f"metrics:mid-append@{row['step']}")
            f.write(line[half:])
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self, r: int, keep_until: int | None) -> list[dict]:
        """Rows up to the resumed step (``None``: none); later rows (written after the last saved state) and
        a row cut short by a kill are dropped, and will be recomputed identically, so none is lost or
        duplicated. The file is rewritten atomically (the kept lines byte for byte)."""
        p = self.metrics_path(r)
        if not p.exists():
            return []
        text = p.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the last piece has no newline: empty, or a line cut by a kill
        if not complete:
            if text:
                store.write_text(p, "", kind="csv")
            return []
        header = complete[0].split(",")
        kept, rows = [complete[0]], []
        if keep_until is not None:
            for line in complete[1:]:
                cells = line.split(",")
                if len(cells) != len(header):
                    break
                try:
                    row = {k: _parse(v) for k, v in zip(header, cells)}
                except ValueError:
                    break
                if row["step"] > keep_until:
                    break
                kept.append(line)
                rows.append(row)
        new = "\n".join(kept) + "\n"
        if new != text:
            store.write_text(p, new, kind="csv")
        return rows

    def event_writers(self, resumed: int) -> list:
        """One TensorBoard SummaryWriter per member; events after step ``resumed`` are purged."""
        from torch.utils.tensorboard import SummaryWriter

        return [SummaryWriter(str(self.member_dir(r)), purge_step=resumed + 1 if resumed else None)
                for r in range(self.R)]

    def write_summary(self, r: int, summary: dict) -> None:
        """Member r's summary.json, strict JSON (NaN and inf become null), atomically."""
        store.write_text(self.member_dir(r) / "summary.json", store.dumps_json(summary), kind="summary")

    def read_summary(self, r: int) -> dict:
        """Member r's summary as written (nulls read back as NaN in the numeric tables)."""
        s = json.loads((self.member_dir(r) / "summary.json").read_text())
        for key in ("final", "induction_strength"):
            if isinstance(s.get(key), dict):
                s[key] = {k: (math.nan if v is None else v) for k, v in s[key].items()}
        return s

    # ------------------------------------------------------------------ models
    def save_checkpoints(self, model, step: int, sequences: int, train_config: dict,
                         token_layout: dict | None = None) -> None:
        """Each member's model into its checkpoints/step_N/ (renamed into place whole), with step,
        sequences, its seed, the config and (for token data) the token layout as metadata."""
        layout = {"token_layout": token_layout} if token_layout is not None else {}
        for r in range(self.R):
            m = model if self.R == 1 else model.member(r)
            m.save(self.member_dir(r) / "checkpoints" / f"step_{step:07d}",
                   extra={"step": step, "sequences": sequences, "seed": self.seeds[r], "train_config": train_config,
                          **layout}, fault=("checkpoint:after-weights", f"checkpoint:after-weights@{step}"))

    def save_final(self, model, step: int, token_layout: dict | None = None) -> None:
        """The whole trained ensemble (member r = seed r) into RUN/final (renamed into place whole), e.g. a
        frozen source for Graft clamps."""
        layout = {"token_layout": token_layout} if token_layout is not None else {}
        model.save(self.out / "final", extra={"seeds": self.seeds, "step": step, **layout}, fault="final:after-weights")


def _index(name: str, members: slice, vocab: int | None) -> tuple:
    """The index of a run's part of the stacked weight (or moment) ``name``: its members, and within them
    its own ``vocab`` entries on a vocabulary axis (None: all)."""
    return (members,) if vocab is None else vocab_slice(name, vocab, members)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if hasattr(v, "item"):
        v = v.item()
        return repr(v) if isinstance(v, float) else str(v)
    return str(v)


def _parse(text: str):
    """A metrics cell back as a number (int when integral text, else float: nan/inf included)."""
    if text == "":
        return math.nan
    try:
        return int(text)
    except ValueError:
        return float(text)
