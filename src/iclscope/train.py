"""The training lab: train small transformers on synthetic few-shot data, with clamps at every step.

A run is a config (TOML, sections [model] [data] [train] [eval] and [[clamp]] entries) and a folder::

    RUN/config.json          the full config (a resume with a different config is refused)
    RUN/metrics.csv          one row per evaluation: step, sequences, then one column per measure
    RUN/events.*             TensorBoard event files (the same measures)
    RUN/summary.json         final measures and the phase change (step and sequences, or null)
    RUN/checkpoints/step_N/  model checkpoints (safetensors + JSON) at regular and log-spaced steps
    RUN/state/               the training state for resuming (weights, Adam moments, data RNG)
    RUN/final/               the trained model (all seeds of an ensemble in one checkpoint)

Several seeds (``train.seeds = [1, 2, 3]``) train side by side as one ensemble (stacked weights, one
optimizer step for all); each seed then has its own folder RUN/seed_S/ with the files above.

Clamps are forward-pass replacements inside the differentiated function at every training step: the
replaced values pass no gradient, everything else trains (``iclscope.interventions``). They are used in
evaluation too unless ``eval.clamps = false``.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .data.mixture import CONDITIONS as MIXTURE_CONDITIONS
from .data.mixture import BOS, SEP, WORD_OFFSET, MixtureConfig, MixtureData
from .data.synthetic import SPLITS, FewShotConfig, FewShotData, repeated_random_tokens
from .errors import IclscopeError
from .interventions import Ablate, ClampPattern, Graft, Patch, Preserve
from .models.tiny import TinyConfig, TinyModel

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "fewshot.toml"

MODEL_KEYS = {f.name for f in fields(TinyConfig)} - {"vocab_size", "d_input", "n_ctx"}
DATA_KINDS = {"fewshot": FewShotConfig, "icl_mixture": MixtureConfig}
DATA_KEYS = {kind: {"kind"} | {f.name for f in fields(c)} for kind, c in DATA_KINDS.items()}
TRAIN_DEFAULTS = dict(optimizer="adam", lr=1e-5, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, batch_size=32,
                      sequences=1_000_000, seeds=[5], threads=2)
EVAL_DEFAULTS = dict(every=250, batch=512, clamps=True, induction_len=8, phase_threshold=0.4 * math.log(2),
                     checkpoint_every=2500, log_checkpoints=True)
CLAMP_KEYS = {"kind", "heads", "layers", "pattern", "strength", "positions", "how", "site", "source"}
CLAMP_KINDS = ("ClampPattern", "Ablate", "Preserve", "Graft")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


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
        _merge(cfg, user, str(path))
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


def _merge(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, where)
        else:
            base[k] = v


def validate_config(cfg: dict) -> dict:
    """Check every key (an unknown one is an error naming it) and fill defaults."""
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
    if kind != "fewshot" and any(c.get("pattern") == "label_induction" for c in clamps):
        raise IclscopeError("pattern 'label_induction' needs few-shot classification data (data.kind = 'fewshot')")
    data_config(cfg)  # validates the data section
    model_config(cfg)  # validates the model section
    return cfg


def data_config(cfg: dict):
    kind = cfg["data"].get("kind", "fewshot")
    return DATA_KINDS[kind](**{k: v for k, v in cfg["data"].items() if k != "kind"})


def model_config(cfg: dict) -> TinyConfig:
    data = data_config(cfg)
    n_ctx = max(data.seq_len, 2 * int(cfg["eval"]["induction_len"]) + 1)
    if isinstance(data, MixtureConfig):
        return TinyConfig(**cfg["model"], vocab_size=data.vocab_size, d_input=0, n_ctx=n_ctx)
    return TinyConfig(**cfg["model"], vocab_size=data.n_labels, d_input=data.dim, n_ctx=n_ctx)


def token_layout(cfg: dict) -> dict | None:
    """Special token ids of a token-data run, saved with its checkpoints (for the atlas)."""
    data = data_config(cfg)
    if not isinstance(data, MixtureConfig):
        return None
    return {"sep_id": SEP, "bos_id": BOS, "pad_id": SEP, "word_offset": WORD_OFFSET, "n_words": data.n_words,
            "n_tasks": data.n_tasks, "task_seed": data.task_seed, "k": data.k}


# ----------------------------------------------------------------------------------------------------
# Clamps from config entries
# ----------------------------------------------------------------------------------------------------


def _heads(spec, model: TinyModel, i: int) -> list[tuple[int, int]] | None:
    if spec is None:
        return None
    if spec == "all":
        return [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    if isinstance(spec, str) and spec.startswith("layer:"):
        layer = int(spec.split(":")[1])
        if not 0 <= layer < model.n_layers:
            raise IclscopeError(f"clamp {i}: layer {layer} does not exist (the model has {model.n_layers} layers)")
        return [(layer, h) for h in range(model.n_heads)]
    if isinstance(spec, list):
        return [tuple(x) for x in spec]
    raise IclscopeError(f"clamp {i}: heads must be 'all', 'layer:N' or a list of [layer, head], got {spec!r}")


class Clamps:
    """The config's [[clamp]] entries as interventions: static ones (the same every step) and dynamic
    ones built from each batch (an ideal label-induction pattern depends on where the labels are)."""

    def __init__(self, specs: list[dict], model: TinyModel, run_dir: Path | None = None):
        self.static: list = []
        self.dynamic: list[tuple[list, float]] = []  # (heads, strength) of label-induction clamps
        self.sources: dict[str, TinyModel] = {}
        for i, c in enumerate(specs):
            kind, heads = c["kind"], _heads(c.get("heads"), model, i)
            positions = c.get("positions")
            if kind == "ClampPattern":
                pattern = c.get("pattern", "prev_token")
                strength = float(c.get("strength", 1.0))
                if pattern == "label_induction":  # strength s on the correct label, 1-s on the wrong one
                    self._check(ClampPattern(heads, "prev_token", strength, positions=[-1]), model, i)
                    self.dynamic.append((heads, strength))
                    continue
                iv = ClampPattern(heads, pattern, strength, positions=positions)
            elif kind == "Ablate":
                iv = Ablate(heads, how=c.get("how", "zero"), positions=positions)
            elif kind == "Preserve":
                iv = Preserve(c.get("site", "pattern"), heads=heads, layers=c.get("layers"), positions=positions)
            else:  # Graft
                src = c.get("source")
                if not src:
                    raise IclscopeError(f"clamp {i}: Graft needs source = a checkpoint directory")
                iv = Graft(self._source(src, model, run_dir, i), layers=c.get("layers"), site=c.get("site", "resid_post"),
                           heads=heads, positions=positions)
            self._check(iv, model, i)
            self.static.append(iv)

    @staticmethod
    def _check(iv, model, i):
        from .interventions import compile_interventions
        try:
            compile_interventions([iv], model)
        except IclscopeError as e:
            raise IclscopeError(f"clamp {i}: {e}") from None

    def _source(self, path: str, model: TinyModel, run_dir, i) -> TinyModel:
        p = Path(path)
        if not p.is_absolute() and run_dir is not None and not p.exists():
            p = run_dir / p
        if str(p) not in self.sources:
            try:
                src = TinyModel.load(p)
            except IclscopeError as e:
                raise IclscopeError(f"clamp {i}: Graft source: {e}") from None
            if src.cfg != model.cfg:
                raise IclscopeError(f"clamp {i}: Graft source {p} has a different architecture")
            if src.n_models not in (1, model.n_models):
                raise IclscopeError(f"clamp {i}: Graft source {p} is an ensemble of {src.n_models}, "
                                    f"this run has {model.n_models}")
            for q in src.module.parameters():
                q.requires_grad_(False)
            self.sources[str(p)] = src
        return self.sources[str(p)]

    def for_batch(self, batch) -> list:
        """The dynamic clamps for one batch (the static ones live in a ``model.intervene`` context)."""
        return [ClampPattern(heads, batch.ideal_induction_pattern(s), positions=[-1]) for heads, s in self.dynamic]

    def __bool__(self) -> bool:
        return bool(self.static or self.dynamic)


# ----------------------------------------------------------------------------------------------------
# Progress measures and the phase change
# ----------------------------------------------------------------------------------------------------


def detect_phase_change(sequences, loss, steps=None, threshold: float | None = None) -> dict | None:
    """Find the abrupt drop in a loss curve.

    sequences, loss (and steps): 1-D arrays over evaluations. The curve is smoothed (running median of
    3). The phase change is the first evaluation from which the smoothed loss stays below ``threshold``
    to the end (default threshold: halfway, in log space, between the plateau and the final loss). The
    plateau is the loss level where the curve spends most evaluations before that crossing (the densest
    bin of a log-spaced histogram), the final value the mean of the last 10 % of points. The drop runs
    from where the loss last leaves the plateau (10 % of the way down to the final value) to where it
    gets within 10 % of the final value; its steepest point is the largest fall in loss per sequence
    inside it. Returns None when the loss never crosses the threshold or starts below it.
    """
    x = np.asarray(sequences, dtype=float)
    y = np.asarray(loss, dtype=float)
    st = np.asarray(steps if steps is not None else sequences, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    x, y, st = x[ok], y[ok], st[ok]
    if len(y) < 4:
        return None
    ys = pd.Series(y).rolling(3, center=True, min_periods=1).median().to_numpy()
    final = float(ys[-max(1, len(ys) // 10):].mean())

    def plateau_before(c: int) -> float:
        logs = np.log(ys[:c])
        hist, edges = np.histogram(logs, bins=max(5, min(30, c // 2)))
        b = int(np.argmax(hist))
        inside = (logs >= edges[b]) & (logs <= edges[b + 1])
        return float(np.exp(np.median(logs[inside])))

    if threshold is None:
        threshold = math.exp((math.log(plateau_before(len(ys))) + math.log(max(final, 1e-12))) / 2)
    below = ys < threshold
    if not below[-1]:
        return None
    c = len(below) - 1
    while c > 0 and below[c - 1]:
        c -= 1
    if c == 0:
        return None  # below from the start: no plateau to leave
    plateau = plateau_before(c)
    span = max(plateau - final, 1e-12)
    begin = c
    while begin > 0 and ys[begin - 1] < plateau - 0.1 * span:
        begin -= 1
    end = c
    while end < len(ys) - 1 and ys[end] > final + 0.1 * span:
        end += 1
    lo, hi = max(begin - 1, 0), max(end, begin)
    slope = -(ys[lo + 1:hi + 1] - ys[lo:hi]) / np.maximum(x[lo + 1:hi + 1] - x[lo:hi], 1e-12)
    k = lo + int(np.argmax(slope)) + 1 if len(slope) else c
    return {"step": int(st[c]), "sequences": int(x[c]), "threshold": float(threshold), "plateau_loss": plateau,
            "final_loss": final, "steepest_step": int(st[k]), "steepest_sequences": int(x[k]),
            "drop_start_sequences": int(x[max(begin - 1, 0)]), "drop_end_sequences": int(x[end])}


def repeated_vectors(data: FewShotData, n: int, length: int, g: torch.Generator) -> tuple[dict, torch.Tensor]:
    """Repeated random exemplar sequences [v1..vL, v1..vL] for induction / previous-token scores of a
    vector-input model. Returns (inputs for model.run, ids (n, 2L) identifying each vector)."""
    C, E, _ = data.features.shape
    ids = torch.rand(n, C * E, generator=g).argsort(-1)[:, :length]
    ids = torch.cat([ids, ids], 1)
    vectors = data.features.view(C * E, -1)[ids]
    return {"tokens": torch.zeros_like(ids), "vectors": vectors, "vector_mask": torch.ones_like(ids, dtype=torch.bool)}, ids


# ----------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------


def _tile(batch, R: int):
    """One batch per ensemble member, concatenated along the batch axis."""
    return _cat([batch] * R)


def _cat(batches):
    cls = type(batches[0])
    return cls(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)})


class Trainer:
    """Train one config (an ensemble over its seeds) into a run folder; resumes where it stopped."""

    def __init__(self, cfg: dict, out: str | Path, progress: bool = True, log=print):
        self.cfg = validate_config(cfg)
        self.out = Path(out)
        self.progress, self.log = progress, log
        self._check_run_dir()
        t, e = self.cfg["train"], self.cfg["eval"]
        torch.set_num_threads(int(t["threads"]))
        self.seeds = list(t["seeds"])
        self.R = len(self.seeds)
        dcfg = data_config(self.cfg)
        self.tokens_only = isinstance(dcfg, MixtureConfig)
        self.data = MixtureData(dcfg) if self.tokens_only else FewShotData(dcfg)
        self.model = TinyModel(model_config(self.cfg), seeds=self.seeds)
        self.model.module.train()
        opt_cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.module.parameters(), lr=float(t["lr"]), betas=tuple(t["betas"]),
                           eps=float(t["eps"]), weight_decay=float(t["weight_decay"]), fused=True)
        self.B = int(t["batch_size"])
        self.total_steps = int(math.ceil(int(t["sequences"]) / self.B))
        self.gens = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self.clamps = Clamps(self.cfg["clamp"], self.model, self.out)
        self._make_eval_sets()
        self.last_layer = self.model.n_layers - 1

    # ------------------------------------------------------------------ run folder
    def member_dir(self, r: int) -> Path:
        return self.out if self.R == 1 else self.out / f"seed_{self.seeds[r]}"

    def _check_run_dir(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_file = self.out / "config.json"
        new = json.loads(json.dumps(self.cfg))
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            if old != new:
                diff = _diff_keys(old, new)
                raise IclscopeError(f"{self.out} holds a run of a different config (differs in: {', '.join(diff)}); "
                                    f"nothing was changed there: choose another --out")
        else:
            cfg_file.write_text(json.dumps(new, indent=2))

    def _make_eval_sets(self) -> None:
        g = torch.Generator().manual_seed(10_007)
        n = int(self.cfg["eval"]["batch"])
        L = int(self.cfg["eval"]["induction_len"])
        if self.tokens_only:
            self.eval_sets = {c: _tile(self.data.condition(c, n, g), self.R) for c in MIXTURE_CONDITIONS}
            self.train_eval = _tile(self.data.sample(n, g), self.R)  # the training mixture, for train_eval_loss
            ids = repeated_random_tokens(min(n, 128), L, self.data.vocab_size, g, bos_id=BOS, min_token=WORD_OFFSET)
            self.rep_inputs, self.rep_ids = {"tokens": torch.cat([ids] * self.R)}, torch.cat([ids] * self.R)
            return
        self.eval_sets = {s: _tile(self.data.sample(n, s, g), self.R) for s in SPLITS}
        inputs, ids = repeated_vectors(self.data, min(n, 128), L, g)
        self.rep_inputs = {k: torch.cat([v] * self.R) for k, v in inputs.items()}
        self.rep_ids = torch.cat([ids] * self.R)

    # ------------------------------------------------------------------ steps
    def loss(self, batch) -> torch.Tensor:
        """Each member's mean cross-entropy: (R,). Their sum trains every member on its own.
        Few-shot data: at the query. Token data: at the positions of ``batch.loss_mask``."""
        if self.tokens_only:
            return self._token_loss(batch)
        logits = self.model.run(batch, interventions=self.clamps.for_batch(batch))[0][:, -1]
        return F.cross_entropy(logits.float(), batch.target, reduction="none").view(self.R, -1).mean(1)

    def _token_loss(self, batch) -> torch.Tensor:
        """(R,) masked next-token cross-entropy of a TokenBatch."""
        logits = self.model.run({"tokens": batch.tokens})[0]  # (R*B, T, V)
        ce = F.cross_entropy(logits.float().transpose(1, 2), batch.masked_targets(), ignore_index=-1,
                             reduction="none")  # (R*B, T)
        mask = batch.loss_mask.float()
        return (ce * mask).view(self.R, -1).sum(1) / mask.view(self.R, -1).sum(1).clamp(min=1)

    def _sample_one(self, g):
        return self.data.sample(self.B, g) if self.tokens_only else self.data.sample(self.B, "train", g)

    def sample(self):
        return _cat([self._sample_one(g) for g in self.gens]) if self.R > 1 else self._sample_one(self.gens[0])

    @torch.no_grad()
    def evaluate(self) -> list[dict]:
        """Measures per member: loss/accuracy per split, induction strength of last-layer heads,
        previous-token and induction scores of every head on repeated random exemplars."""
        from .scores.attention import attention_scores, prev_token_targets
        from .patterns import induction_targets

        was = self.model.module.training
        self.model.module.eval()
        ctx = self.model.intervene(self.clamps.static) if (self.cfg["eval"]["clamps"] and self.clamps.static) \
            else _null()
        out = [dict() for _ in range(self.R)]
        with ctx:
            if self.tokens_only:
                tl = self._token_loss(self.train_eval)
                for r in range(self.R):
                    out[r]["train_eval_loss"] = float(tl[r])
            for cond, batch in (self.eval_sets.items() if self.tokens_only else ()):
                q = self.model.run({"tokens": batch.tokens})[0][:, -1].float()
                ans = batch.answer
                loss = F.cross_entropy(q, ans, reduction="none").view(self.R, -1).mean(1)
                pred = q.argmax(-1)
                acc = (pred == ans).float().view(self.R, -1).mean(1)
                copied = (pred == batch.alt_target).float().view(self.R, -1).mean(1)
                for r in range(self.R):
                    out[r][f"{cond}_loss"] = float(loss[r])
                    out[r][f"{cond}_acc"] = float(acc[r])
                    if cond == "conflict":
                        out[r]["conflict_copy"] = float(copied[r])
            for split, batch in (() if self.tokens_only else self.eval_sets.items()):
                extra = self.clamps.for_batch(batch) if self.cfg["eval"]["clamps"] else []
                # patterns feed the induction-strength and task previous-token measures: train split only
                logits, cache = self.model.run(batch, interventions=extra,
                                               record=["pattern"] if split == "train" else None)
                q = logits[:, -1].float()
                loss = F.cross_entropy(q, batch.target, reduction="none").view(self.R, -1).mean(1)
                acc = (q.argmax(-1) == batch.target).float().view(self.R, -1).mean(1)
                name = "train_eval" if split == "train" else split  # train_loss is the running training loss
                for r in range(self.R):
                    out[r][f"{name}_loss"] = float(loss[r])
                    out[r][f"{split}_acc"] = float(acc[r])
                if split == "train":
                    # layer-0 previous-token attention on the task: from each label to the exemplar before it
                    p0 = cache.site("pattern", 0)  # (R*B, H, T, T)
                    lab = torch.arange(1, p0.shape[-1] - 1, 2)
                    task_prev = p0[:, :, lab, lab - 1].mean(-1).view(self.R, -1, p0.shape[1]).mean(1)  # (R, H)
                    for r in range(self.R):
                        for h in range(p0.shape[1]):
                            out[r][f"task_prev_L0H{h}"] = float(task_prev[r, h])
                    pat = cache.site("pattern", self.last_layer)[:, :, -1]  # (R*B, H, T): the query's row
                    rows = torch.arange(pat.shape[0])
                    to_correct = pat[rows, :, batch.correct_pos.clamp(min=0)]  # (R*B, H)
                    to_wrong = torch.stack([pat[rows, :, batch.wrong_pos[:, j].clamp(min=0)]
                                            for j in range(batch.wrong_pos.shape[1])]).mean(0)
                    valid = (batch.correct_pos >= 0).float()[:, None]
                    strength = ((to_correct - to_wrong) * valid).view(self.R, -1, pat.shape[1]).sum(1) / \
                        valid.view(self.R, -1).sum(1).clamp(min=1)[:, None]
                    for r in range(self.R):
                        for h in range(pat.shape[1]):
                            out[r][f"ind_strength_L{self.last_layer}H{h}"] = float(strength[r, h])
            for name, targets in (("prev", prev_token_targets(*self.rep_ids.shape)),
                                  ("induction", induction_targets(self.rep_ids))):
                sc = attention_scores(self.model, self.rep_inputs, targets, groups=self.R)
                sc = sc if self.R > 1 else sc[None]  # (R, L, H)
                for r in range(self.R):
                    for l in range(sc.shape[1]):
                        for h in range(sc.shape[2]):
                            out[r][f"{name}_L{l}H{h}"] = float(sc[r, l, h])
        self.model.module.train(was)
        return out

    # ------------------------------------------------------------------ state
    def _save_state(self, running: tuple[float, int]) -> None:
        tmp, final, old = self.out / "state.tmp", self.out / "state", self.out / "state.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous() for k, v in self.model.module.state_dict().items()},
                  str(tmp / "model.safetensors"))
        opt_state = {}
        params = list(self.model.module.parameters())
        for i, p in enumerate(params):
            for k, v in self.opt.state.get(p, {}).items():
                opt_state[f"{i}.{k}"] = v.detach().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        save_file(opt_state, str(tmp / "optim.safetensors"))
        meta = {"step": self.step, "running": list(running),
                "gens": [base64.b64encode(g.get_state().numpy().tobytes()).decode() for g in self.gens]}
        (tmp / "state.json").write_text(json.dumps(meta))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _load_state(self) -> tuple[float, int] | None:
        d = self.out / "state"
        if not d.exists() and (self.out / "state.old").exists():
            d = self.out / "state.old"  # killed between the two renames
        if not (d / "state.json").exists():
            return None
        meta = json.loads((d / "state.json").read_text())
        self.model.module.load_state_dict(load_file(str(d / "model.safetensors")))
        flat = load_file(str(d / "optim.safetensors"))
        params = list(self.model.module.parameters())
        for key, v in flat.items():
            i, k = key.split(".", 1)
            self.opt.state[params[int(i)]][k] = v
        for g, s in zip(self.gens, meta["gens"]):
            g.set_state(torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8))
        self.step = int(meta["step"])
        return tuple(meta["running"])

    # ------------------------------------------------------------------ loop
    def checkpoint_steps(self) -> set[int]:
        e = self.cfg["eval"]
        steps = set(range(0, self.total_steps + 1, max(1, int(e["checkpoint_every"]))))
        if e["log_checkpoints"]:
            k = 1
            while k <= self.total_steps:
                steps.add(k)
                k *= 2
        steps.add(self.total_steps)
        return steps

    def train(self) -> list[dict]:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.step = 0
        running = self._load_state() or ([0.0] * self.R, 0)
        resumed = self.step
        if resumed:
            self.log(f"resuming {self.out} at step {resumed} of {self.total_steps}")
        e = self.cfg["eval"]
        every = max(1, int(e["every"]))
        ckpts = self.checkpoint_steps()
        rows = [self._read_metrics(r, keep_until=resumed) for r in range(self.R)]
        writers = [SummaryWriter(str(self.member_dir(r)), purge_step=resumed + 1 if resumed else None)
                   for r in range(self.R)]
        loss_sum, loss_n = torch.tensor(running[0], dtype=torch.float64).reshape(-1).expand(self.R).clone(), running[1]
        t0 = time.time()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=None if self.progress else True, unit="step",
                   desc=self.cfg.get("name", "train"), dynamic_ncols=True, mininterval=1.0)
        try:
            with self.model.intervene(self.clamps.static):
                if self.step == 0:
                    self._evaluate_and_log(rows, writers, None, ckpts)
                    self._save_state(([0.0] * self.R, 0))
                while self.step < self.total_steps:
                    batch = self.sample()
                    losses = self.loss(batch)
                    self.opt.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    self.opt.step()
                    self.step += 1
                    loss_sum += losses.detach()
                    loss_n += 1
                    if self.step % every == 0 or self.step == self.total_steps or self.step in ckpts:
                        train_loss = (loss_sum / max(loss_n, 1)).tolist()  # per member
                        if self.step % every == 0 or self.step == self.total_steps:
                            self._evaluate_and_log(rows, writers, train_loss, ckpts)
                            loss_sum, loss_n = torch.zeros(self.R, dtype=torch.float64), 0
                        elif self.step in ckpts:
                            self._save_checkpoints()
                        self._save_state((loss_sum.tolist(), loss_n))
                        bar.set_postfix(loss=f"{sum(train_loss) / self.R:.4f}")
                    bar.update(1)
        finally:
            bar.close()
            for w in writers:
                w.close()
        if self.step >= self.total_steps and not (self.out / "final" / "model.safetensors").exists():
            # the whole trained ensemble (member r = seed r), e.g. a frozen source for Graft clamps
            self.model.save(self.out / "final", extra={"seeds": self.seeds, "step": self.step,
                                                       **({"token_layout": token_layout(self.cfg)} if self.tokens_only else {})})
        summaries = [self._summarize(r, rows[r], time.time() - t0, resumed) for r in range(self.R)]
        return summaries

    def _evaluate_and_log(self, rows, writers, train_loss, ckpts) -> None:
        measures = self.evaluate()
        for r in range(self.R):
            row = {"step": self.step, "sequences": self.step * self.B,
                   "train_loss": train_loss[r] if train_loss is not None else measures[r]["train_eval_loss"],
                   **measures[r]}
            rows[r].append(row)
            self._append_metrics(r, row)
            for k, v in row.items():
                if k not in ("step", "sequences") and v is not None and math.isfinite(v):
                    writers[r].add_scalar(k, v, self.step)
            writers[r].flush()
        if self.step in ckpts:
            self._save_checkpoints()

    def _save_checkpoints(self) -> None:
        for r in range(self.R):
            m = self.model if self.R == 1 else self.model.member(r)
            m.save(self.member_dir(r) / "checkpoints" / f"step_{self.step:07d}",
                   extra={"step": self.step, "sequences": self.step * self.B, "seed": self.seeds[r],
                          "train_config": self.cfg, **({"token_layout": token_layout(self.cfg)}
                                                       if self.tokens_only else {})})

    def _metrics_path(self, r: int) -> Path:
        return self.member_dir(r) / "metrics.csv"

    def _append_metrics(self, r: int, row: dict) -> None:
        p = self._metrics_path(r)
        p.parent.mkdir(parents=True, exist_ok=True)
        new = not p.exists() or p.stat().st_size == 0
        with open(p, "a") as f:
            if new:
                f.write(",".join(row) + "\n")
            f.write(",".join(repr(v) if isinstance(v, float) else str(v) for v in row.values()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _read_metrics(self, r: int, keep_until: int) -> list[dict]:
        """Rows up to the resumed step; later rows (written after the last saved state) are dropped and
        will be recomputed identically, so none is lost or duplicated."""
        p = self._metrics_path(r)
        if not p.exists() or p.stat().st_size == 0:
            return []
        df = pd.read_csv(p)
        df = df[df.step <= keep_until] if keep_until else df.iloc[0:0]
        tmp = p.with_suffix(".csv.tmp")
        df.to_csv(tmp, index=False) if len(df) else tmp.write_text("")
        tmp.replace(p)
        return df.to_dict("records")

    def _summarize(self, r: int, rows: list[dict], seconds: float, resumed: int) -> dict:
        df = pd.DataFrame(rows)
        last = df.iloc[-1].to_dict()
        thr = self.cfg["eval"]["phase_threshold"]
        phase = detect_phase_change(df.sequences, df.train_loss, df.step, None if self.tokens_only else thr)
        strengths = {k: v for k, v in last.items() if k.startswith("ind_strength_")}
        summary = {"seed": self.seeds[r], "steps": int(last["step"]), "sequences": int(last["sequences"]),
                   "final": {k: v for k, v in last.items() if k.endswith(("_loss", "_acc"))},
                   "induction_strength": strengths,
                   "heads_strength_above_0.3": int(sum(v > 0.3 for v in strengths.values())),
                   "phase_change": phase, "seconds_this_session": round(seconds, 1), "resumed_from_step": resumed,
                   "ensemble_size": self.R}
        p = self.member_dir(r) / "summary.json"
        p.write_text(json.dumps(summary, indent=2))
        return summary


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def train(cfg: dict, out: str | Path, progress: bool = True, log=print) -> list[dict]:
    """Train ``cfg`` into ``out`` (resuming if a state is there). Returns one summary per seed."""
    return Trainer(cfg, out, progress=progress, log=log).train()
