"""The report layer: the page (summary, figures, tables, settings, metadata; no raw JSON or docstring
markup; rounded; escaped), the shared figure look, progress off a terminal, TensorBoard helpers."""

from __future__ import annotations

import io
import json
import re
import struct

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from iclscope.errors import IclscopeError  # noqa: E402
from iclscope.report import Finding, ResultsDir, progress, run_metadata, write_report  # noqa: E402
from iclscope.report.figures.common import (COLORS, color_for, figure_png, heads_and_percent_axis,  # noqa: E402
                                            label_points, save_figure)
from iclscope.report.html import fmt_number, table_context, text_blocks  # noqa: E402
from iclscope.report.progress import LogProgress  # noqa: E402
from iclscope.report.tensorboard import add_figure, group_tag, write_hparams  # noqa: E402

DOCSTRING = '''``iclscope atlas``: score every head as an induction head and as a function-vector (FV) head.

Results
=======

Results folder (an :class:`~iclscope.report.ResultsDir`; see ``run_atlas``)::

    heads.csv            layer, head, induction, fv
    *.png, report.html

- first point, about ``x``
- second point
  continued here

A closing paragraph with **bold**.
'''


def fixture_sections(tmp_path):
    rng = np.random.default_rng(0)
    heads = pd.DataFrame({"layer": np.repeat(np.arange(4), 6), "head": np.tile(np.arange(6), 4),
                          "induction": rng.random(24), "fv": rng.random(24) * 1e-4})
    curve = heads.groupby("layer")[["induction", "fv"]].mean()  # a named index: shown as a column
    wide = pd.DataFrame([{f"metric_{i}": rng.random() for i in range(14)}])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.scatter(heads.induction, heads.fv, color=COLORS["induction"])
    ax.set_title("induction against FV for every head of the fixture model, which has a long name")
    png = save_figure(fig, tmp_path / "scatter.png")
    return [
        {"heading": "What ran", "text": DOCSTRING},
        {"heading": "Scores <script>alert(1)</script>", "figure": png, "table": curve},
        {"figure": tmp_path / "missing.png"},
        {"heading": "Top heads", "text": json.dumps({"top_induction": [[0, 1], [1, 2]], "overlap": 0.3333333333333333,
                                                      "by_fraction": {"fv": {"0.1": 0.512345678901, "0.2": 0.4},
                                                                      "random": {"0.1": 0.9, "0.2": 0.85}}})},
        {"heading": "Many metrics", "table": wide},
        {"heading": "All heads", "table": heads},
    ]


def visible_text(page: str) -> str:
    """The page without tags, scripts, styles and attributes: what a reader sees."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_report_has_every_part_in_order_and_no_raw_markup(tmp_path):
    findings = [Finding("Ablating the top 10 % of FV heads lowers accuracy <a lot>.", value=-0.312345678,
                        interval=(-0.4012345, -0.2209876), baseline="random heads: -0.04"),
                Finding("Induction and FV heads overlap no more than chance.", value=0.12, within_noise=True)]
    meta = run_metadata(started=0.0, model="random:gpt2", prompts_per_task=8, seeds=[0, 1])
    path = write_report(tmp_path / "report.html", "Head atlas: <random:gpt2>", fixture_sections(tmp_path),
                        findings=findings, settings={"model": "random:gpt2", "k": 0.1}, metadata=meta)
    page = path.read_text()
    order = [page.index(f'id="{i}"') for i in ("summary", "s1", "tables", "settings", "run")]
    assert order == sorted(order)
    assert page.count("data:image/png;base64,") == 1  # the one existing figure; the missing one left out
    assert "within noise" in page and "random heads: -0.04" in page and "95 % CI -0.401 to -0.221" in page
    shown = visible_text(page)
    for raw in ('{"', "``", ":class:", "=====", "::"):
        assert raw not in shown, raw
    assert not re.search(r"\d\.\d{5,}", shown)  # every float rounded
    assert "0.333" in shown and "0.512" in shown
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "&lt;a lot&gt;" in page and "&lt;random:gpt2&gt;" in page
    assert "<h3>Results</h3>" in page and "<li>second point continued here</li>" in page
    assert "<strong>bold</strong>" in page and "<code>run_atlas</code>" in page and "<pre>" in page
    assert "<details>" in page  # a docstring shows its first paragraph, the rest folded
    for label in ("random:gpt2", "prompts per task", "iclscope", "torch", "transformers", "python", "duration"):
        assert label in shown, label
    assert 'class="data sortable"' in page  # 24 rows: sortable, in the tables part
    assert "<th scope=\"col\" title=\"layer\"" in page  # the named index became a labelled column
    assert "<th scope=\"col\" title=\"\"" not in page  # no empty column headers


def test_old_callers_get_settings_metadata_and_headline_from_the_folder(tmp_path):
    out = tmp_path / "res"
    with ResultsDir(out, {"command": "atlas", "model": "random:gpt2", "n": 4}, command="atlas") as res:
        res.write_json("summary.json", {"max_fv": 0.123456789, "accuracy_by_fraction": {"fv": {"0.1": 0.5}}})
        write_report(res.file("report.html"), "Old caller", [{"heading": "What ran", "text": "One paragraph."}])
    page = (out / "report.html").read_text()
    shown = visible_text(page)
    assert 'id="settings"' in page and "random:gpt2" in shown
    assert 'id="run"' in page and "command" in shown and "atlas" in shown
    assert "0.123" in shown and "0.123456789" not in shown and '{"' not in shown


def test_tables_are_formatted_for_reading():
    df = pd.DataFrame({"zero_shot_acc": [0.123456, 0.5], "steps": [1000.0, 20000.0], "p": [1e-7, 0.5]})
    t = table_context(df)
    assert [c["name"] for c in t["columns"]] == ["zero shot accuracy", "steps", "p"]
    assert [row[0]["text"] for row in t["rows"]] == ["0.123", "0.500"]
    assert [row[1]["text"] for row in t["rows"]] == ["1,000", "20,000"]
    assert t["rows"][0][2]["text"] == "<0.001" and not t["sortable"] and not t["wide"]
    assert fmt_number(float("nan")) == "–" and fmt_number(0.0001234) == "1.23e-04" and fmt_number(12.3456) == "12.3"
    assert table_context(pd.DataFrame({"a": range(30)}))["sortable"]


def test_text_is_paragraphs_lists_and_code():
    html = "".join(text_blocks("Intro line\nwraps here.\n\n- a `x`\n- b\n\nEnd **now**."))
    assert html == ("<p>Intro line wraps here.</p><ul><li>a <code>x</code></li><li>b</li></ul>"
                    "<p>End <strong>now</strong>.</p>")


def test_figures_are_readable_and_titles_wrap():
    fig, ax = plt.subplots(figsize=(16, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x", fontsize=6)
    ax.tick_params(labelsize=5)
    ax.set_title("a very long title " * 12)
    png = figure_png(fig, close=False)
    assert png[:4] == b"\x89PNG"
    # the figure is wider than the report column: fonts scale up so that they are >= 9 pt when shown
    assert ax.xaxis.label.get_fontsize() >= 9 * 16 / 10.4 - 1e-6
    assert ax.get_xticklabels()[0].get_fontsize() >= 9 * 16 / 10.4 - 1e-6
    assert "\n" in ax.get_title()
    plt.close(fig)
    assert color_for("fv excl. induction") == COLORS["fv"] and color_for("random heads") == COLORS["random"]
    assert color_for("induction") == COLORS["induction"] != COLORS["fv"]


def test_label_points_places_labels_without_overlap_and_heads_axis():
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = np.array([0.1, 0.1, 0.9, 0.5]), np.array([0.1, 0.1, 0.9, 0.5])
    ax.scatter(xs, ys)
    placed = label_points(ax, xs, ys, ["L0H1", "L0H2", "L3H5", "L2H0"])
    assert len(placed) == 4
    r = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(r) for a in placed]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(4) for j in range(i))
    with pytest.raises(IclscopeError, match="differ in length"):
        label_points(ax, xs, ys, ["a"])
    sec = heads_and_percent_axis(ax, 144)
    assert sec.get_xlabel() == "heads (of 144)"
    assert float(sec._functions[0](10.0)) == pytest.approx(14.4)
    plt.close(fig)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_logs_at_a_steady_interval_off_a_terminal():
    stream, clock = io.StringIO(), FakeClock()
    bar = progress(total=100, desc="FV scores", unit="batch", stream=stream, interval=30, clock=clock)
    assert isinstance(bar, LogProgress)
    assert stream.getvalue().splitlines() == ["[iclscope] FV scores: 0/100 batch (0 %), elapsed 0:00"]
    clock.t += 10
    bar.update(10)
    assert len(stream.getvalue().splitlines()) == 1  # not yet 30 s
    clock.t += 20
    bar.update(10)
    bar.set_postfix(loss=0.693147)
    clock.t += 30
    bar.update(10)
    lines = stream.getvalue().splitlines()
    assert lines[1] == "[iclscope] FV scores: 20/100 batch (20 %), 1.5 s/batch, elapsed 0:30, ETA 2:00"
    assert lines[2] == ("[iclscope] FV scores: 30/100 batch (30 %), 2 s/batch, elapsed 1:00, ETA 2:20, "
                        "loss=0.693")
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[3].endswith("elapsed 1:00, stopped, loss=0.693")


def test_progress_quiet_tty_iterable_and_bad_total():
    stream = io.StringIO()
    with progress(total=5, desc="x", quiet=True, stream=stream) as bar:
        bar.update(5)
    assert stream.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm import tqdm
    bar = progress(total=3, desc="t", stream=Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    stream = io.StringIO()
    assert list(progress(total=3, stream=stream, iterable=[1, 2, 3], clock=FakeClock())) == [1, 2, 3]
    assert stream.getvalue().splitlines()[-1].startswith("[iclscope] 3/3 it (100 %)")
    with pytest.raises(IclscopeError, match="total"):
        progress(total=-1)


class FakeWriter:
    def __init__(self):
        self.calls = []

    def add_hparams(self, hparams, metrics, run_name=None):
        self.calls.append(("hparams", hparams, metrics))

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.calls.append(("image", tag, img, step, dataformats))


def test_tensorboard_tags_hparams_and_figures():
    assert [group_tag(n) for n in ("train_loss", "heldout_labels_loss", "train_acc", "ind_strength_L1H2",
                                   "task_prev_L0H3", "prev_L0H1", "lr", "loss/x")] == [
        "loss/train", "loss/heldout_labels", "accuracy/train", "heads/induction_strength/L1H2",
        "heads/task_prev/L0H3", "heads/prev/L0H1", "other/lr", "loss/x"]
    w = FakeWriter()
    metrics = write_hparams(w, {"model": {"n_layers": 2, "tokens": None}, "train": {"lr": 1e-3, "seeds": [0, 1]}},
                            {"train_loss": 0.5, "train_acc": float("nan"), "note": "x"})
    _, hp, m = w.calls[0]
    assert hp == {"model.n_layers": 2, "model.tokens": "None", "train.lr": 1e-3, "train.seeds": "[0, 1]"}
    assert m == metrics == {"hparam/loss/train": 0.5}
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1])
    add_figure(w, "figures/story", fig, 7)
    _, tag, img, step, fmt = w.calls[1]
    assert tag == "figures/story" and step == 7 and fmt == "HWC" and img.dtype == np.uint8 and img.shape[2] == 3


def test_png_width_gives_true_font_size(tmp_path):
    from iclscope.report.html import _png_css_width
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([0, 1])
    data = figure_png(fig)
    width_px = struct.unpack(">I", data[16:20])[0]
    assert _png_css_width(data) == round(width_px * 96 / 120)
