"""The schema of a study file (``iclscope study STUDY.toml``): which models, which tasks, which protocol.

    [[model]]                       # one entry per model; a model with revisions is a training run
    spec = "EleutherAI/pythia-70m"  # hub name, local folder, or random:<family>[:options]
    revisions = ["step1000", "step143000"]   # optional; the last one is the model's final checkpoint
    dtype = "float16"               # optional: float32 (default), float16, bfloat16
    label = "pythia-70m"            # optional; names the model's folders and its column in the comparison

    [tasks]                         # optional; without it: iclscope's built-in synthetic token tasks
    folders = ["tasks/"]            # Todd-format task folders
    score = ["antonym", ...]        # optional: the tasks the FV scores come from ...
    eval = ["capitalize", ...]      # ... and the tasks the ablation study evaluates on

    [protocol]                      # the atlas settings (defaults: the study's)
    k = 10
    n_clean = 100
    n_corrupt = 25
    n_eval = 50
    fractions = [0.0, 0.01, 0.03, 0.05, 0.07, 0.09, 0.15, 0.20]
    how = "mean"                    # or "zero"
    positions = "final"             # or "all"
    random_seeds = 5
    seed = 0

Every problem is one IclscopeError line naming the key (``model[2].revisions``), the value and what is
allowed; an unknown key names the nearest valid one. No torch import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import IclscopeError
from .config import _check as _config_check, _show, _unknown as _config_unknown

SECTIONS = ("model", "tasks", "protocol")
DTYPES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16", "float64")
DEFAULT_FRACTIONS = (0.0, 0.01, 0.03, 0.05, 0.07, 0.09, 0.15, 0.20)   # iclscope.experiments.atlas.FRACTIONS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelEntry(_Strict):
    spec: str = Field(description="a hub name, a local model folder, or random:<family>[:options] (a string)")
    revisions: Optional[list[str]] = Field(None, description="a non-empty list of distinct revision names, e.g. "
                                                             "[\"step1000\", \"step143000\"]")
    dtype: Optional[str] = Field(None, description=f"one of {', '.join(DTYPES)}")
    label: Optional[str] = Field(None, description="a non-empty string")

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty")
        return v

    @field_validator("revisions")
    @classmethod
    def _revisions(cls, v):
        if v is not None and (not v or len(set(v)) != len(v) or any(not r.strip() for r in v)):
            raise ValueError("bad revisions")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v):
        if v is not None and v not in DTYPES:
            raise ValueError("bad dtype")
        return v

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        if v is not None and not v.strip():
            raise ValueError("empty")
        return v

    @property
    def name(self) -> str:
        """The label, or one made from the spec (``EleutherAI/pythia-70m`` -> ``pythia-70m``)."""
        if self.label:
            return self.label
        if self.spec.startswith("random:"):
            return self.spec.replace(":", "-").replace(",", "-")
        return Path(self.spec.rstrip("/")).name or self.spec


class TasksSection(_Strict):
    folders: list[str] = Field(default_factory=list, description="a list of task folders (strings)")
    score: Optional[list[str]] = Field(None, description="a non-empty list of task names")
    eval: Optional[list[str]] = Field(None, description="a non-empty list of task names")

    @field_validator("score", "eval")
    @classmethod
    def _names(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("bad names")
        return v


class ProtocolSection(_Strict):
    k: Optional[int] = Field(None, ge=1, description="a positive integer (demonstrations per prompt)")
    n_clean: int = Field(100, ge=1, description="a positive integer")
    n_corrupt: int = Field(25, ge=1, description="a positive integer")
    n_eval: int = Field(50, ge=1, description="a positive integer")
    fractions: list[float] = Field(list(DEFAULT_FRACTIONS), description="a non-empty list of fractions in [0, 1]")
    how: Literal["mean", "zero"] = Field("mean", description="\"mean\" or \"zero\"")
    positions: Literal["final", "all"] = Field("final", description="\"final\" or \"all\"")
    random_seeds: int = Field(5, ge=0, description="a non-negative integer")
    seed: int = Field(0, ge=0, description="a non-negative integer")

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @field_validator("fractions", mode="before")
    @classmethod
    def _fractions(cls, v):
        if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                   or not 0 <= x <= 1 for x in v):
            raise ValueError("bad fractions")
        return [float(x) for x in v]

    @field_validator("k", "n_clean", "n_corrupt", "n_eval", "random_seeds", "seed", mode="before")
    @classmethod
    def _int(cls, v):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError("not an integer")
        return v


def _unknown(key: str, prefix: str, known) -> IclscopeError:
    return _config_unknown(key, prefix, known, "study")


def _check(model: type[BaseModel], raw: Any, prefix: str) -> BaseModel:
    """Validate one table of a study file (the config schema's checker: same one-line messages)."""
    return _config_check(model, raw, prefix, what="study")


class Study(BaseModel):
    """A validated study: ``models`` (ModelEntry, labels unique), ``tasks``, ``protocol``."""

    model_config = ConfigDict(frozen=True)
    models: tuple[ModelEntry, ...]
    tasks: TasksSection
    protocol: ProtocolSection

    def atlas_kwargs(self) -> dict:
        """The protocol as keyword arguments of ``run_atlas``."""
        p = self.protocol
        return {"k": p.k, "n_clean": p.n_clean, "n_corrupt": p.n_corrupt, "n_eval": p.n_eval,
                "fractions": tuple(p.fractions), "how": p.how, "positions": p.positions,
                "random_seeds": p.random_seeds, "seed": p.seed}

    def to_json(self) -> dict:
        return {"model": [m.model_dump(exclude_none=True) for m in self.models],
                "tasks": self.tasks.model_dump(exclude_none=True), "protocol": self.protocol.model_dump()}


def validate_study(raw: Any) -> Study:
    """Check a parsed STUDY.toml; one IclscopeError line on the first problem."""
    if not isinstance(raw, dict):
        raise IclscopeError(f"study = {_show(raw)}: expected a table with [[model]], [tasks], [protocol]")
    for key in raw:
        if key not in SECTIONS:
            raise _unknown(key, "", SECTIONS)
    entries = raw.get("model")
    if entries is None:
        raise IclscopeError("the study has no [[model]] entry: add one per model (spec = \"...\")")
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise IclscopeError(f"model = {_show(entries)}: expected [[model]] tables")
    models = tuple(_check(ModelEntry, e, f"model[{i}].") for i, e in enumerate(entries))
    seen: dict[str, int] = {}
    for i, m in enumerate(models):
        if m.revisions and m.spec.startswith("random:"):
            raise IclscopeError(f"model[{i}].revisions = {_show(m.revisions)}: a random: model has no revisions; "
                                f"revisions name checkpoints of a hub model or local repository")
        if m.name in seen:
            raise IclscopeError(f"model[{i}].label = {_show(m.name)}: model[{seen[m.name]}] has the same label; "
                                f"give each model its own label")
        seen[m.name] = i
    tasks = _check(TasksSection, raw.get("tasks", {}), "tasks.")
    if (tasks.score is None) != (tasks.eval is None):
        raise IclscopeError("tasks.score and tasks.eval go together: give both lists, or neither "
                            "(then every task of the folders is used, split as the atlas does)")
    if tasks.score is not None and not tasks.folders:
        raise IclscopeError("tasks.score / tasks.eval need tasks.folders (the built-in synthetic token tasks are "
                            "chosen per model)")
    if tasks.score is not None and set(tasks.score) & set(tasks.eval):
        both = sorted(set(tasks.score) & set(tasks.eval))
        raise IclscopeError(f"tasks.eval = {_show(tasks.eval)}: {', '.join(both)} also in tasks.score; the "
                            f"scoring and evaluation tasks are disjoint")
    protocol = _check(ProtocolSection, raw.get("protocol", {}), "protocol.")
    return Study(models=models, tasks=tasks, protocol=protocol)


def load_study(path: str | Path) -> Study:
    """Read and validate a STUDY.toml file."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise IclscopeError(f"cannot read the study file {path}: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise IclscopeError(f"{path}: not valid TOML ({e})") from None
    return validate_study(raw)
