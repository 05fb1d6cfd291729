"""Bad input, table-driven: every command and every training-config key, run as a user runs them.

Each case runs ``python -m iclscope ...`` in a subprocess, in its own temporary folder holding a few
fixtures (a plain file where a folder is expected, a folder of unrelated files, a pickled "model" file, a
read-only folder, and the case's config file). It must give:

* exit status 2;
* exactly one non-empty line on stderr, matching the case's regex (the culprit is named);
* no "Traceback";
* no byte of any file in the folder changed, and no file or folder created (bad input is refused before
  anything is written; --out NEWDIR must not appear).

All subprocesses of the selected cases run once, four at a time, in a module-scoped fixture; each case is
then its own test item reporting its own result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shlex
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TIMEOUT = int(os.environ.get("ICLSCOPE_TEST_TIMEOUT", "120"))  # seconds per case
DELETE = object()  # a config value meaning "remove this key"


def _has_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


# ----------------------------------------------------------------------------------------------------
# Configs: a tiny, fast base per data kind (should a case wrongly pass validation, it trains for seconds)
# ----------------------------------------------------------------------------------------------------

FEWSHOT = {
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_mlp": 0},
    "data": {"kind": "fewshot", "n_classes": 10, "n_heldout_classes": 4, "dim": 8, "class_rank": 4},
    "train": {"sequences": 64, "batch_size": 8, "threads": 1, "seeds": [0]},
    "eval": {"every": 1000, "batch": 16, "checkpoint_every": 1000, "log_checkpoints": False, "induction_len": 4},
}
MIXTURE = {
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_mlp": 0, "positions": "learned"},
    "data": {"kind": "icl_mixture", "n_words": 16, "n_tasks": 2, "k": 4},
    "train": {"sequences": 64, "batch_size": 8, "threads": 1, "seeds": [0]},
    "eval": {"every": 1000, "batch": 16, "checkpoint_every": 1000, "log_checkpoints": False, "induction_len": 4},
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(cfg: dict) -> str:
    """A config dict as TOML: top-level scalars, then [sections], then [[clamp]] entries."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for sec, body in cfg.items():
        if isinstance(body, dict):
            lines.append(f"[{sec}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    for entry in cfg.get("clamp", []) if isinstance(cfg.get("clamp"), list) else []:
        if isinstance(entry, dict):
            lines.append("[[clamp]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def config(base: dict = FEWSHOT, clamp: list | None = None, **changes) -> str:
    """TOML of ``base`` with ``section__key=value`` changes (DELETE removes a key; ``top__name`` sets a
    top-level key) and optional [[clamp]] entries."""
    cfg = json.loads(json.dumps(base))
    for dotted, v in changes.items():
        sec, key = dotted.split("__", 1)
        node = cfg if sec == "top" else cfg.setdefault(sec, {})
        if v is DELETE:
            node.pop(key, None)
        else:
            node[key] = v
    if clamp is not None:
        cfg["clamp"] = clamp
    return to_toml(cfg)


# ----------------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    argv: list[str]
    culprit: str  # a regex the one stderr line must match
    files: dict = field(default_factory=dict)  # extra files: relative path -> text or bytes
    skip: str | None = None

    @property
    def command(self) -> str:
        return self.argv[0] if self.argv else ""


CASES: list[Case] = []


def case(id: str, args: str, culprit: str, files: dict | None = None, skip: str | None = None) -> None:
    assert id not in {c.id for c in CASES}, id
    CASES.append(Case(id, shlex.split(args), culprit, dict(files or {}), skip))


def config_case(id: str, culprit: str, text: str, extra: str = "") -> None:
    """`iclscope train cfg.toml --out NEWRUN` with a bad config: refused before NEWRUN exists."""
    case(f"config-{id}", f"train cfg.toml --out newrun {extra}", culprit, {"cfg.toml": text})


RO_SKIP = "running as root: a read-only folder is writable" if IS_ROOT else None

# --- top level -----------------------------------------------------------------------------------------
case("top-unknown-command", "trian --out x", r"invalid choice: 'trian'")
case("top-unknown-option", "--verbose", r"unrecognized arguments: --verbose")
case("tasks-unknown-subcommand", "tasks bild --out x", r"invalid choice: 'bild'")

# --- train: arguments, files ----------------------------------------------------------------------------
case("train-no-out", "train", r"required: --out")
case("train-unknown-option", "train --out run --lr 3", r"unrecognized arguments: --lr")
case("train-set-no-equals", "train --out run --set train.lr", r"--set.*train\.lr")
case("train-set-no-dot", "train --out run --set lr=3e-4", r"--set.*lr=3e-4")
case("train-set-empty-value", "train --out run --set train.lr=", r"--set.*train\.lr=")
case("train-set-empty-key", "train --out run --set =3", r"--set.*=3")
case("train-set-unknown-section", "train --out run --set optim.lr=3e-4", r"optim")
case("train-set-unknown-key", "train --out run --set train.lrate=3e-4", r"train\.lrate")
case("train-set-bad-value", "train --out run --set model.n_layers=0", r"model\.n_layers")
case("train-set-string-for-int", "train --out run --set train.batch_size=big", r"train\.batch_size")
case("train-missing-config", "train nothere.toml --out run", r"nothere\.toml")
case("train-config-is-folder", "train foreign --out run", r"foreign")
case("train-config-not-toml", "train afile.txt --out run", r"afile\.txt")
case("train-config-pickle", "train model.pt --out run", r"model\.pt")
case("train-out-is-file", "train cfg.toml --out afile.txt", r"afile\.txt", {"cfg.toml": config()})
case("train-out-foreign", "train cfg.toml --out foreign", r"foreign", {"cfg.toml": config()})
case("train-out-read-only", "train cfg.toml --out ro/run", r"ro/run|ro\b", {"cfg.toml": config()}, skip=RO_SKIP)

# --- train: every config key ----------------------------------------------------------------------------
config_case("unknown-section", r"optim", config(optim__lr=1.0))
config_case("name-not-string", r"\bname\b", config(top__name=3))
config_case("model-unknown-key", r"model\.n_layer\b", config(model__n_layer=2))
config_case("model-n_layers-zero", r"model\.n_layers", config(model__n_layers=0))
config_case("model-n_layers-float", r"model\.n_layers", config(model__n_layers=1.5))
config_case("model-n_heads-zero", r"model\.n_heads", config(model__n_heads=0))
config_case("model-n_heads-not-divisor", r"model\.n_heads", config(model__n_heads=3))
config_case("model-d_model-negative", r"model\.d_model", config(model__d_model=-8))
config_case("model-d_mlp-negative", r"model\.d_mlp", config(model__d_mlp=-1))
config_case("model-positions-unknown", r"model\.positions", config(model__positions="absolute"))
config_case("model-layernorm-string", r"model\.layernorm", config(model__layernorm="yes"))
config_case("model-rotary_base-zero", r"model\.rotary_base", config(model__rotary_base=0))
config_case("model-section-not-table", r"\bmodel\b", "model = 3\n")

config_case("data-kind-unknown", r"data\.kind", config(data__kind="images"))
config_case("fewshot-unknown-key", r"data\.n_class\b", config(data__n_class=10))
config_case("fewshot-mixture-key", r"data\.n_words", config(data__n_words=64))
config_case("fewshot-n_classes-zero", r"data\.n_classes", config(data__n_classes=0))
config_case("fewshot-n_heldout_classes-negative", r"data\.n_heldout_classes", config(data__n_heldout_classes=-1))
config_case("fewshot-n_heldout_classes-too-few", r"data\.n_heldout_classes", config(data__n_heldout_classes=1))
config_case("fewshot-exemplars_per_class-zero", r"data\.exemplars_per_class", config(data__exemplars_per_class=0))
config_case("fewshot-n_heldout_exemplars-negative", r"data\.n_heldout_exemplars",
            config(data__n_heldout_exemplars=-1))
config_case("fewshot-dim-zero", r"data\.dim", config(data__dim=0))
config_case("fewshot-context_pairs-too-many", r"data\.context_pairs", config(data__context_pairs=9))
config_case("fewshot-n_labels-one", r"data\.n_labels", config(data__n_labels=1))
config_case("fewshot-heldout_label_pairs-too-many", r"data\.heldout_label_pairs",
            config(data__heldout_label_pairs=10))
config_case("fewshot-bursty-above-one", r"data\.bursty", config(data__bursty=1.5))
config_case("fewshot-shared_scale-negative", r"data\.shared_scale", config(data__shared_scale=-1.0))
config_case("fewshot-prototype_scale-nan", r"data\.prototype_scale", config(data__prototype_scale=math.nan))
config_case("fewshot-class_rank-negative", r"data\.class_rank", config(data__class_rank=-1))
config_case("fewshot-exemplar_noise-inf", r"data\.exemplar_noise", config(data__exemplar_noise=math.inf))
config_case("fewshot-normalize-string", r"data\.normalize", config(data__normalize="no"))
config_case("fewshot-features_path-empty", r"data\.features_path", config(data__features_path=""))
config_case("fewshot-features_path-missing-file", r"nothere\.h5", config(data__features_path="nothere.h5"))
config_case("fewshot-features_dataset-int", r"data\.features_dataset", config(data__features_dataset=3))
config_case("fewshot-seed-negative", r"data\.seed", config(data__seed=-1))
config_case("data-section-not-table", r"\bdata\b", "data = [1, 2]\n")

config_case("mixture-unknown-key", r"data\.n_word\b", config(MIXTURE, data__n_word=64))
config_case("mixture-fewshot-key", r"data\.n_classes", config(MIXTURE, data__n_classes=10))
config_case("mixture-n_words-one", r"data\.n_words", config(MIXTURE, data__n_words=1))
config_case("mixture-n_words-below-k", r"data\.n_words", config(MIXTURE, data__n_words=4))
config_case("mixture-n_tasks-zero", r"data\.n_tasks", config(MIXTURE, data__n_tasks=0))
config_case("mixture-task_seed-negative", r"data\.task_seed", config(MIXTURE, data__task_seed=-1))
config_case("mixture-k-zero", r"data\.k\b", config(MIXTURE, data__k=0))
config_case("mixture-p_stored-above-one", r"data\.p_stored", config(MIXTURE, data__p_stored=1.5))
config_case("mixture-p_fresh-negative", r"data\.p_fresh", config(MIXTURE, data__p_fresh=-0.1))
config_case("mixture-p_segments-string", r"data\.p_segments", config(MIXTURE, data__p_segments="x"))
config_case("mixture-p_demo_repeat-above-one", r"data\.p_demo_repeat", config(MIXTURE, data__p_demo_repeat=2.0))
config_case("mixture-p_query_repeat-negative", r"data\.p_query_repeat", config(MIXTURE, data__p_query_repeat=-1.0))
config_case("mixture-p_fresh_demo_repeat-above-one", r"data\.p_fresh_demo_repeat",
            config(MIXTURE, data__p_fresh_demo_repeat=1.1))
config_case("mixture-segment_min-one", r"data\.segment_min", config(MIXTURE, data__segment_min=1))
config_case("mixture-segment_max-too-long", r"data\.segment_max", config(MIXTURE, data__segment_max=100))
config_case("mixture-loss_on-unknown", r"data\.loss_on", config(MIXTURE, data__loss_on="all"))
config_case("mixture-seed-string", r"data\.seed", config(MIXTURE, data__seed="0"))

config_case("train-unknown-key", r"train\.lrate", config(train__lrate=1e-3))
config_case("train-optimizer-unknown", r"train\.optimizer", config(train__optimizer="sgd"))
config_case("train-lr-negative", r"train\.lr\b", config(train__lr=-1e-3))
config_case("train-lr-inf", r"train\.lr\b", config(train__lr=math.inf))
config_case("train-betas-one-number", r"train\.betas", config(train__betas=[0.9]))
config_case("train-betas-one", r"train\.betas", config(train__betas=[0.9, 1.0]))
config_case("train-eps-zero", r"train\.eps", config(train__eps=0.0))
config_case("train-weight_decay-negative", r"train\.weight_decay", config(train__weight_decay=-0.1))
config_case("train-batch_size-zero", r"train\.batch_size", config(train__batch_size=0))
config_case("train-sequences-zero", r"train\.sequences", config(train__sequences=0))
config_case("train-sequences-fraction", r"train\.sequences", config(train__sequences=0.65))
config_case("train-seeds-empty", r"train\.seeds", config(train__seeds=[]))
config_case("train-seeds-repeated", r"train\.seeds", config(train__seeds=[1, 1]))
config_case("train-threads-zero", r"train\.threads", config(train__threads=0))
config_case("train-compile-word", r"train\.compile", config(train__compile="yes"))

config_case("eval-unknown-key", r"eval\.evry", config(eval__evry=10))
config_case("eval-every-zero", r"eval\.every", config(eval__every=0))
config_case("eval-batch-zero", r"eval\.batch\b", config(eval__batch=0))
config_case("eval-clamps-string", r"eval\.clamps", config(eval__clamps="yes"))
config_case("eval-induction_len-zero", r"eval\.induction_len", config(eval__induction_len=0))
config_case("eval-phase_threshold-zero", r"eval\.phase_threshold", config(eval__phase_threshold=0.0))
config_case("eval-checkpoint_every-zero", r"eval\.checkpoint_every", config(eval__checkpoint_every=0))
config_case("eval-log_checkpoints-int", r"eval\.log_checkpoints", config(eval__log_checkpoints=1))

config_case("clamp-not-table", r"\bclamp\b", "clamp = 3\n")
config_case("clamp-kind-unknown", r"clamp\[0\]\.kind", config(clamp=[{"kind": "Zap", "heads": "all"}]))
config_case("clamp-kind-missing", r"clamp\[0\]\.kind", config(clamp=[{"heads": "all"}]))
config_case("clamp-unknown-key", r"clamp\[0\]\.foo", config(clamp=[{"kind": "Ablate", "heads": "all", "foo": 1}]))
config_case("clamp-heads-bad-layer", r"clamp\[0\]\.heads", config(clamp=[{"kind": "Ablate", "heads": "layer:x"}]))
config_case("clamp-heads-out-of-model", r"clamp\[0\]|heads|layer", config(clamp=[{"kind": "Ablate",
                                                                                     "heads": [[5, 0]]}]))
config_case("clamp-heads-missing", r"clamp\[0\]\.heads", config(clamp=[{"kind": "ClampPattern"}]))
config_case("clamp-pattern-unknown", r"clamp\[0\]\.pattern",
            config(clamp=[{"kind": "ClampPattern", "heads": "all", "pattern": "nope"}]))
config_case("clamp-strength-above-one", r"clamp\[0\]\.strength",
            config(clamp=[{"kind": "ClampPattern", "heads": "all", "strength": 1.5}]))
config_case("clamp-positions-string", r"clamp\[0\]\.positions",
            config(clamp=[{"kind": "Ablate", "heads": "all", "positions": "last"}]))
config_case("clamp-how-unknown", r"clamp\[0\]\.how", config(clamp=[{"kind": "Ablate", "heads": "all",
                                                                     "how": "median"}]))
config_case("clamp-site-unknown", r"clamp\[0\]\.site", config(clamp=[{"kind": "Preserve", "heads": "all",
                                                                       "site": "mlp_output"}]))
config_case("clamp-key-of-other-kind", r"clamp\[0\]\.pattern",
            config(clamp=[{"kind": "Ablate", "heads": "all", "pattern": "prev_token"}]))
config_case("clamp-graft-no-source", r"clamp\[0\]\.source", config(clamp=[{"kind": "Graft", "heads": "all",
                                                                           "site": "z"}]))
config_case("clamp-graft-source-empty", r"clamp\[0\]\.source",
            config(clamp=[{"kind": "Graft", "heads": "all", "site": "z", "source": ""}]))
config_case("clamp-preserve-layer-site-no-layers", r"clamp\[0\]\.layers",
            config(clamp=[{"kind": "Preserve", "site": "resid_post"}]))
config_case("clamp-layers-negative", r"clamp\[0\]\.layers",
            config(clamp=[{"kind": "Preserve", "site": "resid_post", "layers": [-1]}]))
config_case("clamp-label-induction-on-mixture", r"clamp\[0\]\.pattern|label_induction",
            config(MIXTURE, clamp=[{"kind": "ClampPattern", "heads": "all", "pattern": "label_induction"}]))

# --- additivity ------------------------------------------------------------------------------------------
case("additivity-no-run", "additivity", r"required: run")
case("additivity-n-zero", "additivity run --n 0", r"--n\b")
case("additivity-n-word", "additivity run --n many", r"--n\b")
case("additivity-how-unknown", "additivity run --how median", r"--how")
case("additivity-run-missing", "additivity nothere --out newout", r"nothere")
case("additivity-run-is-file", "additivity afile.txt --out newout", r"afile\.txt")
case("additivity-run-no-checkpoints", "additivity foreign --out newout", r"foreign")

# --- clamp-sweep ---------------------------------------------------------------------------------------
case("clamp-sweep-seeds-negative", "clamp-sweep --seeds -1 --out new", r"--seeds")
case("clamp-sweep-seeds-repeated", "clamp-sweep --seeds 0,0 --out new", r"--seeds.*repeated")
case("clamp-sweep-seeds-word", "clamp-sweep --seeds a,b --out new", r"--seeds")
case("clamp-sweep-seeds-empty-item", "clamp-sweep --seeds 0,,1 --out new", r"--seeds")
case("clamp-sweep-sequences-zero", "clamp-sweep --sequences 0 --out new", r"--sequences")
case("clamp-sweep-sequences-fraction", "clamp-sweep --sequences 1.5 --out new", r"--sequences")
case("clamp-sweep-sequences-word", "clamp-sweep --sequences abc --out new", r"--sequences")
case("clamp-sweep-conditions-unknown", "clamp-sweep --conditions none,zap --out new", r"--conditions.*zap")
case("clamp-sweep-conditions-repeated", "clamp-sweep --conditions none,none --out new", r"--conditions")
case("clamp-sweep-workers-zero", "clamp-sweep --workers 0 --out new", r"--workers")
case("clamp-sweep-workers-negative", "clamp-sweep --workers -1 --out new", r"--workers")
case("clamp-sweep-config-missing", "clamp-sweep nothere.toml --out new", r"nothere\.toml")
case("clamp-sweep-config-bad-key", "clamp-sweep cfg.toml --out new --sequences 64", r"model\.n_layers",
     {"cfg.toml": config(model__n_layers=0)})
case("clamp-sweep-out-foreign", "clamp-sweep cfg.toml --out foreign --sequences 64 --seeds 0", r"foreign",
     {"cfg.toml": config()})
case("clamp-sweep-out-is-file", "clamp-sweep cfg.toml --out afile.txt --sequences 64 --seeds 0", r"afile\.txt",
     {"cfg.toml": config()})

# --- lab (the whole second study) ------------------------------------------------------------------------
case("lab-labels-one", "lab --labels 1,5 --out new", r"--labels")
case("lab-labels-repeated", "lab --labels 5,5 --out new", r"--labels")
case("lab-classes-word", "lab --classes x --out new", r"--classes")
case("lab-seeds-repeated", "lab --seeds 0,0 --out new", r"--seeds")
case("lab-conditions-unknown", "lab --conditions none,zap --out new", r"--conditions.*zap")
case("lab-how-unknown", "lab --how maybe --out new", r"--how")
case("lab-config-bad-key", "lab cfg.toml --out new --sequences 64", r"model\.n_layers",
     {"cfg.toml": config(model__n_layers=0)})
case("lab-address-malformed", "lab --out new --address 'not an address'", r"--address")
case("clamp-sweep-address-no-port", "clamp-sweep --out new --address myhost", r"--address")
case("study-address-malformed", "study s.toml --out new --address ray:/x:1", r"--address")
case("lab-out-foreign", "lab cfg.toml --out foreign --sequences 64 --seeds 0", r"foreign", {"cfg.toml": config()})

# --- data-sweep ----------------------------------------------------------------------------------------
case("data-sweep-no-vary", "data-sweep --out new", r"required: --vary")
case("data-sweep-vary-no-values", "data-sweep --vary labels --out new", r"--vary")
case("data-sweep-vary-empty-values", "data-sweep --vary labels= --out new", r"--vary")
case("data-sweep-vary-unknown-name", "data-sweep --vary colours=1,2 --out new", r"--vary.*colours")
case("data-sweep-vary-empty-item", "data-sweep --vary labels=5,,10 --out new", r"--vary")
case("data-sweep-vary-repeated", "data-sweep --vary labels=5,5 --out new", r"--vary.*repeated")
case("data-sweep-vary-unknown-key", "data-sweep cfg.toml --vary data.nokey=1,2 --out new --sequences 64",
     r"data\.nokey", {"cfg.toml": config()})
case("data-sweep-vary-bad-value", "data-sweep cfg.toml --vary labels=1,5 --out new --sequences 64",
     r"data\.n_labels", {"cfg.toml": config()})
case("data-sweep-vary-bursty-above-one", "data-sweep cfg.toml --vary burstiness=0.5,2 --out new --sequences 64",
     r"data\.bursty", {"cfg.toml": config()})
case("data-sweep-vary-path-value", "data-sweep cfg.toml --vary labels=5,/../,10 --out new --sequences 64",
     r"data\.n_labels|/\.\./", {"cfg.toml": config()})
case("data-sweep-seeds-word", "data-sweep --vary labels=5 --seeds x --out new", r"--seeds")
case("data-sweep-sequences-zero", "data-sweep --vary labels=5 --sequences 0 --out new", r"--sequences")
case("data-sweep-workers-zero", "data-sweep --vary labels=5 --workers 0 --out new", r"--workers")
case("data-sweep-config-bad-key", "data-sweep cfg.toml --vary labels=5 --out new", r"eval\.every",
     {"cfg.toml": config(eval__every=0)})
case("data-sweep-out-foreign", "data-sweep cfg.toml --vary labels=5 --out foreign --sequences 64 --seeds 0",
     r"foreign", {"cfg.toml": config()})

# --- the model options: scores, atlas, info -----------------------------------------------------------
for cmd, extra in (("scores", "--out new"), ("atlas", "--out new"), ("info", "")):
    case(f"{cmd}-no-model", f"{cmd} {extra}", r"required: --model")
    case(f"{cmd}-dtype-unknown", f"{cmd} --model random:gpt2 --dtype float8 {extra}", r"--dtype.*float8")
    case(f"{cmd}-device-misspelt", f"{cmd} --model random:gpt2 --device gpu {extra}", r"--device.*gpu")
    case(f"{cmd}-device-cuda-99", f"{cmd} --model random:gpt2 --device cuda:99 {extra}", r"--device cuda:99")
    case(f"{cmd}-revision-dotdot", f"{cmd} --model random:gpt2 --revision ../main {extra}", r"--revision")
    case(f"{cmd}-revision-space", f"{cmd} --model random:gpt2 --revision 'step 1' {extra}", r"--revision")
    case(f"{cmd}-device-cuda", f"{cmd} --model random:gpt2 --device cuda {extra}", r"--device cuda",
         skip="this machine has CUDA" if _has_cuda() else None)

for cmd in ("scores", "atlas"):
    case(f"{cmd}-no-out", f"{cmd} --model random:gpt2", r"required: --out")
    case(f"{cmd}-shots-zero", f"{cmd} --model random:gpt2 --out new --shots 0", r"--shots")
    case(f"{cmd}-n-clean-negative", f"{cmd} --model random:gpt2 --out new --n-clean -1", r"--n-clean")
    case(f"{cmd}-n-corrupt-word", f"{cmd} --model random:gpt2 --out new --n-corrupt abc", r"--n-corrupt")
    case(f"{cmd}-tasks-is-file", f"{cmd} --model random:gpt2 --out new --tasks afile.txt", r"afile\.txt")
    case(f"{cmd}-tasks-missing", f"{cmd} --model random:gpt2 --out new --tasks nothere", r"nothere")
    case(f"{cmd}-tasks-no-task-files", f"{cmd} --model random:gpt2 --out new --tasks foreign", r"foreign")
    case(f"{cmd}-tasks-bad-json", f"{cmd} --model random:gpt2 --out new --tasks tasks",
         r"tasks/antonym\.json|antonym", {"tasks/antonym.json": "[{\"input\": \"hot\""})
    case(f"{cmd}-out-is-file", f"{cmd} --model random:gpt2 --out afile.txt", r"afile\.txt")
    case(f"{cmd}-out-foreign", f"{cmd} --model random:gpt2 --out foreign", r"foreign")
    case(f"{cmd}-out-read-only", f"{cmd} --model random:gpt2 --out ro/new", r"ro/new|\bro\b", skip=RO_SKIP)

case("atlas-fractions-word", "atlas --model random:gpt2 --out new --fractions abc", r"--fractions")
case("atlas-fractions-percent", "atlas --model random:gpt2 --out new --fractions 5,10", r"--fractions.*percent")
case("atlas-fractions-negative", "atlas --model random:gpt2 --out new --fractions 0.1,-0.1", r"--fractions")
case("atlas-fractions-repeated", "atlas --model random:gpt2 --out new --fractions 0.1,0.1", r"--fractions")
case("atlas-fractions-empty", "atlas --model random:gpt2 --out new --fractions ''", r"--fractions")
case("atlas-random-seeds-negative", "atlas --model random:gpt2 --out new --random-seeds -1", r"--random-seeds")
case("atlas-random-seeds-float", "atlas --model random:gpt2 --out new --random-seeds 1.5", r"--random-seeds")
case("atlas-n-eval-zero", "atlas --model random:gpt2 --out new --n-eval 0", r"--n-eval")
case("atlas-how-unknown", "atlas --model random:gpt2 --out new --how median", r"--how")
case("atlas-positions-unknown", "atlas --model random:gpt2 --out new --positions first", r"--positions")
case("atlas-device-map-unknown", "atlas --model random:gpt2 --out new --device-map everywhere", r"--device-map")

# --- tasks build -----------------------------------------------------------------------------------------
case("tasks-build-no-out", "tasks build", r"required: --out")
case("tasks-build-names-empty-item", "tasks build --out new --names antonym,,synonym", r"--names")
case("tasks-build-names-repeated", "tasks build --out new --names antonym,antonym", r"--names.*repeated")
case("tasks-build-names-unknown", "tasks build --out new --names nosuchtask", r"nosuchtask")
case("tasks-build-out-is-file", "tasks build --out afile.txt --names country-capital", r"afile\.txt")
case("tasks-build-out-foreign", "tasks build --out foreign --names country-capital", r"foreign")

# --- dynamics ----------------------------------------------------------------------------------------------
case("dynamics-no-source", "dynamics --out new", r"--model.*--run|--run.*--model")
case("dynamics-both-sources", "dynamics --model m --run r --out new", r"not allowed with")
case("dynamics-no-out", "dynamics --run r", r"required: --out")
case("dynamics-top-zero", "dynamics --run r --out new --top 0", r"--top")
case("dynamics-rel-above-one", "dynamics --run r --out new --rel 1.5", r"--rel")
case("dynamics-rel-word", "dynamics --run r --out new --rel high", r"--rel")
case("dynamics-n-eval-zero", "dynamics --run r --out new --n-eval 0", r"--n-eval")
case("dynamics-tokens-per-step-zero", "dynamics --model m --revisions a --out new --tokens-per-step 0",
     r"--tokens-per-step")
case("dynamics-revisions-empty-item", "dynamics --model m --revisions step1,,step2 --out new", r"--revisions")
case("dynamics-revisions-repeated", "dynamics --model m --revisions step1,step1 --out new", r"--revisions")
case("dynamics-revisions-space", "dynamics --model m --revisions 'step 1' --out new", r"--revisions")
case("dynamics-checkpoints-empty-item", "dynamics --run r --checkpoints 0,,250 --out new", r"--checkpoints")
case("dynamics-dtype-unknown", "dynamics --run r --out new --dtype half", r"--dtype")
case("dynamics-device-misspelt", "dynamics --run r --out new --device tpu", r"--device")
case("dynamics-reuse-no-dir", "dynamics --run r --out new --reuse", r"--reuse")
case("dynamics-story-with-model", "dynamics --model m --revisions a --story --out new", r"--story")
case("dynamics-model-without-revisions", "dynamics --model EleutherAI/pythia-14m --out new", r"--revisions")
case("dynamics-run-with-revisions", "dynamics --run foreign --revisions step1 --out new", r"--revisions")
case("dynamics-model-with-checkpoints", "dynamics --model m --revisions a --checkpoints 0 --out new",
     r"--checkpoints")
case("dynamics-random-model-revisions", "dynamics --model random:gpt2 --revisions step1 --out new", r"random:gpt2")
case("dynamics-run-missing", "dynamics --run nothere --out new", r"nothere")
case("dynamics-run-is-file", "dynamics --run afile.txt --out new", r"afile\.txt")
case("dynamics-run-no-checkpoints", "dynamics --run foreign --out new", r"foreign")
case("dynamics-reuse-missing", "dynamics --run foreign --out new --reuse nothere", r"nothere|foreign")

# --- compare -------------------------------------------------------------------------------------------------
case("compare-no-dirs", "compare --out new", r"required: dirs")
case("compare-fractions-percent", "compare a b --out new --fractions 2,5", r"--fractions.*percent")
case("compare-fractions-zero", "compare a b --out new --fractions 0,0.1", r"--fractions")
case("compare-fractions-word", "compare a b --out new --fractions abc", r"--fractions")
case("compare-depth-fraction-percent", "compare a b --out new --depth-fraction 10", r"--depth-fraction")
case("compare-depth-fraction-zero", "compare a b --out new --depth-fraction 0", r"--depth-fraction")
case("compare-depth-fraction-list", "compare a b --out new --depth-fraction 0.1,0.2", r"--depth-fraction")
case("compare-labels-repeated", "compare a b --out new --labels x,x", r"--labels")
case("compare-labels-count", "compare foreign foreign2 --out new --labels x", r"label|--labels",
     {"foreign2/notes.txt": "more notes\n"})
case("compare-dir-missing", "compare nothere foreign --out new", r"nothere")
case("compare-dir-is-file", "compare afile.txt foreign --out new", r"afile\.txt")
case("compare-dir-not-atlas", "compare foreign foreign2 --out new", r"foreign", {"foreign2/notes.txt": "x\n"})

# model loading (the same code for scores, atlas, info and dynamics; scores and atlas also in test_atlas)
case("scores-unknown-family", "scores --model random:mamba --out new", r"mamba")
case("atlas-model-pickle", "atlas --model model.pt --out new", r"model\.pt")
case("info-unknown-family", "info --model random:mamba", r"mamba")
case("info-model-missing", "info --model ./nothere", r"nothere")
case("info-model-is-plain-file", "info --model afile.txt", r"afile\.txt")
case("info-model-pickle", "info --model model.pt", r"model\.pt")
case("info-model-folder-without-model", "info --model foreign", r"foreign")

# --- info (beyond the model options above) --------------------------------------------------------------------
case("info-unknown-option", "info --model random:gpt2 --out x", r"unrecognized arguments: --out")

# --- demo -----------------------------------------------------------------------------------------------------
case("demo-seed-negative", "demo --seed -1 --out new", r"--seed")
case("demo-seed-word", "demo --seed x --out new", r"--seed")
case("demo-unknown-option", "demo --fast --out new", r"unrecognized arguments: --fast")
case("demo-unknown-family", "demo --no-train --model random:mamba --out new", r"mamba")
case("demo-model-pickle", "demo --no-train --model model.pt --out new", r"model\.pt")
case("demo-out-is-file", "demo --no-train --out afile.txt", r"afile\.txt")
case("demo-out-foreign", "demo --no-train --out foreign", r"foreign")
case("demo-out-read-only", "demo --no-train --out ro/new", r"ro/new|\bro\b", skip=RO_SKIP)



# ----------------------------------------------------------------------------------------------------
# Running them
# ----------------------------------------------------------------------------------------------------


def _fixtures(folder: Path, c: Case) -> None:
    (folder / "afile.txt").write_text("not a folder\n")
    (folder / "foreign").mkdir()
    (folder / "foreign" / "notes.txt").write_text("my own notes, not iclscope's\n")
    (folder / "model.pt").write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}, "note": "a pickled file"}))
    (folder / "ro").mkdir()
    (folder / "ro" / "keep.txt").write_text("read-only\n")
    for rel, content in c.files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` -> the SHA-256 of its bytes ("dir" for a folder)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    rc: int
    stderr: str
    before: dict
    after: dict


def _run(c: Case, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    _fixtures(folder, c)
    before = snapshot(folder)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=SRC, MPLBACKEND="Agg",
               ICLSCOPE_FAULT="")
    try:
        r = subprocess.run([sys.executable, "-m", "iclscope", *c.argv], cwd=folder, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = -1, f"timed out after {TIMEOUT} s\n{e.stderr or ''}"
    after = snapshot(folder)
    (folder / "ro").chmod(stat.S_IRWXU)  # so that pytest can remove the folder
    return Outcome(rc, err, before, after)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run every selected case once, four subprocesses at a time."""
    wanted = [item.callspec.params["c"] for item in request.session.items
              if item.module is sys.modules[__name__] and hasattr(item, "callspec") and "c" in item.callspec.params]
    wanted = [c for c in wanted if c.skip is None]
    root = tmp_path_factory.mktemp("bad_inputs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(_run, c, root / c.id) for c in wanted}
        return {k: f.result() for k, f in futures.items()}


def test_the_table_covers_every_command_and_config_section():
    commands = {c.command for c in CASES}
    assert {"train", "additivity", "clamp-sweep", "data-sweep", "scores", "atlas", "tasks", "dynamics", "compare",
            "info", "demo"} <= commands
    assert len(CASES) >= 150
    ids = " ".join(c.id for c in CASES)
    for section in ("model-", "fewshot-", "mixture-", "train-", "eval-", "clamp-"):
        assert f"config-{section}" in ids, section
    # every key of every schema section has at least one case
    from iclscope import schema
    for prefix, model in (("model", schema.ModelSection), ("fewshot", schema.FewShotSection),
                          ("mixture", schema.MixtureSection), ("train", schema.TrainSection),
                          ("eval", schema.EvalSection), ("clamp", schema.ClampEntry)):
        for key in model.model_fields:
            if key == "kind" and prefix in ("fewshot", "mixture"):
                continue  # data.kind has its own case
            assert re.search(rf"config-{prefix}-{key}\b", ids) or (prefix == "clamp" and key in ids), (prefix, key)


def test_the_toml_writer_round_trips():
    import tomllib
    text = config(MIXTURE, data__p_stored=0.5, clamp=[{"kind": "Ablate", "heads": [[0, 1]]}])
    parsed = tomllib.loads(text)
    assert parsed["data"]["p_stored"] == 0.5 and parsed["clamp"] == [{"kind": "Ablate", "heads": [[0, 1]]}]
    assert parsed["model"] == MIXTURE["model"]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, outcomes):
    if c.skip:
        pytest.skip(c.skip)
    o = outcomes[c.id]
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    shown = f"iclscope {' '.join(c.argv)}\nexit {o.rc}\nstderr:\n{o.stderr[-3000:]}"
    assert "Traceback" not in o.stderr, shown
    assert o.rc == 2, shown
    assert len(lines) == 1, shown
    assert re.search(c.culprit, lines[0]), f"culprit /{c.culprit}/ not named\n{shown}"
    changed = sorted(k for k in o.before if o.after.get(k) != o.before[k])
    created = sorted(set(o.after) - set(o.before))
    assert not changed, f"changed or removed: {changed}\n{shown}"
    assert not created, f"created: {created}\n{shown}"
