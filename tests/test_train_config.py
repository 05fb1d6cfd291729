"""The training lab's config: defaults, key checks, and the errors a bad config or clamp gives."""

import h5py
import numpy as np
import pytest

from iclscope import IclscopeError
from iclscope.train import (CONFIG_DIR, DATA_KINDS, OBJECTIVES, Trainer, load_config, model_config, token_layout,
                            validate_config)

# the small few-shot and token-testbed setups of test_train_run.py
SMALL = ["train.sequences=1600", "train.batch_size=16", "eval.every=20", "eval.batch=64", "eval.checkpoint_every=50",
         "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]


def small(*extra):
    return load_config(None, SMALL + list(extra))


TESTBED_TINY = ["train.sequences=1280", "train.batch_size=32", "eval.every=10", "eval.batch=64",
                "eval.checkpoint_every=20", "model.n_layers=2", "model.d_mlp=64", "model.d_model=32",
                "data.n_words=16", "data.k=4", "eval.induction_len=6", "train.threads=1"]


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


@pytest.mark.parametrize("sets, msg", [
    (["train.lr=true"], r"train.lr = true: expected a finite number > 0"),
    (["train.lr=0"], r"train.lr = 0: expected a finite number > 0"),
    (["train.lr=nan"], r"train.lr = nan: expected a finite number > 0"),
    (["train.batch_size=1.5"], r"train.batch_size = 1.5: expected an integer >= 1"),
    (["model.n_layers='two'"], r'model.n_layers = "two": expected an integer >= 1'),
    (["model.n_heads=0"], r"model.n_heads = 0: expected an integer >= 1"),
    (["train.betas=[0.9, 1.5]"], r"train.betas = \[0.9, 1.5\]: expected two numbers"),
    (["train.betas=0.9"], r"train.betas = 0.9: expected two numbers"),
    (["train.threads=0"], r"train.threads = 0: expected an integer >= 1"),
    (["eval.batch=0"], r"eval.batch = 0: expected an integer >= 1"),
    (["eval.every=-3"], r"eval.every = -3: expected an integer >= 1"),
    (["train.sequences=0.5"], r"train.sequences = 0.5: expected a whole number >= 1"),
    (["train.optimizer='sgd'"], r'train.optimizer = "sgd": expected one of "adam", "adamw"'),
])
def test_values_of_the_wrong_type_or_range_are_refused_in_one_line(sets, msg):
    with pytest.raises(IclscopeError, match=msg) as e:
        load_config(None, sets)
    assert "\n" not in str(e.value)


def test_whole_float_sequences_are_accepted():
    assert load_config(None, ["train.sequences=6e5"])["train"]["sequences"] == 6e5


def test_a_bad_config_writes_nothing_and_the_corrected_rerun_trains(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(IclscopeError, match="train.lr"):
        Trainer(load_config(None, SMALL) | {"train": {**load_config(None, SMALL)["train"], "lr": True}}, out)
    assert not out.exists()
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[clamp]]\nkind = "ClampPattern"\nheads = [[1, 12]]\npattern = "prev_token"\n')
    with pytest.raises(IclscopeError, match="head 12"):
        Trainer(load_config(cfg_file, SMALL), out, progress=False)
    assert not out.exists()  # refused before anything was written: the corrected rerun is not "a different config"
    Trainer(load_config(None, SMALL + ["train.sequences=32"]), out, progress=False, log=lambda *a: None).train()
    assert (out / "config.json").exists()


def test_clamp_naming_a_missing_head(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[clamp]]\nkind = "ClampPattern"\nheads = [[1, 12]]\npattern = "prev_token"\n')
    cfg = load_config(cfg_file, SMALL)
    with pytest.raises(IclscopeError, match="clamp 0: .*head 12 is out of range"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_features_file_of_the_wrong_shape(tmp_path):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f["feat"] = np.zeros((10, 512), dtype=np.float32)
    with pytest.raises(IclscopeError, match="f.h5"):
        Trainer(small(f"data.features_path='{p}'"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_features_file_with_a_nan_is_refused_before_training(tmp_path):
    p = tmp_path / "nan.h5"
    feats = np.random.default_rng(0).standard_normal((150, 5, 32)).astype(np.float32)
    feats[3, 2, 7] = np.nan
    with h5py.File(p, "w") as f:
        f["feat"] = feats
    with pytest.raises(IclscopeError, match=r"nan.h5:feat holds a non-finite value \(nan\) at index \[3, 2, 7\]"):
        Trainer(small(f"data.features_path='{p}'"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_label_induction_clamp_needs_fewshot_data():
    with pytest.raises(IclscopeError, match="label_induction"):
        cfg = load_config("testbed", TESTBED_TINY)
        cfg["clamp"] = [{"kind": "ClampPattern", "heads": "layer:1", "pattern": "label_induction"}]
        from iclscope.train import validate_config
        validate_config(cfg)


def test_shipped_configs_and_the_objective_registry():
    assert (CONFIG_DIR / "fewshot.toml").exists() and (CONFIG_DIR / "testbed.toml").exists()
    assert set(OBJECTIVES) == set(DATA_KINDS) == {"fewshot", "icl_mixture"}
    for kind, obj in OBJECTIVES.items():
        assert obj.kind == kind and DATA_KINDS[kind] is obj.config_class
    with pytest.raises(IclscopeError, match='data.kind = "words": expected one of "fewshot", "icl_mixture"'):
        validate_config({"data": {"kind": "words"}})


def test_model_config_and_token_layout_follow_the_data():
    fs = small()
    m = model_config(fs)
    assert (m.vocab_size, m.d_input, m.n_ctx) == (5, 32, 17)  # 5 labels, 32-dim exemplars, 2*8 + 1 > 5
    assert token_layout(fs) is None
    tb = load_config("testbed", TESTBED_TINY)
    m = model_config(tb)
    assert (m.vocab_size, m.d_input) == (18, 0)  # 16 words + SEP + BOS
    assert token_layout(tb)["n_words"] == 16
