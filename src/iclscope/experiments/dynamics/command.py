"""Head dynamics over training: induction, previous-token and FV scores of every head, and few-shot
accuracy, at each checkpoint of a training run or each hub revision of a model; role transitions
between induction heads and FV heads (Yin & Steinhardt 2025, section on training dynamics).

Checkpoints come from a training-lab run (``RUN/checkpoints/step_N/``) or from hub revisions of one
model (Pythia's "step1000", ...). They are analysed one at a time (one model in memory), each into its
own results folder; a finished checkpoint is marked by ``done.json`` and never recomputed, so a killed
run resumes at the next unfinished one (and inside a checkpoint at the next unfinished FV task).

Results folder::

    config.json                  source, tasks, dtype (a rerun with another is refused, naming the keys)
    checkpoints/<name>/          one checkpoint (name through ``store.safe_name``): config.json, heads.csv,
                                 fv_per_task.csv, accuracy.csv, its stage folders, done.json (what ran,
                                 how long, what was reused)
    heads_over_training.csv      checkpoint, order, step, sequences, tokens, layer, head, induction,
                                 induction_segments, prev_token, duplicate, fv, fv_task_std
    checkpoints.csv              one row per checkpoint: accuracy (evaluation tasks), copy accuracy
                                 (testbed models), best induction / FV / previous-token head and score
    accuracy_per_task.csv        checkpoint, step, task, accuracy
    transitions.csv              the final top FV heads and top induction heads, and their earlier roles
    trajectories.png, heatmaps.png, accuracy.png, transitions.png, report.html, summary.json

Scores at each checkpoint are exactly those of ``iclscope atlas``: the attention table on repeated
random token ids, FV scores over the *scoring* half of the tasks (``split_tasks``); accuracy is
first-token few-shot accuracy on the *evaluation* half (plus, for models trained on the token mixture,
copying prompts: a fresh mapping whose query repeats a demonstration).

Reuse. ``reuse`` names folders of earlier ``iclscope scores``, ``atlas`` or ``dynamics`` runs (a results
folder, or a folder holding such folders). A folder is reused for a checkpoint when its config.json
names the same model (same path, or same hub name and revision), the same task set and the same k,
n_clean, n_corrupt and seed, and its FV tasks include this checkpoint's scoring tasks: its attention
scores and its per-task FV scores (restricted to the scoring tasks) are copied, not recomputed. An
atlas folder with the same n_eval also gives the accuracy (its ablation study's no-ablation row).

Role transitions (``role_transitions``). At each checkpoint a head is a *top induction head* if it is
among the ``top`` heads by induction score and its score is at least ``rel`` x the largest induction
score at the final checkpoint; likewise for FV. For each head among the final top FV heads: its FV onset
is the first checkpoint at which it is a top FV head; it *passed through an induction phase* if it was
a top induction head at some checkpoint before its FV onset. The fraction of final FV heads that did
is compared with random head sets of the same size, each random head given the onset of one FV head
(so the windows are the same): mean, 95 % interval and P(random >= observed). The reverse question
(final induction heads that were FV heads first) is answered the same way.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ... import store
from ...errors import IclscopeError
from ...store import safe_name
from ..atlas import check_score_settings
from ...report import Finding, ResultsDir, run_metadata, write_report
from ...report.figures import short_name
from ...report.progress import progress
from .checkpoints import Checkpoint, revision_checkpoints, run_checkpoints
from .figures import accuracy_figure, heatmaps_figure, trajectories_figure, transitions_figure
from .reuse import reuse_candidates
from .scoring import checkpoint_key, finished_record, score_checkpoint
from .transitions import default_top, role_transitions, transition_text

SCORES = ("induction", "induction_segments", "prev_token", "duplicate", "fv", "fv_task_std")


def run_dynamics(out: str | Path, model: str | None = None, revisions=None, run: str | Path | None = None,
                 checkpoints=None, tasks_dir=None, k: int | None = None, n_clean: int = 100, n_corrupt: int = 25,
                 n_eval: int = 50, seed: int = 0, top: int | None = None, rel: float = 0.25,
                 reuse: Sequence[str | Path] = (), tokens_per_step: int | None = None, dtype=None, device=None,
                 n_random: int = 1000, log=print, after=None) -> dict:
    """``iclscope dynamics``: every checkpoint's head scores and accuracy, the long table, role transitions,
    figures and a report in ``out``. Give ``model`` + ``revisions`` (hub revisions) or ``run`` (+ optional
    ``checkpoints``). Returns the summary (also summary.json). ``after(res, summary)``, if given, writes more
files into the open folder before it is marked finished (``testbed_story``).

Every input is checked before the folder is opened. Folder config (a change is refused, naming the keys):
command, source, tasks, dtype. Each checkpoint is a stage keyed by ``checkpoint_key`` (model, revision,
tasks, k, n_clean, n_corrupt, n_eval, seed, dtype); inside it, the atlas's stages plus "accuracy"."""
    t0 = time.time()
    if (model is None) == (run is None):
        raise IclscopeError("give either --model NAME with --revisions, or --run RUN (not both)")
    if run is not None:
        if revisions:
            raise IclscopeError("--revisions goes with --model; a run's checkpoints are chosen with --checkpoints")
        ckpts = run_checkpoints(run, checkpoints)
        source = str(Path(run).expanduser().resolve())
    else:
        if checkpoints:
            raise IclscopeError("--checkpoints goes with --run; hub checkpoints are chosen with --revisions")
        if not revisions:
            raise IclscopeError(f"--model {model}: give --revisions (e.g. step1,step1000,step143000)")
        ckpts = revision_checkpoints(model, revisions, tokens_per_step)
        source = str(model)
    check_score_settings(k, n_clean, n_corrupt, seed)
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
        raise IclscopeError(f"--n-eval must be an integer >= 1, got {n_eval!r}")
    from ...models import _dtype
    from ...schema import check_device
    _dtype(dtype)
    check_device(device)
    candidates = reuse_candidates(reuse) if reuse else []
    cfg = {"command": "dynamics", "source": source, "tasks": str(tasks_dir),
           "dtype": None if dtype is None else str(dtype).replace("torch.", "")}
    with ResultsDir(out, cfg, command="dynamics") as res:
        log(f"dynamics of {source}: {len(ckpts)} checkpoints -> {res.path}/")
        records = []
        bar = progress(total=len(ckpts), desc="dynamics", unit="checkpoint",
                       quiet=os.environ.get("ICLSCOPE_QUIET", "") not in ("", "0"))
        for i, ck in enumerate(ckpts):
            folder = res.file("checkpoints") / safe_name(ck.name)
            key = checkpoint_key(ck, tasks_dir, k, n_clean, n_corrupt, n_eval, seed, dtype)
            rec = finished_record(folder, key)
            if rec is not None:
                log(f"  [{i + 1}/{len(ckpts)}] reusing {ck.name} (finished with the same settings)")
            else:
                log(f"  [{i + 1}/{len(ckpts)}] {'recomputing' if folder.exists() else 'computing'} {ck.name}")
                rec = score_checkpoint(ck, folder, tasks_dir, k, n_clean, n_corrupt, n_eval, seed, candidates,
                                       dtype, device, log)
                log(f"  [{i + 1}/{len(ckpts)}] {ck.name}: {rec['seconds']:.1f} s"
                    + (f" (scores reused from {rec['reused_from']})" if rec.get("reused_from") else ""))
            if records and rec["arch"] != records[0]["arch"]:
                raise IclscopeError(f"checkpoint {ck.name} ({rec['arch']}) has a different architecture from "
                                    f"{records[0]['name']} ({records[0]['arch']}); finished checkpoints are kept in "
                                    f"{res.path}/checkpoints/")
            records.append(rec)
            bar.update(1)
            bar.set_postfix(checkpoint=ck.name)
        bar.close()
        summary = _write(res, ckpts, records, source, run, top, rel, n_random, seed, t0)
        if after is not None:
            after(res, summary)
        res.mark_finished()
    log(transition_text(summary["transitions"]))
    log(f"results in {res.path}/ (report.html) in {summary['seconds']} s")
    return summary


def _write(res, ckpts, records, source, run, top, rel, n_random, seed, t0) -> dict:
    long, ck_table, acc = assemble(res.path, ckpts, records)
    res.write_table("heads_over_training.csv", long)
    res.write_table("checkpoints.csv", ck_table)
    res.write_table("accuracy_per_task.csv", acc)
    n_total = int(long[["layer", "head"]].drop_duplicates().shape[0])
    top = top or default_top(n_total)
    trans, tsum = role_transitions(long, top=top, rel=rel, n_random=n_random, seed=seed)
    res.write_table("transitions.csv", trans)
    title = short_name(source)
    metrics = None
    if run is not None and (Path(run) / "metrics.csv").exists():
        metrics = pd.read_csv(Path(run) / "metrics.csv")
    figs = {"trajectories": trajectories_figure(long, top, res.file("trajectories.png"), title),
            "heatmaps": heatmaps_figure(long, res.file("heatmaps.png"), title),
            "accuracy": accuracy_figure(ck_table, res.file("accuracy.png"), metrics, title),
            "transitions": transitions_figure(long, trans, tsum, res.file("transitions.png"), title)}
    summary = {"source": source, "checkpoints": [c.name for c in ckpts], "heads": n_total,
               "transitions": tsum, "seconds": round(time.time() - t0, 1),
               "final": ck_table.iloc[-1].to_dict()}
    res.write_json("summary.json", summary)
    write_report(res.file("report.html"), f"Head dynamics: {title}", [
        {"heading": "Role transitions", "text": transition_text(tsum), "figure": figs["transitions"]},
        {"heading": "Score trajectories", "text": "The induction, FV and previous-token scores of the final top heads "
         "of each kind at every checkpoint.", "figure": figs["trajectories"]},
        {"heading": "Every head at every checkpoint", "figure": figs["heatmaps"]},
        {"heading": "Accuracy over training", "figure": figs["accuracy"]},
        {"heading": "Checkpoints", "table": ck_table.drop(columns=["order"] + (
            ["reused_from"] if ck_table.reused_from.isna().all() else []))},
        {"heading": "Heads in each role", "table": trans if len(trans) else None},
    ], findings=dynamics_findings(tsum, ck_table),
       metadata=run_metadata(started=t0, source=source, checkpoints=len(ckpts), top=top, seeds=[seed]))
    return json.loads(store.dumps_json(summary))


def dynamics_findings(tsum: dict, ck_table: pd.DataFrame) -> list[Finding]:
    """The dynamics' headline results: whether the best induction and FV scores rise over the checkpoints
    at all (against random checkpoint orders), and the role transitions (final FV heads that were
    induction heads first, and the reverse) against random head sets, each with its verdict."""
    from .transitions import formation_baseline, verdict

    out = []
    for col, name in (("max_induction", "induction"), ("max_fv", "FV")):
        if col not in ck_table or len(ck_table) < 2:
            continue
        v = ck_table[col].to_numpy(dtype=float)
        fb = formation_baseline(v)
        text = f"The best {name} score goes from {v[0]:.3g} at the first checkpoint to {v[-1]:.3g} at the last"
        if fb["rise"] is None:
            out.append(Finding(text + f"; {fb['verdict']}.", within_noise=True))
            continue
        out.append(Finding(text + f"; its rise over the checkpoints {fb['verdict']} (P(random order ≥ observed) = "
                           f"{fb['p_random_ge_observed']:.2g}).", value=fb["rise"],
                           baseline=f"random checkpoint orders: {fb['random_mean']:.3g} (95 % "
                                    f"{fb['random_95'][0]:.3g} to {fb['random_95'][1]:.3g})",
                           within_noise=fb["p_random_ge_observed"] >= 0.05))
    for key, role, other in (("fv_heads_through_induction", "FV", "induction"),
                             ("induction_heads_through_fv", "induction", "FV")):
        r = tsum.get(key) or {}
        if r.get("fraction") is None:
            out.append(Finding(r.get("note", f"No head is a top {role} head at the final checkpoint") + ".",
                               within_noise=True))
            continue
        v = verdict(r["p_random_ge_observed"])
        out.append(Finding(
            f"{round(r['fraction'] * r['n'])} of the {r['n']} final top {role} heads were top {other} heads before their {role} "
            f"onset: {v} (P(random ≥ observed) = {r['p_random_ge_observed']:.2g}).",
            value=r["fraction"], baseline=f"random head sets: {r['random_mean']:.2f} (95 % {r['random_95'][0]:.2f} to "
                                          f"{r['random_95'][1]:.2f})",
            within_noise=v != "beats the random baseline"))
    return out


def json_default(v):
    """For ``json.dumps(default=...)``: numpy numbers as Python numbers (NaN, inf as null), else str."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if not np.isfinite(v) else float(v)
    return str(v)


def assemble(path: Path, ckpts: list[Checkpoint], records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The long head table, the per-checkpoint table and per-task accuracy from the checkpoint folders."""
    parts, rows, accs = [], [], []
    for order, (ck, rec) in enumerate(zip(ckpts, records)):
        folder = Path(path) / "checkpoints" / safe_name(ck.name)
        heads = pd.read_csv(folder / "heads.csv")
        meta = {"checkpoint": ck.name, "order": order, "step": ck.step, "sequences": ck.sequences, "tokens": ck.tokens}
        parts.append(heads.assign(**meta)[list(meta) + ["layer", "head"] + [c for c in SCORES if c in heads]])
        acc = pd.read_csv(folder / "accuracy.csv", dtype={"task": str})
        accs.append(acc.assign(checkpoint=ck.name, step=ck.step)[["checkpoint", "step", "task", "accuracy"]])
        is_copy = acc.task.str.startswith("copy:")
        best = {c: heads.loc[heads[c].idxmax()] for c in ("induction", "fv", "prev_token")}
        rows.append({**meta, "accuracy": float(acc[~is_copy].accuracy.mean()) if (~is_copy).any() else np.nan,
                     "copy_accuracy": float(acc[is_copy].accuracy.mean()) if is_copy.any() else np.nan,
                     **{f"max_{c}": float(b[c]) for c, b in best.items()},
                     **{f"best_{c}_head": f"L{int(b.layer)}H{int(b['head'])}" for c, b in best.items()},
                     "seconds": rec.get("seconds"), "reused_from": rec.get("reused_from")})
    return pd.concat(parts, ignore_index=True), pd.DataFrame(rows), pd.concat(accs, ignore_index=True)
