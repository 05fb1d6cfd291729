"""Can earlier results stand in for a checkpoint's scores? Folders of earlier ``iclscope scores``,
``atlas`` or ``dynamics`` runs are matched to a checkpoint by their config.json: the same model (same path,
or same hub name and revision), the same task set, the same k, n_clean, n_corrupt and seed, and FV tasks
that include this checkpoint's scoring tasks. A match gives the attention scores and the per-task FV
scores (restricted to the scoring tasks); an atlas folder with the same n_eval also gives the accuracy
(its ablation study's no-ablation row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import IclscopeError
from ...report import ResultsDir


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


def reuse_scores(src: dict, res: ResultsDir, score_tasks: list[str]) -> None:
    """heads.csv and fv_per_task.csv of ``res`` from a matching earlier folder (FV over ``score_tasks``)."""
    heads = pd.read_csv(src["path"] / "heads.csv")
    per = pd.read_csv(src["path"] / "fv_per_task.csv")
    per = per[per.task.isin(score_tasks)]
    wide = per.pivot_table(index=["layer", "head"], columns="task", values="score")
    fv = pd.DataFrame({"fv": wide.mean(axis=1), "fv_task_std": wide.std(axis=1, ddof=1).fillna(0)}).reset_index()
    heads = heads.drop(columns=[c for c in ("fv", "fv_task_std") if c in heads]).merge(fv, on=["layer", "head"])
    res.write_table("fv_per_task.csv", per.reset_index(drop=True))
    res.write_table("heads.csv", heads)


def reuse_accuracy(src: dict | None, n_eval: int) -> pd.DataFrame | None:
    """Per-task accuracy with nothing ablated, from an atlas folder's ablation.csv (same prompts)."""
    if not src or src["command"] != "atlas" or src["n_eval"] != n_eval or not (src["path"] / "ablation.csv").exists():
        return None
    abl = pd.read_csv(src["path"] / "ablation.csv")
    base = abl[(abl.k == 0) & (abl.ranking == abl.ranking.iloc[0])]
    return base[["task", "accuracy"]].reset_index(drop=True) if len(base) else None
