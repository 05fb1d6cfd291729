"""Can earlier results stand in for a checkpoint's scores? Folders of earlier ``iclscope scores``,
``atlas`` or ``dynamics`` runs are matched to a checkpoint by their config.json (the same model: same path,
or same hub name and revision; the same task set) and by their stage records: the "attention" stage and the
"fv-<task>" stage of every scoring task must have finished with exactly the keys this checkpoint needs
(``attention_key``, ``fv_key``). A match gives those stages' tables, copied into the checkpoint's own
stages. An atlas folder whose "ablation" stage used the same n_eval, k, evaluation seed and evaluation
tasks also gives the accuracy (its no-ablation rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from ... import store
from ...errors import IclscopeError
from ...report import ResultsDir
from ...report.results import STAGES
from ..atlas import attention_key, fv_key, fv_stage_name


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


def _stage(folder: Path, name: str, key: dict) -> Path | None:
    """The folder of stage ``name`` in results folder ``folder`` if it finished with exactly ``key``."""
    sname = store.safe_name(name)
    try:
        rec = json.loads((folder / STAGES / f"{sname}.json").read_text())
    except (OSError, ValueError):
        return None
    if not rec.get("finished") or rec.get("key") != json.loads(store.dumps_json(key)):
        return None
    return folder / sname


def find_reusable(candidates: Sequence[Path], want: dict, k: int, n_clean: int, n_corrupt: int, seed: int
                  ) -> dict | None:
    """The first candidate whose finished stages can stand for this checkpoint's scores, or None. ``want``:
    the checkpoint folder's config (model, revision, tasks, task_names, score_tasks). Returns {"path",
    "command", "attention" (stage folder), "fv" ({task: stage folder})}."""
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
        if cfg.get("tasks") != want["tasks"] or sorted(cfg.get("task_names") or []) != want["task_names"]:
            continue
        att = _stage(folder, "attention", attention_key(seed))
        fv = {t: _stage(folder, fv_stage_name(t), fv_key(t, k, n_clean, n_corrupt, seed)) for t in want["score_tasks"]}
        if att is None or any(v is None for v in fv.values()):
            continue
        return {"path": folder, "command": cmd, "attention": att, "fv": fv}
    return None


def reuse_scores(src: dict, res: ResultsDir, score_tasks: list[str], k: int, n_clean: int, n_corrupt: int,
                 seed: int) -> None:
    """Fill the "attention" and "fv-<task>" stages of ``res`` that are not done from a matching earlier
    folder (``find_reusable``); ``score_heads`` then finds them done."""
    st = res.stage("attention", attention_key(seed))
    if not st.done:
        st.write_table("attention.csv", pd.read_csv(src["attention"] / "attention.csv"))
        st.finish({"reused_from": str(src["path"])})
    for t in score_tasks:
        s = res.stage(fv_stage_name(t), fv_key(t, k, n_clean, n_corrupt, seed))
        if not s.done:
            s.write_table("fv.csv", pd.read_csv(src["fv"][t] / "fv.csv", dtype={"task": str}))
            s.finish({"reused_from": str(src["path"])})


def reuse_accuracy(src: dict | None, n_eval: int, k: int, seed: int, eval_tasks: list[str]) -> pd.DataFrame | None:
    """Per-task accuracy with nothing ablated, from an atlas folder's finished ablation stage with the same
    prompts (n_eval, k, evaluation seed and tasks)."""
    if not src or src["command"] != "atlas":
        return None
    try:
        rec = json.loads((src["path"] / STAGES / "ablation.json").read_text())
    except (OSError, ValueError):
        return None
    key = rec.get("key") or {}
    if not rec.get("finished") or (key.get("n_eval"), key.get("k"), key.get("eval_seed"), key.get("eval_tasks")) \
            != (n_eval, k, seed + 1, eval_tasks):
        return None
    abl = pd.read_csv(src["path"] / "ablation" / "ablation.csv", dtype={"task": str, "ranking": str})
    base = abl[(abl.k == 0) & (abl.ranking == abl.ranking.iloc[0])]
    return base[["task", "accuracy"]].reset_index(drop=True) if len(base) else None
