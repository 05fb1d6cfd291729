"""Head dynamics over training: induction, previous-token and FV scores of every head, and few-shot
accuracy, at each checkpoint of a training run or each hub revision of a model; role transitions
between induction heads and FV heads (Yin & Steinhardt 2025, section on training dynamics).

Checkpoints come from a training-lab run (``RUN/checkpoints/step_N/``) or from hub revisions of one
model (Pythia's "step1000", ...). They are analysed one at a time (one model in memory), each into its
own results folder; a finished checkpoint is marked by ``done.json`` and never recomputed, so a killed
run resumes at the next unfinished one (and inside a checkpoint at the next unfinished FV task).

Results folder::

    config.json                  the settings (a rerun with other settings is refused)
    checkpoints/<name>/          one checkpoint: config.json, heads.csv, fv_per_task.csv, accuracy.csv,
                                 done.json (what ran, how long, what was reused)
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

import gc
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import IclscopeError
from ..report import ResultsDir, write_report
from ..report.figures import save_figure
from .atlas import (_safe, build_eval_prompts, copy_prompts, default_shots, default_tasks, score_heads,
                    split_tasks)

SCORES = ("induction", "induction_segments", "prev_token", "duplicate", "fv", "fv_task_std")
PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1024 sequences x 2048 tokens per optimizer step


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """One model to analyse: ``spec`` (+ ``revision``) for ``iclscope.load``; ``name`` its folder name."""

    name: str
    spec: str
    revision: str | None = None
    step: int | None = None
    sequences: int | None = None
    tokens: int | None = None
    arch: dict | None = None
    meta: dict = field(default_factory=dict, repr=False)


def run_checkpoints(run: str | Path, select: Sequence | str | None = None) -> list[Checkpoint]:
    """The saved checkpoints of a training-lab run (``RUN/checkpoints/step_N``), by step; ``select``: a
    subset by step or folder name ("0,250,step_0004000" or a list). Checks that every checkpoint has the
    same architecture (read from iclscope.json, nothing loaded)."""
    from ..models.tiny import CONFIG_FILE

    run = Path(run).expanduser()
    if not run.is_dir():
        raise IclscopeError(f"--run {run}: no such folder")
    ck_dir = run / "checkpoints"
    if not ck_dir.is_dir():
        members = sorted(p.name for p in run.glob("seed_*") if (p / "checkpoints").is_dir())
        if members:
            raise IclscopeError(f"{run} is an ensemble run; analyse one member at a time, e.g. --run "
                                f"{run / members[0]} (members: {', '.join(members)})")
        raise IclscopeError(f"{run}: no checkpoints/ folder, so no checkpoints to analyse (is it a training-lab "
                            f"run folder? `iclscope train` saves RUN/checkpoints/step_N/)")
    found = []
    for d in sorted(ck_dir.iterdir()):
        if not d.is_dir() or not (d / CONFIG_FILE).exists():
            continue
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise IclscopeError(f"checkpoint {d}: unreadable {CONFIG_FILE} ({e})") from None
        m = re.search(r"(\d+)$", d.name)
        step = meta.get("step", int(m.group(1)) if m else None)
        found.append(Checkpoint(name=d.name, spec=str(d.resolve()), step=None if step is None else int(step),
                                sequences=meta.get("sequences"), arch=meta.get("config"), meta=meta))
    if not found:
        raise IclscopeError(f"{ck_dir}: holds no checkpoints (no step_N/{CONFIG_FILE}); the run saved none yet")
    found.sort(key=lambda c: (c.step is None, c.step or 0, c.name))
    if select is not None and select != "":
        want = [s.strip() for s in (select.split(",") if isinstance(select, str) else map(str, select)) if s.strip()]
        by_step = {c.step: c for c in found}
        by_name = {c.name: c for c in found}
        chosen, missing = [], []
        for w in want:
            c = by_name.get(w)
            m = re.fullmatch(r"(?:step_?)?(\d+)", w)
            if c is None and m:
                c = by_step.get(int(m.group(1)))
            (chosen if c else missing).append(c or w)
        if missing:
            raise IclscopeError(f"--checkpoints: {', '.join(missing)} not saved in {ck_dir}; saved steps: "
                                f"{', '.join(str(c.step) for c in found)}")
        found = sorted({c.name: c for c in chosen}.values(), key=lambda c: (c.step is None, c.step or 0, c.name))
    check_architectures(found, str(run))
    return found


def check_architectures(ckpts: list[Checkpoint], where: str) -> None:
    """All checkpoints must share one architecture; else an error naming the odd ones out (those outside
    the largest group; on a tie, outside the first checkpoint's group) and how they differ."""
    groups: dict[str, list[Checkpoint]] = {}
    for c in ckpts:
        if c.arch is not None:
            groups.setdefault(json.dumps(c.arch, sort_keys=True, default=str), []).append(c)
    if len(groups) <= 1:
        return
    main = max(groups.values(), key=len)  # max keeps the first of equal-sized groups: the first checkpoint's
    ref = main[0]
    odd = [c for g in groups.values() if g is not main for c in g]
    odd.sort(key=lambda c: ckpts.index(c))
    c = odd[0]
    diff = sorted(k for k in set(c.arch) | set(ref.arch) if c.arch.get(k) != ref.arch.get(k))
    what = ", ".join(f"{k}={c.arch.get(k)!r} (vs {ref.arch.get(k)!r})" for k in diff)
    others = f" (also: {', '.join(o.name for o in odd[1:6])}{' ...' if len(odd) > 6 else ''})" if len(odd) > 1 else ""
    raise IclscopeError(f"{where}: checkpoint {c.name} has a different architecture from {ref.name}: {what}"
                        f"{others}; heads cannot be followed across architectures: analyse them separately, or "
                        f"choose checkpoints of one architecture (--checkpoints / --revisions)")


def _cached_revisions(spec: str) -> list[str]:
    try:
        from huggingface_hub import constants
        refs = Path(constants.HF_HUB_CACHE) / f"models--{spec.replace('/', '--')}" / "refs"
        return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())
    except Exception:  # pragma: no cover
        return []


def _hub_config(spec: str, revision: str) -> dict:
    """The transformers config of ``spec`` at ``revision``: from the local cache, else (online) the hub.
    An IclscopeError naming the revision when it cannot be found."""
    from transformers import AutoConfig

    from ..models.hf import hub_reachable as _hub_reachable, offline as _offline

    try:
        return AutoConfig.from_pretrained(spec, revision=revision, local_files_only=True).to_dict()
    except (OSError, ValueError):
        pass
    cached = _cached_revisions(spec)
    have = (f"revisions in the local cache: {', '.join(cached)}" if cached
            else "no revision of it is in the local Hugging Face cache")
    if _offline() or not _hub_reachable():
        raise IclscopeError(f"{spec}: revision {revision!r} is not in the local Hugging Face cache and the hub "
                            f"{'is offline (HF_HUB_OFFLINE=1)' if _offline() else 'cannot be reached'} ({have}); "
                            f"download it where there is network (`hf download {spec} --revision {revision}`) "
                            f"and copy the cache (HF_HOME), or leave it out of --revisions") from None
    try:
        return AutoConfig.from_pretrained(spec, revision=revision).to_dict()
    except (OSError, ValueError) as e:
        raise IclscopeError(f"{spec}: revision {revision!r} cannot be found: {str(e).splitlines()[0]}") from None


def revision_checkpoints(spec: str, revisions: Sequence[str] | str, tokens_per_step: int | None = None
                         ) -> list[Checkpoint]:
    """Hub revisions of one model ("step1,step64,..."), ordered by the step in their names when every
    name has one (else as given). Each revision's config is read first (cache, then hub), so a missing
    revision or a change of architecture is reported before anything is computed."""
    if isinstance(revisions, str):
        revisions = [r.strip() for r in revisions.split(",") if r.strip()]
    if not revisions:
        raise IclscopeError("--revisions: give at least one revision, e.g. step1,step1000,step143000")
    s = str(spec)
    if s.startswith("random:") or Path(s).expanduser().exists():
        raise IclscopeError(f"{spec}: revisions need a Hugging Face hub model name (a local folder or a random "
                            f"model has none); for a training-lab run use --run RUN")
    if len(set(revisions)) != len(revisions):
        raise IclscopeError(f"--revisions: {', '.join(sorted({r for r in revisions if list(revisions).count(r) > 1}))} "
                            f"given twice")
    out = []
    for r in revisions:
        cfg = _hub_config(s, r)
        m = re.search(r"step[_-]?(\d+)", r)
        step = int(m.group(1)) if m else None
        arch = {k: cfg.get(k) for k in ("model_type", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "hidden_size", "vocab_size")}
        out.append(Checkpoint(name=_safe(r), spec=s, revision=r, step=step,
                              tokens=step * tokens_per_step if (tokens_per_step and step is not None) else None,
                              arch=arch))
    if all(c.step is not None for c in out):
        out.sort(key=lambda c: c.step)
    check_architectures(out, s)
    return out


# ----------------------------------------------------------------------------------------------------
# Reuse of earlier scores / atlas / dynamics results
# ----------------------------------------------------------------------------------------------------


def _score_half(names: list[str]) -> list[str]:
    names = sorted(names)
    return names if len(names) < 4 else names[: len(names) // 2]


def _same_model(a, b) -> bool:
    if a is None or b is None:
        return False
    if str(a) == str(b):
        return True
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def reuse_candidates(dirs: Sequence[str | Path]) -> list[Path]:
    """Results folders in ``dirs``: each given folder holding a config.json, and those one or two levels
    below it (e.g. a dynamics folder's checkpoints/<name>/)."""
    out = []
    for d in dirs:
        d = Path(d).expanduser()
        if not d.is_dir():
            raise IclscopeError(f"--reuse {d}: no such folder")
        for pat in ("config.json", "*/config.json", "*/*/config.json"):
            out += [p.parent for p in sorted(d.glob(pat))]
    return out


def find_reusable(candidates: Sequence[Path], want: dict) -> dict | None:
    """The first candidate whose scores can stand for ``want`` (a checkpoint folder's config), or None.
    Returns {"path", "command", "fv_tasks", "n_eval"}."""
    for folder in candidates:
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        cmd = cfg.get("command")
        if cmd not in ("scores", "atlas", "dynamics-checkpoint"):
            continue
        if not _same_model(cfg.get("model"), want["model"]) or cfg.get("revision") != want["revision"]:
            continue
        if any(cfg.get(k) != want[k] for k in ("tasks", "k", "n_clean", "n_corrupt", "seed")):
            continue
        names = sorted(cfg.get("task_names") or [])
        if names != want["task_names"]:
            continue
        fv_tasks = {"scores": names, "atlas": _score_half(names)}.get(cmd, cfg.get("score_tasks") or [])
        if not set(want["score_tasks"]) <= set(fv_tasks):
            continue
        if not ((folder / "heads.csv").exists() and (folder / "fv_per_task.csv").exists()):
            continue
        return {"path": folder, "command": cmd, "fv_tasks": fv_tasks, "n_eval": cfg.get("n_eval")}
    return None


def _reuse_scores(src: dict, res: ResultsDir, score_tasks: list[str]) -> None:
    """heads.csv and fv_per_task.csv of ``res`` from a matching earlier folder (FV over ``score_tasks``)."""
    heads = pd.read_csv(src["path"] / "heads.csv")
    per = pd.read_csv(src["path"] / "fv_per_task.csv")
    per = per[per.task.isin(score_tasks)]
    wide = per.pivot_table(index=["layer", "head"], columns="task", values="score")
    fv = pd.DataFrame({"fv": wide.mean(axis=1), "fv_task_std": wide.std(axis=1, ddof=1).fillna(0)}).reset_index()
    heads = heads.drop(columns=[c for c in ("fv", "fv_task_std") if c in heads]).merge(fv, on=["layer", "head"])
    res.write_table("fv_per_task.csv", per.reset_index(drop=True))
    res.write_table("heads.csv", heads)


def _reuse_accuracy(src: dict | None, n_eval: int) -> pd.DataFrame | None:
    """Per-task accuracy with nothing ablated, from an atlas folder's ablation.csv (same prompts)."""
    if not src or src["command"] != "atlas" or src["n_eval"] != n_eval or not (src["path"] / "ablation.csv").exists():
        return None
    abl = pd.read_csv(src["path"] / "ablation.csv")
    base = abl[(abl.k == 0) & (abl.ranking == abl.ranking.iloc[0])]
    return base[["task", "accuracy"]].reset_index(drop=True) if len(base) else None


# ----------------------------------------------------------------------------------------------------
# One checkpoint
# ----------------------------------------------------------------------------------------------------


def _arch_of(model) -> dict:
    return {"family": model.family, "n_layers": model.n_layers, "n_heads": model.n_heads, "d_model": model.d_model}


def score_checkpoint(ck: Checkpoint, folder: str | Path, tasks_dir=None, k: int | None = None, n_clean: int = 100,
                     n_corrupt: int = 25, n_eval: int = 50, seed: int = 0, reuse: Sequence[Path] = (),
                     dtype=None, device=None, log=print) -> dict:
    """Scores and accuracy of one checkpoint into ``folder``; returns its done.json record. A folder that
    is already done is read, not recomputed."""
    folder = Path(folder)
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    from .. import load

    model = load(ck.spec, revision=ck.revision, dtype=dtype, device=device)
    try:
        k = default_shots(model, k)
        tasks = default_tasks(model, tasks_dir)
        score_t, eval_t, disjoint = split_tasks(tasks)
        cfg = {"command": "dynamics-checkpoint", "model": ck.spec, "revision": ck.revision, "tasks": str(tasks_dir),
               "task_names": sorted(tasks), "score_tasks": sorted(score_t), "eval_tasks": sorted(eval_t), "k": k,
               "n_clean": n_clean, "n_corrupt": n_corrupt, "n_eval": n_eval, "seed": seed}
        res = ResultsDir(folder, cfg)
        src = find_reusable(reuse, cfg) if reuse else None
        if src and not (res.has("heads.csv") and res.has("fv_per_task.csv")):
            _reuse_scores(src, res, sorted(score_t))
            log(f"  scores reused from {src['path']} ({src['command']})")
        score_heads(model, score_t, res, k, n_clean, n_corrupt, seed, log=lambda *a: None)
        if not res.has("accuracy.csv"):
            acc = _reuse_accuracy(src, n_eval)
            if acc is None:
                from ..evaluate import icl_accuracy
                prompts = {n: build_eval_prompts(model, t, k, n_eval, seed + 1) for n, t in eval_t.items()}
                prompts.update(copy_prompts(model, n_eval, seed + 1))
                acc = pd.DataFrame([{"task": n, "accuracy": icl_accuracy(model, b)["accuracy"]}
                                    for n, b in prompts.items()])
            res.write_table("accuracy.csv", acc)
        record = {"name": ck.name, "model": ck.spec, "revision": ck.revision, "step": ck.step,
                  "sequences": ck.sequences, "tokens": ck.tokens, "arch": _arch_of(model),
                  "disjoint_tasks": disjoint, "reused_from": str(src["path"]) if src else None,
                  "seconds": round(time.time() - t0, 2)}
    finally:
        del model
        gc.collect()
    tmp = done.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(done)  # written last: a folder without done.json is unfinished
    return record


# ----------------------------------------------------------------------------------------------------
# Role transitions
# ----------------------------------------------------------------------------------------------------


def default_top(n_heads_total: int) -> int:
    """The atlas's top set: 2 % of all heads, at least 3."""
    return max(3, round(0.02 * n_heads_total))


def _role_grids(long: pd.DataFrame, col: str, top: int, rel: float):
    """(values (C, N), in-top-set mask (C, N), threshold) for score ``col``; rows = checkpoints by order."""
    grid = long.pivot_table(index="order", columns="hid", values=col).sort_index()
    vals = grid.to_numpy(dtype=float)
    final_max = np.nanmax(vals[-1]) if np.isfinite(vals[-1]).any() else np.nan
    thr = rel * final_max if final_max > 0 else np.inf
    ranks = pd.DataFrame(vals).rank(axis=1, ascending=False, method="first").to_numpy()
    return vals, (ranks <= top) & (np.nan_to_num(vals, nan=-np.inf) >= thr), thr, list(grid.columns), ranks


def role_transitions(long: pd.DataFrame, top: int | None = None, rel: float = 0.25, n_random: int = 1000,
                     seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """For the final top FV heads: were they top induction heads before their FV onset? And the reverse.

    ``long``: heads_over_training rows (order, step, layer, head, induction, fv). Returns (one row per
    (head, role), summary with the fractions and their random baselines); see the module docstring."""
    long = long.copy()
    long["hid"] = long.layer.astype(int) * 10_000 + long["head"].astype(int)
    n_total = long.hid.nunique()
    top = top or default_top(n_total)
    steps = long.groupby("order").step.first().sort_index()
    x = steps.to_numpy(dtype=float) if steps.notna().all() else steps.index.to_numpy(dtype=float)
    grids = {c: _role_grids(long, c, top, rel) for c in ("induction", "fv")}
    hids = grids["fv"][3]
    assert hids == grids["induction"][3]
    C = len(x)
    rows, summary = [], {"top": top, "rel_threshold": rel, "n_heads": n_total, "checkpoints": C,
                         "threshold": {c: float(g[2]) if np.isfinite(g[2]) else None for c, g in grids.items()}}
    rng = np.random.default_rng(seed)
    for role, other in (("fv", "induction"), ("induction", "fv")):
        vals, top_mask, _, _, _ = grids[role]
        ovals, otop, _, _, oranks = grids[other]
        final = [j for j in range(len(hids)) if top_mask[-1, j]]
        # ever_before[c, j]: head j was a top `other` head at some checkpoint < c
        ever_before = np.vstack([np.zeros((1, len(hids)), bool), np.logical_or.accumulate(otop, axis=0)[:-1]])
        onsets = []
        for j in final:
            onset = int(np.argmax(top_mask[:, j]))
            onsets.append(onset)
            before = otop[:onset, j]
            peak = int(np.nanargmax(ovals[:onset, j])) if onset else 0
            idx = np.flatnonzero(otop[:, j])
            rows.append({"role": role, "layer": hids[j] // 10_000, "head": hids[j] % 10_000,
                         f"final_{role}": float(vals[-1, j]), f"final_{other}": float(ovals[-1, j]),
                         "onset_step": x[onset], "onset_order": onset,
                         f"was_top_{other}_before": bool(before.any()),
                         f"first_top_{other}_step": x[idx[0]] if len(idx) else None,
                         f"last_top_{other}_step": x[idx[-1]] if len(idx) else None,
                         f"checkpoints_as_top_{other}_before": int(before.sum()),
                         f"max_{other}_before": float(np.nanmax(ovals[:onset, j])) if onset else None,
                         f"max_{other}_before_step": x[peak] if onset else None,
                         f"{other}_rank_at_max_before": int(oranks[peak, j]) if onset else None,
                         f"top_{other}_at_end": bool(otop[-1, j])})
        key = f"{role}_heads_through_{other}"
        if not final:
            summary[key] = {"n": 0, "fraction": None, "note": f"no head is a top {role} head at the final checkpoint"}
            continue
        observed = float(np.mean([ever_before[o, j] for o, j in zip(onsets, final)]))
        on = np.array(onsets)
        draws = np.empty(n_random)
        for i in range(n_random):
            heads = rng.choice(len(hids), size=len(final), replace=False)
            draws[i] = ever_before[rng.permutation(on), heads].mean()
        summary[key] = {"n": len(final), "fraction": observed, "heads": [_hname(hids[j]) for j in final],
                        "onset_steps": [x[o] for o in onsets],
                        "random_mean": float(draws.mean()),
                        "random_95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
                        "p_random_ge_observed": float((draws >= observed - 1e-12).mean()), "n_random": n_random}
    return pd.DataFrame(rows), summary


def _hname(hid: int) -> str:
    return f"L{hid // 10_000}H{hid % 10_000}"


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------


def _x(long_or_ck: pd.DataFrame) -> tuple[str, str]:
    """The column for the x axis and its label: step when every checkpoint has one, else order."""
    if long_or_ck.step.notna().all():
        return "step", "training step"
    return "order", "checkpoint (in the given order)"


def trajectories_figure(long: pd.DataFrame, top: int, path: Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt

    xcol, xlabel = _x(long)
    last = long[long.order == long.order.max()]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, col in zip(axes, ("induction", "fv", "prev_token")):
        best = last.sort_values(col, ascending=False, kind="stable").head(top)
        for _, r in best.iterrows():
            d = long[(long.layer == r.layer) & (long["head"] == r["head"])].sort_values("order")
            ax.plot(d[xcol], d[col], marker="o", ms=3, label=f"L{int(r.layer)}H{int(r['head'])}")
            if col == "fv" and "fv_task_std" in d:
                ax.fill_between(d[xcol], d[col] - d.fv_task_std, d[col] + d.fv_task_std, alpha=0.12)
        if xcol == "step":
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{col} score")
        ax.set_title(f"{col}: the final top-{top} heads" + (" (band: spread over tasks)" if col == "fv" else ""),
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def heatmaps_figure(long: pd.DataFrame, path: Path, title: str = "") -> Path:
    """(checkpoint x head) heat maps of the induction, FV and previous-token scores."""
    import matplotlib.pyplot as plt

    cols = ("induction", "fv", "prev_token")
    ck = long.groupby("order").first().sort_index()
    labels = [f"{int(s)}" if pd.notna(s) else n for s, n in zip(ck.step, ck.checkpoint)]
    heads = long[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    hl = [f"L{int(a)}H{int(b)}" for a, b in heads.to_numpy()]
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 0.3 * len(hl) * 3 + 4), max(3.5, 0.22 * len(ck) + 1.5)))
    for ax, col in zip(axes, cols):
        g = long.pivot_table(index="order", columns=["layer", "head"], values=col).sort_index()
        im = ax.imshow(g.to_numpy(), aspect="auto", cmap="magma" if col == "fv" else "viridis", interpolation="nearest")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
        step = max(1, len(hl) // 32)
        ax.set_xticks(range(0, len(hl), step))
        ax.set_xticklabels(hl[::step], rotation=90, fontsize=6)
        ax.set_xlabel("head")
        ax.set_ylabel("training step" if ck.step.notna().all() else "checkpoint")
        ax.set_title(f"{col} score", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def accuracy_figure(ck: pd.DataFrame, path: Path, metrics: pd.DataFrame | None = None, title: str = "") -> Path:
    """Few-shot accuracy at each checkpoint (evaluation tasks; copying prompts), and, for a training-lab
    run, the run's own evaluation conditions from metrics.csv (finer in steps)."""
    import matplotlib.pyplot as plt

    xcol, xlabel = _x(ck)
    n = 2 if metrics is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4), squeeze=False)
    a = axes[0][0]
    a.plot(ck[xcol], ck.accuracy, marker="o", label="few-shot accuracy (evaluation tasks)")
    if "copy_accuracy" in ck and ck.copy_accuracy.notna().any():
        a.plot(ck[xcol], ck.copy_accuracy, marker="s", label="copying prompts (fresh mapping, repeated query)")
    if xcol == "step":
        a.set_xscale("symlog", linthresh=1)
    a.set_xlabel(xlabel)
    a.set_ylabel("first-token accuracy")
    a.set_ylim(-0.02, 1.02)
    a.set_title("at each analysed checkpoint", fontsize=9)
    a.legend(fontsize=8)
    if metrics is not None:
        b = axes[0][1]
        for col, lab in METRIC_LABELS.items():
            if col in metrics:
                b.plot(metrics.step, metrics[col], label=lab, lw=1.5)
        b.set_xscale("symlog", linthresh=1)
        b.set_xlabel("training step")
        b.set_ylim(-0.02, 1.02)
        b.set_title("the run's evaluation conditions (metrics.csv)", fontsize=9)
        b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


METRIC_LABELS = {"stored_repeat_acc": "stored task, repeated query", "stored_novel_acc": "stored task, novel query (FV route)",
                 "fresh_repeat_acc": "fresh mapping, repeated query (copying)",
                 "conflict_acc": "conflict: the task's answer wins over the copied label"}


def transitions_figure(long: pd.DataFrame, trans: pd.DataFrame, summary: dict, path: Path, title: str = "") -> Path:
    """Each final top FV head's path in the (induction score, FV score) plane (and, dashed, each final top
    induction head's), coloured by training progress; and the random baselines."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colormaps

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    C = long.order.nunique()
    cmap = colormaps["plasma"]
    seen = set()
    for role, ls in (("fv", "-"), ("induction", "--")):
        for _, r in trans[trans.role == role].iterrows() if len(trans) else []:
            key = (int(r.layer), int(r["head"]))
            d = long[(long.layer == key[0]) & (long["head"] == key[1])].sort_values("order")
            a.plot(d.induction, d.fv, ls=ls, lw=1.2, color="k" if role == "fv" else "grey", alpha=0.6)
            a.scatter(d.induction, d.fv, c=d.order / max(C - 1, 1), cmap=cmap, s=18, zorder=3, vmin=0, vmax=1)
            if key not in seen:
                a.annotate(f"L{key[0]}H{key[1]}", (d.induction.iloc[-1], d.fv.iloc[-1]), fontsize=8,
                           xytext=(4, 4), textcoords="offset points")
                seen.add(key)
    thr = summary.get("threshold", {})
    if thr.get("induction") is not None:
        a.axvline(thr["induction"], color="tab:blue", ls=":", lw=1, label="top-induction threshold")
    if thr.get("fv") is not None:
        a.axhline(thr["fv"], color="tab:orange", ls=":", lw=1, label="top-FV threshold")
    sm = cm.ScalarMappable(cmap=cmap)
    sm.set_array([0, 1])
    fig.colorbar(sm, ax=a, label="training progress (first to last checkpoint)")
    a.set_xlabel("induction score")
    a.set_ylabel("FV score")
    a.set_title("paths of the final top FV heads (solid) and top induction heads (dashed)", fontsize=9)
    a.legend(fontsize=7, loc="upper left")
    labels, obs, means, lo, hi = [], [], [], [], []
    for key, lab in (("fv_heads_through_induction", "FV heads that were\ninduction heads first"),
                     ("induction_heads_through_fv", "induction heads that were\nFV heads first")):
        s = summary.get(key, {})
        if s.get("fraction") is None:
            continue
        labels.append(lab)
        obs.append(s["fraction"])
        means.append(s["random_mean"])
        lo.append(s["random_mean"] - s["random_95"][0])
        hi.append(s["random_95"][1] - s["random_mean"])
    xs = np.arange(len(labels))
    if labels:
        b.bar(xs - 0.18, obs, 0.36, label="observed", color="tab:orange")
        b.bar(xs + 0.18, means, 0.36, yerr=[lo, hi], capsize=4, label="random head sets (95 %)", color="lightgrey")
        for xi, o, m in zip(xs, obs, means):
            b.annotate(f"{o:.2f}", (xi - 0.18, o), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                       textcoords="offset points")
            b.annotate(f"{m:.2f}", (xi + 0.18, m), ha="center", va="bottom", fontsize=8, xytext=(8, 2),
                       textcoords="offset points")
        b.set_xticks(xs)
        b.set_xticklabels(labels, fontsize=8)
    b.set_ylim(0, 1.05)
    b.set_ylabel("fraction of heads")
    b.set_title("passed through the other role first", fontsize=9)
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------


def run_dynamics(out: str | Path, model: str | None = None, revisions=None, run: str | Path | None = None,
                 checkpoints=None, tasks_dir=None, k: int | None = None, n_clean: int = 100, n_corrupt: int = 25,
                 n_eval: int = 50, seed: int = 0, top: int | None = None, rel: float = 0.25,
                 reuse: Sequence[str | Path] = (), tokens_per_step: int | None = None, dtype=None, device=None,
                 n_random: int = 1000, log=print) -> dict:
    """``iclscope dynamics``: every checkpoint's head scores and accuracy, the long table, role transitions,
    figures and a report in ``out``. Give ``model`` + ``revisions`` (hub revisions) or ``run`` (+ optional
    ``checkpoints``). Returns the summary (also summary.json)."""
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
    candidates = reuse_candidates(reuse) if reuse else []
    res = ResultsDir(out, {"command": "dynamics", "source": source, "tasks": str(tasks_dir), "k": k,
                           "n_clean": n_clean, "n_corrupt": n_corrupt, "n_eval": n_eval, "seed": seed,
                           "dtype": None if dtype is None else str(dtype)})
    log(f"dynamics of {source}: {len(ckpts)} checkpoints -> {res.path}/")
    records = []
    for i, ck in enumerate(ckpts):
        folder = res.file("checkpoints") / ck.name
        if (folder / "done.json").exists():
            rec = json.loads((folder / "done.json").read_text())
            log(f"  [{i + 1}/{len(ckpts)}] {ck.name}: done earlier")
        else:
            rec = score_checkpoint(ck, folder, tasks_dir, k, n_clean, n_corrupt, n_eval, seed, candidates,
                                   dtype, device, log)
            log(f"  [{i + 1}/{len(ckpts)}] {ck.name}: {rec['seconds']:.1f} s"
                + (f" (scores reused from {rec['reused_from']})" if rec.get("reused_from") else ""))
        if records and rec["arch"] != records[0]["arch"]:
            raise IclscopeError(f"checkpoint {ck.name} ({rec['arch']}) has a different architecture from "
                                f"{records[0]['name']} ({records[0]['arch']}); finished checkpoints are kept in "
                                f"{res.path}/checkpoints/")
        records.append(rec)
    long, ck_table, acc = assemble(res.path, ckpts, records)
    res.write_table("heads_over_training.csv", long)
    res.write_table("checkpoints.csv", ck_table)
    res.write_table("accuracy_per_task.csv", acc)
    n_total = int(long[["layer", "head"]].drop_duplicates().shape[0])
    top = top or default_top(n_total)
    trans, tsum = role_transitions(long, top=top, rel=rel, n_random=n_random, seed=seed)
    res.write_table("transitions.csv", trans)
    title = _title(source)
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
    res.file("summary.json").write_text(json.dumps(summary, indent=2, default=_json))
    write_report(res.file("report.html"), f"Head dynamics: {title}", [
        {"heading": "What ran", "text": __doc__},
        {"heading": "Checkpoints", "table": ck_table},
        {"heading": "Score trajectories", "figure": figs["trajectories"]},
        {"heading": "Every head at every checkpoint", "figure": figs["heatmaps"]},
        {"heading": "Accuracy over training", "figure": figs["accuracy"]},
        {"heading": "Role transitions", "text": transition_text(tsum), "figure": figs["transitions"],
         "table": trans},
    ])
    log(transition_text(tsum))
    log(f"results in {res.path}/ (report.html) in {summary['seconds']} s")
    return summary


def _json(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if not np.isfinite(v) else float(v)
    return str(v)


def _title(source: str) -> str:
    p = Path(source)
    return "/".join(p.parts[-2:]) if p.exists() else source


def assemble(path: Path, ckpts: list[Checkpoint], records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The long head table, the per-checkpoint table and per-task accuracy from the checkpoint folders."""
    parts, rows, accs = [], [], []
    for order, (ck, rec) in enumerate(zip(ckpts, records)):
        folder = Path(path) / "checkpoints" / ck.name
        heads = pd.read_csv(folder / "heads.csv")
        meta = {"checkpoint": ck.name, "order": order, "step": ck.step, "sequences": ck.sequences, "tokens": ck.tokens}
        parts.append(heads.assign(**meta)[list(meta) + ["layer", "head"] + [c for c in SCORES if c in heads]])
        acc = pd.read_csv(folder / "accuracy.csv")
        accs.append(acc.assign(checkpoint=ck.name, step=ck.step)[["checkpoint", "step", "task", "accuracy"]])
        is_copy = acc.task.str.startswith("copy:")
        best = {c: heads.loc[heads[c].idxmax()] for c in ("induction", "fv", "prev_token")}
        rows.append({**meta, "accuracy": float(acc[~is_copy].accuracy.mean()) if (~is_copy).any() else np.nan,
                     "copy_accuracy": float(acc[is_copy].accuracy.mean()) if is_copy.any() else np.nan,
                     **{f"max_{c}": float(b[c]) for c, b in best.items()},
                     **{f"best_{c}_head": f"L{int(b.layer)}H{int(b['head'])}" for c, b in best.items()},
                     "seconds": rec.get("seconds"), "reused_from": rec.get("reused_from")})
    return pd.concat(parts, ignore_index=True), pd.DataFrame(rows), pd.concat(accs, ignore_index=True)


def transition_text(s: dict) -> str:
    """The role-transition result in words."""
    def thr(v):
        return "none: no head scores above 0 at the end" if v is None else f">= {v:.3g}"

    lines = [f"Top sets: the {s['top']} best heads by each score at a checkpoint, with a score of at least "
             f"{s['rel_threshold']:g} x the final checkpoint's best (induction {thr(s['threshold']['induction'])}, "
             f"FV {thr(s['threshold']['fv'])})."]
    for key, role, other in (("fv_heads_through_induction", "FV", "induction"),
                             ("induction_heads_through_fv", "induction", "FV")):
        r = s.get(key, {})
        if r.get("fraction") is None:
            lines.append(r.get("note", f"no final {role} heads"))
            continue
        lines.append(f"{r['fraction']:.2f} of the {r['n']} final top {role} heads ({', '.join(r['heads'])}) were top "
                     f"{other} heads before their {role} onset; random head sets of the same size over the same "
                     f"windows: {r['random_mean']:.2f} (95 % {r['random_95'][0]:.2f}-{r['random_95'][1]:.2f}), "
                     f"P(random >= observed) = {r['p_random_ge_observed']:.3f}.")
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# The testbed story
# ----------------------------------------------------------------------------------------------------


def _first_step(steps, values, level: float):
    """The first step at which ``values`` reaches ``level`` and stays there to the end, or None."""
    v = np.asarray(values, dtype=float)
    s = np.asarray(steps)
    ok = v >= level
    if not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    i = bad[-1] + 1 if len(bad) else 0
    return int(s[i])


def testbed_story(run_dir: str | Path, out: str | Path, checkpoints=None, top: int | None = None,
                  rel: float = 0.25, reuse: Sequence[str | Path] = (), log=print, **settings) -> dict:
    """The testbed's whole story: ``run_dynamics`` on a training-lab run of the token testbed, then when
    induction heads form, when FV heads form, whether FV heads passed through an induction phase, and
    how repeated-query and novel-query accuracy rise (from the run's metrics.csv). Writes the dynamics
    files plus story.json, story.png and story.html into ``out``. Returns the story (a dict)."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir).expanduser()
    dyn = run_dynamics(out, run=run_dir, checkpoints=checkpoints, top=top, rel=rel, reuse=reuse, log=log, **settings)
    out = Path(out)
    long = pd.read_csv(out / "heads_over_training.csv")
    ck = pd.read_csv(out / "checkpoints.csv")
    try:
        trans = pd.read_csv(out / "transitions.csv")
    except pd.errors.EmptyDataError:
        trans = pd.DataFrame(columns=["role", "layer", "head"])
    mpath = run_dir / "metrics.csv"
    metrics = pd.read_csv(mpath) if mpath.exists() else None
    story: dict[str, Any] = {"run": str(run_dir), "checkpoints": len(ck), "top": dyn["transitions"]["top"]}

    # heads: per checkpoint, the best induction / FV score and the mean over the final top heads
    ind_final, fv_final = float(ck.max_induction.iloc[-1]), float(ck.max_fv.iloc[-1])
    story["final_max_induction"], story["final_max_fv"] = float(ind_final), float(fv_final)
    story["induction_heads_form_step"] = _first_step(ck.step, ck.max_induction, 0.5 * ind_final)
    story["fv_heads_form_step"] = _first_step(ck.step, ck.max_fv, 0.5 * fv_final)
    if metrics is not None:
        ind_cols = [c for c in metrics if c.startswith("induction_L")]
        if ind_cols:  # the run's own induction score at every evaluation (finer than the checkpoints)
            mx = metrics[ind_cols].max(axis=1)
            story["induction_heads_form_step_metrics"] = _first_step(metrics.step, mx, 0.5 * float(mx.iloc[-1]))
        acc = {}
        for col in METRIC_LABELS:
            if col in metrics:
                acc[col] = {"final": float(metrics[col].iloc[-1]),
                            "reaches_0.5": _first_step(metrics.step, metrics[col], 0.5),
                            "reaches_0.9": _first_step(metrics.step, metrics[col], 0.9)}
        story["accuracy"] = acc
        if "conflict_copy" in metrics:
            story["conflict_copy_final"] = float(metrics.conflict_copy.iloc[-1])
        if "train_loss" in metrics:
            story["final_train_loss"] = float(metrics.train_loss.iloc[-1])
    story["role_transitions"] = dyn["transitions"]
    fvh = trans[trans.role == "fv"] if len(trans) else pd.DataFrame()
    story["fv_heads"] = [{"head": f"L{int(r.layer)}H{int(r['head'])}", "onset_step": r.onset_step,
                          "final_fv": r.final_fv, "final_induction": r.final_induction,
                          "was_top_induction_before": bool(r.was_top_induction_before),
                          "max_induction_before": r.max_induction_before,
                          "max_induction_before_step": r.max_induction_before_step,
                          "induction_rank_at_max_before": r.induction_rank_at_max_before,
                          "first_top_induction_step": r.first_top_induction_step}
                         for _, r in fvh.iterrows()]
    story["n_heads"] = int(dyn["heads"])
    story["text"] = story_text(story)
    (out / "story.json").write_text(json.dumps(story, indent=2, default=_json))

    # one figure: accuracy conditions, the best head of each kind, the final FV heads' induction scores
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    a, b, c = axes
    if metrics is not None:
        for col, lab in METRIC_LABELS.items():
            if col in metrics:
                a.plot(np.maximum(metrics.step, 1), metrics[col], label=lab, lw=1.5)
    a.set_xscale("log")
    a.set_xlabel("training step")
    a.set_ylabel("accuracy")
    a.set_title("what the model can do (metrics.csv)", fontsize=9)
    a.legend(fontsize=7)
    x = np.maximum(ck.step, 1)
    b.plot(x, ck.max_induction / (ind_final or 1), marker="o", label=f"best induction score (/ {ind_final:.2f})")
    b.plot(x, ck.max_fv / (fv_final or 1), marker="s", label=f"best FV score (/ {fv_final:.3f})")
    for key, col in (("induction_heads_form_step", "tab:blue"), ("fv_heads_form_step", "tab:orange")):
        if story.get(key):
            b.axvline(story[key], color=col, ls=":", lw=1)
    b.set_xscale("log")
    b.set_xlabel("training step")
    b.set_ylabel("fraction of the final value")
    b.set_title("when each kind of head forms (dotted: half the final value, for good)", fontsize=9)
    b.legend(fontsize=7)
    for _, r in fvh.iterrows():
        d = long[(long.layer == r.layer) & (long["head"] == r["head"])].sort_values("order")
        line, = c.plot(np.maximum(d.step, 1), d.induction, marker="o", ms=3, label=f"L{int(r.layer)}H{int(r['head'])} induction")
        c.plot(np.maximum(d.step, 1), d.fv / (fv_final or 1), ls="--", color=line.get_color(), lw=1,
               label=f"L{int(r.layer)}H{int(r['head'])} FV (/ final best)")
    c.set_xscale("log")
    c.set_xlabel("training step")
    c.set_title("the final FV heads: induction score (solid), FV score (dashed)", fontsize=9)
    c.legend(fontsize=6, ncol=2)
    fig.suptitle(f"testbed story: {_title(str(run_dir))}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "story.png", dpi=120)
    plt.close(fig)
    write_report(out / "story.html", f"Testbed story: {_title(str(run_dir))}", [
        {"heading": "What the data show", "text": story["text"], "figure": out / "story.png"},
        {"heading": "Role transitions", "figure": out / "transitions.png", "table": trans if len(trans) else None},
        {"heading": "Score trajectories", "figure": out / "trajectories.png"},
        {"heading": "Every head at every checkpoint", "figure": out / "heatmaps.png"},
        {"heading": "Accuracy", "figure": out / "accuracy.png"},
    ])
    log(story["text"])
    return story


def story_text(s: dict) -> str:
    """The testbed story in words, from the numbers (nothing here is assumed)."""
    def st(v):
        return "never (not for good)" if v is None else f"step {v}"

    parts = []
    acc = s.get("accuracy", {})
    if acc:
        parts.append("Accuracy (reaches 0.5 / 0.9 for good): " + "; ".join(
            f"{METRIC_LABELS[c]}: {st(v['reaches_0.5'])} / {st(v['reaches_0.9'])} (final {v['final']:.2f})"
            for c, v in acc.items() if c != "conflict_acc") + ".")
        if "conflict_acc" in acc:
            copy = s.get("conflict_copy_final")
            parts.append(f"Conflict prompts (the matching demonstration's label replaced by a wrong word): at the end "
                         f"the task's answer is predicted in {acc['conflict_acc']['final']:.2f} of them"
                         + (f", the copied wrong word in {copy:.2f}" if copy is not None else "") + ".")
    parts.append(f"Induction heads form (best induction score at half its final {s['final_max_induction']:.2f}, for good) "
                 f"at {st(s['induction_heads_form_step'])}"
                 + (f" (the run's own per-evaluation induction score: {st(s['induction_heads_form_step_metrics'])})"
                    if "induction_heads_form_step_metrics" in s else "")
                 + f"; FV heads form (best FV score at half its final {s['final_max_fv']:.3f}, for good) at "
                   f"{st(s['fv_heads_form_step'])}.")
    def missing(v):
        return v is None or (isinstance(v, float) and math.isnan(v))

    for h in s.get("fv_heads", []):
        peak = ("n/a (an FV head from the first checkpoint)" if missing(h["max_induction_before"]) else
                f"{h['max_induction_before']:.2f} at step {h['max_induction_before_step']:g} (rank "
                f"{int(h['induction_rank_at_max_before'])} of {s.get('n_heads', '?')} heads then)")
        parts.append(f"FV head {h['head']}: FV onset (first in the top FV set) at step {h['onset_step']:g}; final FV "
                     f"{h['final_fv']:.3f}, final induction {h['final_induction']:.2f}; highest induction score before "
                     f"its onset {peak}; "
                     + ("it was a top induction head before (first at step "
                        f"{h['first_top_induction_step']:g})." if h["was_top_induction_before"]
                        else f"it was never among the top {s.get('top')} induction heads before its onset."))
    parts.append(transition_text(s["role_transitions"]))
    return "\n\n".join(parts)
