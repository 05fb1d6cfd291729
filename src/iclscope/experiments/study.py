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
import os
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
    from .compare import run_compare

    summary = run_compare(dirs, out, labels=labels, fractions=tuple(fractions), log=_file_log(log_path))
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
        half = len(chosen) // 2
        atlas_score = chosen if len(chosen) < 4 else chosen[:half]
        if sorted(t.score) != atlas_score:
            raise IclscopeError(f"tasks.score = {json.dumps(t.score)}: the atlas scores on the first half of the "
                                f"task names in sorted order ({', '.join(atlas_score)}; every task when fewer than "
                                f"4); list those in tasks.score, or leave tasks.score/eval out")
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

def write_study_report(res: ResultsDir, records: list[dict], title: str = "Study") -> Path:
    """report.html in the study folder: the table of jobs (status, time, host, resources, folder links)
    and the comparison's summary."""
    e = html.escape
    rows = []
    for r in records:
        folder = r.get("folder")
        link = ""
        if folder and (res.path / folder).is_dir():
            target = f"{folder}/report.html" if (res.path / folder / "report.html").exists() else f"{folder}/"
            link = f"<a href='{e(target)}'>{e(folder)}</a>"
        res_txt = ""
        if r.get("resources"):
            x = r["resources"]
            res_txt = f"{x['num_cpus']:g} CPU, {x['num_gpus']:g} GPU, {x['memory_bytes'] / 1024 ** 3:.1f} GiB"
        status = r["status"] + (" (earlier run)" if r.get("reused") else "")
        cls = {"finished": "ok", "failed": "bad", "blocked": "bad"}.get(r["status"], "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            e(r["id"]), e(r["kind"]), e(str(r.get("model") or "")), e(str(r.get("revision") or "")),
            f"<span class='{cls}'>{e(status)}</span>",
            "" if r.get("seconds") is None else f"{r['seconds']:.1f} s", e(str(r.get("host") or "")), e(res_txt),
            link, e(r.get("error") or ""))) + "</tr>")
    counts = {s: sum(r["status"] == s for r in records) for s in ("finished", "failed", "blocked", "pending")}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:2px 8px}"
             ".ok{color:#070}.bad{color:#b00;font-weight:bold}img{max-width:100%}pre{white-space:pre-wrap}"
             f"</style></head><body><h1>{e(title)}</h1>",
             f"<p>{counts['finished']} of {len(records)} jobs finished, {counts['failed']} failed, "
             f"{counts['blocked']} could not run, {counts['pending']} not run. Updated {e(_now())}.</p>",
             "<h2>Jobs</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in (
                 "job", "kind", "model", "revision", "status", "time", "host", "resources", "folder", "error"))
             + "</tr>", *rows, "</table>"]
    comp = next((r for r in records if r["kind"] == "compare" and r["status"] == "finished"), None)
    if comp and (res.path / comp["folder"] / "summary.json").exists():
        s = json.loads((res.path / comp["folder"] / "summary.json").read_text())
        f = comp["folder"]
        parts.append(f"<h2>Comparison of the final checkpoints</h2><p>Full report: "
                     f"<a href='{e(f)}/report.html'>{e(f)}/report.html</a>. Models: "
                     + e(", ".join(str(m.get("label")) for m in s.get("models", []))) + "</p>")
        for key, heading in (("overlap", "Overlap of the top induction and FV heads"),
                             ("correlation", "Correlation of the two scores"),
                             ("mean_relative_depth", "Mean relative depth of each kind")):
            tab = s.get(key) or []
            if tab:
                cols = list(tab[0])
                parts.append(f"<h3>{e(heading)}</h3><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{e(_fmt(row.get(c)))}</td>" for c in cols) + "</tr>"
                                       for row in tab) + "</table>")
        for png in ("overlap.png", "depth.png", "ablation.png"):
            if (res.path / f / png).exists():
                parts.append(f"<p><img src='{e(f)}/{png}' alt='{png}'></p>")
    parts.append("</body></html>")
    return res.write_text("report.html", "\n".join(parts))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------- the command

def run_study(study: str | Path | Study, out: str | Path, address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None, engine=None, log=print) -> dict:
    """Run (or resume) a study; returns the content of study.json. ``engine``: an ``iclscope.engine.Engine``
    to use (else one is made from ``address`` / ``num_cpus`` / ``num_gpus`` when a job needs to run, and
    closed at the end)."""
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
            write_study_report(res, records, f"Study: {len(study.models)} models, {len(records)} jobs")
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
