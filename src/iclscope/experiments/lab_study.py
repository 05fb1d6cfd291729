"""``iclscope lab``: the second study's whole experiment set (Singh et al. 2024) in one command.

One results folder (a ``ResultsDir``, command "lab") holds every part, each its own results folder as the
single commands write it, and one report at the top:

    OUT/reference/      the reference run (``Trainer``; an ensemble over the seeds: reference/seed_S/)
    OUT/clamp-sweep/    ``clamp_sweep``: every subcircuit clamp against no clamp
    OUT/labels/         ``data_sweep`` over data.n_labels (the study: 5 / 10 / 15)
    OUT/classes/        ``data_sweep`` over data.n_classes (the study: 50 -> 200)
    OUT/additivity/     ``additivity`` of the reference run's final model, one folder per seed
    OUT/report.html     the story: reference phase change, clamps, data dependence, additivity
    OUT/summary.json    the headlines (each with its 95 % t interval over seeds) and each part's duration

Every training runs as a job on ONE engine (``iclscope.engine.Engine``), made once when something must
train (or the ``engine=`` given, never closed here): the reference run is submitted first and trains while
the sweeps' stacks run beside it. Each part is a stage of the folder (``ResultsDir.stage``): a finished part
is reused whole (its function is not even called), an interrupted one resumes (the sweeps reuse their
finished runs, a run resumes from its saved state). A second call with the same settings trains and writes
nothing but the folder's finished marker. A part that fails at run time (a diverging run) does not stop the
others; the call then raises ``SweepFailed`` naming it, after writing the report of what finished.
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

from .. import store
from ..errors import IclscopeError
from ..report import Finding, ResultsDir, run_metadata, write_report
from ..report.html import human_seconds
from ..report.results import FINISHED
from .lab import (CONDITION_TEXT, CONDITIONS, SweepEngine, SweepFailed, additivity, base_config, clamp_sweep,
                  data_sweep, phase_rows, run_curves, run_finished, t_interval, train_stack)

PARTS = ("reference", "clamp-sweep", "labels", "classes", "additivity")
DEFAULT_LABELS = (5, 10, 15)     # the study's labels sweep: phase change at ~0.25M / ~0.8M / ~1.2M sequences
DEFAULT_CLASSES = (50, 200)      # the study's classes sweep: 50 -> 200 classes delays it only slightly


# ------------------------------------------------------------------------------------------- arguments

def _int_list(name: str, values, lo: int) -> list[int]:
    """``values`` as a non-empty list of distinct whole numbers >= lo, else one IclscopeError line naming ``name``."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    try:
        if isinstance(values, (str, bytes, dict)):
            raise TypeError
        items = list(values)
    except TypeError:
        raise IclscopeError(f"{name}={values!r}: expected a list of whole numbers >= {lo}, e.g. "
                            f"{lo},{lo + 1}") from None
    if not items:
        raise IclscopeError(f"{name}: empty; give at least one whole number >= {lo}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
            raise IclscopeError(f"{name}: {v!r} is not a whole number >= {lo}")
        if int(v) in out:
            raise IclscopeError(f"{name}: {v!r} is repeated; give distinct values")
        out.append(int(v))
    return out


def _count(name: str, v, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise IclscopeError(f"{name}={v!r}: expected a whole number >= 1")
    return int(v)


def _configs(config, seeds, sequences, data_sequences, labels, classes) -> tuple[dict, dict]:
    """(base, reference config): the base config of every part and the reference run's, every labels /
    classes value checked against the config (a value the data cannot take is refused naming it)."""
    from ..train import validate_config

    base = base_config(config)
    base["train"]["seeds"] = list(seeds)
    base["train"]["threads"] = 1           # one CPU per engine job
    base["train"]["sequences"] = int(sequences)  # the clamp sweep's; the data sweeps get data_sequences
    ref = copy.deepcopy(base)
    ref["train"]["sequences"] = int(sequences)
    ref["name"] = "reference"
    ref = validate_config(ref)
    for arg, key, values in (("labels", "n_labels", labels), ("classes", "n_classes", classes)):
        for v in values:
            cfg = copy.deepcopy(base)
            cfg["data"][key] = v
            cfg["train"]["sequences"] = int(data_sequences)
            try:
                validate_config(cfg)
            except IclscopeError as e:
                raise IclscopeError(f"{arg}={v}: {str(e).splitlines()[0]}") from None
    return base, ref


# ------------------------------------------------------------------------------------------ engine jobs

def train_reference(jobs: list[tuple[dict, str]], cwd: str, threads: int = 1) -> dict:
    """An engine job: train the reference run (``lab.train_stack`` of one run); returns its seconds."""
    t0 = time.time()
    train_stack(jobs, cwd, threads)
    return {"seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------- the study

def lab_study(config=None, out: str | Path = "results/lab", seeds=(0, 1, 2), sequences: int = 600_000,
              labels=DEFAULT_LABELS, classes=DEFAULT_CLASSES, data_sequences: int | None = None,
              conditions: list[str] | None = None, additivity_n: int = 2048, additivity_how: str = "zero",
              workers: int = 2, address: str | None = None, log=print, engine=None, stack: bool = True) -> dict:
    """Run (or resume) the whole lab study into ``out``; returns the content of summary.json.

    ``config``: the base config (None: the reference setup; a TOML path, a shipped name or a dict).
    ``seeds``: the ensemble of every run. ``sequences``: training sequences of the reference run and of the
    clamp sweep; ``data_sequences`` those of the labels and classes sweeps (default: ``sequences``; the
    study's 15-label runs need ~1.2M). ``labels`` / ``classes``: the values of the two data sweeps.
    ``conditions``: the clamp sweep's (default: all of ``lab.CONDITIONS``). ``additivity_n`` /
    ``additivity_how``: sequences per measurement and how inactive heads are ablated ("zero" or "mean").
    ``workers``: CPUs of the embedded engine; ``address``: a Ray cluster instead ("auto", host:port; ``out``
    then on storage every node shares); ``engine``: an ``Engine`` to use instead of both (not closed here).
    ``stack``: runs of one shape train as one stacked model (see ``lab.clamp_sweep``).

    Every argument and every config a part will train is checked before anything is written (one
    IclscopeError line naming the culprit). Raises ``SweepFailed`` (exit 1) naming the failed parts once
    every other part has finished; the same call retries them and reuses the rest."""
    t0 = time.time()
    seeds = _int_list("seeds", seeds, 0)
    sequences = _count("sequences", sequences)
    data_sequences = _count("data_sequences", data_sequences, optional=True) or sequences
    labels = _int_list("labels", labels, 2)
    classes = _int_list("classes", classes, 2)
    conditions = list(CONDITIONS) if conditions is None else list(conditions)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise IclscopeError(f"conditions: unknown {', '.join(map(str, unknown)) or '(none given)'}; known: "
                            f"{', '.join(CONDITIONS)}")
    if "none" not in conditions:
        conditions = ["none"] + conditions  # the reference row of the clamp table
    additivity_n = _count("additivity_n", additivity_n)
    if additivity_how not in ("zero", "mean"):
        raise IclscopeError(f"additivity_how={additivity_how!r}: expected zero or mean")
    workers = _count("workers", workers)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise IclscopeError(f"address={address!r}: expected auto, host:port or ray://host:10001")
    base, ref_cfg = _configs(config, seeds, sequences, data_sequences, labels, classes)
    out = Path(out)
    settings = {"command": "lab", "base": base, "seeds": seeds, "sequences": sequences,
                "data_sequences": data_sequences, "labels": labels, "classes": classes, "conditions": conditions,
                "additivity": {"n": additivity_n, "how": additivity_how}, "stack": bool(stack)}
    eng = SweepEngine(engine, address, workers)
    try:
        with ResultsDir(out, settings, command="lab") as res:
            return _Study(res, base, ref_cfg, settings, eng, log, t0).run()
    finally:
        eng.close()


class _Study:
    """The driver: the parts as stages of ``res``, their durations, and the report."""

    def __init__(self, res: ResultsDir, base: dict, ref_cfg: dict, settings: dict, eng: SweepEngine, log, t0: float):
        self.res, self.base, self.ref_cfg, self.s, self.eng, self.log, self.t0 = res, base, ref_cfg, settings, eng, log, t0
        self.out = res.path
        self.parts: dict[str, dict] = {}   # name -> {"status", "seconds", "error"}
        self.stages = {}

    # ------------------------------------------------------------------------------------------ parts
    def _stage(self, name: str, key: dict, folders=None):
        """The part ``name`` as a stage; reused (recorded in ``parts``) when it finished with this key and its
        results folders (``folders``, default: the stage's own) still hold their finished markers."""
        st = self.res.stage(name, key)
        self.stages[name] = st
        if st.done and all((f / FINISHED).exists() for f in (folders or [st.path])):
            info = st.info or {}
            self.parts[name] = {"status": "reused", "seconds": info.get("seconds"), "error": None}
            self.log(f"{name}: reusing the finished part (took {human_seconds(info['seconds'])} when computed)"
                     if info.get("seconds") is not None else f"{name}: reusing the finished part")
        return st

    def _done(self, name: str, seconds: float) -> None:
        self.stages[name].finish({"seconds": round(seconds, 1)})
        self.parts[name] = {"status": "computed", "seconds": round(seconds, 1), "error": None}
        self.log(f"{name}: done in {human_seconds(seconds)}")

    def _failed(self, name: str, error: str, seconds: float | None = None) -> None:
        self.parts[name] = {"status": "failed", "seconds": None if seconds is None else round(seconds, 1),
                            "error": error}
        self.log(f"{name}: FAILED: {error}")

    def _sweep(self, name: str, key: dict, fn) -> None:
        st = self._stage(name, key)
        if name in self.parts:
            return
        t = time.time()
        try:
            fn(st.path)
        except SweepFailed as e:
            return self._failed(name, str(e).splitlines()[0], time.time() - t)
        self._done(name, time.time() - t)

    def run(self) -> dict:
        s, base, quiet = self.s, self.base, (lambda *a: None)
        log = self.log
        log(f"lab study: reference run, clamp sweep ({len(s['conditions'])} conditions), labels {s['labels']}, "
            f"classes {s['classes']}, additivity; {len(s['seeds'])} seed(s) each -> {self.out}/")
        ref_job = None
        ref = self._stage("reference", {"config": self.ref_cfg})
        ref_t = time.time()
        if "reference" not in self.parts:
            if run_finished(ref.path, self.ref_cfg):  # trained before its stage was recorded finished
                self._done("reference", 0.0)
            else:
                from ..engine import Resources
                log("reference: training on the engine, beside the sweeps")
                ref_job = self.eng.get().submit(train_reference, [(self.ref_cfg, str(ref.path.resolve()))],
                                                os.getcwd(), 1, resources=Resources(num_cpus=1),
                                                writes=self.out.resolve(), name="reference")
        try:
            common = dict(seeds=s["seeds"], log=log, stack=s["stack"])
            self._sweep("clamp-sweep", {"base": base, "sequences": s["sequences"], "conditions": s["conditions"]},
                        lambda p: clamp_sweep(base, out=p, sequences=s["sequences"], conditions=s["conditions"],
                                              engine=self.eng.get(), **common))
            for name, values in (("labels", s["labels"]), ("classes", s["classes"])):
                self._sweep(name, {"base": base, "sequences": s["data_sequences"], "values": values},
                            lambda p, name=name, values=values: data_sweep(
                                base, vary=f"{name}={','.join(map(str, values))}", out=p,
                                sequences=s["data_sequences"], engine=self.eng.get(), **common))
            if ref_job is not None:
                eng = self.eng.get()
                eng.wait([ref_job])
                outcome = eng.outcome(ref_job)
                ref_job = None
                if outcome["ok"] and run_finished(ref.path, self.ref_cfg):
                    self._done("reference", outcome["value"]["seconds"])
                else:
                    self._failed("reference", outcome.get("error") or "the run ended without finishing",
                                 time.time() - ref_t)
        finally:
            if ref_job is not None:  # interrupted: stop the reference run (it resumes on the next call)
                self.eng.get().cancel([ref_job])
        if self.parts["reference"]["status"] == "failed":
            self.parts["additivity"] = {"status": "not run", "seconds": None,
                                        "error": "the reference run failed"}
        else:
            a = s["additivity"]
            st = self._stage("additivity", {"run": "reference", "config": self.ref_cfg, **a},
                             [self.out / "additivity" / f"seed_{sd}" for sd, _ in self._members()])
            if "additivity" not in self.parts:
                t = time.time()
                for seed, member in self._members():
                    additivity(member, out=st.path / f"seed_{seed}", n=a["n"], how=a["how"], log=quiet)
                self._done("additivity", time.time() - t)
        failed = [n for n in PARTS if self.parts[n]["status"] != "reused" and self.parts[n]["status"] != "computed"]
        if not failed and self.res.was_finished and all(p["status"] == "reused" for p in self.parts.values()) \
                and self.res.has("report.html") and self.res.has("summary.json"):
            log(f"lab study: every part reused; report unchanged: {self.out / 'report.html'}")
            summary = self.res.read_json("summary.json")
        else:
            summary = self._write()
        if failed:
            raise SweepFailed(f"lab study: {len(failed)} part(s) did not finish: "
                              + "; ".join(f"{n} ({self.parts[n]['error']})" for n in failed)
                              + "; the same command retries them and reuses the finished parts")
        self.res.mark_finished({"parts": list(PARTS)})
        log(f"lab study done in {human_seconds(time.time() - self.t0)}; report: {self.out / 'report.html'}")
        return summary

    def _members(self) -> list[tuple[int, Path]]:
        """(seed, folder) of each member of the reference run (the run itself for one seed)."""
        ref = self.stages["reference"].path
        seeds = self.s["seeds"]
        return [(sd, ref if len(seeds) == 1 else ref / f"seed_{sd}") for sd in seeds]

    # ----------------------------------------------------------------------------------------- report
    def _write(self) -> dict:
        """summary.json and report.html from the parts' own outputs (their CSV and JSON files and figures)."""
        thr = float(self.base["eval"]["phase_threshold"])
        findings, sections, summary = [], [], {"out": str(self.out), "threshold": thr}
        ok = {n for n, p in self.parts.items() if p["status"] in ("computed", "reused")}
        if "reference" in ok:
            sec, f, summary["reference"] = self._reference(thr)
            sections.append(sec)
            findings += f
        if "clamp-sweep" in ok:
            sec, f, summary["clamps"] = self._clamps(thr)
            sections.append(sec)
            findings += f
        sweeps = [n for n in ("labels", "classes") if n in ok]
        if sweeps:
            sec, f, data = self._data(sweeps, thr)
            sections.append(sec)
            findings += f
            summary.update(data)
        if "additivity" in ok:
            sec, f, summary["additivity"] = self._additivity()
            sections.append(sec)
            findings += f
        durations = {n: {"status": p["status"], "seconds": p["seconds"],
                         "duration": None if p["seconds"] is None else human_seconds(p["seconds"]),
                         "error": p["error"] or ""} for n, p in sorted(self.parts.items(), key=lambda x: PARTS.index(x[0]))}
        total = round(time.time() - self.t0, 1)
        summary["durations"] = {"parts": durations, "this_call_seconds": total}
        not_ok = [n for n in PARTS if n not in ok]
        if not_ok:
            findings.insert(0, Finding("Not finished: " + "; ".join(f"{n} ({self.parts[n]['error']})" for n in not_ok)
                                       + ". The same command retries them."))
        sections.append({"heading": "Parts and their durations", "text": "Each part is its own results folder "
                         "with its own report.html. The reference run trains beside the sweeps on the same engine, "
                         "so the durations overlap; reused parts show the time they took when computed.",
                         "table": pd.DataFrame([{"part": n, "folder": f"{n}/", **durations[n]}
                                                for n in durations])})
        for i, sec in enumerate(sections):
            sec["heading"] = f"{i + 1}. {sec['heading']}"
        summary = json.loads(store.dumps_json(summary))  # strict JSON (NaN -> null), as written
        self.res.write_json("summary.json", summary)
        s = self.s
        write_report(self.res.file("report.html"), "Lab study: what needs to go right for an induction head",
                     sections, findings=findings,
                     metadata=run_metadata(started=self.t0, seeds=s["seeds"], sequences=s["sequences"],
                                           data_sequences=s["data_sequences"],
                                           part_seconds={n: d["seconds"] for n, d in durations.items()},
                                           part_status={n: d["status"] for n, d in durations.items()}),
                     subtitle="Singh et al. (ICML 2024), replicated: one reference run, subcircuit clamps, data "
                              "dependence, additivity of the trained heads")
        return summary

    def _reference(self, thr: float):
        from ..report.figures import loss_curves

        seeds = self.s["seeds"]
        ref = self.stages["reference"].path
        curves = run_curves(ref, seeds)  # the run's own metrics.csv, one per seed
        row = phase_rows("reference", curves, seeds, thr)
        fig = loss_curves(self.res.file("reference_loss.png"), {"reference": curves}, threshold=thr,
                          title=f"reference run: train loss ({len(seeds)} seed(s): mean and range)")
        plateau = [float(c.train_loss[(c.sequences > 0) & (c.train_loss > thr)].median()) for c in curves]
        heldout = {k: float(np.mean([c[k].iloc[-1] for c in curves])) for k in
                   ("heldout_labels_loss", "heldout_classes_loss") if k in curves[0]}
        data = {**{k: row[k] for k in ("seeds", "reached", "phase_change_mean", "phase_change_ci95_low",
                                       "phase_change_ci95_high", "per_seed", "final_train_loss")},
                "plateau_loss_median": float(np.nanmean(plateau)), **{f"final_{k}": v for k, v in heldout.items()}}
        table = pd.DataFrame([{"seed": sd, "phase change (sequences)": t, "plateau loss (median above threshold)": p,
                               "final train loss": float(c.train_loss.iloc[-1]),
                               **{f"final {k.replace('_', ' ')}": float(c[k].iloc[-1]) for k in heldout}}
                              for sd, t, p, c in zip(seeds, row["per_seed"].split(), plateau, curves)])
        pc = row["phase_change_mean"]
        text = (f"Train loss below {thr:.3f} (0.4 ln 2) from {_fmt_seq(pc)} sequences on average"
                f" ({row['reached']} of {row['seeds']} seeds reached it; per seed: {row['per_seed']}), after a "
                f"plateau near {data['plateau_loss_median']:.3f} (ln 2 = 0.693, chance in context)."
                if math.isfinite(pc) else f"No seed's train loss fell below {thr:.3f} (0.4 ln 2) within "
                f"{self.s['sequences']:,} sequences.")
        finding = Finding(text, value=None if not math.isfinite(pc) else pc, interval=_interval(row),
                          baseline="study (reference features): drop between ~1.6e5 and ~4e5 sequences",
                          interval_kind="95 % t interval over seeds")
        sec = {"heading": "The reference run and its phase change", "text": "The reference setup trained on "
               "every seed (one ensemble): loss on the query against sequences seen, mean over seeds and their "
               "range; the phase change is the first evaluation from which the smoothed train loss stays below "
               "0.4 ln 2. Full run: `reference/` (metrics.csv, summary.json and checkpoints per seed).",
               "figure": fig, "table": table}
        return sec, [finding], data

    def _clamps(self, thr: float):
        folder = self.stages["clamp-sweep"].path
        t = pd.read_csv(folder / "phase_change.csv")
        none = t[t.condition == "none"].iloc[0]
        findings, rows = [], []
        for _, r in t.iterrows():
            rows.append({"condition": r.condition, "what": CONDITION_TEXT.get(r.condition, r.get("what", "")),
                         "reached": f"{int(r.reached)} of {int(r.seeds)}", "per seed": r.per_seed,
                         "mean": r.phase_change_mean, "CI95 low": r.phase_change_ci95_low,
                         "CI95 high": r.phase_change_ci95_high, "vs none": r.vs_none})
            if r.condition == "none":
                continue
            findings.append(Finding(
                f"Clamp {r.condition} ({CONDITION_TEXT.get(r.condition, '')}): {_when(r, self.s['sequences'])}; "
                f"{_verdict(r.vs_none)}.",
                value=_num(r.phase_change_mean), interval=_interval(r), interval_kind="95 % t interval over seeds",
                baseline=f"no clamp: {_fmt_seq(none.phase_change_mean)}" + _ci_text(none),
                within_noise=not str(r.vs_none).startswith(("earlier", "later"))))
        data = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                for row in rows]
        sec = {"heading": "Clamps: which subcircuit speeds the phase change", "text": "Each condition trained over "
               "the seeds with its clamp at every step; sequences until the train loss stays below 0.4 ln 2. "
               "vs none: earlier or later only where the two 95 % t intervals do not overlap, else within noise "
               "(the sweep's own verdicts). Full sweep: `clamp-sweep/report.html`.",
               "figure": folder / "loss_curves.png", "table": pd.DataFrame(rows)}
        return sec, findings, data

    def _data(self, sweeps: list[str], thr: float):
        from ..report.figures.common import line_panels

        panels, findings, data, tables = [], [], {}, []
        for name in sweeps:
            t = pd.read_csv(self.stages[name].path / "phase_change.csv")
            half = (t.phase_change_ci95_high - t.phase_change_ci95_low) / 2
            panels.append({"title": f"phase change against {name}", "x": t[name], "xlabel": name,
                           "series": {"sequences to loss < 0.4 ln 2": t.phase_change_mean},
                           "err": half.fillna(0).to_numpy()})
            first, last = t.iloc[0], t.iloc[-1]
            findings.append(Finding(
                f"Phase change against {name}: " + "; ".join(
                    f"{int(r[name])} {name}: {_fmt_seq(r.phase_change_mean)}" for _, r in t.iterrows())
                + f" (sequences; within {self.s['data_sequences']:,}); {int(last[name])} against "
                f"{int(first[name])}: {_verdict(last.vs_first, int(first[name]))}.",
                value=_num(last.phase_change_mean), interval=_interval(last), interval_kind="95 % t interval over seeds",
                baseline=f"{name} {int(first[name])}: {_fmt_seq(first.phase_change_mean)}" + _ci_text(first),
                within_noise=not str(last.vs_first).startswith(("earlier", "later"))))
            data[name] = [{name: int(r[name]), "reached": int(r.reached), "seeds": int(r.seeds),
                           "phase_change_mean": _num(r.phase_change_mean), "ci95_low": _num(r.phase_change_ci95_low),
                           "ci95_high": _num(r.phase_change_ci95_high), "per_seed": r.per_seed,
                           "vs_first": r.vs_first} for _, r in t.iterrows()]
            tables.append(pd.DataFrame([{name: int(r[name]), "reached": f"{int(r.reached)} of {int(r.seeds)}",
                                         "per seed": r.per_seed, "mean": r.phase_change_mean,
                                         "CI95 low": r.phase_change_ci95_low, "CI95 high": r.phase_change_ci95_high,
                                         "final train loss": r.final_train_loss, "vs first": r.vs_first}
                                        for _, r in t.iterrows()]))
        fig = line_panels(self.res.file("data_sweeps.png"), panels)
        sec = {"heading": "Data dependence: labels and classes", "text": "The phase change against the number of "
               "labels and of training classes (mean over seeds, bars: 95 % t interval; a value whose seeds did not "
               "all reach the threshold has no bar). The study: 5 / 10 / 15 labels -> ~0.25M / ~0.8M / ~1.2M "
               "sequences; 50 -> 200 classes delays it only slightly. Full sweeps: "
               + ", ".join(f"`{n}/report.html`" for n in sweeps) + ".",
               "figure": fig, "tables": tables}
        return sec, findings, data

    def _additivity(self):
        folder = self.stages["additivity"].path
        per_seed, adds = [], []
        for sd, _ in self._members():
            d = folder / f"seed_{sd}"
            js = json.loads((d / "summary.json").read_text())
            per_seed.append({"seed": sd, "full accuracy": js["full_acc"], "full loss": js["full_loss"],
                             "min accuracy, one head ablated": js["min_acc_ablating_one_head"],
                             "max accuracy, one head alone": js["max_acc_one_head_alone"]})
            a = pd.read_csv(d / "add_back.csv")
            a["seed"] = sd
            adds.append(a)
        ps = pd.DataFrame(per_seed)
        add = pd.concat(adds)
        rows = []
        for k, g in add.groupby("heads_active"):
            lo, hi = t_interval(g.loss)
            rows.append({"heads active": int(k), "loss mean": float(g.loss.mean()), "loss CI95 low": lo,
                         "loss CI95 high": hi, "accuracy mean": float(g.acc.mean())})
        curve = pd.DataFrame(rows)
        mn, mx = ps["min accuracy, one head ablated"], ps["max accuracy, one head alone"]
        findings = [
            Finding(f"The trained last-layer heads are redundant: ablating any one head leaves accuracy at least "
                    f"{mn.mean():.3f} (mean over {len(ps)} seed(s); full model {ps['full accuracy'].mean():.3f}).",
                    value=float(mn.mean()), interval=_pair(t_interval(mn)), interval_kind="95 % t interval over seeds",
                    baseline="study: ~1.0"),
            Finding(f"The strongest head alone reaches accuracy {mx.mean():.3f}; adding heads back strongest first "
                    f"lowers the loss {', '.join(f'{v:.3g}' for v in curve['loss mean'].iloc[1:])}.",
                    value=float(mx.mean()), interval=_pair(t_interval(mx)), interval_kind="95 % t interval over seeds",
                    baseline="study: 0.98 alone; loss 0.117, 0.044, 0.010, 0.005, ~0.002")]
        figs = [folder / f"seed_{sd}" / "additivity.png" for sd, _ in self._members()[:1]]
        sec = {"heading": "Additivity of the trained heads", "text": "On each seed's final reference model, "
               "without clamps: each last-layer head alone (the others ablated), heads added back strongest first "
               "(by induction strength), each head ablated alone. Figure: the first seed; per-seed folders: "
               "`additivity/seed_S/report.html`.", "figures": figs, "tables": [ps, curve]}
        data = {"per_seed": per_seed, "add_back": rows}
        return sec, findings, data


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _pair(p) -> tuple[float, float] | None:
    lo, hi = p
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _interval(row) -> tuple[float, float] | None:
    return _pair((float(row["phase_change_ci95_low"]), float(row["phase_change_ci95_high"])))


def _fmt_seq(v) -> str:
    v = float(v)
    return "not reached" if not math.isfinite(v) else f"{v:,.0f}"


def _when(row, sequences: int) -> str:
    """The phase change of a phase-table row in words: when, and how many seeds reached it."""
    if not math.isfinite(float(row["phase_change_mean"])):
        return f"no phase change within {sequences:,} sequences (no seed of {int(row['seeds'])} reached the threshold)"
    some = f" ({int(row['reached'])} of {int(row['seeds'])} seeds reached it)" if row["reached"] < row["seeds"] else ""
    return f"phase change at {float(row['phase_change_mean']):,.0f} sequences{some}"


def _ci_text(row) -> str:
    p = _interval(row)
    return f" (95 % t interval {p[0]:,.0f} to {p[1]:,.0f})" if p else ""


def _verdict(v, first=None) -> str:
    v = str(v)
    if v.startswith(("earlier", "later")):
        return v + " (the 95 % t intervals do not overlap)"
    if v == "within noise":
        return "within noise of " + ("no clamp" if first is None else f"the first value ({first})")
    return "not comparable: " + v.removeprefix("n/a: ")
