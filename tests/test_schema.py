"""The input schema (iclscope.schema): bad config values and bad command-line values are refused with
one line naming the key and the value; good ones pass; the normalised config equals the trainer's own."""

import argparse
import copy
import math
from dataclasses import fields
from pathlib import Path

import pytest

import iclscope
from iclscope import schema as S
from iclscope.errors import IclscopeError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

CONFIGS = Path(iclscope.__file__).parent / "configs"


def shipped(name: str) -> dict:
    with open(CONFIGS / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def with_key(cfg: dict, key: str, value) -> dict:
    """cfg with one dotted key set (sections created as needed), like --set KEY=VALUE."""
    cfg = copy.deepcopy(cfg)
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def one_line_error(fn, *args, exc=IclscopeError) -> str:
    with pytest.raises(exc) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ----------------------------------------------------------------------------------------------------
# Bad config values: (base config, dotted key, value, text the message must show for the value)
# ----------------------------------------------------------------------------------------------------

CLAMP_OK = {"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token"}

BAD = [
    # [model]
    ("fewshot", "model.n_layers", "two", '"two"'),
    ("fewshot", "model.n_layers", 0, "0"),
    ("fewshot", "model.n_layers", 1.5, "1.5"),
    ("fewshot", "model.n_layers", 2.0, "2.0"),
    ("fewshot", "model.n_layers", True, "true"),
    ("fewshot", "model.n_heads", 0, "0"),
    ("fewshot", "model.n_heads", -4, "-4"),
    ("fewshot", "model.n_heads", 3, "3"),  # does not divide 64
    ("fewshot", "model.n_heads", 64, "64"),  # d_head 1: odd, rotary
    ("fewshot", "model.d_model", -64, "-64"),
    ("fewshot", "model.d_model", 0, "0"),
    ("fewshot", "model.d_model", 60, "8"),  # not divisible by n_heads=8: the message names n_heads = 8
    ("fewshot", "model.d_mlp", -1, "-1"),
    ("fewshot", "model.positions", "alibi", '"alibi"'),
    ("fewshot", "model.positions", 1, "1"),
    ("fewshot", "model.layernorm", 1, "1"),
    ("fewshot", "model.layernorm", "yes", '"yes"'),
    ("fewshot", "model.rotary_base", 0, "0"),
    ("fewshot", "model.rotary_base", float("inf"), "inf"),
    ("fewshot", "model.vocab_size", 10, "vocab_size"),  # set by the data, not the config
    # [data] few-shot
    ("fewshot", "data.kind", "omniglot", '"omniglot"'),
    ("fewshot", "data.kind", 3, "3"),
    ("fewshot", "data.n_labels", 1, "1"),
    ("fewshot", "data.n_labels", 2.5, "2.5"),
    ("fewshot", "data.context_pairs", 0, "0"),
    ("fewshot", "data.context_pairs", 9, "9"),
    ("fewshot", "data.n_classes", 1, "1"),
    ("fewshot", "data.n_heldout_classes", 1, "1"),
    ("fewshot", "data.n_heldout_classes", -5, "-5"),
    ("fewshot", "data.exemplars_per_class", 0, "0"),
    ("fewshot", "data.n_heldout_exemplars", -1, "-1"),
    ("fewshot", "data.dim", 0, "0"),
    ("fewshot", "data.heldout_label_pairs", 10, "10"),
    ("fewshot", "data.heldout_label_pairs", -1, "-1"),
    ("fewshot", "data.bursty", 1.5, "1.5"),
    ("fewshot", "data.bursty", -0.1, "-0.1"),
    ("fewshot", "data.bursty", True, "true"),
    ("fewshot", "data.shared_scale", float("nan"), "nan"),
    ("fewshot", "data.prototype_scale", -1.0, "-1.0"),
    ("fewshot", "data.class_rank", -2, "-2"),
    ("fewshot", "data.normalize", "false", '"false"'),
    ("fewshot", "data.features_path", 5, "5"),
    ("fewshot", "data.seed", -1, "-1"),
    ("fewshot", "data.n_word", 64, "n_word"),
    ("fewshot", "data.k", 4, "k"),  # a mixture key on few-shot data
    # [data] mixture
    ("testbed", "data.k", 0, "0"),
    ("testbed", "data.n_words", 8, "8"),  # k = 8 needs 9 words
    ("testbed", "data.n_tasks", 0, "0"),
    ("testbed", "data.p_stored", 0.5, "0.5"),  # shares no longer sum to 1
    ("testbed", "data.p_fresh", 1.2, "1.2"),
    ("testbed", "data.p_query_repeat", -0.5, "-0.5"),
    ("testbed", "data.segment_min", 1, "1"),
    ("testbed", "data.segment_max", 40, "40"),
    ("testbed", "data.segment_max", 3, "3"),  # below segment_min 4
    ("testbed", "data.loss_on", "all", '"all"'),
    ("testbed", "data.task_seed", -3, "-3"),
    ("testbed", "data.n_labels", 5, "n_labels"),  # a few-shot key on mixture data
    # [train]
    ("fewshot", "train.lr", True, "true"),
    ("fewshot", "train.lr", 0, "0"),
    ("fewshot", "train.lr", -1e-3, "-0.001"),
    ("fewshot", "train.lr", float("inf"), "inf"),
    ("fewshot", "train.lr", "3e-4", '"3e-4"'),
    ("fewshot", "train.lrate", 1e-3, "lrate"),
    ("fewshot", "train.optimizer", "sgd", '"sgd"'),
    ("fewshot", "train.betas", [0.9, 1.0], "[0.9, 1.0]"),
    ("fewshot", "train.betas", [-0.1, 0.9], "[-0.1, 0.9]"),
    ("fewshot", "train.betas", [0.9], "[0.9]"),
    ("fewshot", "train.betas", 0.9, "0.9"),
    ("fewshot", "train.betas", [True, 0.9], "[true, 0.9]"),
    ("fewshot", "train.eps", 0, "0"),
    ("fewshot", "train.weight_decay", -0.01, "-0.01"),
    ("fewshot", "train.batch_size", 1.5, "1.5"),
    ("fewshot", "train.batch_size", 0, "0"),
    ("fewshot", "train.batch_size", False, "false"),
    ("fewshot", "train.sequences", 0, "0"),
    ("fewshot", "train.sequences", 6.5e-1, "0.65"),
    ("fewshot", "train.sequences", 1000.5, "1000.5"),
    ("fewshot", "train.seeds", [1, 1], "[1, 1]"),
    ("fewshot", "train.seeds", [], "[]"),
    ("fewshot", "train.seeds", [-1], "[-1]"),
    ("fewshot", "train.seeds", [1.5], "[1.5]"),
    ("fewshot", "train.seeds", True, "true"),
    ("fewshot", "train.seeds", "0,1", '"0,1"'),
    ("fewshot", "train.threads", 0, "0"),
    ("fewshot", "train.threads", 2.0, "2.0"),
    # [eval]
    ("fewshot", "eval.batch", 0, "0"),
    ("fewshot", "eval.every", 0, "0"),
    ("fewshot", "eval.every", -250, "-250"),
    ("fewshot", "eval.checkpoint_every", 0, "0"),
    ("fewshot", "eval.induction_len", 0, "0"),
    ("fewshot", "eval.phase_threshold", -0.2, "-0.2"),
    ("fewshot", "eval.clamps", "off", '"off"'),
    ("fewshot", "eval.log_checkpoints", 0, "0"),
    ("fewshot", "eval.evry", 10, "evry"),
    # sections and the top level
    ("fewshot", "optim.lr", 1e-3, "optim"),
    ("fewshot", "trian.lr", 1e-3, "trian"),
    ("fewshot", "name", 3, "3"),
    ("fewshot", "train", [1, 2], "[1, 2]"),
    ("fewshot", "model", "big", '"big"'),
    # [[clamp]]
    ("fewshot", "clamp", [{"heads": "all"}], "kind"),
    ("fewshot", "clamp", [{**CLAMP_OK, "kind": "Clamp"}], '"Clamp"'),
    ("fewshot", "clamp", [{**CLAMP_OK, "heads": "layer:x"}], '"layer:x"'),
    ("fewshot", "clamp", [{**CLAMP_OK, "heads": "some"}], '"some"'),
    ("fewshot", "clamp", [{**CLAMP_OK, "heads": [[0, -1]]}], "[[0, -1]]"),
    ("fewshot", "clamp", [{**CLAMP_OK, "heads": [[0, 1, 2]]}], "[[0, 1, 2]]"),
    ("fewshot", "clamp", [{**CLAMP_OK, "heads": [[0, 1.5]]}], "[[0, 1.5]]"),
    ("fewshot", "clamp", [{**CLAMP_OK, "pattern": "copy"}], '"copy"'),
    ("fewshot", "clamp", [{**CLAMP_OK, "strength": 1.5}], "1.5"),
    ("fewshot", "clamp", [{**CLAMP_OK, "strength": True}], "true"),
    ("fewshot", "clamp", [{**CLAMP_OK, "positions": "last"}], '"last"'),
    ("fewshot", "clamp", [{**CLAMP_OK, "how": "zero"}], '"zero"'),  # not a ClampPattern key
    ("fewshot", "clamp", [{**CLAMP_OK, "strenght": 0.5}], "strenght"),
    ("fewshot", "clamp", [{"kind": "ClampPattern", "pattern": "prev_token"}], "heads"),
    ("fewshot", "clamp", [{"kind": "Ablate", "heads": "all", "how": "median"}], '"median"'),
    ("fewshot", "clamp", [{"kind": "Preserve", "site": "mlp_output", "layers": [0]}], '"mlp_output"'),
    ("fewshot", "clamp", [{"kind": "Preserve", "site": "resid_post", "heads": "all"}], "layers"),
    ("fewshot", "clamp", [{"kind": "Graft", "layers": [0]}], "source"),
    ("fewshot", "clamp", [{"kind": "Graft", "source": "", "layers": [0]}], '""'),
    ("fewshot", "clamp", [{"kind": "Graft", "source": "run/final", "layers": [-1]}], "[-1]"),
    ("fewshot", "clamp", [{"kind": "Graft", "source": "run/final", "layers": []}], "[]"),
    ("fewshot", "clamp", ["ClampPattern"], '"ClampPattern"'),
    ("fewshot", "clamp", 5, "5"),
    ("testbed", "clamp", [{"kind": "ClampPattern", "heads": "layer:1", "pattern": "label_induction"}],
     '"label_induction"'),
]


def _ids(case):
    base, key, value, _ = case
    return f"{base}:{key}={value!r}"[:60]


@pytest.mark.parametrize("base, key, value, shown", BAD, ids=[_ids(c) for c in BAD])
def test_bad_config_value_is_one_line_naming_key_and_value(base, key, value, shown):
    msg = one_line_error(S.validate_train_config, with_key(shipped(base), key, value))
    section = key.split(".")[0]
    leaf = key.split(".")[-1] if section in S.SECTIONS else section  # an unknown section is named itself
    if key == "clamp":
        assert "clamp" in msg
    else:
        assert leaf in msg, msg
    assert shown in msg, msg


def test_enough_bad_cases():
    assert len(BAD) >= 80


@pytest.mark.parametrize("key, value, hint", [
    ("train.lrate", 1e-3, "did you mean train.lr?"),
    ("train.batchsize", 8, "did you mean train.batch_size?"),
    ("eval.evry", 10, "did you mean eval.every?"),
    ("model.nlayers", 3, "did you mean model.n_layers?"),
    ("data.n_label", 3, "did you mean data.n_labels?"),
    ("trian.lr", 1e-3, "did you mean train?"),
])
def test_unknown_key_suggests_the_nearest(key, value, hint):
    msg = one_line_error(S.validate_train_config, with_key(shipped("fewshot"), key, value))
    assert msg.endswith(hint), msg


def test_messages_say_what_is_allowed():
    cfg = shipped("fewshot")
    assert S.validate_train_config.__doc__
    m = one_line_error(S.validate_train_config, with_key(cfg, "model.n_heads", 3))
    assert m == "model.n_heads = 3: expected a divisor of d_model = 64"
    m = one_line_error(S.validate_train_config, with_key(cfg, "train.lr", True))
    assert m == "train.lr = true: expected a finite number > 0"
    m = one_line_error(S.validate_train_config, with_key(cfg, "data.k", 4))
    assert "belongs to data.kind" in m and "icl_mixture" in m
    m = one_line_error(S.validate_train_config, with_key(cfg, "clamp", [{**CLAMP_OK, "how": "zero"}]))
    assert m.startswith('clamp[0].how = "zero": not a key of a ClampPattern clamp')


def test_messages_still_match_the_trainers_tests():
    """The trainer's own tests look for these words; the schema keeps them."""
    cfg = shipped("fewshot")
    assert "unknown config key" in one_line_error(S.validate_train_config, with_key(cfg, "train.lrate", 1))
    assert "unknown config section 'optim'" in one_line_error(S.validate_train_config, with_key(cfg, "optim.lr", 1))
    assert "distinct seeds" in one_line_error(S.validate_train_config, with_key(cfg, "train.seeds", [1, 1]))


# ----------------------------------------------------------------------------------------------------
# Good configs, and equality with the trainer's own validate_config
# ----------------------------------------------------------------------------------------------------

VARIANTS = [
    ("fewshot", {}),
    ("testbed", {}),
    ("fewshot", {"train.lr": 3e-4, "train.batch_size": 16, "train.seeds": 7}),
    ("fewshot", {"train.seeds": [0, 1, 2], "train.threads": 1, "train.sequences": 6e5}),
    ("fewshot", {"model.n_heads": 4, "model.d_model": 32, "data.dim": 32, "model.positions": "learned"}),
    ("fewshot", {"model.n_heads": 1, "model.positions": "none", "model.d_mlp": 128, "model.layernorm": False}),
    ("fewshot", {"data.bursty": 0.5, "data.n_labels": 10, "data.context_pairs": 3, "data.heldout_label_pairs": 0}),
    ("fewshot", {"data.n_heldout_classes": 0, "data.class_rank": 0, "data.normalize": True, "data.bursty": 1}),
    ("fewshot", {"train.optimizer": "adamw", "train.weight_decay": 0.1, "train.betas": [0.0, 0.99], "train.eps": 1}),
    ("fewshot", {"eval.every": 1, "eval.batch": 1, "eval.clamps": False, "eval.phase_threshold": 0.3,
                 "eval.log_checkpoints": False, "eval.checkpoint_every": 1}),
    ("fewshot", {"clamp": [{"kind": "ClampPattern", "heads": "layer:0", "pattern": "prev_token", "strength": 0.5},
                           {"kind": "ClampPattern", "heads": [[1, 0], [1, 2]], "pattern": "label_induction",
                            "positions": [-1]}]}),
    ("fewshot", {"clamp": {"kind": "Ablate", "heads": "all", "how": "mean"}}),
    ("fewshot", {"clamp": [{"kind": "Preserve", "site": "q", "heads": "layer:1"},
                           {"kind": "Preserve", "site": "resid_pre", "layers": [1], "positions": -1},
                           {"kind": "Graft", "source": "runs/a/final", "layers": [0]},
                           {"kind": "Graft", "source": "runs/a/final", "heads": "layer:1", "site": "v"}]}),
    ("testbed", {"data.k": 4, "data.n_words": 16, "eval.induction_len": 6, "data.loss_on": "query"}),
    ("testbed", {"data.segment_min": 2, "data.segment_max": 6, "data.p_stored": 1, "data.p_fresh": 0,
                 "data.p_segments": 0, "train.seeds": [3, 1]}),
    ("testbed", {"name": "mine", "clamp": [{"kind": "ClampPattern", "heads": "all", "pattern": "induction"}]}),
]


def _variant(base, sets):
    cfg = shipped(base)
    for k, v in sets.items():
        cfg = with_key(cfg, k, v) if k != "clamp" else {**cfg, "clamp": v}
    return cfg


@pytest.mark.parametrize("base, sets", VARIANTS, ids=[f"{b}-{i}" for i, (b, _) in enumerate(VARIANTS)])
def test_same_result_as_the_trainers_validate_config(base, sets):
    from iclscope.train import validate_config

    cfg = _variant(base, sets)
    before = copy.deepcopy(cfg)
    got = S.validate_train_config(cfg)
    assert got == validate_config(cfg)
    assert cfg == before  # the input is not changed
    assert isinstance(got["train"]["seeds"], list) and isinstance(got["clamp"], list)


@pytest.mark.parametrize("name", ["fewshot", "testbed"])
def test_same_result_as_load_config_on_the_shipped_configs(name):
    from iclscope.train import load_config

    assert S.validate_train_config(load_config(name)) == load_config(name)


def test_an_empty_config_gets_the_defaults():
    from iclscope.train import validate_config

    got = S.validate_train_config({})
    assert got == validate_config({})
    assert got["train"] == S.TRAIN_DEFAULTS and got["eval"] == S.EVAL_DEFAULTS and got["data"] == {"kind": "fewshot"}
    got["train"]["betas"].append(0.5)  # the defaults are copies
    assert S.TRAIN_DEFAULTS["betas"] == [0.9, 0.999]


def test_defaults_are_todays():
    from iclscope.data.mixture import MixtureConfig
    from iclscope.data.synthetic import FewShotConfig
    from iclscope.interventions import HEAD_SITES, LAYER_SITES
    from iclscope.models.tiny import TinyConfig
    from iclscope.train import CLAMP_KEYS, CLAMP_KINDS, EVAL_DEFAULTS, MODEL_KEYS, TRAIN_DEFAULTS

    assert S.TRAIN_DEFAULTS == TRAIN_DEFAULTS and S.EVAL_DEFAULTS == EVAL_DEFAULTS
    assert set(S.ModelSection.model_fields) == MODEL_KEYS
    for section, dc in [(S.ModelSection, TinyConfig), (S.FewShotSection, FewShotConfig), (S.MixtureSection, MixtureConfig)]:
        ours = {k: f.default for k, f in section.model_fields.items() if k != "kind"}
        theirs = {f.name: f.default for f in fields(dc) if f.name in ours}
        assert ours == theirs and set(ours) <= {f.name for f in fields(dc)}
    assert {f.name for f in fields(FewShotConfig)} | {"kind"} == set(S.FewShotSection.model_fields)
    assert {f.name for f in fields(MixtureConfig)} | {"kind"} == set(S.MixtureSection.model_fields)
    assert set(S.ClampEntry.model_fields) == CLAMP_KEYS and S.CLAMP_KINDS == CLAMP_KINDS
    assert set(S.HEAD_SITES) == set(HEAD_SITES) and set(S.LAYER_SITES) == set(LAYER_SITES)


def test_integral_float_sequences_kept_as_given():
    got = S.validate_train_config(with_key(shipped("fewshot"), "train.sequences", 6e5))
    assert got["train"]["sequences"] == 6e5


# ----------------------------------------------------------------------------------------------------
# Command-line value types
# ----------------------------------------------------------------------------------------------------

PERCENT_FRACTIONS = S.make_fraction_list(allow_zero=True)

BAD_CLI = [
    ("--top", S.positive_int, "0"),
    ("--top", S.positive_int, "-3"),
    ("--top", S.positive_int, "1.5"),
    ("--top", S.positive_int, "three"),
    ("--workers", S.positive_int, "0"),
    ("--n", S.positive_int, "2e3"),
    ("--random-seeds", S.nonnegative_int, "-1"),
    ("--random-seeds", S.nonnegative_int, "2.0"),
    ("--seed", S.nonnegative_int, ""),
    ("--sequences", S.positive_count, "0"),
    ("--sequences", S.positive_count, "6.5e-1"),
    ("--sequences", S.positive_count, "lots"),
    ("--sequences", S.positive_count, "inf"),
    ("--rel", S.positive_float, "0"),
    ("--rel", S.positive_float, "nan"),
    ("--rel", S.positive_float, "-0.25"),
    ("--p", S.probability, "1.5"),
    ("--p", S.probability, "-0.1"),
    ("--fractions", S.fraction_list, "5,10"),
    ("--fractions", S.fraction_list, "150"),
    ("--fractions", S.fraction_list, "0.1,-5"),
    ("--fractions", S.fraction_list, "0,0.1"),
    ("--fractions", S.fraction_list, "0.1,,0.2"),
    ("--fractions", S.fraction_list, "0.1,0.1"),
    ("--fractions", S.fraction_list, "a,b"),
    ("--fractions", PERCENT_FRACTIONS, "0,1,3"),
    ("--seeds", S.seed_list, "0,1,1"),
    ("--seeds", S.seed_list, "-1"),
    ("--seeds", S.seed_list, "0,1.5"),
    ("--seeds", S.seed_list, ""),
    ("--seeds", S.seed_list, "0;1"),
    ("--labels", S.name_list, "a,,b"),
    ("--labels", S.name_list, "a,a"),
    ("--how", S.choice("zero", "mean"), "median"),
    ("--dtype", S.choice("float32", "bfloat16", "float16"), "fp16"),
    ("--set", S.key_value, "train.lr"),
    ("--set", S.key_value, "lr=3e-4"),
    ("--set", S.key_value, "=3"),
    ("--set", S.key_value, "train.lr="),
    ("--revision", S.revision, "step 1000"),
    ("--revision", S.revision, "../main"),
    ("--revision", S.revision, ""),
    ("--device", S.device, "gpu"),
    ("--device", S.device, "cuda:-1"),
    ("--device", S.device, "cuda:x"),
]


@pytest.mark.parametrize("option, typ, text", BAD_CLI, ids=[f"{o}={t}" for o, _, t in BAD_CLI])
def test_bad_cli_value_is_one_line_naming_option_and_value(option, typ, text, capsys):
    msg = one_line_error(typ, text, exc=argparse.ArgumentTypeError)
    assert f'"{text}"' in msg, msg
    parser = argparse.ArgumentParser(prog="iclscope")
    parser.add_argument(option, type=typ)
    with pytest.raises(SystemExit):
        parser.parse_args([f"{option}={text}"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in last and f'"{text}"' in last, last


def test_fraction_percent_hint():
    msg = one_line_error(S.fraction_list, "5", exc=argparse.ArgumentTypeError)
    assert "not percents" in msg and "0.05" in msg


@pytest.mark.parametrize("typ, text, value", [
    (S.positive_int, "3", 3),
    (S.positive_int, " 12 ", 12),
    (S.nonnegative_int, "0", 0),
    (S.positive_count, "600000", 600000),
    (S.positive_count, "6e5", 600000),
    (S.positive_count, "600_000", 600000),
    (S.positive_float, "0.25", 0.25),
    (S.probability, "0", 0.0),
    (S.probability, "1", 1.0),
    (S.fraction_list, "0.01,0.05,1", [0.01, 0.05, 1.0]),
    (PERCENT_FRACTIONS, "0,0.01,0.2", [0.0, 0.01, 0.2]),
    (S.seed_list, "0,1,2", [0, 1, 2]),
    (S.seed_list, "7", [7]),
    (S.name_list, "a, b", ["a", "b"]),
    (S.choice("zero", "mean"), "mean", "mean"),
    (S.key_value, "train.lr=3e-4", ("train.lr", 3e-4)),
    (S.key_value, "train.seeds=[1,2]", ("train.seeds", [1, 2])),
    (S.key_value, "data.kind=icl_mixture", ("data.kind", "icl_mixture")),
    (S.revision, "step1000", "step1000"),
    (S.revision, "refs/pr/1", "refs/pr/1"),
    (S.device, "cpu", "cpu"),
    (S.device, "cuda:1", "cuda:1"),
    (S.device, "mps", "mps"),
])
def test_good_cli_values(typ, text, value):
    assert typ(text) == value


def test_key_value_parses_like_load_config():
    from iclscope.train import load_config

    sets = ["train.lr=3e-4", "data.n_labels=10", "train.seeds=[1,2]", "model.positions=learned"]
    cfg = shipped("fewshot")
    for s in sets:
        cfg = with_key(cfg, *S.key_value(s))
    assert S.validate_train_config(cfg) == load_config(None, sets)


def test_check_device(monkeypatch):
    import torch

    assert S.check_device(None) is None and S.check_device("cpu") == "cpu"
    msg = one_line_error(S.check_device, "gpu")
    assert "--device" in msg and '"gpu"' in msg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = one_line_error(S.check_device, "cuda")
    assert msg.startswith("--device cuda: this machine has no CUDA device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert S.check_device("cuda:1") == "cuda:1"
    msg = one_line_error(S.check_device, "cuda:2")
    assert "cuda:2" in msg and "2 CUDA device(s)" in msg
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "MPS" in one_line_error(S.check_device, "mps")

