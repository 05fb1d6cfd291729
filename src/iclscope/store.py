"""Low-level, crash-safe file writing for every iclscope results folder.

Every write goes to a temporary file in the destination's own folder, is flushed and fsync'ed, then renamed
over the final name with ``os.replace`` (atomic on POSIX and Windows), and the folder itself is fsync'ed. A
reader therefore sees either the old file or the complete new one, never a part of one, whatever moment the
process is killed at. Temporary entries start with ``TMP_PREFIX``; ``remove_stale_temps`` clears the ones a
killed writer left behind.

Names built from user values (sweep values, task names, labels) go through ``safe_name``; any name joined to a
folder goes through ``inside``, which refuses names that would land outside it.

Fault points (test hook). ``fault_point(label)`` SIGKILLs the process when the environment variable
``ICLSCOPE_FAULT`` equals ``label``; the kill tests use it to stop a writer between two steps. Labels:

    <kind>:mid-write        half of the bytes are in the temporary file        kind: text, bytes, json, csv,
                                                                               figure (write_figure, save_figure)
    <kind>:before-fsync     all bytes written to the temporary file, not yet fsync'ed
    <kind>:before-replace   temporary file complete and fsync'ed, final name untouched
    <kind>:after-replace    final name replaced, folder not yet fsync'ed
    folder:after-fill       ``fill(tmpdir)`` returned; nothing renamed yet
    folder:before-swap      temporary folder fsync'ed; the old destination (if any) still in place
    folder:after-old-moved  the old destination moved aside, the new one not yet renamed in
    folder:after-replace    the new folder is in place, the old one not yet deleted
    results:after-marker    (report/results.py) ownership marker written, no config yet
    results:before-config   (report/results.py) lock held, config about to be written
    results:before-finished (report/results.py) all results written, finished marker not yet
    stage:before-finish     (report/results.py) stage files written, stage record not yet finished

    model:after-weights     (models/tiny.py) TinyModel.save: weights in the temporary folder, JSON not yet
    checkpoint:after-weights[@N]  (train/rundir.py) the same inside a training checkpoint (of step N)
    final:after-weights     (train/rundir.py) the same inside a run's final/ model
    state:after-weights     (train/rundir.py) training state: weights written, optimizer state and JSON not yet
    metrics:mid-append[@N]  (train/rundir.py) half of a metrics.csv row (of step N) appended and flushed
    summary:<stage>         (train/rundir.py) summary.json: the <kind>:<stage> points above with kind "summary"
                            (metrics.csv rewrites on resume use kind "csv")

A ``fill`` callable may call ``fault_point`` itself (the tests use ``folder:after-weights``).

No torch import here: this module is imported by everything that writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import IclscopeError

TMP_PREFIX = ".iclscope-tmp."
FAULT_ENV = "ICLSCOPE_FAULT"

_UMASK = os.umask(0)
os.umask(_UMASK)


def fault_point(label: str) -> None:
    """Test hook: SIGKILL this process if ``ICLSCOPE_FAULT`` equals ``label`` (labels: see the module doc)."""
    if os.environ.get(FAULT_ENV) == label:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- names

_SLUG_BAD = re.compile(r"[^A-Za-z0-9._+=-]+")
_HASHED = re.compile(r"-[0-9a-f]{10}$")
_MAX_SLUG = 80


def safe_name(value: Any) -> str:
    """A file name for a user value (sweep value, task name, label).

    The result never contains a path separator, never contains ``..``, never starts with ``.``, is never
    empty, and is the same on every run. A value whose text is already a safe name is returned unchanged
    (``"copy"``, ``"0.1"``); any other gets a readable slug plus ``-`` and 10 hex digits of the SHA-1 of its
    text, so distinct values give distinct names (``"a/b"`` -> ``"a_b-1a2b3c4d5e"``, ``"/../"`` ->
    ``"_-…"``). Values are named by their text: ``str`` for strings, JSON for everything else (so ``1`` and
    ``"1"`` share a name).
    """
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    slug = _SLUG_BAD.sub("_", text)
    slug = re.sub(r"\.{2,}", "_", slug)
    if slug.startswith("."):
        slug = "_" + slug[1:]
    slug = slug[:_MAX_SLUG]
    if slug == text and text and not _HASHED.search(text):
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug or '_'}-{digest}"


def inside(folder: str | Path, name: str | Path) -> Path:
    """``folder / name``, refused (IclscopeError) if ``name`` is empty, absolute, or resolves outside
    ``folder`` (through ``..`` or a symbolic link). Sub-paths such as ``"checkpoints/step_10"`` are fine."""
    folder = Path(folder)
    text = str(name)
    if not text or "\x00" in text or Path(text).is_absolute():
        raise IclscopeError(f"file name {text!r} is not a name inside {folder}; nothing was written")
    p = folder / text
    root = folder.resolve()
    try:
        p.resolve().relative_to(root)
    except ValueError:
        raise IclscopeError(f"file name {text!r} leads outside {folder}; nothing was written") from None
    if p.resolve() == root:
        raise IclscopeError(f"file name {text!r} names the folder {folder} itself; nothing was written")
    return p


# ---------------------------------------------------------------------------------------------- writes

def _atomic_write(path: str | Path, data: bytes, kind: str) -> Path:
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name[:100]}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK) if hasattr(os, "fchmod") else None
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            fault_point(f"{kind}:mid-write")
            f.write(data[half:])
            fault_point(f"{kind}:before-fsync")
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"{kind}:before-replace")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fault_point(f"{kind}:after-replace")
    fsync_dir(folder)
    return path


def write_bytes(path: str | Path, data: bytes, *, kind: str = "bytes") -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync of the folder)."""
    return _atomic_write(path, bytes(data), kind)


def write_text(path: str | Path, text: str, *, kind: str = "text") -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return _atomic_write(path, text.encode("utf-8"), kind)


def to_strict_json(obj: Any) -> Any:
    """``obj`` made of plain JSON values: NaN and ±inf become None; numpy/torch scalars and arrays become
    numbers and lists (via ``.item()`` / ``.tolist()``); tuples and sets become lists; Paths and other
    objects become their ``str``; dict keys become strings."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict_json(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_strict_json(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if hasattr(obj, "tolist") and callable(obj.tolist):      # numpy arrays/scalars, torch tensors
        return to_strict_json(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return to_strict_json(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def dumps_json(obj: Any) -> str:
    """Strict JSON text (see ``to_strict_json``), indented, never a bare NaN/Infinity."""
    return json.dumps(to_strict_json(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf -> null) to ``path`` atomically."""
    return _atomic_write(path, dumps_json(obj).encode("utf-8"), "json")


def write_csv(path: str | Path, df) -> Path:
    """Write a pandas DataFrame as CSV (no index) to ``path`` atomically."""
    return _atomic_write(path, df.to_csv(index=False).encode("utf-8"), "csv")


def _old_copy(dest: Path) -> Path:
    return dest.parent / f"{TMP_PREFIX}{dest.name}.old"


def recover_folder(dest: str | Path) -> None:
    """If a replacement of ``dest`` was killed after the old folder was moved aside and before the new one
    was renamed in, put the old folder back; if both exist, drop the old copy."""
    dest = Path(dest)
    old = _old_copy(dest)
    if old.exists():
        if not dest.exists():
            os.rename(old, dest)
            fsync_dir(dest.parent)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def write_folder_atomically(dest: str | Path, fill: Callable[[Path], Any]) -> Path:
    """Build a folder (a checkpoint: weights + JSON) with ``fill(tmpdir)`` in a temporary folder beside
    ``dest``, fsync it, then rename it to ``dest``. An existing ``dest`` is moved aside first and deleted only
    once the new one is in place; a kill in between is repaired by ``recover_folder`` (called here and when a
    ResultsDir opens), so ``dest`` is always either the complete old folder or the complete new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{dest.name[:100]}.", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        fill(tmp)
        fault_point("folder:after-fill")
        _fsync_tree(tmp)
        fault_point("folder:before-swap")
        if dest.exists():
            old = _old_copy(dest)
            os.rename(dest, old)
            fault_point("folder:after-old-moved")
            os.rename(tmp, dest)
            fault_point("folder:after-replace")
            fsync_dir(dest.parent)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dest)
            fault_point("folder:after-replace")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return dest


def remove_stale_temps(folder: str | Path, skip: Callable[[Path], bool] | None = None) -> list[Path]:
    """Delete the temporary entries (``TMP_PREFIX``) that killed writers left under ``folder``, after putting
    back any moved-aside old folder (``recover_folder``). Sub-folders for which ``skip(path)`` is true are not
    entered. Call only while holding the folder's lock. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        for d in list(dirs):
            if d.startswith(TMP_PREFIX) and d.endswith(".old"):
                recover_folder(rootp / d[len(TMP_PREFIX):-len(".old")])
        dirs[:] = [d for d in dirs if (rootp / d).exists()]
        for name in list(dirs) + files:
            if name.startswith(TMP_PREFIX):
                p = rootp / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX) and not (skip and skip(rootp / d))]
    return removed
