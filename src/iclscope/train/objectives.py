"""What does a run learn, and how is it measured? One objective class per ``data.kind``.

An objective owns its data: building it, sampling training batches, the per-member training loss, its
evaluation sets and measures (the metrics.csv columns), the token layout saved with checkpoints, which
batch-built clamp patterns it supports and its phase-change threshold. The trainer knows none of this.
Adding a data kind is one new ``Objective`` subclass and one line in ``OBJECTIVES``.

Ensembles: with R members every batch holds R blocks of rows (member r = rows r*B .. (r+1)*B - 1), and
every loss and measure is per member, (R,) or a list of R dicts.
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn.functional as F

from ..data.mixture import BOS, CONDITIONS as MIXTURE_CONDITIONS, SEP, WORD_OFFSET, MixtureConfig, MixtureData
from ..data.synthetic import SPLITS, FewShotConfig, FewShotData, repeated_random_tokens
from ..models.tiny import shared_columns
from ..readout import answer_correct, answer_loss, induction_strength, per_member_mean

EVAL_SEED = 10_007  # the generator of every evaluation set: the same sets at every evaluation and run


def concat_batches(batches: list):
    """One batch of the same dataclass type, its tensors concatenated along the batch axis."""
    cls = type(batches[0])
    return cls(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)})


def tile(batch, R: int):
    """The same batch for each of R ensemble members: (R*B, ...)."""
    return concat_batches([batch] * R)


def repeated_vectors(data: FewShotData, n: int, length: int, g: torch.Generator) -> tuple[dict, torch.Tensor]:
    """Repeated random exemplar sequences [v1..vL, v1..vL] for induction / previous-token scores of a
    vector-input model. Returns (inputs for model.run, ids (n, 2L) identifying each vector)."""
    C, E, _ = data.features.shape
    ids = torch.rand(n, C * E, generator=g).argsort(-1)[:, :length]
    ids = torch.cat([ids, ids], 1)
    vectors = data.features.view(C * E, -1)[ids]
    inputs = {"tokens": torch.zeros_like(ids), "vectors": vectors, "vector_mask": torch.ones_like(ids, dtype=torch.bool)}
    return inputs, ids


class Objective:
    """The interface (and the shared head-score measures). Subclasses set the class attributes and
    implement the methods that raise NotImplementedError."""

    kind: str = ""  # the config's data.kind
    config_class: type = type(None)  # the dataclass of the [data] section (less its "kind")
    dynamic_patterns: frozenset = frozenset()  # clamp patterns built from its batches (``clamps.DYNAMIC_PATTERNS``)
    # runs of different vocabulary sizes may share a stack (the vocabulary padded to the largest, the padded
    # logits -inf): true when the objective reads logits only through answer_loss / answer_correct (and so
    # sees exactly each member's own softmax, cross-entropy and argmax)
    pads_vocab: bool = False

    # ---------------------------------------------------------------- from the config alone
    @classmethod
    def model_dims(cls, data_cfg) -> dict:
        """The TinyConfig fields the data fixes: {"vocab_size": ..., "d_input": ...}."""
        raise NotImplementedError

    @classmethod
    def layout(cls, data_cfg) -> dict | None:
        """Special token ids saved with checkpoints (for the atlas); None when the data has none."""
        return None

    @classmethod
    def phase_threshold(cls, eval_cfg: dict) -> float | None:
        """The loss threshold of ``detect_phase_change`` (None: its automatic one)."""
        return None

    # ---------------------------------------------------------------- a run's data
    def __init__(self, data_cfg, R: int):
        self.cfg, self.R = data_cfg, R
        self.eval_sets: dict = {}
        self.rep_inputs: dict = {}
        self.rep_ids = torch.empty(0, 0, dtype=torch.long)

    @property
    def token_layout(self) -> dict | None:
        return self.layout(self.cfg)

    def sample(self, batch_size: int, generator: torch.Generator):
        """One training batch of ``batch_size`` sequences (one member's)."""
        raise NotImplementedError

    def loss(self, model, batch, clamps=None) -> torch.Tensor:
        """(R,) each member's mean training loss on an (R*B)-row batch; their sum trains every member.
        ``clamps``: the run's ``Clamps`` (its batch-built ones apply here; the static ones are the caller's)."""
        raise NotImplementedError

    def plain_inputs(self, batch) -> tuple | None:
        """The tensors ``plain_loss`` takes for ``batch``, or None when this batch needs the full path.
        None here: the objective has no hook-free loss (the trainer then never compiles)."""
        return None

    def plain_loss(self, module, *inputs) -> torch.Tensor:
        """(R,) the training loss of ``loss`` without clamps, computed on the torch module directly: no
        interventions, no Python between ops, so that ``torch.compile`` takes it as one graph (the trainer's
        compiled step, ``train.compile``). The same numbers as ``loss(model, batch)`` up to float rounding."""
        raise NotImplementedError

    def build_eval_sets(self, n: int, induction_len: int, g: torch.Generator) -> None:
        """The fixed evaluation batches (n sequences each, tiled over members) and the repeated random
        sequences (``rep_inputs``, ``rep_ids``) of the previous-token and induction head scores."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model, clamps=None) -> list[dict]:
        """One dict of measures per member: the data's own (``_measure``), then the previous-token and
        induction score of every head on repeated random sequences (prev_LlHh, induction_LlHh).
        ``clamps``: whose batch-built clamps apply (None: none)."""
        out = [dict() for _ in range(self.R)]
        self._measure(model, clamps, out)
        self._head_scores(model, out)
        return out

    def _measure(self, model, clamps, out: list[dict]) -> None:
        raise NotImplementedError

    def _head_scores(self, model, out: list[dict]) -> None:
        from ..patterns import induction_targets
        from ..scores.attention import attention_scores, prev_token_targets

        for name, targets in (("prev", prev_token_targets(*self.rep_ids.shape)),
                              ("induction", induction_targets(self.rep_ids))):
            sc = attention_scores(model, self.rep_inputs, targets, groups=self.R)
            sc = sc if self.R > 1 else sc[None]  # (R, L, H)
            for r in range(self.R):
                for l in range(sc.shape[1]):
                    for h in range(sc.shape[2]):
                        out[r][f"{name}_L{l}H{h}"] = float(sc[r, l, h])


class FewShotObjective(Objective):
    """Few-shot classification of exemplar vectors (``data.synthetic``): the loss is at the query.

    Measures: train_eval_loss, {split}_loss and {split}_acc for the held-out splits, train_acc,
    task_prev_L0H{h} (layer-0 attention from each context label to its exemplar) and
    ind_strength_L{last}H{h} (``readout.induction_strength`` of the last layer's query rows)."""

    kind = "fewshot"
    config_class = FewShotConfig
    dynamic_patterns = frozenset({"label_induction"})
    pads_vocab = True  # logits only through answer_loss / answer_correct: a labels sweep stacks

    @classmethod
    def model_dims(cls, data_cfg: FewShotConfig) -> dict:
        return {"vocab_size": data_cfg.n_labels, "d_input": data_cfg.dim}

    @classmethod
    def phase_threshold(cls, eval_cfg: dict) -> float | None:
        return eval_cfg["phase_threshold"]

    def __init__(self, data_cfg: FewShotConfig, R: int):
        super().__init__(data_cfg, R)
        self.data = FewShotData(data_cfg)

    def sample(self, batch_size, generator):
        return self.data.sample(batch_size, "train", generator)

    def loss(self, model, batch, clamps=None):
        logits = model.run(batch, interventions=clamps.for_batch(batch) if clamps else [], final_only=True)[0][:, -1]
        return per_member_mean(answer_loss(logits, batch.target), self.R)

    def plain_inputs(self, batch):
        cols = shared_columns(batch.vector_mask)  # the exemplar positions (the same in every row)
        return None if cols is None else (batch.tokens, batch.vectors, cols, batch.target)

    def plain_loss(self, module, tokens, vectors, cols, target):
        logits = module(tokens, vectors, final_only=True, vector_cols=cols)[:, -1]
        return per_member_mean(answer_loss(logits, target), self.R)

    def build_eval_sets(self, n, induction_len, g):
        self.eval_sets = {s: tile(self.data.sample(n, s, g), self.R) for s in SPLITS}
        inputs, ids = repeated_vectors(self.data, min(n, 128), induction_len, g)
        self.rep_inputs = {k: torch.cat([v] * self.R) for k, v in inputs.items()}
        self.rep_ids = torch.cat([ids] * self.R)

    def _measure(self, model, clamps, out):
        R, last = self.R, model.n_layers - 1
        for split, batch in self.eval_sets.items():
            extra = clamps.for_batch(batch) if clamps else []
            # patterns feed the induction-strength and task previous-token measures: train split only
            logits, cache = model.run(batch, interventions=extra, record=["pattern"] if split == "train" else None,
                                      final_only=split != "train")
            q = logits[:, -1].float()
            loss = per_member_mean(answer_loss(q, batch.target), R)
            acc = per_member_mean(answer_correct(q, batch.target).float(), R)
            name = "train_eval" if split == "train" else split  # train_loss is the running training loss
            for r in range(R):
                out[r][f"{name}_loss"] = float(loss[r])
                out[r][f"{split}_acc"] = float(acc[r])
            if split != "train":
                continue
            # layer-0 previous-token attention on the task: from each label to the exemplar before it
            p0 = cache.site("pattern", 0)  # (R*B, H, T, T)
            lab = torch.arange(1, p0.shape[-1] - 1, 2)
            task_prev = per_member_mean(p0[:, :, lab, lab - 1].mean(-1), R)  # (R, H)
            for r in range(R):
                for h in range(p0.shape[1]):
                    out[r][f"task_prev_L0H{h}"] = float(task_prev[r, h])
            pat = cache.site("pattern", last)[:, :, -1]  # (R*B, H, T): the query's row
            strength = induction_strength(pat, batch.correct_pos.clamp(min=0), batch.wrong_pos.clamp(min=0),
                                          valid=batch.correct_pos >= 0, groups=R)  # (R, H)
            for r in range(R):
                for h in range(pat.shape[1]):
                    out[r][f"ind_strength_L{last}H{h}"] = float(strength[r, h])


class MixtureObjective(Objective):
    """The multi-task token mixture (``data.mixture``): masked next-token loss over whole sequences.

    Measures: train_eval_loss (on a fixed batch of the training mixture), {condition}_loss and
    {condition}_acc at the final position for each of ``data.mixture.CONDITIONS``, and conflict_copy
    (how often the top token is the copied, wrong, word)."""

    kind = "icl_mixture"
    config_class = MixtureConfig

    @classmethod
    def model_dims(cls, data_cfg: MixtureConfig) -> dict:
        return {"vocab_size": data_cfg.vocab_size, "d_input": 0}

    @classmethod
    def layout(cls, data_cfg: MixtureConfig) -> dict:
        return {"sep_id": SEP, "bos_id": BOS, "pad_id": SEP, "word_offset": WORD_OFFSET, "n_words": data_cfg.n_words,
                "n_tasks": data_cfg.n_tasks, "task_seed": data_cfg.task_seed, "k": data_cfg.k}

    def __init__(self, data_cfg: MixtureConfig, R: int):
        super().__init__(data_cfg, R)
        self.data = MixtureData(data_cfg)

    def sample(self, batch_size, generator):
        return self.data.sample(batch_size, generator)

    def loss(self, model, batch, clamps=None):
        """(R,) masked next-token cross-entropy of a TokenBatch (at the positions of ``batch.loss_mask``)."""
        return self._masked_loss(model.run({"tokens": batch.tokens})[0], batch.masked_targets(), batch.loss_mask)

    def plain_inputs(self, batch):
        return batch.tokens, batch.masked_targets(), batch.loss_mask

    def plain_loss(self, module, tokens, targets, loss_mask):
        return self._masked_loss(module(tokens), targets, loss_mask)

    def _masked_loss(self, logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """logits (R*B, T, V), targets (R*B, T) (-1: no loss), loss_mask (R*B, T) -> (R,)."""
        ce = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-1, reduction="none")  # (R*B, T)
        mask = loss_mask.float()
        return (ce * mask).view(self.R, -1).sum(1) / mask.view(self.R, -1).sum(1).clamp(min=1)

    def build_eval_sets(self, n, induction_len, g):
        self.eval_sets = {c: tile(self.data.condition(c, n, g), self.R) for c in MIXTURE_CONDITIONS}
        self.train_eval = tile(self.data.sample(n, g), self.R)  # the training mixture, for train_eval_loss
        ids = repeated_random_tokens(min(n, 128), induction_len, self.data.vocab_size, g, bos_id=BOS,
                                     min_token=WORD_OFFSET)
        self.rep_inputs, self.rep_ids = {"tokens": torch.cat([ids] * self.R)}, torch.cat([ids] * self.R)

    def _measure(self, model, clamps, out):
        R = self.R
        tl = self.loss(model, self.train_eval)
        for r in range(R):
            out[r]["train_eval_loss"] = float(tl[r])
        for cond, batch in self.eval_sets.items():
            q = model.run({"tokens": batch.tokens}, final_only=True)[0][:, -1].float()
            loss = per_member_mean(answer_loss(q, batch.answer), R)
            acc = per_member_mean(answer_correct(q, batch.answer).float(), R)
            copied = per_member_mean(answer_correct(q, batch.alt_target).float(), R)
            for r in range(R):
                out[r][f"{cond}_loss"] = float(loss[r])
                out[r][f"{cond}_acc"] = float(acc[r])
                if cond == "conflict":
                    out[r]["conflict_copy"] = float(copied[r])


def stack_objectives(parts: list[Objective]) -> Objective:
    """One objective over the members of several runs' objectives (one kind; their batches and evaluation
    sets of the same shapes): member j of the result is member j of the parts laid end to end. Its
    evaluation sets are the parts' own, concatenated (each run keeps its own data: labels, classes,
    burstiness), so every member is measured exactly as if it trained alone; ``member_objectives`` lists,
    per member, the part that samples its training batches. One part is returned as it is."""
    import copy

    if len({type(p) for p in parts}) != 1:
        raise ValueError("objectives of different data kinds cannot be stacked")
    if len(parts) == 1:
        out = parts[0]
        out.member_objectives = [out] * out.R
        return out
    out = copy.copy(parts[0])
    out.R = sum(p.R for p in parts)
    out.eval_sets = {k: concat_batches([p.eval_sets[k] for p in parts]) for k in parts[0].eval_sets}
    out.rep_inputs = {k: torch.cat([p.rep_inputs[k] for p in parts]) for k in parts[0].rep_inputs}
    out.rep_ids = torch.cat([p.rep_ids for p in parts])
    if hasattr(parts[0], "train_eval"):
        out.train_eval = concat_batches([p.train_eval for p in parts])
    out.member_objectives = [p for p in parts for _ in range(p.R)]
    return out


# data.kind -> objective class. A new data kind: one Objective subclass and one line here.
OBJECTIVES: dict[str, type[Objective]] = {o.kind: o for o in (FewShotObjective, MixtureObjective)}
