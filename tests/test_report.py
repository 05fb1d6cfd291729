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


# ------------------------------------------------------------------ every command's report, from small runs

def check_command_report(page: str, figures: int = 1, tables: int = 1) -> None:
    """The one look: the summary with findings first, then figures and tables, settings and run metadata;
    no raw JSON, no docstring markup."""
    body = page[page.index("<body"):]
    assert body.index('id="summary"') < body.index('class="part"'), "the summary comes first"
    assert '<ul class="findings">' in body and body.count('class="finding') >= 1
    assert body.count('<img src="data:image/png;base64,') >= figures
    assert body.count('<table class="data') >= tables
    assert 'id="run"' in body and "iclscope" in visible_text(body[body.index('id="run"'):])
    text = visible_text(body)
    assert '{"' not in text and "{&#34;" not in body and "&#34;:" not in body
    for markup in ("``", ":class:", ":func:", "Results folder (", "=====", "json.dumps"):
        assert markup not in text, markup


def _atlas_fixture(tmp_path, label, seed):
    """An atlas folder's files from fixed random numbers, through the atlas's own summary functions."""
    from iclscope.experiments.atlas.ablation import ablation_summary
    from iclscope.experiments.atlas.command import top_head_evidence, write_atlas_report
    from iclscope.experiments.atlas.vectors import fv_summary
    from iclscope.report.figures.atlas import ablation_panel, induction_fv_scatter, score_heatmaps

    rng = np.random.default_rng(seed)
    L, H = 4, 6
    heads = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
    heads["induction"] = rng.random(L * H) * 0.3 + np.where(heads.layer == 2, 0.5, 0)
    heads["induction_baseline"] = 0.1
    heads["induction_sem"] = 0.01
    heads["prev_token"] = rng.random(L * H)
    heads["fv"] = rng.normal(0, 0.01, L * H) + np.where(heads.layer == 3, 0.05, 0)
    heads["fv_sem"] = 0.005
    rows = []
    for ranking, seeds in (("induction", [0]), ("fv", [0]), ("random", [0, 1, 2])):
        for f in (0.0, 0.05, 0.1, 0.2):
            for s in seeds:
                for t in ("antonym", "country", "copy:antonym"):
                    acc = 0.8 - (f * 3 if ranking == "fv" and not t.startswith("copy") else f) + rng.normal(0, 0.02)
                    rows.append({"ranking": ranking, "fraction": f, "k": round(f * L * H), "seed": s, "task": t,
                                 "accuracy": acc})
    abl = pd.DataFrame(rows)
    fvt = pd.DataFrame([{"task": t, "layer": layer, "zero_shot_acc": 0.1, "with_fv_acc": 0.1 + 0.1 * layer,
                         "few_shot_acc": 0.8, "heads": 3, "n": 20, "site": "resid_post"}
                        for t in ("antonym", "country") for layer in range(L)])
    folder = tmp_path / label
    with ResultsDir(folder, {"command": "atlas", "model": label, "tasks": None, "task_names": ["antonym", "country"]},
                    command="atlas") as res:
        res.write_table("heads.csv", heads)
        res.write_table("ablation.csv", abl)
        figs = {"scatter": induction_fv_scatter(heads, res.file("induction_vs_fv.png"), L, 3),
                "scores": score_heatmaps(heads, res.file("scores.png")),
                "induction": None, "fv": None, "prev_token": None}
        fig, ax = plt.subplots()
        ablation_panel(ax, abl, "task prompts")
        figs["ablation"] = save_figure(fig, res.file("ablation.png"))
        is_copy = abl.task.str.startswith("copy:")
        copy_curve = abl[is_copy].groupby(["ranking", "fraction"]).accuracy.mean().unstack(0)
        summary = {"model": label, "heads": L * H, "top_heads": {"top_k": 3, "induction": [[2, 0], [2, 1], [2, 3]],
                                                                "fv": [[3, 0], [2, 1], [3, 2]], "overlap": [[2, 1]],
                                                                "spearman_induction_fv": 0.12},
                   "top_head_evidence": top_head_evidence(heads), "function_vectors": fv_summary(fvt),
                   "disjoint_tasks": False}
        res.write_json("summary.json", summary)
        write_atlas_report(res, summary, heads, abl, None, copy_curve, fvt, figs,
                           {"interval": "95 % t interval over seeds", "notes": []},
                           run_metadata(model=label, prompts_per_task=20, seeds=3, protocol="published"))
        res.mark_finished()
    return folder, heads, abl, summary


def test_atlas_and_compare_reports(tmp_path):
    from iclscope.experiments import compare

    a, heads, abl, summary = _atlas_fixture(tmp_path, "model-a", 0)
    page = (a / "report.html").read_text()
    check_command_report(page, figures=3, tables=3)
    text = visible_text(page)
    assert "The top induction head is L2H" in text and "Ablating the top 2 FV heads" in text
    assert "random 2 heads" in text and "95 % t interval" in text  # the baseline with its interval
    assert "previous-token score" not in text or page.count("<img") >= 3
    b, *_ = _atlas_fixture(tmp_path, "model-b", 1)
    s = compare.run_compare([a, b], tmp_path / "compare", labels=["A", "B"], log=lambda *x: None)
    page = (tmp_path / "compare" / "report.html").read_text()
    check_command_report(page, figures=2, tables=2)
    text = visible_text(page)
    assert "A: " in text and "rank correlation" in text and "random 1-sets" in text or "random 2-sets" in text
    models = page[page.index("<h2>Models</h2>"):page.index("<h2>Overlap")]
    assert models.count("<tr>") == 1 + 2  # one row per model, no duplicates
    assert len(s["models"]) == 2


def test_dynamics_and_demo_reports(tmp_path):
    from iclscope.experiments import dynamics as dyn
    from iclscope.experiments.demo import run_demo, write_demo_report
    from iclscope.train import load_config, train

    tiny = ["train.sequences=640", "train.batch_size=32", "eval.every=5", "eval.batch=32", "eval.checkpoint_every=5",
            "model.n_layers=2", "model.d_mlp=32", "model.d_model=32", "data.n_words=16", "data.k=4",
            "eval.induction_len=6", "train.threads=1"]
    train(load_config("testbed", tiny), tmp_path / "run", progress=False, log=lambda *a: None)
    dyn.run_dynamics(tmp_path / "dyn", run=tmp_path / "run", checkpoints="0,5,10,20", log=lambda *a: None,
                     k=4, n_clean=4, n_corrupt=2, n_eval=4)
    page = (tmp_path / "dyn" / "report.html").read_text()
    check_command_report(page, figures=3, tables=1)
    text = visible_text(page)
    assert "final top FV heads were top induction heads" in text and "random head sets" in text
    assert ("not distinguishable from the random baseline" in text) == ("within noise" in text)

    run_demo(tmp_path / "demo", model_spec="random:gpt2:layers=2,heads=4,d_model=32", n_seqs=4, half=6, train=False,
             log=lambda *a: None)
    page = (tmp_path / "demo" / "report.html").read_text()
    check_command_report(page, figures=0, tables=1)
    assert "kl_mean_ablation" not in page and "Head interface on" in visible_text(page)
    # the full demo's page from its summary (the trained parts made up): the story in order
    full = json.loads((tmp_path / "demo" / "summary.json").read_text())
    full["training"] = {"phase_change": {"sequences": 40000, "step": 300, "plateau_loss": 0.69, "final_loss": 0.01},
                        "heads_strength_above_0.3": 3, "final": {},
                        "additivity": {"max_acc_one_head_alone": 0.7, "min_acc_ablating_one_head": 0.95}}
    full["testbed"] = {"top_induction": [[1, 0]], "top_fv": [[1, 2]], "ablation_at": "0.2",
                       "task_acc": {"fv": 0.2, "induction": 0.7, "random": 0.72},
                       "copy_acc": {"fv": 0.9, "induction": 0.3, "random": 0.88},
                       "story": {"induction_heads_form_step": 200, "fv_heads_form_step": 1500, "formation_baseline": {
                           "induction": {"rise": 0.5, "random_95": [0.0, 0.2], "p_random_ge_observed": 0.001,
                                         "verdict": "beats the random baseline"}}}}
    (tmp_path / "demo" / "testbed" / "story").mkdir(parents=True)
    save_figure(plt.subplots()[0], tmp_path / "demo" / "testbed" / "story" / "story.png")
    write_demo_report(tmp_path / "demo" / "full.html", tmp_path / "demo", full, run_metadata(model="x"))
    page = (tmp_path / "demo" / "full.html").read_text()
    check_command_report(page, figures=1, tables=1)
    text = visible_text(page[page.index('id="summary"'):])  # after the page's table of contents
    order = [text.index(s) for s in ("induction heads (L1H0) form at step 200", "novel-query (FV route) accuracy at 0.20",
                                     "phase change at 40,000 sequences", "1. The testbed", "2. Which kind",
                                     "3. The phase change", "5. The head interface")]
    assert order == sorted(order)


def test_study_report(tmp_path):
    from iclscope.experiments.study import write_study_report

    records = [{"id": "atlas-a", "kind": "atlas", "model": "a", "revision": None, "status": "finished", "seconds": 3.2,
                "host": "node1", "resources": {"num_cpus": 1, "num_gpus": 0, "memory_bytes": 2 ** 30},
                "folder": "atlas-a", "error": None, "reused": True},
               {"id": "atlas-b", "kind": "atlas", "model": "b", "revision": "step1", "status": "failed", "seconds": 1.0,
                "host": "node1", "resources": None, "folder": "atlas-b", "error": "unknown family 'x'"},
               {"id": "compare", "kind": "compare", "model": None, "status": "blocked", "folder": None,
                "error": "atlas-b failed"}]
    with ResultsDir(tmp_path / "study", {"command": "study"}, command="study") as res:
        (res.path / "atlas-a").mkdir()
        (res.path / "atlas-a" / "report.html").write_text("<html></html>")
        write_study_report(res, records, "Study: 2 models, 3 jobs")
    page = (tmp_path / "study" / "report.html").read_text()
    check_command_report(page, figures=0, tables=1)
    text = visible_text(page)
    assert "1 of 3 jobs finished (1 from an earlier run)." in text
    assert "1 job failed: atlas-b (unknown family" in text and "could not run" in text
    assert "href='atlas-a/report.html'" in page
