"""Training-lab experiments: additivity of trained heads, clamp sweeps, data sweeps.

Each writes a results folder (config.json, CSV tables, PNG figures, report.html) and reuses finished
runs when started again with the same settings.

Layer names: the study calls the two layers "layer 1" and "layer 2"; iclscope counts from 0, so the
study's layer 1 is layer 0 here and its induction-head layer 2 is layer 1 (the last layer).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import Ablate
from ..data.synthetic import FewShotConfig, FewShotData
from ..errors import IclscopeError
from ..models.tiny import TinyModel
from ..readout import answer_correct, answer_loss, induction_strength
from ..report import ResultsDir, results, write_report
from ..store import safe_name
from ..report.figures import line_panels, loss_curves
from ..train import Trainer, detect_phase_change, load_config, stack_groups, validate_config
from ..train.phase import detect_transitions
from ..train.rundir import config_as_saved

# The subcircuit clamps of the study (reference section B). A = layer-0 previous-token attention and
# copy; B = the induction head's QK match; C = the induction head's copy (values). "graft" entries take
# the frozen, fully trained model of the unclamped condition.
CONDITIONS = {
    "none": [],
    "prev_token": [{"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token"}],
    "layer1": [{"kind": "Graft", "source": "@none", "layers": [0], "site": "resid_post"}],
    "layer1+match": [{"kind": "Graft", "source": "@none", "layers": [0], "site": "resid_post"},
                     {"kind": "ClampPattern", "heads": "layer:1", "pattern": "label_induction", "strength": 1.0}],
    "copy": [{"kind": "Graft", "source": "@none", "heads": "layer:1", "site": "v"}],
    "layer1+copy": [{"kind": "Graft", "source": "@none", "layers": [0], "site": "resid_post"},
                    {"kind": "Graft", "source": "@none", "heads": "layer:1", "site": "v"}],
}
CONDITION_TEXT = {
    "none": "no clamp",
    "prev_token": "layer-0 heads' patterns set to the ideal previous-token pattern (A's attention)",
    "layer1": "layer 0's output grafted from the trained model (all of A)",
    "layer1+match": "layer 0 grafted + layer-1 query rows set to the correct label (A + B)",
    "copy": "layer-1 values grafted from the trained model (C)",
    "layer1+copy": "layer 0 grafted + layer-1 values grafted (A + C)",
}
DATA_KEYS = {"labels": "data.n_labels", "classes": "data.n_classes", "burstiness": "data.bursty",
             "bursty": "data.bursty", "context": "data.context_pairs", "context_pairs": "data.context_pairs"}


# ----------------------------------------------------------------------------------------------------
# Additivity
# ----------------------------------------------------------------------------------------------------


def _final_checkpoint(run: Path) -> Path:
    ckpts = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else []
    if not ckpts:
        raise IclscopeError(f"{run}: no checkpoints (is it a training run folder? for an ensemble give RUN/seed_S)")
    return ckpts[-1]


def additivity(run: str | Path, out: str | Path | None = None, n: int = 2048, how: str = "zero", seed: int = 0,
               log=print) -> dict:
    """How the last layer's heads share the work, on the trained model of ``run``.

    - each head alone: every other last-layer head ablated; accuracy and loss;
    - heads added back strongest first (by induction strength): loss and accuracy with the top k active;
    - each head ablated alone.
    Ablation is ``how`` ("zero" or "mean": the head's mean output over the batch) at every position.
    Measured without the run's clamps, on n train-split sequences (and held-out classes).
    """
    run = Path(run)
    ckpt = _final_checkpoint(run)
    model = TinyModel.load(ckpt)
    meta = json.loads((ckpt / "iclscope.json").read_text())
    cfg = meta.get("train_config") or json.loads((run / "config.json").read_text())
    with ResultsDir(out or run / "additivity", {"command": "additivity", "run": str(run), "checkpoint": ckpt.name,
                                                "n": n, "how": how, "seed": seed}, overwrite=True,
                    command="additivity") as res:
        return _additivity(res, run, ckpt, model, cfg, n, how, seed, log)


def _additivity(res, run, ckpt, model, cfg, n, how, seed, log) -> dict:
    data = FewShotData(FewShotConfig(**{k: v for k, v in cfg["data"].items() if k != "kind"}))
    g = torch.Generator().manual_seed(seed)
    L = model.n_layers - 1
    H = model.n_heads
    batches = {"train": data.sample(n, "train", g), "heldout_classes": data.sample(n, "heldout_classes", g)}

    def measure(active: list[int], split="train") -> tuple[float, float]:
        b = batches[split]
        off = [(L, h) for h in range(H) if h not in active]
        ivs = [Ablate(off, how=how)] if off else []
        with torch.no_grad():
            q = model.run(b, interventions=ivs)[0][:, -1]
        return float(answer_loss(q, b.target, reduction="mean")), float(answer_correct(q, b.target).float().mean())

    with torch.no_grad():
        b = batches["train"]
        _, cache = model.run(b, record=["pattern"], layers=[L], positions=[-1])
        pat = cache.site("pattern", L)[:, :, 0]  # (n, H, T)
        # the first wrong label only, every sequence counted (positions as they are)
        strength = induction_strength(pat, b.correct_pos, b.wrong_pos[:, :1])  # (H,)
    full_loss, full_acc = measure(list(range(H)))
    single = pd.DataFrame([{"head": h, "induction_strength": float(strength[h]),
                            **dict(zip(["loss_only_this_head", "acc_only_this_head"], measure([h]))),
                            **dict(zip(["loss_ablate_this_head", "acc_ablate_this_head"],
                                       measure([x for x in range(H) if x != h])))} for h in range(H)])
    order = single.sort_values("induction_strength", ascending=False)["head"].tolist()
    add_back = pd.DataFrame([{"heads_active": k, "heads": " ".join(map(str, order[:k])),
                              **dict(zip(["loss", "acc"], measure(order[:k]))),
                              **dict(zip(["heldout_classes_loss", "heldout_classes_acc"],
                                         measure(order[:k], "heldout_classes")))} for k in range(H + 1)])
    res.write_table("heads.csv", single)
    res.write_table("add_back.csv", add_back)
    fig = line_panels(res.file("additivity.png"), [
        {"title": "one head active (others ablated)", "x": single["head"], "xlabel": f"layer-{L} head",
         "series": {"accuracy": single.acc_only_this_head, "induction strength": single.induction_strength},
         "kind": "bar"},
        {"title": "one head ablated", "x": single["head"], "xlabel": f"layer-{L} head",
         "series": {"accuracy": single.acc_ablate_this_head}, "kind": "bar", "ylim": (0, 1.05)},
        {"title": "heads added back, strongest first", "x": add_back.heads_active, "xlabel": "heads active",
         "series": {"train loss": add_back.loss, "held-out classes loss": add_back.heldout_classes_loss},
         "logy": True},
    ])
    summary = {"run": str(run), "checkpoint": ckpt.name, "full_loss": full_loss, "full_acc": full_acc,
               "min_acc_ablating_one_head": float(single.acc_ablate_this_head.min()),
               "max_acc_one_head_alone": float(single.acc_only_this_head.max()),
               "loss_by_heads_added": add_back.loss.round(5).tolist()}
    res.write_json("summary.json", summary)
    write_report(res.file("report.html"), f"Additivity of layer-{L} heads: {run}", [
        {"heading": "What was measured", "text": additivity.__doc__},
        {"heading": "Figures", "figure": fig},
        {"heading": "Per head", "table": single},
        {"heading": "Adding heads back, strongest first", "table": add_back},
    ])
    res.mark_finished()
    log(single.round(3).to_string(index=False))
    log(add_back[["heads_active", "heads", "loss", "acc"]].round(4).to_string(index=False))
    log(f"full model: loss {full_loss:.4f}, acc {full_acc:.3f}; ablating any one head leaves acc >= "
        f"{summary['min_acc_ablating_one_head']:.3f}; results in {res.path}/")
    return summary


# ----------------------------------------------------------------------------------------------------
# Sweeps: many trainings as jobs on the engine (iclscope.engine: an embedded Ray or a cluster)
# ----------------------------------------------------------------------------------------------------


class SweepFailed(IclscopeError):
    """Some runs of a sweep failed (each reported on its own line as it ended); the others finished and are
    reused when the same command runs again, which retries only the failed ones. A run-time fault, not bad
    input: the CLI exits 1 on it."""

    exit_code = 1


def train_stack(jobs: list[tuple[dict, str]], cwd: str, threads: int = 1) -> list[str]:
    """An engine job: train one stack of runs (``Trainer.stack``; every run writes its own folder) with
    ``threads`` torch threads, from the sweep's working folder ``cwd`` when this host has it (relative
    graft sources in the configs resolve from there). Returns the run folders."""
    if os.path.isdir(cwd):
        os.chdir(cwd)  # a fresh worker process per job (max_calls=1): nothing else sees this
    torch.set_num_threads(int(threads))
    Trainer.stack(jobs, progress=False, log=lambda *a: None).train()
    return [o for _, o in jobs]


def run_finished(out: Path, cfg: dict) -> bool:
    """A run is reused only if it finished (its finished marker, written last) with exactly ``cfg``."""
    try:
        old = json.loads((out / results.CONFIG).read_text())
        return old == config_as_saved(old, cfg) and json.loads((out / results.FINISHED).read_text()) is not None
    except (OSError, ValueError):
        return False


class SweepEngine:
    """The sweep's engine, started only when a run needs training: the one given, else an
    ``iclscope.engine.Engine`` made from ``address`` (None: embedded, ``workers`` CPUs) and closed by
    ``close()``."""

    def __init__(self, engine, address: str | None, workers: int):
        self.engine, self.address, self.workers, self.own = engine, address, int(workers), engine is None

    def get(self):
        if self.engine is None:
            from ..engine import Engine
            self.engine = Engine(address=self.address, num_cpus=self.workers if self.address is None else None)
        return self.engine

    def cpus(self) -> int:
        """CPUs to keep busy: ``workers`` on an embedded engine, all the cluster's CPUs on a joined one."""
        if self.address is None and self.own:
            return self.workers
        return max(1, int(sum(n["CPU"] for n in self.engine.nodes())))

    def close(self) -> None:
        if self.own and self.engine is not None:
            self.engine.close()
            self.engine = None


def _run_all(jobs: list[tuple[dict, Path]], folder: Path, engine: SweepEngine, log, stack: bool = True) -> list[Path]:
    """Train the (cfg, out) jobs (``out`` in the sweep's results folder ``folder``), finished ones reused;
    returns the folders of the runs that failed.

    The others are grouped into as few stacks as their shapes allow (``train.stack_groups``: one stacked
    model per group, each run still writing its own folder; ``stack=False``: one run per stack). Each
    stack is one engine job asking for 1 CPU (1 torch thread), so on a cluster the stacks spread over
    the nodes; each job first checks that its node can write the sweep folder (shared storage). With
    fewer stacks than CPUs to keep busy (``workers`` locally, the cluster's CPUs on a cluster) the
    largest stacks are split in halves (a stack of this model's size is compute-bound beyond a few
    members, so a second core does more than a larger stack). A stack that fails is reported on one
    line naming its run folders and the error, and the others still finish. Killing the sweep leaves
    no worker behind: the engine's jobs are cancelled on the way out (Ctrl-C), and an embedded Ray dies
    with the sweep process (the engine's watchdog) even when that is SIGKILLed."""
    todo = [(c, o) for c, o in jobs if not run_finished(o, c)]
    for c, o in jobs:
        if (c, o) not in todo:
            log(f"  reusing finished run {o}")
    if not todo:
        return []
    from ..engine import Resources
    from ..report.progress import progress

    eng = engine.get()
    stacks = stack_groups(todo) if stack else [[job] for job in todo]
    cpus = engine.cpus()
    while len(stacks) < cpus and max(map(len, stacks)) > 1:  # keep every CPU busy: split the largest
        big = max(stacks, key=len)
        stacks.remove(big)
        stacks += [big[:len(big) // 2], big[len(big) // 2:]]
    if len(stacks) < len(todo):
        log(f"  {len(todo)} runs in {len(stacks)} stack(s)")
    cwd = os.getcwd()
    failed: list[Path] = []
    running = {}
    try:
        with progress(len(todo), "trainings", unit="run") as bar:
            for g in stacks:
                threads = int(g[0][0]["train"]["threads"])
                job = eng.submit(train_stack, [(c, str(Path(o).resolve())) for c, o in g], cwd, threads,
                                 resources=Resources(num_cpus=threads), writes=Path(folder).resolve(),
                                 name=", ".join(Path(o).name for _, o in g))
                running[job] = g
            while running:
                ended, _ = eng.wait(list(running))
                for job in ended:
                    g = running.pop(job)
                    out = eng.outcome(job)
                    bar.update(len(g))
                    names = ", ".join(str(o) for _, o in g)
                    if out["ok"]:
                        bar.write(f"  finished {names}")
                    else:
                        failed += [Path(o) for _, o in g]
                        host = f" (on {out['host']})" if out.get("host") else ""
                        bar.write(f"  FAILED {names}{host}: {out['error']}")
    finally:
        if running:
            eng.cancel(list(running))
    return failed


def _failed(failed: list[Path], not_run: list[Path] = ()) -> SweepFailed:
    msg = f"{len(failed)} run(s) of the sweep failed: {', '.join(map(str, failed))} (errors above)"
    if not_run:
        msg += f"; not trained, since they graft from a failed run: {', '.join(map(str, not_run))}"
    return SweepFailed(msg + "; the same command retries them and reuses the finished runs")


def run_curves(out: Path, seeds: list[int]) -> list[pd.DataFrame]:
    """Each seed's metrics.csv of the run folder ``out`` (``out/seed_S`` for an ensemble), in seed order."""
    R = len(seeds)
    return [pd.read_csv((out if R == 1 else out / f"seed_{s}") / "metrics.csv") for s in seeds]


def phase_rows(name: str, dfs: list[pd.DataFrame], seeds, threshold: float) -> dict:
    """One table row: the phase change (first evaluation from which train loss stays below ``threshold``,
    the few-shot protocol) of each seed's curve, their mean, standard deviation and a 95 % t interval
    over the seeds that reached it (mean +- t(0.975, n-1) x sd / sqrt n; NaN with fewer than 2), and
    the number of loss transitions (``detect_transitions``) per seed."""
    times, n_trans = [], []
    for df in dfs:
        pc = detect_phase_change(df.sequences, df.train_loss, df.step, threshold)
        times.append(pc["sequences"] if pc else float("nan"))
        n_trans.append(len(detect_transitions(df.sequences, df.train_loss, df.step)))
    t = np.array(times, dtype=float)
    ok = t[np.isfinite(t)]
    lo, hi = t_interval(ok)
    return {"condition": name, "seeds": len(seeds), "reached": int(len(ok)),
            "phase_change_mean": float(ok.mean()) if len(ok) else float("nan"),
            "phase_change_std": float(ok.std(ddof=1)) if len(ok) > 1 else float("nan"),
            "phase_change_ci95_low": lo, "phase_change_ci95_high": hi,
            "per_seed": " ".join("-" if not np.isfinite(v) else f"{v:.3g}" for v in t),
            "transitions_per_seed": " ".join(str(n) for n in n_trans),
            "final_train_loss": float(np.mean([df.train_loss.iloc[-1] for df in dfs]))}


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of ``values`` (n,): mean +- t((1+level)/2, n-1) x sd / sqrt n; (NaN, NaN)
    with fewer than 2 values."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def versus_reference(table: pd.DataFrame, ref: str) -> list[str]:
    """For each row of a phase table: whether its phase change differs from row ``ref`` (a condition name)
    beyond the two 95 % t intervals ("earlier than REF" / "later than REF" when the intervals do not
    overlap, "within noise" when they do, "n/a: ..." when an interval is missing)."""
    r = table[table.condition == ref].iloc[0]
    out = []
    for _, row in table.iterrows():
        if row.condition == ref:
            out.append("reference")
        elif row.reached < row.seeds or r.reached < r.seeds:
            out.append("n/a: not every seed reached the threshold")
        elif not (np.isfinite(row.phase_change_ci95_low) and np.isfinite(r.phase_change_ci95_low)):
            out.append("n/a: fewer than 2 seeds, no interval")
        elif row.phase_change_ci95_high < r.phase_change_ci95_low:
            out.append(f"earlier than {ref}")
        elif row.phase_change_ci95_low > r.phase_change_ci95_high:
            out.append(f"later than {ref}")
        else:
            out.append("within noise")
    return out


def base_config(config) -> dict:
    """A validated config from None (the reference setup), a TOML path, or a dict."""
    return load_config(config) if config is None or isinstance(config, (str, Path)) else validate_config(config)


def clamp_sweep(config=None, out: str | Path = "results/clamp-sweep", seeds=(0, 1, 2), sequences: int = 600_000,
                conditions: list[str] | None = None, workers: int = 2, log=print, stack: bool = True,
                address: str | None = None, engine=None) -> pd.DataFrame:
    """Train each subcircuit-clamp condition (``CONDITIONS``) as an ensemble over ``seeds`` and compare the
    time to the phase change (train loss below ``eval.phase_threshold``, by default 0.4 ln 2).

    Graft conditions graft from the frozen final model of the unclamped run (member r into member r),
    so "none" trains first. The conditions of each stage train stacked into one model (``stack``, the
    default; each member under its own condition's clamps, each condition still its own run folder;
    ``stack=False``: one run per stack). Each stack is a job on the engine (``iclscope.engine``):
    ``address=None`` an embedded local Ray of ``workers`` CPUs, ``"auto"`` or host:port an existing
    cluster (``out`` then on storage every node shares); ``engine``: an ``Engine`` to use instead (not
    closed here). Writes phase_change.csv, loss_curves.png and report.html; raises ``SweepFailed``
    naming the runs that failed once the others have finished.
    """
    conditions = list(conditions or CONDITIONS)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise IclscopeError(f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITIONS)}")
    base = base_config(config)
    base["train"]["seeds"] = [int(s) for s in seeds]
    base["train"]["sequences"] = int(sequences)
    base["train"]["threads"] = 1
    base["eval"]["batch"] = min(int(base["eval"]["batch"]), 256)  # many runs: lighter evaluations
    out = Path(out)
    eng = SweepEngine(engine, address, workers)
    try:
        with ResultsDir(out, {"command": "clamp-sweep", "base": base, "conditions": conditions},
                        command="clamp-sweep") as res:
            table = _clamp_sweep(res, out, base, conditions, seeds, sequences, eng, log, stack)
            res.mark_finished()
    finally:
        eng.close()
    return table


def _clamp_sweep(res, out, base, conditions, seeds, sequences, engine: SweepEngine, log, stack=True) -> pd.DataFrame:
    needs_none = any("@none" in json.dumps(CONDITIONS[c]) for c in conditions)
    if needs_none and "none" not in conditions:
        conditions = ["none"] + conditions

    def cfg_for(name):
        cfg = copy.deepcopy(base)
        cfg["name"] = name
        cfg["clamp"] = json.loads(json.dumps(CONDITIONS[name]).replace('"@none"', json.dumps(str(out / "none" / "final"))))
        return validate_config(cfg)

    t0 = time.time()
    first = [c for c in conditions if "@none" not in json.dumps(CONDITIONS[c])]
    later = [c for c in conditions if c not in first]
    log(f"clamp sweep: {len(conditions)} conditions x {len(seeds)} seeds x {sequences:,} sequences -> {out}/")
    failed = _run_all([(cfg_for(c), out / c) for c in first], out, engine, log, stack)
    if out / "none" in failed:  # the graft conditions need its final model
        if later:
            log(f"  not training {', '.join(later)}: they graft from none, which failed")
        raise _failed(failed, [out / c for c in later])
    failed += _run_all([(cfg_for(c), out / c) for c in later], out, engine, log, stack)
    if failed:
        raise _failed(failed)
    thr = float(base["eval"]["phase_threshold"])
    curves = {c: run_curves(out / c, base["train"]["seeds"]) for c in conditions}
    table = pd.DataFrame([phase_rows(c, curves[c], seeds, thr) for c in conditions])
    if "none" in conditions:
        table["vs_none"] = versus_reference(table, "none")
    table["what"] = [CONDITION_TEXT[c] for c in conditions]
    res.write_table("phase_change.csv", table)
    fig = loss_curves(res.file("loss_curves.png"), {c: curves[c] for c in conditions}, threshold=thr,
                      title=f"train loss by clamp condition ({len(seeds)} seeds: mean and range)")
    write_report(res.file("report.html"), "Clamp sweep", [
        {"heading": "Conditions", "text": "\n\n".join(f"{c}: {CONDITION_TEXT[c]}" for c in conditions)},
        {"heading": "Loss curves", "figure": fig},
        {"heading": f"Sequences until train loss < {thr:.3f}", "table": table,
         "text": "Per seed, mean, sd and a 95 % t interval over the seeds that reached it; vs_none: earlier or "
                 "later than no clamp only when the two intervals do not overlap, otherwise within noise."},
    ])
    log(table.drop(columns=["what"]).to_string(index=False))
    log(f"clamp sweep done in {time.time() - t0:.0f} s; results in {out}/")
    return table


def data_sweep(config=None, vary: str = "labels=5,10,15", out: str | Path = "results/data-sweep", seeds=(0, 1),
               sequences: int | None = None, workers: int = 2, log=print, stack: bool = True,
               address: str | None = None, engine=None) -> pd.DataFrame:
    """Phase-change time against one data property: ``vary`` is NAME=v1,v2,... with NAME one of labels,
    classes, burstiness, context (or any dotted config key such as data.exemplar_noise). Values that keep
    the model's shape (classes, burstiness, noise, learning rate) train stacked into one model
    (``stack``); values that change it (labels: the label vocabulary; context: the sequence length) go
    into separate stacks, automatically. The stacks run as jobs on the engine, as in ``clamp_sweep``
    (``workers``, ``address``, ``engine``); raises ``SweepFailed`` naming the runs that failed."""
    name, sep, values = vary.partition("=")
    if not sep or not values:
        raise IclscopeError(f"--vary {vary!r}: expected NAME=v1,v2,... e.g. labels=5,10,15")
    key = DATA_KEYS.get(name, name)
    if "." not in key:
        raise IclscopeError(f"--vary: unknown property {name!r}; use {', '.join(sorted(DATA_KEYS))} or a dotted key")
    section, field = key.split(".", 1)
    base = base_config(config)
    if field not in base[section] and section in ("train", "eval"):
        raise IclscopeError(f"--vary: unknown key {key}")
    base["train"]["seeds"] = [int(s) for s in seeds]
    base["train"]["threads"] = 1
    if sequences:
        base["train"]["sequences"] = int(sequences)
    out = Path(out)
    vals = [json.loads(v) if v.replace(".", "", 1).replace("-", "", 1).isdigit() else v for v in values.split(",")]
    jobs = []
    for v in vals:  # every config is checked before anything is written
        cfg = copy.deepcopy(base)
        cfg[section][field] = v
        cfg["name"] = f"{name}={v}"
        jobs.append((validate_config(cfg), out / safe_name(f"{name}={v}")))  # a user value: never a path
    eng = SweepEngine(engine, address, workers)
    try:
        with ResultsDir(out, {"command": "data-sweep", "base": base, "vary": key, "values": vals},
                        command="data-sweep") as res:
            table = _data_sweep(res, out, base, name, key, vals, jobs, seeds, eng, log, stack)
            res.mark_finished()
    finally:
        eng.close()
    return table


def _data_sweep(res, out, base, name, key, vals, jobs, seeds, engine: SweepEngine, log, stack=True) -> pd.DataFrame:
    log(f"data sweep over {key} = {vals}: {len(vals)} runs x {len(seeds)} seeds -> {out}/")
    failed = _run_all(jobs, out, engine, log, stack)
    if failed:
        raise _failed(failed)
    thr = float(base["eval"]["phase_threshold"])
    curves = {f"{name}={v}": run_curves(o, base["train"]["seeds"]) for v, (_, o) in zip(vals, jobs)}
    table = pd.DataFrame([phase_rows(k, c, seeds, thr) for k, c in curves.items()])
    table["vs_first"] = versus_reference(table, table.condition.iloc[0])
    table.insert(1, name, vals)
    res.write_table("phase_change.csv", table)
    fig = loss_curves(res.file("loss_curves.png"), curves, threshold=thr, title=f"train loss by {name}")
    fig2 = line_panels(res.file("phase_change.png"), [
        {"title": f"phase change against {name}", "x": vals, "xlabel": name,
         "series": {"sequences to loss < threshold": table.phase_change_mean}, "err": table.phase_change_std}])
    write_report(res.file("report.html"), f"Data sweep: {key}", [
        {"heading": "Phase change", "figure": fig2, "table": table}, {"heading": "Loss curves", "figure": fig}])
    log(table.to_string(index=False))
    return table
