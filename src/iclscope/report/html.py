"""One self-contained HTML page per results folder: text, tables and PNG figures inlined."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from .. import store


def write_report(path: str | Path, title: str, sections: list[dict]) -> Path:
    """Write ``path`` (an .html file). Each section is a dict with optional keys:
    ``heading`` (str), ``text`` (str, paragraphs split on blank lines), ``table`` (DataFrame),
    ``figure`` (path of a PNG, inlined as base64 so that the page stands alone; a missing figure is
    left out). The page is written atomically (``store.write_text``): a reader sees the old page or the
    new one, never part of one."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
             "color:#222}table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:right}img{max-width:100%}h2{border-bottom:1px solid #ddd}</style>",
             f"</head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        if s.get("heading"):
            parts.append(f"<h2>{html.escape(s['heading'])}</h2>")
        for para in str(s.get("text", "")).split("\n\n"):
            if para.strip():
                parts.append(f"<p>{html.escape(para.strip())}</p>")
        if isinstance(s.get("table"), pd.DataFrame):
            parts.append(s["table"].to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
        if s.get("figure") and Path(s["figure"]).is_file():
            data = base64.b64encode(Path(s["figure"]).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(Path(s['figure']).name)}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return store.write_text(path, "\n".join(parts) + "\n")
