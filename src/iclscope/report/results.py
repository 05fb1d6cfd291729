"""The results-folder contract every iclscope command writes through.

    with ResultsDir(out, config) as res:           # refuses a foreign folder, locks it, stores config.json
        scores = res.stage("scores", {"model": m, "seed": s, "n": n})
        if not scores.done:                        # finished before with exactly this key? then reuse
            scores.write_table("heads.csv", df)
            scores.finish()
        res.log_reuse(log)                         # "reused scores" / "computing eval: ..."
        res.write_figure("heat.png", fig)
        res.mark_finished()                        # written last: the folder is complete

Rules (each has a test in tests/test_results.py):

* Ownership. A folder iclscope creates gets ``.iclscope.json`` (command, created time, iclscope version). An
  existing folder that is not empty and has no marker is refused, and nothing in it is touched; an existing
  empty folder is adopted. (A folder whose only content is a ``config.json`` equal to the new config, as left
  by iclscope before the marker existed, is adopted too.)
* Config. ``config.json`` is written atomically. A marked folder holding results of a different config is
  refused, naming the differing keys as dotted paths; a marked folder that holds no results yet (a failed
  start) takes the new config. ``overwrite=True`` takes the new config even then: stages are then reused only
  where their key still matches, and plain files stay until rewritten.
* Lock. An OS lock (``filelock``) on ``.iclscope.lock`` is held from opening to ``close()`` (or the end of a
  ``with`` block, or process death); a second writer fails at once naming the holder's PID.
* Finished. ``mark_finished()`` writes ``.iclscope-finished.json`` last; ``finished`` reads it. Opening the
  folder again withdraws it until the command marks it again (``was_finished`` says it had been).
* Stages. ``stage(name, key)`` is a sub-folder whose files depend only on ``key``; it is ``done`` when it
  finished with exactly that key. A different key clears the stage folder and records the new key first.
* Writes. Everything goes through ``iclscope.store`` (temp file + fsync + rename); names from users go
  through ``safe_name`` / ``inside``. Leftover temp files of a killed writer are removed on opening.
"""

from __future__ import annotations

import datetime as _dt
import gc
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .. import store
from ..errors import IclscopeError
from ..store import fault_point, inside, safe_name

MARKER = ".iclscope.json"
LOCK = ".iclscope.lock"
PID = ".iclscope.pid"
CONFIG = "config.json"
FINISHED = ".iclscope-finished.json"
STAGES = ".iclscope-stages"
BOOKKEEPING = frozenset({MARKER, LOCK, PID, CONFIG, FINISHED, STAGES})


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("iclscope")
    except Exception:
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(p: Path):
    """The JSON in ``p``, or None if it is missing or unreadable."""
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (nested dicts are entered, anything else compared whole)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(prefix + k)
            else:
                out += diff_keys(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(whole config)"]


class _Files:
    """File helpers shared by a results folder and its stages; every write is atomic."""

    path: Path

    def _reserved(self, p: Path) -> bool:
        return False

    def file(self, name: str) -> Path:
        """The path of ``name`` in this folder; a name leading outside it is refused."""
        return inside(self.path, name)

    def _target(self, name: str) -> Path:
        p = self.file(name)
        if self._reserved(p):
            raise IclscopeError(f"{name!r} is iclscope's own bookkeeping file in {self.path}; choose another name")
        return p

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        return store.write_csv(self._target(name), df)

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.file(name))

    def write_json(self, name: str, obj: Any) -> Path:
        """Strict JSON (NaN/inf -> null)."""
        return store.write_json(self._target(name), obj)

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def write_text(self, name: str, text: str) -> Path:
        return store.write_text(self._target(name), text)

    def write_bytes(self, name: str, data: bytes) -> Path:
        return store.write_bytes(self._target(name), data)

    def write_figure(self, name: str, fig, **savefig_kwargs) -> Path:
        """Save a matplotlib figure; the format comes from the name's suffix (``.png``, ``.svg``, ``.pdf``)."""
        p = self._target(name)
        fmt = p.suffix.lstrip(".").lower() or "png"
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, **savefig_kwargs)
        return store.write_bytes(p, buf.getvalue(), kind="figure")

    def write_folder(self, name: str, fill: Callable[[Path], Any]) -> Path:
        """A folder (a checkpoint) filled by ``fill(tmpdir)`` and renamed into place whole."""
        return store.write_folder_atomically(self._target(name), fill)


class Stage(_Files):
    """One reusable part of a results folder (see ``ResultsDir.stage``).

    ``done``: it finished before with exactly this ``key``; ``path``: its folder; ``status``: "reused",
    "resumed" (same key, not finished: its files so far are kept), "computing" (new) or "recomputing" (the
    key changed: the old files were deleted); ``changed``: the key's dotted paths that differ."""

    def __init__(self, res: "ResultsDir", name: str, key: dict):
        self.name, self.res = str(name), res
        self.key = json.loads(store.dumps_json(key))
        folder = safe_name(self.name)
        if folder in BOOKKEEPING:
            raise IclscopeError(f"stage name {self.name!r} is reserved in {res.path}; choose another name")
        self.path = res.path / folder
        self._record = res.path / STAGES / f"{folder}.json"
        rec = _read_json(self._record)
        self.changed: list[str] = []
        if rec is not None and rec.get("key") == self.key:
            self.done = bool(rec.get("finished"))
            self.status = "reused" if self.done else "resumed"
            if not self.done:
                self.path.mkdir(parents=True, exist_ok=True)
            return
        self.done = False
        self.status = "computing" if rec is None else "recomputing"
        if rec is not None:
            self.changed = diff_keys(rec.get("key"), self.key)
        # the new key is recorded before the old files go, so a kill here never leaves old files under a
        # record that calls them finished
        store.write_json(self._record, {"name": self.name, "key": self.key, "finished": None, "started": _now()})
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        elif self.path.exists():
            self.path.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def finish(self, info: dict | None = None) -> None:
        """Mark this stage finished with its key (written after all of its files)."""
        fault_point("stage:before-finish")
        store.write_json(self._record, {"name": self.name, "key": self.key, "finished": _now(),
                                        **({"info": info} if info else {})})
        self.done = True

    @property
    def info(self) -> dict | None:
        rec = _read_json(self._record)
        return rec.get("info") if rec else None

    def describe(self) -> str:
        if self.status == "reused":
            return f"reusing {self.name} (finished with the same settings)"
        if self.status == "resumed":
            return f"resuming {self.name} (same settings, not finished)"
        if self.status == "recomputing":
            return f"recomputing {self.name}: its settings changed ({', '.join(self.changed)})"
        return f"computing {self.name}"


class ResultsDir(_Files):
    """A locked, owned results folder. ``ResultsDir(path, config, overwrite=False, command=None)``; use as a
    context manager or call ``close()``. See the module docstring for the rules."""

    def __init__(self, path: str | Path, config: dict, overwrite: bool = False, command: str | None = None):
        self.path = Path(path)
        self.command = str(command or (config.get("command") if isinstance(config, dict) else None) or "results")
        self.config = json.loads(store.dumps_json(config))
        self.stages: dict[str, Stage] = {}
        self._lock = None
        self._check_owner()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IclscopeError(f"cannot create the results folder {self.path}: {e.strerror or e}; "
                                f"nothing was written") from None
        self._acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ opening
    def _check_owner(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise IclscopeError(f"{p} is a file, not a folder; nothing was written: choose a folder for --out")
        if not p.is_dir():
            return
        try:
            entries = set(os.listdir(p))
        except OSError as e:
            raise IclscopeError(f"cannot read the results folder {p}: {e.strerror or e}; nothing was written") from None
        if MARKER in entries:
            return
        rest = {e for e in entries if e not in (LOCK, PID) and not e.startswith(store.TMP_PREFIX)}
        if not rest:
            return  # empty (or only an abandoned lock): adopted
        if rest == {CONFIG} and _read_json(p / CONFIG) == self.config:
            return  # iclscope's own folder from before the marker existed, same config
        raise IclscopeError(f"{p} is not empty and was not made by iclscope (no {MARKER}); nothing was written "
                            f"there: choose a new or empty folder for --out")

    def _acquire(self) -> None:
        from filelock import FileLock, Timeout

        lock_path = self.path / LOCK
        kwargs = {"timeout": 0, "thread_local": False}
        try:
            lock = FileLock(str(lock_path), fallback_to_soft=False, **kwargs)
        except TypeError:  # older filelock
            lock = FileLock(str(lock_path), **kwargs)
        for attempt in range(2):
            try:
                lock.acquire()
                break
            except Timeout:
                holder = (self.path / PID).read_text().strip() if (self.path / PID).exists() else "unknown"
                if attempt == 0 and holder == str(os.getpid()):
                    gc.collect()  # an unreferenced ResultsDir of this process still waiting to be collected
                    continue
                if holder == str(os.getpid()):
                    raise IclscopeError(f"{self.path} is already open in this process (PID {holder}); nothing was "
                                        f"written: close() the earlier ResultsDir first") from None
                raise IclscopeError(f"{self.path} is in use by another iclscope process (PID {holder}); nothing was "
                                    f"written: wait for it to finish or choose another --out") from None
            except OSError as e:
                raise IclscopeError(f"cannot write in the results folder {self.path}: {e.strerror or e}; "
                                    f"nothing was written") from None
        self._lock = lock
        try:
            store.write_text(self.path / PID, f"{os.getpid()}\n")
        except OSError as e:
            self.close()
            raise IclscopeError(f"cannot write in the results folder {self.path}: {e.strerror or e}; "
                                f"nothing was written") from None

    def _open(self, overwrite: bool) -> None:
        store.remove_stale_temps(self.path, skip=lambda d: (d / MARKER).exists())
        if not (self.path / MARKER).exists():
            store.write_json(self.path / MARKER, {"iclscope": "results", "command": self.command,
                                                  "created": _now(), "version": _version()})
            fault_point("results:after-marker")
        old = _read_json(self.path / CONFIG)
        self.replaced: list[str] = []
        if old is not None and old != self.config:
            diff = diff_keys(old, self.config)
            if not overwrite and self.holds_results():
                raise IclscopeError(f"{self.path} holds results of a different config (differs in: "
                                    f"{', '.join(diff)}); nothing was changed there: choose another --out, "
                                    f"or delete that folder to start over")
            self.replaced = diff
        self.was_finished = (self.path / FINISHED).exists()
        if self.was_finished:
            os.unlink(self.path / FINISHED)
            store.fsync_dir(self.path)
        fault_point("results:before-config")
        if old != self.config:
            store.write_json(self.path / CONFIG, self.config)

    def holds_results(self) -> bool:
        """Whether the folder holds anything finished: the finished marker, a finished stage, or any file or
        folder besides iclscope's bookkeeping and unfinished stage folders."""
        if (self.path / FINISHED).exists():
            return True
        unfinished = set()
        sdir = self.path / STAGES
        if sdir.is_dir():
            for f in sdir.glob("*.json"):
                rec = _read_json(f)
                if rec and rec.get("finished"):
                    return True
                unfinished.add(f.stem)
        return any(e not in BOOKKEEPING and e not in unfinished and not e.startswith(store.TMP_PREFIX)
                   for e in os.listdir(self.path))

    # --------------------------------------------------------------------------------------------- parts
    def _reserved(self, p: Path) -> bool:
        return p.parent.resolve() == self.path.resolve() and p.name in BOOKKEEPING

    def stage(self, name: str, key: dict) -> Stage:
        """The stage ``name`` whose files depend only on ``key`` (the settings it is computed from)."""
        s = Stage(self, name, key)
        self.stages[s.name] = s
        return s

    def log_reuse(self, log: Callable[[str], Any] = print) -> list[str]:
        """Say, one line per stage opened so far, what is reused and what is (re)computed; returns the lines."""
        lines = [s.describe() for s in self.stages.values()]
        if self.replaced:
            lines.insert(0, f"{self.path}: config changed ({', '.join(self.replaced)})")
        for line in lines:
            log(line)
        return lines

    def mark_finished(self, info: dict | None = None) -> None:
        """Write the finished marker; call it last, after every result is written."""
        fault_point("results:before-finished")
        store.write_json(self.path / FINISHED, {"finished": _now(), "command": self.command, **(info or {})})

    @property
    def finished(self) -> bool:
        return _read_json(self.path / FINISHED) is not None

    # ------------------------------------------------------------------------------------------- closing
    def close(self) -> None:
        """Release the lock (idempotent)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                if (self.path / PID).read_text().strip() == str(os.getpid()):
                    os.unlink(self.path / PID)
            except OSError:
                pass
            lock.release(force=True)

    def __enter__(self) -> "ResultsDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r}, command={self.command!r}, locked={self._lock is not None})"
