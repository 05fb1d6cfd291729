"""``iclscope study STUDY.toml --out DIR``: a whole study (every model, every checkpoint) as one job graph on
Ray (``iclscope.engine``): one machine by default, a cluster with ``--address auto``.

Jobs (one folder each under DIR, named with ``store.safe_name``):

    atlas-<label>[-<revision>]   run_atlas of one model at one revision
    dynamics-<label>             run_dynamics of a model with two or more revisions, after its atlas jobs,
                                 reusing their scores (``reuse=``)
    compare                      run_compare of the final checkpoints (each model's last revision), after
                                 those atlas jobs; when some failed, over the others into
                                 ``compare-without-<labels>``

DIR is a results folder (``ResultsDir``, command "study") holding ``study.json`` (each job's status, time,
host, resources, error), ``report.html`` (the table of jobs and the comparison's summary), ``logs/<job>.log``
and, when tasks are selected from several folders, ``tasks/``. Resumable job by job: a job whose folder holds
the finished marker (``.iclscope-finished.json``) is never recomputed; a failed job is reported with its
one-line error, never stops the others, and runs again on the next run. The study's exit status is 1 when
any job failed or could not run (after every other job ran), else 0.

Changing [tasks] or [protocol] of an existing study is refused (the existing jobs would not match); adding
or removing models is fine: new jobs run, old folders stay.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import IclscopeError
from ..report.results import CONFIG, FINISHED, ResultsDir
from ..schema.study import Study, load_study
from ..store import safe_name

ENDED = ("finished", "failed", "blocked")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ the worker side

def _file_log(path: str | None) -> Callable[[str], None]:
    def log(line: str) -> None:
        if path:
            with open(path, "a") as f:
                f.write(f"{line}\n")
    return log


def mark_finished(folder: str | Path, command: str) -> None:
    """Write ``folder``'s finished marker through its ResultsDir (same config) unless the command did."""
    folder = Path(folder)
    if (folder / FINISHED).exists():
        return
    cfg = json.loads((folder / CONFIG).read_text())
    with ResultsDir(folder, cfg, command=command) as res:
        res.mark_finished({"by": "iclscope study"})


def atlas_job(spec: str, out: str, kwargs: dict, log_path: str | None = None) -> dict:
    """One atlas (in a Ray worker): ``run_atlas(spec, out, **kwargs)``, then the folder marked finished."""
    from .atlas import run_atlas

    summary = run_atlas(spec, out, log=_file_log(log_path), **kwargs)
    mark_finished(out, "atlas")
    return {k: summary.get(k) for k in ("heads", "max_induction", "max_fv", "seconds")}


def dynamics_job(out: str, kwargs: dict, log_path: str | None = None) -> dict:
    """One dynamics run (in a Ray worker): ``run_dynamics(out, **kwargs)``, then marked finished."""
    from .dynamics import run_dynamics

    summary = run_dynamics(out, log=_file_log(log_path), **kwargs)
    mark_finished(out, "dynamics")
    return {k: summary.get(k) for k in ("checkpoints", "heads", "seconds")}


def compare_job(dirs: list[str], out: str, labels: list[str], fractions: list[float],
                log_path: str | None = None) -> dict:
    """The comparison (in a Ray worker): ``run_compare(dirs, out, labels, fractions)``, then marked finished."""
    from .compare import FRACTIONS, run_compare

    # the atlas's ablation fractions start at 0 (no ablation); the comparison's are top-k sizes in (0, 1]
    top = tuple(f for f in fractions if f > 0) or FRACTIONS
    summary = run_compare(dirs, out, labels=labels, fractions=top, log=_file_log(log_path))
    mark_finished(out, "compare")
    return {"models": [m.get("label") for m in summary.get("models", [])]}


# ------------------------------------------------------------------------------------------------ planning

@dataclass
class PlannedJob:
    """One job of the study. ``after``: jobs that must have ended (finished or failed) before it starts."""

    id: str
    kind: str                     # atlas | dynamics | compare
    label: str | None = None
    spec: str | None = None
    revision: str | None = None
    dtype: str | None = None
    after: list[str] = field(default_factory=list)


def atlas_id(label: str, revision: str | None) -> str:
    return safe_name(f"atlas-{label}" + (f"-{revision}" if revision else ""))


def plan(study: Study) -> list[PlannedJob]:
    """The jobs of ``study`` in the order they are started: every atlas, each dynamics, the compare."""
    jobs, dyn, finals = [], [], []
    for m in study.models:
        revs = list(m.revisions or [None])
        ids = [atlas_id(m.name, r) for r in revs]
        jobs += [PlannedJob(i, "atlas", m.name, m.spec, r, m.dtype) for i, r in zip(ids, revs)]
        if len(revs) >= 2:
            dyn.append(PlannedJob(safe_name(f"dynamics-{m.name}"), "dynamics", m.name, m.spec, None, m.dtype, ids))
        finals.append(ids[-1])
    ids = [j.id for j in jobs + dyn]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise IclscopeError(f"two jobs of the study would share the folder {sorted(dup)[0]}; give the models "
                            f"distinct labels")
    compare = [PlannedJob("compare", "compare", after=finals)] if len(finals) >= 2 else []
    return jobs + dyn + compare


def tasks_folder(study: Study, res: ResultsDir | None) -> str | None:
    """The tasks_dir every job gets: None (built-in synthetic tasks), the one folder given, or ``tasks/`` in
    the study folder assembled from the selected tasks of several folders. Checked before anything is
    written when ``res`` is None."""
    t = study.tasks
    if not t.folders:
        return None
    from ..tasks.core import META_SUFFIX

    found: dict[str, Path] = {}
    for folder in t.folders:
        d = Path(folder).expanduser()
        if not d.is_dir():
            raise IclscopeError(f"tasks.folders: {folder}: no such folder")
        for p in sorted(d.glob("**/*.json")):
            if p.is_file() and not p.name.endswith(META_SUFFIX):
                name = p.name[:-len(".json")]
                if name in found and found[name] != p:
                    raise IclscopeError(f"tasks.folders: two files define task {name!r}: {found[name]} and {p}")
                found[name] = p
    if not found:
        raise IclscopeError(f"tasks.folders: no .json task files in {', '.join(t.folders)}")
    if t.score is None:
        if len(t.folders) == 1:
            return str(Path(t.folders[0]).expanduser().resolve())
        chosen = sorted(found)
    else:
        chosen = sorted(t.score + t.eval)
        missing = [n for n in chosen if n not in found]
        if missing:
            raise IclscopeError(f"tasks: no task file for {', '.join(missing)} in {', '.join(t.folders)}")
    if res is None:
        return None
    for name in chosen:
        src = found[name]
        res.write_bytes(f"tasks/{src.name}", src.read_bytes())
        meta = src.with_name(name + META_SUFFIX)
        if meta.exists():
            res.write_bytes(f"tasks/{meta.name}", meta.read_bytes())
    return str(res.file("tasks").resolve())


# ------------------------------------------------------------------------------------------------- running

class _Run:
    """The driver's state: the jobs, their records (study.json), and what is running on the engine."""

    def __init__(self, study: Study, res: ResultsDir, tasks_dir: str | None, engine_factory, log):
        self.study, self.res, self.tasks_dir, self.log = study, res, tasks_dir, log
        self.jobs = plan(study)
        self.by_id = {j.id: j for j in self.jobs}
        self._engine_factory, self.engine = engine_factory, None
        old = {}
        if res.has("study.json"):
            try:
                old = {r["id"]: r for r in res.read_json("study.json").get("jobs", [])}
            except (ValueError, KeyError, TypeError, AttributeError):
                old = {}
        self.records: dict[str, dict] = {}
        for j in self.jobs:
            rec = {"id": j.id, "kind": j.kind, "model": j.label, "spec": j.spec, "revision": j.revision,
                   "dtype": j.dtype, "folder": j.id if j.kind != "compare" else None, "status": "pending",
                   "seconds": None, "host": None, "resources": None, "error": None, "started": None,
                   "ended": None, "reused": False}
            prev = old.get(j.id, {})
            if j.kind != "compare" and self.finished(j.id):
                rec.update({k: prev.get(k) for k in ("seconds", "host", "resources", "started", "ended")})
                rec.update(status="finished", reused=True)
            self.records[j.id] = rec
        self.running: dict[Any, str] = {}
        self.t_start: dict[str, float] = {}

    def finished(self, folder: str) -> bool:
        return (self.res.path / folder / FINISHED).exists()

    def save(self) -> None:
        jobs = [self.records[j.id] for j in self.jobs]
        counts = {s: sum(r["status"] == s for r in jobs) for s in ("finished", "failed", "blocked", "running", "pending")}
        self.res.write_json("study.json", {"updated": _now(), "out": str(self.res.path), "counts": counts,
                                           "jobs": jobs, "study": self.study.to_json()})

    # ------------------------------------------------------------------------------------------- jobs
    def _end(self, jid: str, status: str, error: str | None = None, **extra) -> None:
        rec = self.records[jid]
        rec.update(status=status, error=error, ended=_now(), **extra)
        if jid in self.t_start:
            rec["seconds"] = round(time.time() - self.t_start.pop(jid), 1)
        if status == "finished":
            self.log(f"finished {jid}" + (f" in {rec['seconds']} s" if rec["seconds"] is not None else ""))
        else:
            self.log(f"{status.upper()} {jid}: {error}")
        self.save()

    def _ready(self, j: PlannedJob) -> bool:
        return all(self.records[a]["status"] in ENDED for a in j.after)

    def _engine(self):
        if self.engine is None:
            self.engine = self._engine_factory()
        return self.engine

    def _submit(self, j: PlannedJob) -> None:
        rec = self.records[j.id]
        log_path = str(self.res.file("logs") / f"{j.id}.log")
        (self.res.path / "logs").mkdir(exist_ok=True)
        if j.kind == "compare":
            finals = [a for a in j.after if self.records[a]["status"] == "finished"]
            lost = [self.records[a]["model"] for a in j.after if a not in finals]
            if len(finals) < 2:
                return self._end(j.id, "blocked", f"the comparison needs two finished final checkpoints; "
                                                  f"failed: {', '.join(lost)}")
            folder = "compare" if not lost else safe_name("compare-without-" + ",".join(lost))
            rec["folder"] = folder
            if self.finished(folder):
                rec.update(status="finished", reused=True)
                self.log(f"reusing {folder} (finished earlier)")
                return self.save()
            eng = self._engine()
            from ..engine import GIB, Resources
            resources = Resources(num_cpus=1, num_gpus=0, memory_bytes=1 * GIB)
            args = ([str(self.res.path / a) for a in finals], str(self.res.path / folder),
                    [self.records[a]["model"] for a in finals], list(self.study.protocol.fractions), log_path)
            fn, writes = compare_job, self.res.path
        else:
            eng = self._engine()
            resources = eng.estimate(j.spec, j.revision if j.kind == "atlas" else _last_revision(self.study, j),
                                     j.dtype)
            device = "cuda" if resources.num_gpus and not resources.device_map else None
            out = str(self.res.path / j.id)
            writes = self.res.path
            if j.kind == "atlas":
                kwargs = dict(tasks_dir=self.tasks_dir, revision=j.revision, dtype=j.dtype, device=device,
                              device_map=resources.device_map, **self.study.atlas_kwargs())
                if self.study.tasks.score is not None:  # the chosen scoring / evaluation split
                    kwargs.update(score_tasks=list(self.study.tasks.score), eval_tasks=list(self.study.tasks.eval))
                fn, args = atlas_job, (j.spec, out, kwargs, log_path)
            else:
                p = self.study.protocol
                reuse = [str(self.res.path / a) for a in j.after if self.records[a]["status"] == "finished"]
                kwargs = dict(model=j.spec, revisions=list(_revisions(self.study, j)), tasks_dir=self.tasks_dir,
                              k=p.k, n_clean=p.n_clean, n_corrupt=p.n_corrupt, n_eval=p.n_eval, seed=p.seed,
                              reuse=reuse, dtype=j.dtype, device=device)
                fn, args = dynamics_job, (out, kwargs, log_path)
        handle = eng.submit(fn, *args, resources=resources, name=j.id, writes=writes)
        self.running[handle] = j.id
        self.t_start[j.id] = time.time()
        rec.update(status="running", started=_now(), ended=None, error=None, reused=False,
                   resources=resources.to_json())
        self.log(f"started {j.id} ({resources.describe()})")
        self.save()

    def start_ready(self) -> None:
        for j in self.jobs:
            if self.records[j.id]["status"] == "pending" and self._ready(j):
                try:
                    self._submit(j)
                except IclscopeError as e:
                    self._end(j.id, "failed", str(e).splitlines()[0])

    def run(self) -> None:
        self.save()
        self.start_ready()
        while self.running:
            ended, _ = self.engine.wait(list(self.running))
            for h in ended:
                jid = self.running.pop(h)
                out = self.engine.outcome(h)
                if out["ok"] and self.finished(self.records[jid]["folder"]):
                    self._end(jid, "finished", host=out.get("host"), summary=out.get("value"))
                else:
                    self._end(jid, "failed", out.get("error") or "the job ended without finishing its folder",
                              host=out.get("host"))
            self.start_ready()


def _revisions(study: Study, j: PlannedJob) -> list[str]:
    return next(list(m.revisions or []) for m in study.models if m.name == j.label)


def _last_revision(study: Study, j: PlannedJob) -> str | None:
    return _revisions(study, j)[-1]


# ------------------------------------------------------------------------------------------------- report

def study_findings(records: list[dict]) -> list:
    """How many jobs finished, failed, could not run or are still to run, naming the failed ones."""
    from ..report import Finding

    counts = {st: [r for r in records if r["status"] == st] for st in ("finished", "failed", "blocked", "pending",
                                                                      "running")}
    out = [Finding(f"{len(counts['finished'])} of {len(records)} jobs finished"
                   + (f" ({sum(bool(r.get('reused')) for r in counts['finished'])} from an earlier run)."
                      if any(r.get("reused") for r in counts["finished"]) else "."),
                   )]
    for st, words in (("failed", "failed"), ("blocked", "could not run (a job they need failed)"),
                      ("pending", "were not run"), ("running", "were still running")):
        if counts[st]:
            out.append(Finding(f"{len(counts[st])} {'job' if len(counts[st]) == 1 else 'jobs'} {words}: "
                               + "; ".join(f"{r['id']}" + (f" ({r['error']})" if r.get("error") else "")
                                           for r in counts[st][:8]) + ("; ..." if len(counts[st]) > 8 else "") + ".",
                               ))
    return out


def write_study_report(res: ResultsDir, records: list[dict], title: str = "Study", started: float | None = None) -> Path:
    """report.html in the study folder, in the one report look: the jobs finished and failed first, then
    the table of jobs (status, time, host, resources, the folder with its own report) and the comparison's
    findings and figures."""
    import pandas as pd

    from ..report import run_metadata
    from ..report.html import render_report

    rows = []
    for r in records:
        folder = r.get("folder")
        where = ""
        if folder and (res.path / folder).is_dir():
            where = f"{folder}/report.html" if (res.path / folder / "report.html").exists() else f"{folder}/"
        res_txt = ""
        if r.get("resources"):
            x = r["resources"]
            res_txt = f"{x['num_cpus']:g} CPU, {x['num_gpus']:g} GPU, {x['memory_bytes'] / 1024 ** 3:.1f} GiB"
        rows.append({"job": r["id"], "kind": r["kind"], "model": str(r.get("model") or ""),
                     "revision": str(r.get("revision") or ""),
                     "status": r["status"] + (" (earlier run)" if r.get("reused") else ""),
                     "seconds": r.get("seconds"), "host": str(r.get("host") or ""), "resources": res_txt,
                     "report": where, "error": r.get("error") or ""})
    jobs = pd.DataFrame(rows)
    sections = [{"heading": "Jobs", "text": "Each job's results folder (with its own report.html) lies in this folder.",
                 "table": jobs}]
    comp = next((r for r in records if r["kind"] == "compare" and r["status"] == "finished"), None)
    findings = study_findings(records)
    if comp and (res.path / comp["folder"] / "summary.json").exists():
        s = json.loads((res.path / comp["folder"] / "summary.json").read_text())
        f = res.path / comp["folder"]
        from .compare import compare_findings

        ov, corr = pd.DataFrame(s.get("overlap") or []), pd.DataFrame(s.get("correlation") or [])
        if len(ov) and len(corr):
            findings += compare_findings(ov, corr, pd.DataFrame(s.get("mean_relative_depth") or []))
        sections.append({"heading": "Comparison of the final checkpoints",
                         "text": f"Full report: `{comp['folder']}/report.html`. Models: "
                                 + ", ".join(str(m.get("label")) for m in s.get("models", [])) + ".",
                         "figures": [f / "overlap.png", f / "depth.png", f / "ablation.png"],
                         "table": pd.DataFrame(s.get("mean_relative_depth") or []) if s.get("mean_relative_depth") else None})
    page = render_report(title, sections, findings=findings, settings=res.config,
                         metadata=run_metadata(started=started, jobs=len(records),
                                               hosts=sorted({str(r["host"]) for r in records if r.get("host")})))
    for where in sorted({r["report"] for r in rows if r["report"]}, key=len, reverse=True):
        e = html.escape(where, quote=True)  # each job's folder as a link to its report (cells are plain text)
        page = page.replace(f'class="txt">{e}</td>', f'class="txt"><a href=\'{e}\'>{e}</a></td>')
    return res.write_text("report.html", page)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------- the command

def run_study(study: str | Path | Study, out: str | Path, address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None, engine=None, log=print) -> dict:
    """Run (or resume) a study; returns the content of study.json. ``engine``: an ``iclscope.engine.Engine``
    to use (else one is made from ``address`` / ``num_cpus`` / ``num_gpus`` when a job needs to run, and
    closed at the end)."""
    t0 = time.time()
    text = None
    if not isinstance(study, Study):
        text = Path(study).read_text() if Path(study).is_file() else None
        study = load_study(study)
    tasks_folder(study, None)                       # bad task folders are refused before anything is written
    out = Path(out).expanduser().resolve()
    config = {"command": "study", "tasks": study.tasks.model_dump(), "protocol": study.protocol.model_dump()}
    own = engine is None

    def factory():
        from ..engine import Engine
        return Engine(address=address, num_cpus=num_cpus, num_gpus=num_gpus)

    with ResultsDir(out, config, command="study") as res:
        if text is not None:
            res.write_text("study.toml", text)
        tasks_dir = tasks_folder(study, res)
        run = _Run(study, res, tasks_dir, (lambda: engine) if engine is not None else factory, log)
        n_done = sum(r["status"] == "finished" for r in run.records.values())
        log(f"study: {len(run.jobs)} jobs ({n_done} finished earlier) -> {out}/")
        try:
            run.run()
        finally:
            if own and run.engine is not None:
                run.engine.close()
            records = [run.records[j.id] for j in run.jobs]
            run.save()
            write_study_report(res, records, f"Study: {len(study.models)} models, {len(records)} jobs", started=t0)
        failed = [r for r in records if r["status"] != "finished"]
        if not failed:
            res.mark_finished({"jobs": len(records)})
        log(f"study: {len(records) - len(failed)} of {len(records)} jobs finished"
            + (f"; not finished: {', '.join(r['id'] for r in failed)}" if failed else "")
            + f"; report: {out}/report.html")
        return res.read_json("study.json")


def add_study_parser(subparsers) -> Any:
    """``iclscope study STUDY.toml --out DIR [--address ADDR] [--num-cpus N] [--num-gpus N]``."""
    p = subparsers.add_parser("study", help="a whole study (every model, every checkpoint) on Ray, resumable")
    p.add_argument("study", metavar="STUDY.toml", help="the study file (see docs/study.md)")
    p.add_argument("--out", required=True, help="the study folder (on a cluster: on storage every node shares)")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster: auto (the one `ray start` made here), host:port or ray://host:10001; "
                        "default: an embedded Ray on this machine")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of the embedded Ray (default: all)")
    p.set_defaults(fn=cmd_study)
    return p


def cmd_study(args) -> int:
    """0 when every job finished, 1 when some failed or could not run (their errors are in study.json)."""
    rec = run_study(args.study, args.out, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    return 0 if all(r["status"] == "finished" for r in rec["jobs"]) else 1
