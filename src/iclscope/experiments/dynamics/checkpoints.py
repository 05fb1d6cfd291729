"""Which checkpoints to analyse: the saved checkpoints of a training-lab run (``RUN/checkpoints/step_N/``)
or hub revisions of one model (Pythia's "step1000", ...), each with its step and architecture read from
saved metadata or the hub config without loading weights; and whether they all share one architecture
(heads can only be followed across checkpoints of one architecture)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ...errors import IclscopeError
from ...models import checkpoint_info
from ...store import safe_name


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
    same architecture (read from each checkpoint's saved metadata, nothing loaded)."""
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
        meta = checkpoint_info(d)  # None: not a saved iclscope model
        if meta is None:
            continue
        m = re.search(r"(\d+)$", d.name)
        step = meta.get("step", int(m.group(1)) if m else None)
        found.append(Checkpoint(name=safe_name(d.name), spec=str(d.resolve()), step=None if step is None else int(step),
                                sequences=meta.get("sequences"), arch=meta.get("config"), meta=meta))
    if not found:
        raise IclscopeError(f"{ck_dir}: holds no checkpoints (no step_N/ folder with a saved model); the run saved "
                            f"none yet")
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
    from ...models.hf import revision_architecture  # transformers loads only for hub revisions

    out = []
    for r in revisions:
        arch = revision_architecture(s, r)  # cache, then hub; an error naming a revision that cannot be found
        m = re.search(r"step[_-]?(\d+)", r)
        step = int(m.group(1)) if m else None
        out.append(Checkpoint(name=safe_name(r), spec=s, revision=r, step=step,
                              tokens=step * tokens_per_step if (tokens_per_step and step is not None) else None,
                              arch=arch))
    if all(c.step is not None for c in out):
        out.sort(key=lambda c: c.step)
    check_architectures(out, s)
    return out
