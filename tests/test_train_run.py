"""The training lab's runs: the run folder, seeds and ensembles, clamps in training and evaluation,
the token testbed and its checkpoints."""

import json

import numpy as np
import pandas as pd
import pytest

import iclscope
from iclscope.train import load_config, train

SMALL = ["train.sequences=1600", "train.batch_size=16", "eval.every=20", "eval.batch=64", "eval.checkpoint_every=50",
         "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]


def small(*extra):
    return load_config(None, SMALL + list(extra))


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    [s] = train(small(), out, progress=False, log=lambda *a: None)
    df = pd.read_csv(out / "metrics.csv")
    assert list(df.columns[:3]) == ["step", "sequences", "train_loss"]
    assert df.step.tolist() == list(range(0, 101, 20))
    assert (df.sequences == df.step * 16).all()
    for col in ["heldout_classes_acc", "heldout_labels_loss", "heldout_exemplars_acc", "ind_strength_L1H3",
                "prev_L0H0", "induction_L1H3"]:
        assert col in df.columns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 100 and "phase_change" in summary
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert {"step_0000000", "step_0000001", "step_0000064", "step_0000050", "step_0000100"} <= set(ckpts)
    m = iclscope.load(out / "checkpoints" / "step_0000100")
    assert m.n_layers == 2 and m.cfg.d_input == 32
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0]  # it learns something


def test_same_seed_same_run_other_seed_differs(tmp_path):
    a = train(small(), tmp_path / "a", progress=False, log=lambda *a: None)[0]
    b = train(small(), tmp_path / "b", progress=False, log=lambda *a: None)[0]
    c = train(small("train.seeds=[6]"), tmp_path / "c", progress=False, log=lambda *a: None)[0]
    assert a["final"] == b["final"]
    assert a["final"] != c["final"]


def test_ensemble_of_seeds_writes_one_folder_per_seed(tmp_path):
    out = tmp_path / "ens"
    summaries = train(small("train.seeds=[5, 6]"), out, progress=False, log=lambda *a: None)
    assert [s["seed"] for s in summaries] == [5, 6]
    single = train(small("train.seeds=[6]"), tmp_path / "single", progress=False, log=lambda *a: None)[0]
    ens6 = pd.read_csv(out / "seed_6" / "metrics.csv")
    one = pd.read_csv(tmp_path / "single" / "metrics.csv")
    # member 6 of the ensemble is the single run of seed 6 (up to float rounding of batched ops)
    np.testing.assert_allclose(ens6.train_loss, one.train_loss, atol=2e-3)


def test_clamps_act_in_training_and_evaluation(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[clamp]]\nkind = "ClampPattern"\nheads = "layer:0"\npattern = "prev_token"\n\n'
                        '[[clamp]]\nkind = "ClampPattern"\nheads = [[1, 0], [1, 2]]\npattern = "label_induction"\n'
                        'strength = 0.8\n')
    out = tmp_path / "run"
    train(load_config(cfg_file, SMALL + ["train.sequences=320"]), out, progress=False, log=lambda *a: None)
    last = pd.read_csv(out / "metrics.csv").iloc[-1]
    for h in range(4):
        assert last[f"prev_L0H{h}"] == pytest.approx(1.0, abs=1e-5)  # the clamped previous-token pattern
    assert last["ind_strength_L1H0"] == pytest.approx(0.6, abs=1e-5)  # 2s - 1
    assert last["ind_strength_L1H2"] == pytest.approx(0.6, abs=1e-5)
    assert abs(last["ind_strength_L1H1"] - 0.6) > 1e-3


TESTBED_TINY = ["train.sequences=1280", "train.batch_size=32", "eval.every=10", "eval.batch=64",
                "eval.checkpoint_every=20", "model.n_layers=2", "model.d_mlp=64", "model.d_model=32",
                "data.n_words=16", "data.k=4", "eval.induction_len=6", "train.threads=1"]


def test_token_testbed_run_and_its_checkpoints(tmp_path):
    from iclscope.data.mixture import CONDITIONS
    from iclscope.experiments.atlas import default_tasks, token_layout

    out = tmp_path / "tb"
    [s] = train(load_config("testbed", TESTBED_TINY), out, progress=False, log=lambda *a: None)
    df = pd.read_csv(out / "metrics.csv")
    for c in CONDITIONS:
        assert f"{c}_acc" in df.columns
    assert "conflict_copy" in df.columns and "induction_L1H0" in df.columns
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0]
    m = iclscope.load(out / "checkpoints" / "step_0000040")
    lay = token_layout(m)
    assert lay == {"sep_id": 0, "bos_id": 1, "pad_id": 0, "word_offset": 2, "n_words": 16, "n_tasks": 8,
                   "task_seed": 0, "k": 4}
    # the atlas's built-in tasks are the very tasks the model was trained on
    from iclscope.data.mixture import MixtureConfig, MixtureData
    data = MixtureData(MixtureConfig(n_words=16, k=4))
    tasks = default_tasks(m)
    assert [t.pairs for t in tasks.values()] == [t.pairs for t in data.tasks]


