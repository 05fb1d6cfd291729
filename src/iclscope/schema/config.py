"""Input schema: the training-lab config and the command-line value types, checked up front.

Two halves, both turning bad input into ONE line that names the culprit:

* :func:`validate_train_config` checks a training-lab config (sections ``[model] [data] [train]
  [eval]`` and ``[[clamp]]`` entries) against pydantic models and returns the normalised dict the
  trainer uses (defaults of [train] and [eval] filled in, ``data.kind`` set, ``train.seeds`` a list,
  ``clamp`` a list). Errors are :class:`~iclscope.errors.IclscopeError` reading
  ``"<dotted key> = <value given>: expected <what is allowed>"``, or for a misspelt key
  ``"unknown config key train.lrate; did you mean train.lr?"``.
* ``argparse`` value types (``type=`` callables): :func:`positive_int`, :func:`nonnegative_int`,
  :func:`positive_count`, :func:`positive_float`, :func:`probability`, :func:`fraction_list`,
  :func:`seed_list`, :func:`name_list`, :func:`choice`, :func:`key_value`, :func:`revision`,
  :func:`device`; they raise ``argparse.ArgumentTypeError`` with one line (argparse adds the option's
  name). :func:`check_device` checks that a device exists on this machine.

Rules (beyond each dataclass's own ``__post_init__`` checks, which are all kept):

* Strict types: a bool is never a number, a float is never an integer (``1.5`` and ``2.0`` are both
  refused for an integer key), a string is never a number. Integer keys accept Python/TOML ints only;
  the one exception is ``train.sequences``, which also takes an integral float such as ``6e5``
  (large counts are naturally written in scientific notation; ``6.5e-1`` is still refused).
* Number keys accept ints and floats, and refuse inf and nan.
* Counts and sizes are >= 1, seeds and offsets >= 0, probabilities in [0, 1].
* Clamp entries may only carry the keys their kind uses (a ``how`` on a ClampPattern is an error,
  not silently ignored), and must carry the ones it needs (``heads`` for head sites, ``layers`` for
  layer sites, ``source`` for a Graft).

This module does not import the trainer (it is what the trainer calls), nor torch itself: the
dataclass cross-check and :func:`check_device` import what they need when called.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import IclscopeError
from ..sites import HEAD_SITES as _HEAD_SITES, LAYER_SITES as _LAYER_SITES

HEAD_SITES, LAYER_SITES = tuple(_HEAD_SITES), tuple(_LAYER_SITES)


MAX_CONTEXT_PAIRS = 8  # iclscope.data.synthetic._MAX_CONTEXT_PAIRS


# ----------------------------------------------------------------------------------------------------
# Field helpers: every field carries the text of what it allows (used in the error message)
# ----------------------------------------------------------------------------------------------------


def _int(default, ge: int = 0, le: int | None = None) -> Any:
    what = f"an integer >= {ge}" if le is None else f"an integer in {ge}..{le}"
    return Field(default, strict=True, ge=ge, le=le, description=what)


def _num(default, gt: float | None = None, ge: float | None = None, lt: float | None = None,
         le: float | None = None, what: str | None = None) -> Any:
    if what is None:
        lo = f"> {gt:g}" if gt is not None else f">= {ge:g}" if ge is not None else ""
        what = f"a finite number {lo}".rstrip()
    return Field(default, strict=True, gt=gt, ge=ge, lt=lt, le=le, allow_inf_nan=False, description=what)


def _prob(default) -> Any:
    return _num(default, ge=0.0, le=1.0, what="a probability, a number in [0, 1]")


def _bool(default) -> Any:
    return Field(default, strict=True, description="true or false")


def _enum(default, options: tuple[str, ...]) -> Any:
    return Field(default, description="one of " + ", ".join(json.dumps(o) for o in options))


def _str(default) -> Any:
    return Field(default, strict=True, description="a string")


class _Cross(ValueError):
    """A rule over several keys, raised inside a validator: ``key`` relative to the section."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key} = {_show(value)}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, frozen=True)


# ----------------------------------------------------------------------------------------------------
# The sections
# ----------------------------------------------------------------------------------------------------


class ModelSection(_Section):
    """[model]: fields of ``iclscope.models.tiny.TinyConfig`` except vocab_size, d_input and n_ctx
    (those come from the data). Defaults are TinyConfig's."""

    n_layers: int = _int(2, ge=1)
    n_heads: int = _int(8, ge=1)
    d_model: int = _int(64, ge=1)
    d_mlp: int = _int(0, ge=0)
    positions: Literal["rotary", "learned", "none"] = _enum("rotary", ("rotary", "learned", "none"))
    layernorm: bool = _bool(True)
    rotary_base: float = _num(10000.0, gt=0)

    @model_validator(mode="after")
    def _shape(self):
        if self.d_model % self.n_heads:
            raise _Cross("n_heads", self.n_heads, f"expected a divisor of d_model = {self.d_model}")
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise _Cross("n_heads", self.n_heads, f"rotary positions need an even d_head = d_model / n_heads "
                         f"(d_model = {self.d_model} gives {self.d_model // self.n_heads})")
        return self


class FewShotSection(_Section):
    """[data] with kind = "fewshot": fields of ``iclscope.data.synthetic.FewShotConfig`` (its defaults)."""

    kind: Literal["fewshot"] = _enum("fewshot", ("fewshot",))
    n_classes: int = _int(50, ge=1)
    n_heldout_classes: int = _int(100, ge=0)
    exemplars_per_class: int = _int(1, ge=1)
    n_heldout_exemplars: int = _int(4, ge=0)
    dim: int = _int(512, ge=1)
    context_pairs: int = _int(2, ge=1, le=MAX_CONTEXT_PAIRS)
    n_labels: int = _int(5, ge=2)
    heldout_label_pairs: int = _int(2, ge=0)
    bursty: float = _prob(1.0)
    shared_scale: float = _num(1.0, ge=0)
    prototype_scale: float = _num(0.5, ge=0)
    class_rank: int = _int(32, ge=0)
    exemplar_noise: float = _num(0.5, ge=0)
    normalize: bool = _bool(False)
    features_path: Optional[str] = Field(None, strict=True, min_length=1, description="a file path (a string)")
    features_dataset: Optional[str] = Field(None, strict=True, min_length=1, description="a dataset name (a string)")
    seed: int = _int(0, ge=0)

    @model_validator(mode="after")
    def _counts(self):
        need = self.context_pairs + (1 if self.bursty < 1 else 0)
        why = (f"context_pairs = {self.context_pairs}" + (", plus one for the query as bursty < 1" if self.bursty < 1
                                                          else ""))
        if self.n_labels < need:
            raise _Cross("n_labels", self.n_labels, f"expected >= {need}: a sequence draws {need} distinct labels ({why})")
        if self.n_classes < need:
            raise _Cross("n_classes", self.n_classes, f"expected >= {need}: a sequence draws {need} distinct "
                         f"classes ({why})")
        if self.n_heldout_classes != 0 and self.n_heldout_classes < need:
            raise _Cross("n_heldout_classes", self.n_heldout_classes, f"expected 0 or >= {need}: a sequence draws "
                         f"{need} distinct classes ({why})")
        n_pairs = self.n_labels * (self.n_labels - 1) // 2
        if self.heldout_label_pairs >= n_pairs:
            raise _Cross("heldout_label_pairs", self.heldout_label_pairs,
                         f"expected an integer in 0..{n_pairs - 1} (n_labels = {self.n_labels} gives {n_pairs} pairs)")
        return self


class MixtureSection(_Section):
    """[data] with kind = "icl_mixture": fields of ``iclscope.data.mixture.MixtureConfig`` (its defaults)."""

    kind: Literal["icl_mixture"] = _enum("icl_mixture", ("icl_mixture",))
    n_words: int = _int(64, ge=2)
    n_tasks: int = _int(8, ge=1)
    task_seed: int = _int(0, ge=0)
    k: int = _int(8, ge=1)
    p_stored: float = _prob(0.65)
    p_fresh: float = _prob(0.20)
    p_segments: float = _prob(0.15)
    p_demo_repeat: float = _prob(0.3)
    p_query_repeat: float = _prob(0.5)
    p_fresh_demo_repeat: float = _prob(0.0)
    segment_min: int = _int(4, ge=2)
    segment_max: Optional[int] = Field(None, strict=True, ge=2, description="an integer >= 2")
    loss_on: Literal["query", "labels"] = _enum("query", ("query", "labels"))
    seed: int = _int(0, ge=0)

    @model_validator(mode="after")
    def _shape(self):
        if self.n_words < self.k + 1:
            raise _Cross("n_words", self.n_words, f"expected >= k + 1 = {self.k + 1}: a prompt needs k distinct "
                         "demo inputs and a novel query")
        total = self.p_stored + self.p_fresh + self.p_segments
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise _Cross("p_stored", self.p_stored, f"expected p_stored + p_fresh + p_segments = 1, got "
                         f"{self.p_stored} + {self.p_fresh} + {self.p_segments} = {total:g}")
        T = 3 * self.k + 2
        room = (T - 1) // 2
        hi = min(12, room) if self.segment_max is None else self.segment_max
        if self.segment_min > hi or hi > room:
            key, val = ("segment_max", self.segment_max) if self.segment_max is not None else ("segment_min",
                                                                                              self.segment_min)
            raise _Cross(key, val, f"expected 2 <= segment_min <= segment_max <= (T - 1) // 2 = {room} "
                         f"(T = 3k + 2 = {T}); segment_min = {self.segment_min}, segment_max = {hi}")
        return self


def _integral_count(v: Any) -> Any:
    """An int, or a float that is a whole number (6e5); bools and fractions are refused."""
    if isinstance(v, bool):
        raise ValueError("a bool")
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return v  # kept as given: the trainer rounds with int()
    if isinstance(v, int):
        return v
    raise ValueError("not a whole number")


class TrainSection(_Section):
    """[train]: the optimizer (Adam or AdamW, constant lr), batch, length, ensemble seeds, CPU threads."""

    optimizer: Literal["adam", "adamw"] = _enum("adam", ("adam", "adamw"))
    lr: float = _num(1e-5, gt=0)
    betas: list = Field(default_factory=lambda: [0.9, 0.999], description="two numbers [beta1, beta2], each in [0, 1)")
    eps: float = _num(1e-8, gt=0)
    weight_decay: float = _num(0.0, ge=0)
    batch_size: int = _int(32, ge=1)
    sequences: Any = Field(1_000_000, description="a whole number >= 1 (an integer, or e.g. 6e5)")
    seeds: list = Field(default_factory=lambda: [5], description="a non-empty list of distinct seeds "
                        "(integers >= 0), or one such integer")
    threads: int = _int(2, ge=1)
    compile: Any = Field("auto", description='"auto" (compile the training step of a run without clamps '
                         'of at least 10,000 steps), true or false')

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v):
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError("not auto, true or false")

    @field_validator("betas", mode="before")
    @classmethod
    def _betas(cls, v):
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError("not a pair")
        for b in v:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
                raise ValueError("not in [0, 1)")
        return list(v)

    @field_validator("sequences", mode="before")
    @classmethod
    def _sequences(cls, v):
        v = _integral_count(v)
        if v < 1:
            raise ValueError("< 1")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("not a non-empty list")
        for s in v:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError("not a seed")
        if len(set(v)) != len(v):
            raise ValueError("repeated")
        return list(v)


class EvalSection(_Section):
    """[eval]: how often and on how much the run is measured, and when checkpoints are kept."""

    every: int = _int(250, ge=1)
    batch: int = _int(512, ge=1)
    clamps: bool = _bool(True)
    induction_len: int = _int(8, ge=1)
    phase_threshold: float = _num(0.4 * math.log(2), gt=0)
    checkpoint_every: int = _int(2500, ge=1)
    log_checkpoints: bool = _bool(True)


CLAMP_KINDS = ("ClampPattern", "Ablate", "Preserve", "Graft")
CLAMP_KIND_KEYS = {  # the keys each kind uses (besides "kind")
    "ClampPattern": ("heads", "pattern", "strength", "positions"),
    "Ablate": ("heads", "how", "positions"),
    "Preserve": ("site", "heads", "layers", "positions"),
    "Graft": ("source", "site", "heads", "layers", "positions"),
}
_HEADS_TEXT = '"all", "layer:N" (N >= 0) or a list of [layer, head] pairs of integers >= 0'


def _is_int(v, lo: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)


class ClampEntry(_Section):
    """One [[clamp]] entry: an intervention applied at every training step (and in evaluation)."""

    kind: Literal[CLAMP_KINDS] = _enum(..., CLAMP_KINDS)
    heads: Any = Field(None, description=_HEADS_TEXT)
    layers: Any = Field(None, description="a list of layer indices (integers >= 0)")
    pattern: Literal["prev_token", "induction", "label_induction"] = _enum(
        "prev_token", ("prev_token", "induction", "label_induction"))
    strength: float = _num(1.0, ge=0, le=1, what="a number in [0, 1]")
    positions: Any = Field(None, description="a position or a list of positions (integers; negative counts "
                           "from the end)")
    how: Literal["zero", "mean"] = _enum("zero", ("zero", "mean"))
    site: Literal[HEAD_SITES + LAYER_SITES] = _enum(None, HEAD_SITES + LAYER_SITES)
    source: str = Field(None, strict=True, min_length=1, description="a checkpoint directory (a non-empty string)")

    @field_validator("heads", mode="before")
    @classmethod
    def _heads(cls, v):
        if isinstance(v, str):
            m = re.fullmatch(r"layer:(\d+)", v)
            if v == "all" or m:
                return v
        elif isinstance(v, (list, tuple)) and v and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(x, 0) for x in p) for p in v):
            return [list(p) for p in v]
        raise ValueError("bad heads")

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, (list, tuple)) and v and all(_is_int(x, 0) for x in v):
            return list(v)
        raise ValueError("bad layers")

    @field_validator("positions", mode="before")
    @classmethod
    def _positions(cls, v):
        if _is_int(v) or (isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v)):
            return v
        raise ValueError("bad positions")

    @model_validator(mode="after")
    def _keys_of_kind(self):
        uses = CLAMP_KIND_KEYS[self.kind]
        for key in sorted(self.model_fields_set - {"kind"} - set(uses)):
            raise _Cross(key, getattr(self, key), f"not a key of a {self.kind} clamp (its keys: kind, "
                         f"{', '.join(uses)})")
        if self.kind == "Graft" and self.source is None:
            raise _Cross("source", None, "a Graft needs source = a checkpoint directory")
        if self.kind in ("Preserve", "Graft"):
            site = self.site or ("pattern" if self.kind == "Preserve" else "resid_post")
            need = "heads" if site in HEAD_SITES else "layers"
            if getattr(self, need) is None:
                what = "a head site" if need == "heads" else "a layer site"
                raise _Cross(need, None, f"{self.kind} at site {json.dumps(site)} ({what}) needs {need}")
        elif self.heads is None:
            raise _Cross("heads", None, f"a {self.kind} clamp needs heads = {_HEADS_TEXT}")
        return self


# ----------------------------------------------------------------------------------------------------
# The whole config
# ----------------------------------------------------------------------------------------------------

DATA_SECTIONS = {"fewshot": FewShotSection, "icl_mixture": MixtureSection}
SECTIONS = {"name": None, "model": ModelSection, "data": None, "train": TrainSection, "eval": EvalSection,
            "clamp": ClampEntry}


def _defaults(model: type[BaseModel]) -> dict:
    return {name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()}


TRAIN_DEFAULTS = _defaults(TrainSection)
EVAL_DEFAULTS = _defaults(EvalSection)


def _show(value: Any) -> str:
    """A value as the user wrote it (TOML spelling for bools and strings), on one line, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    elif value is None:
        text = "(missing)"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _unknown(key: str, prefix: str, known, what: str = "config") -> IclscopeError:
    """"unknown <what> key <prefix><key>" with the nearest known name, or the list of known ones."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return IclscopeError(f"unknown {what} key {prefix}{key}; {hint}")


def _check(model: type[BaseModel], raw: Any, prefix: str, other_keys: dict | None = None,
           what: str = "config") -> BaseModel:
    """Validate one section (table) of a config or study file; pydantic's first complaint as a one-line
    IclscopeError naming the dotted key. ``what``: the file's kind in "unknown ... key" messages."""
    if not isinstance(raw, dict):
        raise IclscopeError(f"{prefix.rstrip('.')} = {_show(raw)}: expected a table")
    try:
        return model(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Cross):
            raise IclscopeError(f"{prefix}{cause.key} = {_show(cause.value)}: {cause.allowed}") from None
        key = str(loc[0]) if loc else ""
        if err["type"] == "extra_forbidden":
            for kind, keys in (other_keys or {}).items():
                if key in keys:
                    raise IclscopeError(f"unknown config key {prefix}{key}: it belongs to data.kind = "
                                        f"{json.dumps(kind)}, this config has data.kind = {json.dumps(raw.get('kind'))}")
            raise _unknown(key, prefix, model.model_fields, what) from None
        field = model.model_fields.get(key)
        allowed = field.description if field is not None and field.description else err["msg"]
        if err["type"] == "missing":
            raise IclscopeError(f"{prefix}{key} is missing: expected {allowed}") from None
        raise IclscopeError(f"{prefix}{key} = {_show(raw.get(key))}: expected {allowed}") from None


def _table(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        toml = "a [[clamp]] entry" if key.startswith("clamp[") else f"[{key}] in TOML"
        raise IclscopeError(f"{key} = {_show(value)}: expected a table ({toml})")
    return value


def validate_train_config(raw: dict) -> dict:
    """Check a training-lab config and return it normalised.

    raw: the parsed TOML (sections model, data, train, eval; clamp a list of tables or one table; an
    optional top-level ``name``). The result is a new dict: every section present, [train] and [eval]
    completed with :data:`TRAIN_DEFAULTS` / :data:`EVAL_DEFAULTS`, ``data.kind`` set (default
    "fewshot"), ``train.seeds`` a list, ``clamp`` a list. The [model] and [data] sections keep only
    the keys given (their defaults are the dataclasses'). Values are kept as given.
    Raises IclscopeError (one line naming the key, the value and what is allowed) on the first problem.
    """
    if not isinstance(raw, dict):
        raise IclscopeError(f"config = {_show(raw)}: expected a table of sections {', '.join(SECTIONS)}")
    for key in raw:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), [s for s in SECTIONS if s != "name"], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "sections are model, data, train, eval, clamp"
            raise IclscopeError(f"unknown config section {key!r}; {hint}")
    cfg = copy.deepcopy(raw)
    if "name" in cfg and not isinstance(cfg["name"], str):
        raise IclscopeError(f"name = {_show(cfg['name'])}: expected a string")
    for sec in ("model", "data", "train", "eval"):
        _table(cfg.setdefault(sec, {}), sec)

    kind = cfg["data"].setdefault("kind", "fewshot")
    if kind not in DATA_SECTIONS:
        raise IclscopeError(f"data.kind = {_show(kind)}: expected one of "
                            f"{', '.join(json.dumps(k) for k in DATA_SECTIONS)}")
    others = {k: set(m.model_fields) - set(DATA_SECTIONS[kind].model_fields)
              for k, m in DATA_SECTIONS.items() if k != kind}
    _check(DATA_SECTIONS[kind], cfg["data"], "data.", others)
    _check(ModelSection, cfg["model"], "model.")
    _check(TrainSection, cfg["train"], "train.")
    _check(EvalSection, cfg["eval"], "eval.")

    seeds = cfg["train"].get("seeds")
    if isinstance(seeds, int):
        cfg["train"]["seeds"] = [seeds]
    cfg["train"] = {**copy.deepcopy(TRAIN_DEFAULTS), **cfg["train"]}
    cfg["eval"] = {**EVAL_DEFAULTS, **cfg["eval"]}

    clamps = cfg.get("clamp", [])
    if isinstance(clamps, dict):
        clamps = [clamps]
    if not isinstance(clamps, list):
        raise IclscopeError(f"clamp = {_show(clamps)}: expected a list of tables ([[clamp]] entries)")
    for i, c in enumerate(clamps):
        entry = _check(ClampEntry, _table(c, f"clamp[{i}]"), f"clamp[{i}].")
        if entry.pattern == "label_induction" and kind != "fewshot":
            raise IclscopeError(f'clamp[{i}].pattern = "label_induction": needs few-shot classification data '
                                f'(data.kind = "fewshot"), this config has data.kind = {json.dumps(kind)}')
    cfg["clamp"] = clamps

    _construct_dataclasses(cfg)
    return cfg


def _construct_dataclasses(cfg: dict) -> None:
    """Build the run's TinyConfig and data config once, so that any rule a dataclass gains later and this
    schema lacks still fails here, with the dataclass's own one-line message."""
    from ..data.mixture import MixtureConfig
    from ..data.synthetic import FewShotConfig
    from ..models.tiny import TinyConfig

    d = {k: v for k, v in cfg["data"].items() if k != "kind"}
    data = FewShotConfig(**d) if cfg["data"]["kind"] == "fewshot" else MixtureConfig(**d)
    n_ctx = max(data.seq_len, 2 * int(cfg["eval"]["induction_len"]) + 1)
    if isinstance(data, MixtureConfig):
        TinyConfig(**cfg["model"], vocab_size=data.vocab_size, d_input=0, n_ctx=n_ctx)
    else:
        TinyConfig(**cfg["model"], vocab_size=data.n_labels, d_input=data.dim, n_ctx=n_ctx)
