"""``lab_study`` on tiny settings: every part and the report are written, on one engine; a second call trains
and writes nothing; bad arguments are refused with nothing written. One local Ray (2 CPUs) for the file."""

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import iclscope.engine
from iclscope import IclscopeError
from iclscope.engine import Engine
from iclscope.experiments.lab_study import PARTS, lab_study
from iclscope.train import load_config

TINY = ["train.batch_size=16", "eval.every=5", "eval.batch=32", "eval.checkpoint_every=10", "data.dim=32",
        "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]
ARGS = dict(seeds=(0,), sequences=160, labels=(3, 5), classes=(10, 20), conditions=["prev_token", "layer1"],
            additivity_n=64)


@pytest.fixture(scope="module")
def engine():
    with Engine(num_cpus=2) as eng:
        yield eng


class _Borrowed:
    """Stands in for ``iclscope.engine.Engine`` in the study: counts how often one is made and closed, and
    lends the file's engine (its close() does not stop the shared Ray)."""

    made = closed = 0
    shared = None

    def __init__(self, **kwargs):
        type(self).made += 1

    def __getattr__(self, name):
        return getattr(type(self).shared, name)

    def close(self):
        type(self).closed += 1


def _fingerprint(folder: Path) -> dict:
    """Every file's mtime and content, but the top folder's lock, PID file and finished marker (a call opens
    and closes the folder: those are rewritten by design)."""
    skip = {".iclscope.lock", ".iclscope.pid", ".iclscope-finished.json"}
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and not (p.parent == folder and p.name in skip)}


def test_the_whole_study_then_a_second_call_trains_nothing(tmp_path, engine, monkeypatch, capsys):
    out = tmp_path / "lab"
    cfg = load_config(None, TINY)
    monkeypatch.setattr(_Borrowed, "shared", engine)
    monkeypatch.setattr(iclscope.engine, "Engine", _Borrowed)
    msgs: list[str] = []
    summary = lab_study(cfg, out=out, log=msgs.append, **ARGS)  # engine=None: the study makes its own
    assert (_Borrowed.made, _Borrowed.closed) == (1, 1)  # one engine for every part, closed at the end
    # every part is its own finished results folder
    for d in ("reference", "clamp-sweep", "labels", "classes", "additivity/seed_0"):
        assert (out / d / ".iclscope-finished.json").exists(), d
    assert (out / ".iclscope-finished.json").exists()
    for c in ("none", "prev_token", "layer1"):
        assert (out / "clamp-sweep" / c / "metrics.csv").exists()
    assert json.loads((out / "labels" / "labels=3" / "config.json").read_text())["data"]["n_labels"] == 3
    assert json.loads((out / "classes" / "classes=20" / "config.json").read_text())["data"]["n_classes"] == 20
    assert json.loads((out / "reference" / "config.json").read_text())["train"]["sequences"] == 160
    # the report tells the story in order, every section present, tables not JSON
    page = (out / "report.html").read_text()
    heads = re.findall(r"<h2[^>]*>\s*([^<]+?)\s*</h2>", page)
    story = ["1. The reference run and its phase change", "2. Clamps: which subcircuit speeds the phase change",
             "3. Data dependence: labels and classes", "4. Additivity of the trained heads",
             "5. Parts and their durations"]
    assert [h for h in heads if h in story] == story, heads
    assert '{"' not in page and "&#34;" not in page and "data:image/png;base64," in page
    # the summary reads the parts' own tables, and times every part
    clamp = pd.read_csv(out / "clamp-sweep" / "phase_change.csv")
    assert [r["condition"] for r in summary["clamps"]] == clamp.condition.tolist() == ["none", "prev_token", "layer1"]
    assert [r["vs none"] for r in summary["clamps"]] == clamp.vs_none.tolist()
    labels = pd.read_csv(out / "labels" / "phase_change.csv")
    assert [r["per_seed"] for r in summary["labels"]] == labels.per_seed.astype(str).tolist()
    assert [r["labels"] for r in summary["labels"]] == [3, 5] and [r["classes"] for r in summary["classes"]] == [10, 20]
    add = json.loads((out / "additivity" / "seed_0" / "summary.json").read_text())
    assert summary["additivity"]["per_seed"][0]["max accuracy, one head alone"] == add["max_acc_one_head_alone"]
    parts = summary["durations"]["parts"]
    assert list(parts) == list(PARTS)
    assert all(p["status"] == "computed" and p["seconds"] >= 0 for p in parts.values())
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # the second call reuses every part whole: nothing trained, no file rewritten, no engine made
    before = _fingerprint(out)
    capsys.readouterr()
    monkeypatch.setattr(iclscope.engine, "Engine", lambda **kw: pytest.fail("an engine was made"))
    msgs = []
    again = lab_study(cfg, out=out, engine=engine, log=msgs.append, **ARGS)
    assert [m.split(":")[0] for m in msgs if "reusing the finished part" in m] == list(PARTS)
    assert "trainings" not in capsys.readouterr().err  # no job was submitted
    assert _fingerprint(out) == before
    assert again == summary and (out / ".iclscope-finished.json").exists()


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(seeds=[]), "seeds: empty"),
    (dict(seeds=[0, 0]), "seeds: 0 is repeated"),
    (dict(seeds=[-1]), "seeds: -1 is not a whole number >= 0"),
    (dict(seeds="0,1"), "seeds='0,1': expected a list"),
    (dict(sequences=0), "sequences=0: expected a whole number >= 1"),
    (dict(sequences=1.5), "sequences=1.5"),
    (dict(data_sequences=-3), "data_sequences=-3"),
    (dict(labels=[1]), "labels: 1 is not a whole number >= 2"),
    (dict(labels=[2]), "labels=2: data.heldout_label_pairs = 2"),  # 2 labels: 1 pair, 2 held out
    (dict(classes=[20, 20]), "classes: 20 is repeated"),
    (dict(conditions=["none", "bogus"]), "conditions: unknown bogus"),
    (dict(additivity_how="max"), "additivity_how='max'"),
    (dict(additivity_n=0), "additivity_n=0"),
    (dict(workers=0), "workers=0"),
    (dict(address=""), "address=''"),
    (dict(config="no-such-config.toml"), "no-such-config.toml"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, culprit):
    base = dict(config=load_config(None, TINY), out=tmp_path / "lab", log=lambda *a: None,
                **{**ARGS, "labels": (4, 5)})
    base.update(kwargs)
    with pytest.raises(IclscopeError) as e:
        lab_study(**base)
    msg = str(e.value)
    assert culprit in msg and "\n" not in msg, msg
    assert not (tmp_path / "lab").exists()


def test_a_foreign_folder_is_refused_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(IclscopeError, match="not made by iclscope"):
        lab_study(load_config(None, TINY), out=mine, log=lambda *a: None, **ARGS)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_failed_parts_are_reported_and_the_call_raises_naming_them(tmp_path, engine):
    from iclscope.experiments.lab import SweepFailed

    out = tmp_path / "lab"
    with pytest.raises(SweepFailed) as e:
        lab_study(load_config(None, TINY + ["train.lr=1e10"]), out=out, engine=engine, log=lambda *a: None,
                  seeds=(0,), sequences=32, labels=(5,), classes=(50,), conditions=["prev_token"], additivity_n=64)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("lab study: 5 part(s) did not finish: reference (training diverged")
    assert re.search(r"; clamp-sweep \(\d run\(s\) of the sweep failed: ", msg), msg
    assert "; labels (1 run(s)" in msg and "; classes (1 run(s)" in msg and "; additivity (the reference run failed)" in msg
    assert msg.endswith("the same command retries them and reuses the finished parts")
    # the report of what finished is written; the folder is not marked finished
    summary = json.loads((out / "summary.json").read_text())
    assert {n: p["status"] for n, p in summary["durations"]["parts"].items()} == {
        "reference": "failed", "clamp-sweep": "failed", "labels": "failed", "classes": "failed",
        "additivity": "not run"}
    assert "Not finished: reference (training diverged" in (out / "report.html").read_text()
    assert not (out / ".iclscope-finished.json").exists()
