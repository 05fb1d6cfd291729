"""What does a run's config say? Reading TOML, merging overrides, validating every key, defaults, and
the data and model configs it implies.

A config has sections [model] [data] [train] [eval] and [[clamp]] entries; ``data.kind`` picks the
objective (``objectives.OBJECTIVES``). The shipped configs live in src/iclscope/configs/.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

from .. import schema
from ..errors import IclscopeError
from ..schema import validate_train_config
from ..models.tiny import TinyConfig
from .clamps import DYNAMIC_PATTERNS
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
TRAIN_DEFAULTS = copy.deepcopy(schema.TRAIN_DEFAULTS)  # the schema is the one source of defaults
EVAL_DEFAULTS = dict(schema.EVAL_DEFAULTS)


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
        for sec in ("model", "data", "train", "eval"):
            if sec in user and not isinstance(user[sec], dict):
                raise IclscopeError(f"{path}: [{sec}] must be a table of settings, got {type(user[sec]).__name__} "
                                    f"{user[sec]!r}")
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
        raise IclscopeError(f"{path}: not valid TOML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise IclscopeError(f"{path}: not a TOML config (not UTF-8 text; a model or pickle file?)") from None


def _merge(base: dict, new: dict) -> None:
    """Update ``base`` with ``new`` in place, table by table."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def validate_config(cfg: dict) -> dict:
    """Check every key and value (``iclscope.schema.validate_train_config``: an unknown key, a value of the
    wrong type or range is one IclscopeError line naming the key) and fill defaults. Returns a copy.
    Nothing is written anywhere: the trainer calls this before it touches the run folder."""
    cfg = validate_train_config(cfg)
    kind = cfg["data"]["kind"]
    for i, c in enumerate(cfg["clamp"]):
        pattern = c.get("pattern")
        if pattern in DYNAMIC_PATTERNS and pattern not in OBJECTIVES[kind].dynamic_patterns:
            raise IclscopeError(f"clamp[{i}].pattern = {pattern!r}: needs {DYNAMIC_PATTERNS[pattern]}")
    data_config(cfg)  # the dataclasses' own checks
    model_config(cfg)
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
