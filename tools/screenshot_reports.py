"""Render example reports and photograph them with headless Chromium, to see what a reader sees.

    python tools/screenshot_reports.py                       # the fixture report -> docs/screenshots/
    python tools/screenshot_reports.py results/atlas results/dynamics --out /tmp/shots

The fixture report is built from made-up numbers (no model is run) through the same API every command
uses (``write_report`` with findings, figures from ``report.figures.common``, tables, settings, run
metadata). Given results folders, their report.html is photographed too. Needs a ``chromium`` (or
``chromium-browser`` / ``google-chrome``) on PATH; each page is shot at 1100 px wide, as the top of the
page (``<name>_top.png``) and as the whole page (``<name>_full.png``, height measured by Chromium
through a print of the page's scroll height into the DOM dump).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

WIDTH = 1100


def fixture_report(folder: Path) -> Path:
    """An atlas-like report from fixed random numbers: findings, three figures, short and long tables."""
    import matplotlib.pyplot as plt

    from iclscope.experiments.atlas import command as atlas_command
    from iclscope.report import Finding, run_metadata, write_report
    from iclscope.report.figures.common import (COLORS, head_heatmap, heads_and_percent_axis, label_points,
                                                save_figure)

    t0 = time.time() - 754.2
    rng = np.random.default_rng(0)
    L, H = 12, 12
    heads = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
    depth = heads.layer / (L - 1)
    heads["induction"] = np.clip(rng.beta(1, 8, L * H) + 0.6 * (rng.random(L * H) < 0.06) * depth, 0, 1)
    heads["prev_token"] = np.clip(rng.beta(1, 10, L * H) + 0.5 * (rng.random(L * H) < 0.05) * (1 - depth), 0, 1)
    heads["fv"] = np.abs(rng.normal(0, 0.004, L * H)) + 0.03 * (rng.random(L * H) < 0.05) * depth
    heads["fv_task_std"] = heads.fv * rng.uniform(0.2, 0.6, L * H)
    folder.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(heads.induction, heads.fv, s=18, color="lightgrey", label="other heads")
    top_i = heads.nlargest(8, "induction")
    top_f = heads.nlargest(8, "fv")
    ax.scatter(top_i.induction, top_i.fv, s=28, color=COLORS["induction"], label="top induction heads")
    ax.scatter(top_f.induction, top_f.fv, s=28, color=COLORS["fv"], label="top FV heads")
    both = pd.concat([top_f, top_i]).drop_duplicates(["layer", "head"])
    ax.legend(loc="center right")  # before the labels, which then keep clear of it
    label_points(ax, both.induction, both.fv, [f"L{a}H{b}" for a, b in zip(both.layer, both["head"])])
    ax.set_xlabel("induction score")
    ax.set_ylabel("FV score (causal indirect effect)")
    ax.set_title("random:gpt2: induction score against FV score for all 144 heads")
    scatter = save_figure(fig, folder / "induction_vs_fv.png")

    fractions = np.array([0, 1, 2, 3, 5, 10, 20]) / 100
    rows = []
    for ranking, drop in (("induction", 0.9), ("fv", 2.2), ("fv excl. induction", 1.8)):
        for f in fractions:
            rows.append({"ranking": ranking, "fraction": f, "accuracy": 0.82 * np.exp(-drop * f * 5) + 0.03})
    for seed in range(5):
        for f in fractions:
            rows.append({"ranking": "random", "fraction": f,
                         "accuracy": 0.82 - 0.4 * f + rng.normal(0, 0.01) * (f > 0), "seed": seed})
    abl = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, g in abl.groupby("ranking"):
        m = g.groupby("fraction").accuracy.mean()
        ax.plot(m.index * 100, m, marker="o", label=name,
                color=COLORS["random"] if name == "random" else COLORS["fv"] if name.startswith("fv") else COLORS["induction"],
                ls="--" if "excl" in name or name == "random" else "-")
    ax.set_xlabel("heads ablated (% of all heads)")
    ax.set_ylabel("few-shot accuracy (mean over tasks)")
    ax.set_title("Ablating the top heads of each kind")
    heads_and_percent_axis(ax, L * H)
    ax.legend()
    ablation = save_figure(fig, folder / "ablation.png")
    heat = head_heatmap(heads, "fv", folder / "fv.png", title="FV score of every head (layer x head)")

    curve = abl.groupby(["ranking", "fraction"]).accuracy.mean().unstack(0)
    return write_report(folder / "report.html", "Head atlas: random:gpt2", [
        {"heading": "What ran", "text": atlas_command.__doc__},
        {"heading": "Induction and FV heads", "figure": scatter,
         "text": "Induction: attention to the token after the previous occurrence of the current token on "
                 "repeated random tokens. FV: the causal indirect effect of a head's task-mean output on "
                 "label-corrupted prompts (Todd et al.)."},
        {"figure": heat},
        {"heading": "Ablation study", "figure": ablation, "table": curve},
        {"heading": "Top heads and their overlap",
         "text": '{"top_induction": [[5, 1], [7, 10], [9, 3]], "top_fv": [[9, 3], [10, 7]], "overlap": 0.3333333333333333}'},
        {"heading": "All heads", "table": heads},
    ], findings=[
        Finding("Ablating the top 10 % of FV heads cuts few-shot accuracy from 0.85 to 0.31.", value=-0.54,
                interval=(-0.61, -0.47), baseline="random heads: −0.04"),
        Finding("Ablating the top 10 % of induction heads cuts it less, to 0.55.", value=-0.30,
                interval=(-0.37, -0.23), baseline="random heads: −0.04"),
        Finding("The top induction and top FV heads overlap in 1 of 8 heads, as expected by chance.", value=0.125,
                interval=(0.0, 0.25), baseline="random 8-head sets: 0.06", within_noise=True),
    ], settings={"model": "random:gpt2", "tasks": ["antonym", "capitalize", "country_capital", "english_french"],
                 "prompts_per_task": 32, "shots": 10, "fractions": list(fractions), "seeds": [0, 1, 2, 3, 4]},
       metadata=run_metadata(started=t0, model="random:gpt2", prompts_per_task=32, seeds=[0, 1, 2, 3, 4]))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no chromium on PATH: apt-get install -y chromium")


def page_height(browser: str, page: Path) -> int:
    """The page's full height at WIDTH, read from the DOM Chromium dumps after running a script that
    writes document.body.scrollHeight into the title."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        html = page.read_text()
        probe.write_text(html.replace("</body>", "<script>document.title='H='+document.documentElement.scrollHeight"
                                                 "</script></body>"))
        out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              f"--window-size={WIDTH},1000", "--virtual-time-budget=3000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"<title>H=(\d+)</title>", out)
    return int(m.group(1)) if m else 4000


def shoot(browser: str, page: Path, png: Path, height: int) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={WIDTH},{height}", "--virtual-time-budget=3000", f"--screenshot={png}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image  # 8-bit palette: a third of the size, no visible change for a page
    Image.open(png).convert("RGB").quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    return png


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", help="results folders whose report.html to photograph as well")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    ap.add_argument("--top", type=int, default=1400, help="height of the top-of-page shot in px")
    args = ap.parse_args(argv)
    browser, out = chromium(), Path(args.out)
    pages = []
    with tempfile.TemporaryDirectory() as tmp:
        pages.append(("fixture_report", fixture_report(Path(tmp) / "fixture")))
        for r in args.results:
            p = Path(r) / "report.html" if Path(r).is_dir() else Path(r)
            if not p.is_file():
                raise SystemExit(f"{r}: no report.html there")
            pages.append((Path(r).resolve().name if Path(r).is_dir() else p.stem, p))
        for name, page in pages:
            h = page_height(browser, page)
            print(shoot(browser, page, out / f"{name}_top.png", min(args.top, h)))
            print(shoot(browser, page, out / f"{name}_full.png", h), f"({h} px high)")


if __name__ == "__main__":
    main()
