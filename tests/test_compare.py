"""``iclscope compare``: atlas results of two testbed models side by side."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from iclscope import IclscopeError
from iclscope.cli import main
from iclscope.experiments.atlas import run_atlas
from iclscope.experiments.compare import hypergeom_pmf, run_compare
from iclscope.train import load_config, train

TINY = ["train.sequences=640", "train.batch_size=32", "eval.every=10", "eval.batch=64", "eval.checkpoint_every=100",
        "eval.log_checkpoints=false", "model.n_layers=2", "model.d_mlp=64", "model.d_model=32", "data.n_words=16",
        "data.k=4", "eval.induction_len=6", "train.threads=1", "train.seeds=[0,1]"]
quiet = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def atlases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    train(load_config("testbed", TINY), root / "run", progress=False, log=quiet)  # two seeds side by side
    dirs = []
    for s in (0, 1):
        d = root / f"atlas{s}"
        run_atlas(str(root / "run" / f"seed_{s}" / "checkpoints" / "step_0000020"), d, log=quiet, k=4, n_clean=8,
                  n_corrupt=4, n_eval=8, random_seeds=2, fractions=(0.0, 0.125, 0.25))
        dirs.append(d)
    return dirs


def _top(h, col, k):
    return set(map(tuple, h.sort_values(col, ascending=False, kind="stable")[["layer", "head"]].head(k).to_numpy()))


def test_hypergeometric_overlap_of_random_sets():
    p = hypergeom_pmf(16, 3, 3)
    assert math.isclose(p.sum(), 1.0) and math.isclose((np.arange(4) * p).sum(), 9 / 16)
    assert math.isclose(p[3], 1 / math.comb(16, 3))


def test_compare_two_testbed_models(atlases, tmp_path):
    out = tmp_path / "cmp"
    s = run_compare(atlases, out, fractions=(0.25, 0.5), log=quiet)
    for f in ("report.html", "overlap.png", "depth.png", "ablation.png", "overlap.csv", "correlation.csv",
              "depth.csv", "ablation.csv", "summary.json"):
        assert (out / f).exists(), f
    labels = [m["label"] for m in s["models"]]
    assert len(set(labels)) == 2 and all("seed_" in lab for lab in labels)  # told apart by their paths
    ov = pd.read_csv(out / "overlap.csv")
    corr = pd.read_csv(out / "correlation.csv")
    for d, lab in zip(atlases, labels):
        h = pd.read_csv(d / "heads.csv")
        for frac in (0.25, 0.5):
            k = round(frac * len(h))
            row = ov[(ov.model == lab) & (ov.fraction == frac)].iloc[0]
            assert row.k == k and row.overlap == len(_top(h, "induction", k) & _top(h, "fv", k))
            assert math.isclose(row.random_mean, k * k / len(h))
        rho = corr[corr.model == lab].spearman.iloc[0]
        assert math.isclose(rho, h.induction.rank().corr(h.fv.rank()))
        depth = pd.read_csv(out / "depth.csv")
        d_fv = depth[(depth.model == lab) & (depth.kind == "fv")]
        assert len(d_fv) == 3 and d_fv.rel_depth.isin([0.0, 1.0]).all()  # 2 layers: depth 0 or 1
        assert set(map(tuple, d_fv[["layer", "head"]].to_numpy())) == _top(h, "fv", 3)
    abl = pd.read_csv(out / "ablation.csv")
    assert set(abl.prompts) == {"task", "copy"} and set(abl.model) == set(labels)
    a0 = pd.read_csv(atlases[0] / "ablation.csv")
    want = a0[(a0.ranking == "fv") & (a0.fraction == 0.25) & ~a0.task.str.startswith("copy:")].accuracy.mean()
    got = abl[(abl.model == labels[0]) & (abl.prompts == "task") & (abl.ranking == "fv") & (abl.fraction == 0.25)]
    assert math.isclose(got.accuracy.iloc[0], want)
    html = (out / "report.html").read_text()
    assert all(lab in html for lab in labels) and html.count("<img") >= 3


def test_different_task_sets_are_refused(atlases, tmp_path, capsys):
    odd = tmp_path / "odd"
    shutil.copytree(atlases[1], odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["task_names"] = cfg["task_names"][:-1]
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IclscopeError, match=f"{odd} was scored on a different task set"):
        run_compare([atlases[0], odd], tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()
    assert main(["compare", str(atlases[0]), str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_compare_command_line(atlases, tmp_path):
    out = tmp_path / "cli"
    assert main(["compare", *map(str, atlases), "--out", str(out), "--labels", "seed0,seed1"]) == 0
    assert pd.read_csv(out / "correlation.csv").model.tolist() == ["seed0", "seed1"]
