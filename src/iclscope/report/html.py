"""One self-contained HTML page per results folder, with one look for every command.

Page order: the summary (findings, each one sentence with its uncertainty and the baseline it beats), then
each section's text, figures and short tables, then the long tables, then the settings and the run
metadata. Everything is inlined (figures as base64 PNG; optional plotly figures with their script), so the
page stands alone, and it prints readably (print CSS). All text is escaped (jinja2 autoescape).

    write_report(res.file("report.html"), "Head atlas: gpt2", [
        {"heading": "Scores", "text": "Induction: ...", "figure": figs["scatter"], "table": top},
    ], findings=[Finding("Ablating the top 10 % of FV heads lowers few-shot accuracy by 0.31.",
                         value=-0.31, interval=(-0.36, -0.26), baseline="random heads: -0.04")],
       metadata=run_metadata(started=t0, model=spec, prompts_per_task=n, seeds=seeds))

Section keys (all optional): ``heading``; ``text`` (plain text or a small markdown subset: paragraphs,
``- `` bullet lists, `code`, **bold**; docstring markup such as double backquotes, ``:class:`x```,
heading underlines and indented literal blocks is turned into the same; a dict or list, or a string holding
JSON, is shown as a formatted table); ``figure`` / ``figures`` (PNG paths, matplotlib figures or plotly
figures; a missing file is left out); ``caption``; ``table`` / ``tables`` (DataFrames: numbers rounded to
significant digits, columns labelled, a default index hidden, a named index shown as a column, sortable by
clicking a header when long, scrollable when wide); ``data`` (a dict or list, shown as a table).
"""

from __future__ import annotations

import base64
import datetime as _dt
import inspect
import json
import math
import platform
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from .. import store

TEMPLATES = Path(__file__).resolve().parent / "templates"
LONG_TABLE = 15      # rows above which a table is sortable and goes to the "Tables" part of the page
SCROLL_TABLE = 40    # rows above which a table scrolls inside a box of fixed height (not in print)
FOLD_TEXT = 2        # a text of more blocks shows its first and folds the rest into "More detail"
WORDS = {"fv": "FV", "acc": "accuracy", "std": "SD", "sem": "SEM", "ci": "CI", "kl": "KL", "lr": "LR",
         "id": "ID", "pct": "%", "num": "number of", "n": "n"}


@dataclass
class Finding:
    """One headline result: a sentence, its value with an uncertainty interval, and the baseline it beats.

    ``within_noise=True`` marks a result that does not clear its baseline's noise (shown as such, not
    hidden). ``baseline`` is a short phrase ("random heads: 0.41") or a number."""

    text: str
    value: float | None = None
    interval: tuple[float, float] | None = None
    baseline: str | float | None = None
    within_noise: bool = False
    interval_kind: str = "95 % CI"


# ----------------------------------------------------------------------------------------------- numbers

def fmt_number(v: Any, digits: int = 3) -> str:
    """A number as a reader wants it: ``digits`` significant digits, thousands separated, ``e`` notation
    only for very small or very large magnitudes; None and NaN as an en dash; anything else as ``str``."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e9 or a < 1e-3:
            return f"{v:.{digits - 1}e}"
        if v == round(v) and a < 1e15:
            return f"{int(round(v)):,}"
        if a >= 10 ** digits:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if a >= 1 or digits - 1 - math.floor(math.log10(a)) <= 6 else f"{v:.{digits - 1}e}"
    return str(v)


_FLOAT_STR = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


def _as_number(v: Any) -> Any:
    """A string that spells a number as that number (callers sometimes stringify their summaries)."""
    if isinstance(v, str) and _FLOAT_STR.match(v.strip()):
        return float(v) if any(c in v for c in ".eE") else int(v)
    return v


def column_format(values: pd.Series, digits: int = 3):
    """A formatter for one column: the same number of decimals for every float in it (enough for
    ``digits`` significant digits of its largest magnitude), so that the column reads as one."""
    nums = pd.to_numeric(values, errors="coerce")
    finite = nums[np.isfinite(nums)] if len(nums) else nums
    is_float = values.dtype.kind == "f"
    if not is_float or finite.empty:
        return lambda v: fmt_number(_as_number(v), digits)
    if (finite == finite.round()).all() and finite.abs().max() < 1e15:
        return lambda v: fmt_number(int(v) if isinstance(v, (float, np.floating)) and np.isfinite(v) else v, digits)
    m = float(finite.abs().max())
    if m >= 1e9 or m < 1e-3:
        return lambda v: fmt_number(v, digits)
    dec = int(min(6, max(0, digits - 1 - math.floor(math.log10(m)))))

    def fixed(v):
        if not (isinstance(v, (float, np.floating)) and np.isfinite(v)):
            return fmt_number(v, digits)
        if v != 0 and abs(v) < 0.5 * 10 ** -dec:  # too small for the column's decimals: say so, not "0.000"
            return f"{'<' if v > 0 else '>-'}{10 ** -dec:.{dec}f}"
        return f"{float(v):,.{dec}f}"
    return fixed


def label(name: Any) -> str:
    """A column or key name as a label: underscores as spaces, known abbreviations spelled out
    (``zero_shot_acc`` -> "zero shot accuracy", ``fv`` -> "FV")."""
    if isinstance(name, tuple):
        return " / ".join(label(n) for n in name if str(n) != "")
    words = str(name).replace("_", " ").split(" ")
    return " ".join(WORDS.get(w.lower(), w) if len(words) > 1 or w.lower() != "n" else w for w in words).strip()


# ------------------------------------------------------------------------------------------------ tables

def table_context(df: pd.DataFrame, title: str = "", digits: int = 3, sortable: bool | None = None) -> dict:
    """What the template needs to draw ``df``: labelled columns (the raw name as tooltip), cells formatted
    for reading with a raw sort key, and whether it is long (sortable) or wide (scrolls)."""
    df = df.copy()
    if isinstance(df.columns, pd.MultiIndex):
        df.columns = [label(c) for c in df.columns]
    df.columns.name = None
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None or any(df.index.names):
        names = [n if n is not None else ("row" if i == 0 else f"row {i}") for i, n in enumerate(df.index.names)]
        df.index = df.index.set_names(names)
        df = df.reset_index()
    if len(df) == 1 and len(df.columns) > 5:  # one wide row reads better as name / value
        df = pd.DataFrame({"name": [str(c) for c in df.columns], "value": [df.iloc[0][c] for c in df.columns]})
    cols = []
    for j, c in enumerate(df.columns):
        s = df.iloc[:, j]
        numeric = s.dtype.kind in "iuf" or (s.dtype == object and len(s) and
                                             s.map(lambda v: isinstance(_as_number(v), (int, float))
                                                   and not isinstance(v, bool)).all())
        cols.append({"name": label(c) or f"column {j + 1}", "raw": str(c), "numeric": bool(numeric),
                     "fmt": column_format(s, digits)})
    rows = []
    for r in df.itertuples(index=False):
        cells = []
        for col, v in zip(cols, r):
            shown = col["fmt"](v) if not isinstance(v, (dict, list, tuple)) else _inline(v)
            num = _as_number(v)
            key = float(num) if isinstance(num, (int, float)) and not isinstance(num, bool) and np.isfinite(num) else None
            cells.append({"text": shown, "key": "" if key is None else f"{key:.6g}", "numeric": col["numeric"]})
        rows.append(cells)
    long = len(df) > LONG_TABLE
    return {"title": title, "columns": cols, "rows": rows, "n_rows": len(df), "long": long,
            "sortable": long if sortable is None else sortable, "scroll": len(df) > SCROLL_TABLE,
            "wide": len(cols) > 8}


def _inline(v: Any) -> str:
    """A short list or tuple inside one cell: (0, 1), (1, 2)."""
    if isinstance(v, dict):
        return ", ".join(f"{label(k)}: {_inline(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, (list, tuple)) for x in v):
            return ", ".join("(" + ", ".join(_inline(y) for y in x) + ")" for x in v)
        return ", ".join(_inline(x) for x in v)
    return fmt_number(_as_number(v))


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, np.number, np.bool_))


def data_html(obj: Any, env=None) -> Markup:
    """A dict or list as formatted tables, never as JSON: a dict of flat dicts as one table (a row per
    key), a list of dicts as one table, any other dict as name / value rows (nested values as nested
    tables), a list of scalars inline."""
    env = env or _env()
    tpl = env.get_template("table.html")
    if isinstance(obj, pd.DataFrame):
        return Markup(tpl.render(t=table_context(obj)))
    if isinstance(obj, pd.Series):
        obj = obj.to_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) and v and all(_scalar(x) for x in v.values())
                                             for v in obj.values()):
        df = pd.DataFrame.from_dict(obj, orient="index")
        df.index.name = "name"
        return Markup(tpl.render(t=table_context(df)))
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, dict) for v in obj) \
            and all(all(_scalar(x) or _short_list(x) for x in v.values()) for v in obj):
        return Markup(tpl.render(t=table_context(pd.DataFrame([{k: _inline(x) if not _scalar(x) else x
                                                                for k, x in v.items()} for v in obj]))))
    if isinstance(obj, dict):
        rows = []
        for k, v in obj.items():
            if _scalar(v) or _short_list(v):
                rows.append({"name": label(k), "value": escape(_inline(v) if not _scalar(v) else fmt_number(_as_number(v)))})
            else:
                rows.append({"name": label(k), "value": data_html(v, env)})
        return Markup(env.get_template("keyvalue.html").render(rows=rows))
    if isinstance(obj, (list, tuple)):
        if all(_scalar(v) or _short_list(v) for v in obj):
            return Markup("<p>") + escape(_inline(obj)) + Markup("</p>")
        return Markup("").join(data_html(v, env) for v in obj)
    return Markup("<p>") + escape(fmt_number(_as_number(obj))) + Markup("</p>")


def _short_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) <= 50 and all(
        _scalar(x) or (isinstance(x, (list, tuple)) and len(x) <= 4 and all(_scalar(y) for y in x)) for x in v)


# -------------------------------------------------------------------------------------------------- text

_UNDERLINE = re.compile(r"^\s*([=\-~^#*+])\1{2,}\s*$")
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")


def _inline_md(s: str) -> Markup:
    """Escape ``s``, then: ``x`` / `x` / :role:`x` as code, **x** as bold. Nothing else is markup."""
    s = _ROLE.sub(lambda m: "`" + (m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1)) + "`", s)
    out = str(escape(s))
    out = re.sub(r"``(.+?)``", r"<code>\1</code>", out)
    out = re.sub(r"`([^`]+?)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return Markup(out.replace("`", ""))


def _plain(s: str) -> str:
    """Literal-block text without docstring markup."""
    s = _ROLE.sub(r"\1", s)
    return s.replace("``", "")


def text_blocks(text: str) -> list[Markup]:
    """Plain text, markdown-subset or docstring text as HTML blocks: paragraphs, bullet lists, headings
    (a line underlined with ===/---), literal blocks (indented lines) as preformatted text."""
    text = inspect.cleandoc(str(text))
    blocks: list[Markup] = []
    for chunk in re.split(r"\n\s*\n", text):
        lines = chunk.split("\n")
        if not any(ln.strip() for ln in lines):
            continue
        if all(ln.startswith(("    ", "\t")) or not ln.strip() for ln in lines):
            blocks.append(Markup("<pre>") + escape(_plain(inspect.cleandoc("\n".join(lines)))) + Markup("</pre>"))
            continue
        para: list[str] = []
        items: list[str] = []

        def flush_para():
            if para:
                joined = " ".join(p.strip() for p in para)
                if joined.endswith("::"):
                    joined = joined[:-1]
                blocks.append(Markup("<p>") + _inline_md(joined) + Markup("</p>"))
                para.clear()

        def flush_items():
            if items:
                blocks.append(Markup("<ul>") + Markup("").join(Markup("<li>") + _inline_md(i) + Markup("</li>")
                                                               for i in items) + Markup("</ul>"))
                items.clear()

        for i, ln in enumerate(lines):
            if _UNDERLINE.match(ln):
                if para and i > 0 and lines[i - 1].strip() == para[-1].strip():
                    head = para.pop()
                    flush_para()
                    blocks.append(Markup("<h3>") + _inline_md(head.strip()) + Markup("</h3>"))
                continue
            if ln.lstrip().startswith("#") and not ln.lstrip().startswith("#!"):
                flush_para(), flush_items()
                blocks.append(Markup("<h3>") + _inline_md(ln.lstrip("# ").strip()) + Markup("</h3>"))
            elif _BULLET.match(ln):
                flush_para()
                items.append(_BULLET.sub("", ln, count=1).strip())
            elif items and ln.startswith((" ", "\t")):
                items[-1] += " " + ln.strip()
            else:
                flush_items()
                para.append(ln)
        flush_para()
        flush_items()
    return blocks


def _json_text(text: str) -> Any:
    """The JSON object or array a string holds (callers pass ``json.dumps(...)`` as text), else None."""
    s = text.strip()
    if s[:1] in "{[" and s[-1:] in "}]":
        try:
            obj = json.loads(s)
        except ValueError:
            return None
        return obj if isinstance(obj, (dict, list)) else None
    return None


def text_html(text: Any, env=None, fold: bool = True) -> Markup:
    """Any ``text`` value as HTML: dicts, lists and JSON strings as tables; text as paragraphs and lists,
    a text of more than two blocks (a docstring) shows its first block and folds the rest into "More
    detail" (opened when printed)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return Markup("")
    if not isinstance(text, str):
        return data_html(text, env)
    obj = _json_text(text)
    if obj is not None:
        return data_html(obj, env)
    blocks = text_blocks(text)
    if fold and len(blocks) > FOLD_TEXT:
        return (blocks[0] + Markup("<details><summary>More detail</summary>")
                + Markup("").join(blocks[1:]) + Markup("</details>"))
    return Markup("").join(blocks)


# ----------------------------------------------------------------------------------------------- figures

def _png_css_width(data: bytes) -> int | None:
    """The width in CSS pixels at which a PNG shows its fonts at their true point size (pixel width
    times 96 / its dpi, from the pHYs chunk; 120 dpi when absent)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width = struct.unpack(">I", data[16:20])[0]
    dpi = 120.0
    pos = 8
    while pos + 8 <= len(data) and pos < 4096:
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs" and n >= 9:
            ppu, _, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            if unit == 1 and ppu:
                dpi = ppu * 0.0254
            break
        if kind == b"IDAT":
            break
        pos += 12 + n
    return int(round(width * 96 / dpi))


def figure_context(fig: Any, caption: str = "", state: dict | None = None) -> dict | None:
    """A figure for the template: a PNG path or bytes, a matplotlib figure (written as PNG through the
    shared style) or a plotly figure (interactive, self-contained: plotly.js inlined once per page).
    A missing file gives None (left out)."""
    state = state if state is not None else {}
    if fig is None:
        return None
    if hasattr(fig, "to_html") and hasattr(fig, "data"):  # plotly
        html = fig.to_html(full_html=False, include_plotlyjs=not state.get("plotly_js"),
                           config={"displaylogo": False})
        state["plotly_js"] = True
        return {"kind": "plotly", "html": Markup(html), "caption": caption}
    if hasattr(fig, "savefig"):
        from .figures.common import figure_png
        data, name = figure_png(fig), caption or "figure"
    elif isinstance(fig, (bytes, bytearray)):
        data, name = bytes(fig), caption or "figure"
    else:
        p = Path(fig)
        if not p.is_file():
            return None
        data, name = p.read_bytes(), p.stem.replace("_", " ")
    mime = "image/svg+xml" if data.lstrip()[:5] in (b"<?xml", b"<svg ") else "image/png"
    return {"kind": "img", "src": f"data:{mime};base64,{base64.b64encode(data).decode()}",
            "alt": name, "width": _png_css_width(data), "caption": caption}


# ---------------------------------------------------------------------------------------------- metadata

def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def human_seconds(s: float) -> str:
    """A duration as a reader wants it: 42 s, 3 min 05 s, 2 h 04 min."""
    s = float(s)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def run_metadata(started: float | _dt.datetime | None = None, **extra) -> dict:
    """When and where a run happened, for the report's "Run" part and for summary.json: the time (local,
    ISO), how long since ``started`` (``time.time()`` at the start, or a datetime), the iclscope, torch,
    transformers and numpy versions, python, platform and accelerator; then ``extra`` as given (model,
    prompts_per_task, seeds, ...). Plain JSON values only."""
    now = _dt.datetime.now().astimezone()
    meta: dict[str, Any] = {"when": now.isoformat(timespec="seconds")}
    if started is not None:
        t0 = started.timestamp() if isinstance(started, _dt.datetime) else float(started)
        meta["seconds"] = round(time.time() - t0, 1)
        meta["duration"] = human_seconds(meta["seconds"])
    from .. import __version__
    meta["iclscope"] = _version("iclscope") or __version__
    for dist in ("torch", "transformers", "numpy"):
        meta[dist] = _version(dist)
    meta["python"] = platform.python_version()
    meta["platform"] = platform.platform(terse=True)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:
            meta["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        except Exception:
            meta["accelerator"] = "unknown"
    for k, v in extra.items():
        meta[k] = store.to_strict_json(v) if not isinstance(v, (str, int, float, bool, type(None))) else v
    return meta


def _folder_facts(folder: Path) -> tuple[dict | None, dict]:
    """The config.json and the ownership marker of the results folder a report is written into."""
    from .results import CONFIG, MARKER

    def read(name):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return None

    config = read(CONFIG)
    marker = read(MARKER) or {}
    facts = {k: marker[k] for k in ("command", "created") if marker.get(k)}
    return (config if isinstance(config, dict) else None), facts


# ------------------------------------------------------------------------------------------------- pages

_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        import jinja2
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                  trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return _ENV


def _listify(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def finding_context(f: Finding | str | dict) -> dict:
    if isinstance(f, str):
        f = Finding(f)
    elif isinstance(f, dict):
        f = Finding(**f)
    interval = None
    if f.interval is not None:
        lo, hi = f.interval
        interval = f"{f.interval_kind} {fmt_number(lo)} to {fmt_number(hi)}"
    base = f.baseline if f.baseline is None or isinstance(f.baseline, str) else f"baseline {fmt_number(f.baseline)}"
    return {"text": _inline_md(str(f.text)), "value": None if f.value is None else fmt_number(f.value),
            "interval": interval, "baseline": base, "within_noise": bool(f.within_noise)}


def render_report(title: str, sections: Iterable[dict], findings: Iterable | None = None,
                  settings: dict | None = None, metadata: dict | None = None, headline: Any = None,
                  subtitle: str = "") -> str:
    """The page as a string (``write_report`` writes it). ``headline``: a dict shown as the summary when
    there are no ``findings`` (e.g. the command's summary.json)."""
    env = _env()
    state: dict = {}
    body, appendix = [], []
    for i, s in enumerate(sections):
        s = dict(s)
        heading = str(s.get("heading") or "")
        anchor = f"s{i + 1}"
        figs = [figure_context(f, s.get("caption", "") if len(_listify(s.get("figure")) + _listify(s.get("figures"))) == 1
                               else "", state) for f in _listify(s.get("figure")) + _listify(s.get("figures"))]
        tables, long_tables = [], []
        for t in _listify(s.get("table")) + _listify(s.get("tables")):
            if isinstance(t, pd.DataFrame):
                ctx = table_context(t, title=heading)
                if ctx["long"]:
                    ctx["anchor"] = f"t{len(appendix) + len(long_tables) + 1}"
                    long_tables.append(ctx)
                else:
                    tables.append(ctx)
            elif t is not None:
                tables.append({"html": data_html(t, env)})
        entry = {"heading": heading, "anchor": anchor, "text": text_html(s.get("text"), env),
                 "data": data_html(s["data"], env) if s.get("data") is not None else Markup(""),
                 "figures": [f for f in figs if f], "tables": tables, "long_tables": long_tables}
        appendix.extend(long_tables)
        # a section of only a long table moves whole into the tables part; a bare figure joins the one above
        if not (entry["text"] or entry["figures"] or entry["tables"] or entry["data"]) and long_tables:
            continue
        if not heading and body and not entry["text"] and not entry["tables"]:
            body[-1]["figures"].extend(entry["figures"])
            body[-1]["long_tables"].extend(long_tables)
            continue
        body.append(entry)
    return env.get_template("report.html").render(
        title=title, subtitle=subtitle,
        findings=[finding_context(f) for f in (findings or [])],
        headline=data_html(headline, env) if headline and not findings else Markup(""),
        sections=body, appendix=appendix,
        settings=data_html(settings, env) if settings else Markup(""),
        metadata=data_html(_metadata_display(metadata), env) if metadata else Markup(""),
        generated=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))


def _metadata_display(meta: dict) -> dict:
    meta = dict(meta)
    if "seconds" in meta and "duration" in meta:
        meta.pop("seconds")
    return meta


def write_report(path: str | Path, title: str, sections: list[dict], *, findings: Iterable | None = None,
                 settings: dict | None = None, metadata: dict | None = None, headline: Any = None,
                 subtitle: str = "") -> Path:
    """Write the report page ``path`` (an .html file) atomically (``store.write_text``): a reader sees
    the old page or the new one, never part of one.

    ``findings``: ``Finding`` objects (or sentences) for the summary at the top. ``settings``: the
    command's settings (default: the folder's config.json). ``metadata``: ``run_metadata(...)`` (default:
    ``run_metadata()`` plus the folder's command and creation time). ``headline``: a dict shown as the
    summary when there are no findings (default: the folder's summary.json, if already written)."""
    path = Path(path)
    config, facts = _folder_facts(path.parent)
    if settings is None:
        settings = config
    if metadata is None:
        metadata = {**run_metadata(), **{("folder " + k if k == "created" else k): v for k, v in facts.items()}}
    if headline is None and not findings:
        try:
            headline = json.loads((path.parent / "summary.json").read_text())
        except (OSError, ValueError):
            headline = None
    page = render_report(title, sections, findings=findings, settings=settings, metadata=metadata,
                         headline=headline, subtitle=subtitle)
    return store.write_text(path, page)
