"""Progress of long work, shown wherever it runs.

    with progress(total=len(batches), desc="FV scores", unit="batch") as bar:
        for b in batches:
            ...
            bar.update(1)
            bar.set_postfix(loss=loss)

On a terminal (the stream is a TTY) this is a tqdm bar. Anywhere else (a log file, a batch job, Ray, CI:
the stream is not a TTY) it is one log line at the start and then one every ``interval`` seconds (default
30 s; ``ICLSCOPE_PROGRESS_INTERVAL`` overrides), plus one at the end, each with the step, the total, the
rate, the elapsed time, the ETA and any postfix:

    [iclscope] FV scores: 120/600 batch (20 %), 4.10 batch/s, elapsed 0:29, ETA 1:57, loss=0.693

``quiet=True`` silences both. Both kinds share the methods used by callers: ``update(n)``,
``set_postfix(**values)``, ``set_description(desc)``, ``write(msg)``, ``close()``, and work as context
managers and as iterable wrappers (``for x in progress(..., iterable=xs)``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable, TextIO

from ..errors import IclscopeError

DEFAULT_INTERVAL = 30.0


def _fmt_clock(s: float) -> str:
    """Seconds as h:mm:ss or m:ss."""
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


class LogProgress:
    """Progress as log lines at a steady interval, for streams that are not terminals.

    ``clock``: seconds (monotonic); injectable for tests. Lines go to ``stream`` (default stderr)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", stream: TextIO | None = None,
                 interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic, initial: int = 0,
                 iterable: Iterable | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = float(interval), clock
        self.n = self.start_n = int(initial)
        self.postfix: dict[str, Any] = {}
        self.iterable = iterable
        self.closed = False
        self.t0 = self.last = clock()
        self.emit()  # the first line at the start: the reader sees at once that the work began

    # -- what a line says
    def line(self, final: bool = False) -> str:
        elapsed = max(self.clock() - self.t0, 0.0)
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else float("nan")
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f} %)"
        if math.isfinite(rate) and rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"elapsed {_fmt_clock(elapsed)}")
        if final:
            parts.append("done" if self.total is None or self.n >= self.total else "stopped")
        elif self.total is not None and math.isfinite(rate) and rate > 0:
            parts.append(f"ETA {_fmt_clock(max(self.total - self.n, 0) / rate)}")
        if self.postfix:
            parts.append(", ".join(f"{k}={_fmt_value(v)}" for k, v in self.postfix.items()))
        head = f"[iclscope] {self.desc}: " if self.desc else "[iclscope] "
        return head + ", ".join(parts)

    def emit(self, final: bool = False) -> None:
        self.stream.write(self.line(final) + "\n")
        try:
            self.stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
        self.last = self.clock()

    # -- the tqdm-like interface
    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if self.clock() - self.last >= self.interval:
            self.emit()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, msg: str) -> None:
        self.stream.write(str(msg) + "\n")

    def refresh(self) -> None:
        self.emit()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.emit(final=True)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        if self.iterable is None:
            raise IclscopeError("progress: iterating needs iterable=...; else call update(n)")
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()


class QuietProgress(LogProgress):
    """The same interface, saying nothing."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 iterable: Iterable | None = None, **_):
        self.total, self.desc, self.unit, self.n, self.start_n = total, desc, unit, int(initial), int(initial)
        self.postfix, self.iterable, self.closed = {}, iterable, False

    def emit(self, final: bool = False) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += int(n)

    def write(self, msg: str) -> None:
        pass


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        return bool(shell and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell")
    except Exception:
        return False


def progress(total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it", *,
             stream: TextIO | None = None, interval: float | None = None, clock: Callable[[], float] = time.monotonic,
             initial: int = 0, iterable: Iterable | None = None, leave: bool = False):
    """A progress display for ``total`` steps: a tqdm bar on a terminal or in a notebook, log lines every
    ``interval`` seconds (default 30, or ``ICLSCOPE_PROGRESS_INTERVAL``) anywhere else, nothing when
    ``quiet``. ``stream`` defaults to stderr; ``clock`` is injectable for tests; ``initial`` is the step
    a resumed job starts from; ``iterable`` makes the result iterable (updating by one per item)."""
    if total is not None and (not isinstance(total, (int,)) or isinstance(total, bool) or total < 0):
        try:
            total = int(total)
        except (TypeError, ValueError):
            raise IclscopeError(f"progress: total must be a non-negative whole number or None, got {total!r}") from None
        if total < 0:
            raise IclscopeError(f"progress: total must be a non-negative whole number or None, got {total!r}")
    if quiet or os.environ.get("ICLSCOPE_QUIET", "") not in ("", "0"):  # `iclscope --quiet` sets ICLSCOPE_QUIET=1
        return QuietProgress(total, desc, unit, initial=initial, iterable=iterable)
    if interval is None:
        env = os.environ.get("ICLSCOPE_PROGRESS_INTERVAL")
        try:
            interval = float(env) if env else DEFAULT_INTERVAL
        except ValueError:
            raise IclscopeError(f"ICLSCOPE_PROGRESS_INTERVAL must be a number of seconds, got {env!r}") from None
    out = stream if stream is not None else sys.stderr
    if _is_tty(out) or (stream is None and _in_notebook()):
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=out if stream is not None else None,
                    leave=leave, dynamic_ncols=True)
    return LogProgress(total, desc, unit, stream=out, interval=interval, clock=clock, initial=initial,
                       iterable=iterable)
