"""The training lab's trainer: config, clamps, metrics, checkpoints, resume, phase change."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import iclscope
from iclscope import IclscopeError
from iclscope.train import Trainer, detect_phase_change, load_config, train

SMALL = ["train.sequences=1600", "train.batch_size=16", "eval.every=20", "eval.batch=64", "eval.checkpoint_every=50",
         "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]


def small(*extra):
    return load_config(None, SMALL + list(extra))


def test_default_config_is_the_reference_setup():
    cfg = load_config()
    assert cfg["model"] == {"n_layers": 2, "n_heads": 8, "d_model": 64, "d_mlp": 0, "positions": "rotary",
                            "layernorm": True}
    assert (cfg["train"]["lr"], cfg["train"]["batch_size"], cfg["train"]["sequences"]) == (1e-5, 32, 1_000_000)
    assert (cfg["data"]["n_classes"], cfg["data"]["n_labels"], cfg["data"]["context_pairs"]) == (50, 5, 2)


@pytest.mark.parametrize("sets, msg", [
    (["train.lrate=1"], "unknown config key.*train.lrate"),
    (["optim.lr=1"], "unknown config section 'optim'"),
    (["train.seeds=[1,1]"], "distinct seeds"),
    (["data.n_labels=1"], "n_labels"),
])
def test_bad_config_keys(sets, msg):
    with pytest.raises((IclscopeError, ValueError), match=msg):
        load_config(None, sets)


def test_clamp_naming_a_missing_head(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[clamp]]\nkind = "ClampPattern"\nheads = [[1, 12]]\npattern = "prev_token"\n')
    cfg = load_config(cfg_file, SMALL)
    with pytest.raises(IclscopeError, match="clamp 0: .*head 12 is out of range"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_features_file_of_the_wrong_shape(tmp_path):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f["feat"] = np.zeros((10, 512), dtype=np.float32)
    with pytest.raises(IclscopeError, match="f.h5"):
        Trainer(small(f"data.features_path='{p}'"), tmp_path / "run", progress=False)


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


def test_rerun_with_another_config_is_refused_and_nothing_lost(tmp_path):
    out = tmp_path / "run"
    train(small(), out, progress=False, log=lambda *a: None)
    before = (out / "metrics.csv").read_text()
    with pytest.raises(IclscopeError, match="different config.*train.lr"):
        Trainer(small("train.lr=1e-3"), out, progress=False)
    assert (out / "metrics.csv").read_text() == before


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(small(), full, progress=False, log=lambda *a: None)

    part = tmp_path / "part"
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 57:  # between two evaluations: the rows after the saved state are redone
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(small(), part, progress=False, log=lambda *a: None)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert pd.read_csv(part / "metrics.csv").step.max() < 100
    [s] = train(small(), part, progress=False, log=lambda *a: None)
    assert s["resumed_from_step"] > 0
    a, b = pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    assert a.step.tolist() == b.step.tolist()  # no row lost or duplicated
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)


def test_killed_process_resumes(tmp_path):
    """SIGKILL at an arbitrary moment, then the same command again."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "iclscope", "train", "--out", str(out), "--quiet"]
    for s in SMALL[:-1] + ["train.sequences=6400", "train.threads=1"]:
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "checkpoints" / "step_0000100").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out / "metrics.csv")
    assert df.step.tolist() == list(range(0, 401, 20))


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


def test_phase_change_detector():
    x = np.arange(0, 100) * 1000
    loss = np.where(x < 40_000, 0.7, np.where(x < 50_000, 0.7 - (x - 40_000) / 10_000 * 0.69, 0.01))
    loss = loss + 0.01 * np.sin(x)  # a little noise
    pc = detect_phase_change(x, loss, threshold=0.4 * math.log(2))
    assert 44_000 <= pc["sequences"] <= 47_000
    assert 40_000 <= pc["steepest_sequences"] <= 50_000
    assert pc["plateau_loss"] == pytest.approx(0.7, abs=0.02)
    assert detect_phase_change(x, np.full(100, 0.7), threshold=0.3) is None


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


def test_label_induction_clamp_needs_fewshot_data():
    with pytest.raises(IclscopeError, match="label_induction"):
        cfg = load_config("testbed", TESTBED_TINY)
        cfg["clamp"] = [{"kind": "ClampPattern", "heads": "layer:1", "pattern": "label_induction"}]
        from iclscope.train import validate_config
        validate_config(cfg)
