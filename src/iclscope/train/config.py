"""What does a run's config say? Reading TOML, merging overrides, validating every key, defaults, and
the data and model configs it implies.

A config has sections [model] [data] [train] [eval] and [[clamp]] entries; ``data.kind`` picks the
objective (``objectives.OBJECTIVES``). The shipped configs live in src/iclscope/configs/.
"""

from __future__ import annotations

import copy
import math
from dataclasses import fields
from pathlib import Path

from ..errors import IclscopeError
from ..models.tiny import TinyConfig
from .clamps import CLAMP_KEYS, CLAMP_KINDS, DYNAMIC_PATTERNS
from .objectives import OBJECTIVES

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "fewshot.toml"

MODEL_KEYS = {f.name for f in fields(TinyConfig)} - {"vocab_size", "d_input", "n_ctx"}
DATA_KINDS = {kind: o.config_class for kind, o in OBJECTIVES.items()}
DATA_KEYS = {kind: {"kind"} | {f.name for f in fields(c)} for kind, c in DATA_KINDS.items()}
TRAIN_DEFAULTS = dict(optimizer="adam", lr=1e-5, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, batch_size=32,
                      sequences=1_000_000, seeds=[5], threads=2)
EVAL_DEFAULTS = dict(every=250, batch=512, clamps=True, induction_len=8, phase_threshold=0.4 * math.log(2),
                     checkpoint_every=2500, log_checkpoints=True)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> dict:
    """The default config (the reference setup), updated by a TOML file and ``key=value`` overrides
    (dotted keys: ``train.lr=3e-4``, ``data.n_labels=10``; values parsed as TOML). Validated.
    ``path`` may also name a shipped config: "fewshot" or "testbed". A config whose data.kind differs
    from the default's starts from no defaults but the [train] and [eval] ones."""
    cfg = _read_toml(DEFAULT_CONFIG)
    if path is not None and not Path(path).exists() and (CONFIG_DIR / f"{path}.toml").exists():
        path = CONFIG_DIR / f"{path}.toml"
    if path is not None:
        user = _read_toml(Path(path))
        if user.get("data", {}).get("kind", "fewshot") != cfg["data"]["kind"]:
            cfg = {"train": {}, "eval": {}}
        if "clamp" in user:
            cfg["clamp"] = []
        _merge(cfg, user)
    for ov in overrides:
        key, sep, raw = ov.partition("=")
        if not sep or not key:
            raise IclscopeError(f"--set {ov!r}: expected key=value, e.g. train.lr=3e-4")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise IclscopeError(f"--set {key}: unknown config section {p!r}")
            node = node[p]
        node[parts[-1]] = value
    return validate_config(cfg)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise IclscopeError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise IclscopeError(f"{path}: not valid TOML: {e}") from None


def _merge(base: dict, new: dict) -> None:
    """Update ``base`` with ``new`` in place, table by table."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def validate_config(cfg: dict) -> dict:
    """Check every key (an unknown one is an error naming it) and fill defaults. Returns a copy."""
    cfg = copy.deepcopy(cfg)
    kind = (cfg.get("data") or {}).get("kind", "fewshot")
    if kind not in DATA_KINDS:
        raise IclscopeError(f"data.kind {kind!r} is not known; use one of {', '.join(DATA_KINDS)}")
    allowed = {"name": None, "model": MODEL_KEYS, "data": DATA_KEYS[kind], "train": set(TRAIN_DEFAULTS),
               "eval": set(EVAL_DEFAULTS), "clamp": None}
    for k in cfg:
        if k not in allowed:
            raise IclscopeError(f"unknown config key {k!r}; sections are model, data, train, eval, clamp")
    for sec in ("model", "data", "train", "eval"):
        cfg.setdefault(sec, {})
        if not isinstance(cfg[sec], dict):
            raise IclscopeError(f"config [{sec}] must be a table")
        bad = sorted(set(cfg[sec]) - allowed[sec])
        if bad:
            raise IclscopeError(f"unknown config key(s) {', '.join(sec + '.' + b for b in bad)}; "
                                f"known: {', '.join(sorted(allowed[sec]))}")
    cfg["train"] = {**TRAIN_DEFAULTS, **cfg["train"]}
    cfg["eval"] = {**EVAL_DEFAULTS, **cfg["eval"]}
    cfg["data"].setdefault("kind", "fewshot")
    t = cfg["train"]
    if isinstance(t["seeds"], int):
        t["seeds"] = [t["seeds"]]
    if not t["seeds"] or len(set(t["seeds"])) != len(t["seeds"]):
        raise IclscopeError(f"train.seeds must be a non-empty list of distinct seeds, got {t['seeds']}")
    if t["optimizer"] not in ("adam", "adamw"):
        raise IclscopeError(f"train.optimizer must be 'adam' or 'adamw', got {t['optimizer']!r}")
    for key in ("lr", "batch_size", "sequences"):
        if not isinstance(t[key], (int, float)) or t[key] <= 0:
            raise IclscopeError(f"train.{key} must be a positive number, got {t[key]!r}")
    clamps = cfg.get("clamp", [])
    if isinstance(clamps, dict):
        clamps = [clamps]
    for i, c in enumerate(clamps):
        bad = sorted(set(c) - CLAMP_KEYS)
        if bad:
            raise IclscopeError(f"clamp {i}: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(CLAMP_KEYS))}")
        if c.get("kind") not in CLAMP_KINDS:
            raise IclscopeError(f"clamp {i}: kind must be one of {', '.join(CLAMP_KINDS)}, got {c.get('kind')!r}")
    cfg["clamp"] = clamps
    for c in clamps:
        pattern = c.get("pattern")
        if pattern in DYNAMIC_PATTERNS and pattern not in OBJECTIVES[kind].dynamic_patterns:
            raise IclscopeError(f"pattern {pattern!r} needs {DYNAMIC_PATTERNS[pattern]}")
    data_config(cfg)  # validates the data section
    model_config(cfg)  # validates the model section
    return cfg


def data_config(cfg: dict):
    """The [data] section as its kind's dataclass (FewShotConfig, MixtureConfig, ...)."""
    kind = cfg["data"].get("kind", "fewshot")
    return DATA_KINDS[kind](**{k: v for k, v in cfg["data"].items() if k != "kind"})


def model_config(cfg: dict) -> TinyConfig:
    """The TinyConfig of the run: [model] plus the sizes the data fixes; n_ctx fits the data's sequences
    and the repeated sequences of the induction scores."""
    data = data_config(cfg)
    n_ctx = max(data.seq_len, 2 * int(cfg["eval"]["induction_len"]) + 1)
    return TinyConfig(**cfg["model"], **OBJECTIVES[cfg["data"].get("kind", "fewshot")].model_dims(data), n_ctx=n_ctx)


def token_layout(cfg: dict) -> dict | None:
    """Special token ids of a token-data run, saved with its checkpoints (for the atlas); None otherwise."""
    return OBJECTIVES[cfg["data"].get("kind", "fewshot")].layout(data_config(cfg))
