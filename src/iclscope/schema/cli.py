"""Command-line value types (argparse ``type=`` callables) and the device check: each bad value is one
line naming it and what is allowed."""

from __future__ import annotations

import argparse
import difflib
import math
import re
from typing import Any, Callable

from ..errors import IclscopeError
from .config import _show



# ----------------------------------------------------------------------------------------------------
# Command-line value types (argparse ``type=``); argparse prefixes "argument --option: "
# ----------------------------------------------------------------------------------------------------


def _bad(text: str, allowed: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{_show(' '.join(str(text).split()))}: expected {allowed}")


_INT = re.compile(r"[+-]?\d+")


def _parse_int(text: str, lo: int, allowed: str) -> int:
    s = str(text).strip().replace("_", "")
    if not _INT.fullmatch(s) or int(s) < lo:
        raise _bad(text, allowed)
    return int(s)


def positive_int(text: str) -> int:
    """An integer >= 1 ("3"; "1.5", "0", "-2", "three" are refused)."""
    return _parse_int(text, 1, "a whole number >= 1")


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _parse_int(text, 0, "a whole number >= 0")


def _parse_float(text: str) -> float | None:
    try:
        v = float(str(text).strip())
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def positive_count(text: str) -> int:
    """A whole number >= 1, also in scientific notation ("600000", "6e5", "600_000")."""
    s = str(text).strip().replace("_", "")
    if _INT.fullmatch(s):
        v: float | None = int(s)
    else:
        v = _parse_float(s)
        if v is None or not v.is_integer():
            raise _bad(text, "a whole number >= 1, e.g. 600000 or 6e5")
    if v < 1:
        raise _bad(text, "a whole number >= 1, e.g. 600000 or 6e5")
    return int(v)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _parse_float(text)
    if v is None or v <= 0:
        raise _bad(text, "a finite number > 0")
    return v


def probability(text: str) -> float:
    """A number in [0, 1]."""
    v = _parse_float(text)
    if v is None or not 0 <= v <= 1:
        raise _bad(text, "a probability, a number in [0, 1]")
    return v


def _items(text: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not str(text).strip() or any(not p for p in parts):
        raise _bad(text, "a comma-separated list with no empty items, e.g. a,b,c")
    return parts


def make_fraction_list(allow_zero: bool = False) -> Callable[[str], list[float]]:
    """A type for comma-separated fractions in (0, 1] ([0, 1] with allow_zero), distinct. Fractions,
    never percents: "5" or "150" is refused with a hint ("0.05 for 5 %")."""
    lo = "[0, 1]" if allow_zero else "(0, 1]"

    def fraction_list(text: str) -> list[float]:
        out = []
        for p in _items(text):
            v = _parse_float(p)
            if v is None:
                raise _bad(text, f"comma-separated fractions in {lo}, e.g. 0.01,0.05; {p!r} is not a number")
            if v > 1:
                raise _bad(text, f"fractions in {lo}, not percents: {p} % is {v / 100:g}")
            if v < 0 or (v == 0 and not allow_zero):
                raise _bad(text, f"comma-separated fractions in {lo}, e.g. 0.01,0.05; got {p}")
            if v in out:
                raise _bad(text, f"distinct fractions; {p} is repeated")
            out.append(v)
        return out

    fraction_list.__name__ = "fraction_list"
    return fraction_list


fraction_list = make_fraction_list(allow_zero=False)
fraction_list.__doc__ = "Comma-separated distinct fractions in (0, 1] (\"0.01,0.05\"); percents are refused."


def seed_list(text: str) -> list[int]:
    """Comma-separated distinct seeds, integers >= 0 ("0,1,2")."""
    out = []
    for p in _items(text):
        s = p.replace("_", "")
        if not _INT.fullmatch(s) or int(s) < 0:
            raise _bad(text, f"comma-separated distinct seeds (integers >= 0), e.g. 0,1,2; {p!r} is not one")
        if int(s) in out:
            raise _bad(text, f"distinct seeds; {p} is repeated")
        out.append(int(s))
    return out


def name_list(text: str) -> list[str]:
    """Comma-separated distinct non-empty names ("a,b")."""
    out = _items(text)
    dup = [n for i, n in enumerate(out) if n in out[:i]]
    if dup:
        raise _bad(text, f"distinct names; {dup[0]!r} is repeated")
    return out


def choice(*options: str) -> Callable[[str], str]:
    """A type accepting exactly one of ``options`` (case-sensitive), naming them all when refused."""

    def one_of(text: str) -> str:
        if text not in options:
            close = difflib.get_close_matches(str(text), options, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _bad(text, f"one of {', '.join(options)}{hint}")
        return text

    one_of.__name__ = "choice"
    return one_of


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def key_value(text: str) -> tuple[str, Any]:
    """A ``section.key=value`` override (``--set train.lr=3e-4``): (dotted key, value parsed as TOML; a
    value that is not TOML is kept as a bare string, as ``load_config`` does)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise _bad(text, "KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
    if not raw.strip():
        raise _bad(text, f"a value after {key}=, e.g. {key}=1")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


_REV = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def revision(text: str) -> str:
    """A hub revision: a branch, tag or commit name (letters, digits, . _ / -; no spaces, no "..")."""
    s = str(text)
    if not _REV.fullmatch(s) or ".." in s or s.endswith(("/", ".")):
        raise _bad(text, "a revision name such as main, step1000 or a commit hash (letters, digits, . _ / -)")
    return s


_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def device(text: str) -> str:
    """A device name, checked for spelling only: cpu, cuda, cuda:N or mps (see :func:`check_device`)."""
    s = str(text).strip()
    if not _DEVICE.fullmatch(s):
        raise _bad(text, "a device: cpu, cuda, cuda:N (N >= 0) or mps")
    return s


def check_device(name: str | None) -> str | None:
    """The device ``name`` if this machine has it (None passes through: the library's default).

    Raises IclscopeError, one line, for a misspelt name, CUDA on a machine without it, a CUDA index
    beyond the devices present, or MPS where it is not available."""
    if name is None:
        return None
    try:
        s = device(name)
    except argparse.ArgumentTypeError as e:
        raise IclscopeError(f"--device {e}") from None
    import torch

    if s.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IclscopeError(f"--device {s}: this machine has no CUDA device (torch.cuda.is_available() is "
                                "False); use --device cpu")
        n = torch.cuda.device_count()
        if ":" in s and int(s.split(":")[1]) >= n:
            raise IclscopeError(f"--device {s}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif s == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise IclscopeError("--device mps: MPS (Apple GPU) is not available on this machine; use --device cpu")
    return s
