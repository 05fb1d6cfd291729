"""Synthetic data: few-shot classification sequences and token sequences for head scores.

Two families of sequences, all seeded, streamed (nothing is stored but a small feature bank) and
plain torch on the CPU:

A. Few-shot classification (Singh et al. 2024, "What needs to go right for an induction head"):
   ``P`` exemplar-label pairs, then a query exemplar; the model must output the label that the
   query's class carries *in this sequence*. Exemplars are feature vectors (D floats) from a bank of
   shape (classes, exemplars, D): either real features read from HDF5 (the study used 512-d
   ResNet-18 features of Omniglot characters, 1623 x 5 x 512) or a generated stand-in with tunable
   structure (a Gaussian-mixture in the style of Reddy 2023, plus a shared component and a
   low-rank class subspace, because real features are far from isotropic).
   Labels are remapped in every sequence, so the task can only be solved in context: chance loss is
   ln P for a model that only knows the answer is one of the context labels (ln 2 = 0.693 for P=2).

   >>> data = FewShotData(FewShotConfig())
   >>> batch = data.sample(32, "train", torch.Generator().manual_seed(0))
   >>> batch.vectors.shape, batch.tokens.shape, batch.target.shape
   (torch.Size([32, 5, 512]), torch.Size([32, 5]), torch.Size([32]))

B. Token sequences for induction / previous-token scores: ``[BOS, r1..rL, r1..rL]``
   (:func:`repeated_random_tokens`), random sequences with one repeated segment of random length at
   a random position (:func:`random_segment_repeats`: a purely positional head cannot score as an
   induction head on these), plain random tokens, and :func:`induction_targets` (where an ideal
   induction head attends).

Shape letters: B batch, T sequence length (T = 2P+1 for few-shot sequences), P context pairs,
N labels, D feature dimension, C classes, E exemplars per class.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import IclscopeError
from ..patterns import induction_targets, previous_token_pattern

__all__ = [
    "SPLITS", "FewShotConfig", "FewShotBatch", "FewShotData", "generate_features", "load_features_h5",
    "previous_token_pattern", "induction_targets", "random_tokens", "repeated_random_tokens",
    "random_segment_repeats",
]

SPLITS = ("train", "heldout_classes", "heldout_exemplars", "heldout_labels")
"""The splits :meth:`FewShotData.sample` knows."""

_MAX_TABLE_ROWS = 200_000  # larger lookup tables fall back to (slower) on-the-fly sampling
_MAX_CONTEXT_PAIRS = 8  # context orders are a lookup table of P! rows
_BIG = 2**62  # raw random integers; reduced modulo small table sizes (bias < 1e-13)


# ----------------------------------------------------------------------------------------------------
# A. Few-shot classification
# ----------------------------------------------------------------------------------------------------


@dataclass
class FewShotConfig:
    """What few-shot sequences look like and where their exemplar features come from.

    Sequence structure (defaults: the reference setup of Singh et al. 2024):

    - n_classes: training classes (50).
    - n_heldout_classes: classes never used in training, for the "heldout_classes" split (100).
    - exemplars_per_class: exemplars per class used in training (1: the query is then the very same
      vector as its context exemplar).
    - n_heldout_exemplars: further exemplars per class, for the "heldout_exemplars" split (4).
    - dim: feature dimension D (512).
    - context_pairs: P, exemplar-label pairs before the query (2; at most 8). T = 2P+1.
    - n_labels: N, the label pool (5). Each sequence draws distinct labels from it.
    - heldout_label_pairs: how many of the N(N-1)/2 unordered label pairs never occur together in
      training; they make the "heldout_labels" split (2: with N=5, 8 of 10 pairs train). Which
      pairs are held out is drawn from `seed`.
    - bursty: probability that the context holds an exemplar of the query's class (1.0). The rest of
      the context are distractors, one exemplar each of distinct other classes; with P=2 the
      default is exactly "one exemplar of the query's class, one distractor, shuffled". In a
      non-bursty sequence the query's class gets a label too (distinct from the context labels), so
      its target cannot be inferred: such sequences are noise for a purely in-context learner.

    Stand-in features (used when `features_path` is None). Every generated exemplar is

        x[c, e] = shared_scale * m + prototype_scale * (mu_c + exemplar_noise * eta[c, e]) / sqrt(1 + exemplar_noise**2)

    with m ~ N(0, I_D) one vector shared by all classes, mu_c ~ N(0, (D/r) U U^T) a class prototype in a
    random r-dimensional subspace U (r = class_rank; E|mu_c|^2 = D), and eta ~ N(0, I_D) exemplar
    noise (the item model of Reddy 2023). Coordinates are O(1) and norms ~ sqrt(D) * (overall scale),
    about the size of ResNet-18 pooled features (norm ~20-30).

    - shared_scale: size of the component every class shares (1.0). Real network features have a large
      common mean; it dominates dot products at initialisation, so matching a query to its context
      exemplar is not free from the start.
    - prototype_scale: size of the class-specific part (0.5). With the defaults the cosine between
      two classes is about shared^2 / (shared^2 + prototype^2) = 0.8 ("classes close to each other"),
      and between two exemplars of one class about (1 + 0.25/1.25) / 1.25 = 0.96.
    - class_rank: r, dimension of the subspace that holds the prototypes (32; 0 or >= dim: full dimension).
      With r below n_classes the training classes span the whole class subspace, so held-out
      classes can generalise; with r = D (isotropic prototypes, as in the reference's own stand-in)
      50 training classes span only 50 of 512 directions and held-out classes do not generalise.
    - exemplar_noise: eps, within-class spread (0.5). Irrelevant for training when
      exemplars_per_class = 1; sets how hard the "heldout_exemplars" split is.
    - normalize: L2-normalise every feature vector to norm 1 (False). Applies to file features too.
    - features_path: an HDF5 file holding a (classes, exemplars, D) array (see
      :func:`load_features_h5`); it replaces the generated features. Its first
      n_classes classes train, the next n_heldout_classes are held out; within a class the first
      exemplars_per_class exemplars train and the next n_heldout_exemplars are held out. Shuffle the
      file's classes beforehand if its order is meaningful (e.g. grouped by alphabet).
    - features_dataset: the dataset's name inside that file (None: the file's only dataset).
    - seed: seeds the generated features, the choice of held-out label pairs and the default
      sampling generator of :class:`FewShotData`.

    These defaults are "real-feature-like" guesses; the trainer's defaults are tuned separately.
    """

    n_classes: int = 50
    n_heldout_classes: int = 100
    exemplars_per_class: int = 1
    n_heldout_exemplars: int = 4
    dim: int = 512
    context_pairs: int = 2
    n_labels: int = 5
    heldout_label_pairs: int = 2
    bursty: float = 1.0
    shared_scale: float = 1.0
    prototype_scale: float = 0.5
    class_rank: int = 32
    exemplar_noise: float = 0.5
    normalize: bool = False
    features_path: Optional[str] = None
    features_dataset: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        P = self.context_pairs
        if not 1 <= P <= _MAX_CONTEXT_PAIRS:
            raise IclscopeError(f"context_pairs must be in 1..{_MAX_CONTEXT_PAIRS}, got {P}")
        if not 0.0 <= self.bursty <= 1.0:
            raise IclscopeError(f"bursty is a probability, got {self.bursty}")
        need = self.n_slots
        if self.n_labels < need:
            extra = ", plus one for the query of non-bursty sequences" if self.bursty < 1 else ""
            raise IclscopeError(f"n_labels={self.n_labels} is too few: each sequence needs {need} distinct labels "
                                f"(context_pairs={P}{extra})")
        if self.n_classes < need:
            raise IclscopeError(f"n_classes={self.n_classes} is too few: each sequence needs {need} distinct classes")
        if self.n_heldout_classes != 0 and self.n_heldout_classes < need:
            raise IclscopeError(f"n_heldout_classes={self.n_heldout_classes} must be 0 or at least {need}")
        if self.exemplars_per_class < 1 or self.n_heldout_exemplars < 0 or self.dim < 1:
            raise IclscopeError("exemplars_per_class and dim must be >= 1, n_heldout_exemplars >= 0")
        n_pairs = self.n_labels * (self.n_labels - 1) // 2
        if not 0 <= self.heldout_label_pairs < n_pairs:
            raise IclscopeError(f"heldout_label_pairs must be in 0..{n_pairs - 1} (n_labels={self.n_labels} gives "
                                f"{n_pairs} pairs), got {self.heldout_label_pairs}")
        if self.class_rank < 0:
            raise IclscopeError(f"class_rank must be >= 0 (0: full dimension), got {self.class_rank}")

    @property
    def seq_len(self) -> int:
        """T = 2P+1."""
        return 2 * self.context_pairs + 1

    @property
    def n_slots(self) -> int:
        """Distinct classes (and labels) a sequence draws: P, or P+1 when some sequences are non-bursty."""
        return self.context_pairs + (1 if self.bursty < 1 else 0)


@dataclass
class FewShotBatch:
    """A batch of few-shot sequences ``x_1 y_1 x_2 y_2 ... x_P y_P x_q`` (T = 2P+1 positions).

    Exemplar positions are 0, 2, ..., 2P (the query is at T-1 = 2P); label positions are 1, 3, ..., 2P-1.

    tokens: (B, T) int64, label ids 0..N-1 at label positions; 0 (unused) at exemplar positions.
    vectors: (B, T, D) float32, exemplar features at exemplar positions; zeros at label positions.
    vector_mask: (B, T) bool, True at exemplar positions (where `vectors` is the input).
    target: (B,) int64, the query's label in its sequence.
    correct_pos: (B,) int64, position of the context label token that follows the exemplar of the
        query's class (it equals `target`); -1 in non-bursty sequences.
    wrong_pos: (B, P-1) int64, positions of the other context label tokens, ascending; all -1 in
        non-bursty sequences.
    class_ids: (B, T) int64, the class of each exemplar (query included); -1 at label positions.
    """

    tokens: torch.Tensor
    vectors: torch.Tensor
    vector_mask: torch.Tensor
    target: torch.Tensor
    correct_pos: torch.Tensor
    wrong_pos: torch.Tensor
    class_ids: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return self.batch_size

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The inputs of ``Model.run``: tokens (B, T), vectors (B, T, D), vector_mask (B, T)."""
        return {"tokens": self.tokens, "vectors": self.vectors, "vector_mask": self.vector_mask}

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "FewShotBatch":
        """A copy with every tensor on `device`."""
        return FewShotBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                               for f in fields(self)})

    def ideal_induction_pattern(self, strength: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """Attention pattern of an ideal induction head of the given strength, for every row.

        strength: s in [0, 1], a float or a (B,) tensor. The query row (T-1) puts s on `correct_pos`
        and 1-s spread evenly over `wrong_pos` (exactly 1-s on the wrong label when P=2; induction
        strength 2s-1). When P=1 there is no wrong label and the row is one-hot on the correct one.
        In non-bursty sequences (no correct label) the query row is uniform over the P context labels.
        Every other row is the ideal previous-token pattern (row i on i-1, row 0 on itself).

        Returns (B, T, T) float32 [batch, query, key]; every row sums to 1.
        """
        B, T = self.tokens.shape
        P = (T - 1) // 2
        device = self.tokens.device
        s = torch.as_tensor(strength, dtype=torch.float32, device=device).expand(B)
        if bool(((s < 0) | (s > 1)).any()):
            raise IclscopeError(f"strength must lie in [0, 1], got {strength}")
        pattern = previous_token_pattern(T, device=device).to(torch.float32).expand(B, T, T).clone()
        has = self.correct_pos >= 0
        row = torch.zeros(B, T, device=device)
        if P == 1:
            row.scatter_(1, self.correct_pos.clamp(min=0)[:, None], 1.0)
        else:
            row.scatter_(1, self.correct_pos.clamp(min=0)[:, None], s[:, None])
            rest = ((1 - s) / (P - 1))[:, None].expand(B, P - 1)
            row.scatter_add_(1, self.wrong_pos.clamp(min=0), rest)
        uniform = torch.zeros(T, device=device)
        uniform[1:T - 1:2] = 1.0 / P
        pattern[:, T - 1] = torch.where(has[:, None], row, uniform)
        return pattern


def load_features_h5(path: Union[str, Path], dataset: Optional[str] = None, *, min_classes: int = 0,
                     min_exemplars: int = 0) -> torch.Tensor:
    """Read a (classes, exemplars, D) feature array from an HDF5 file.

    path: the file. dataset: the dataset's name (path inside the file); None uses the file's only
    dataset. min_classes / min_exemplars: how many classes / exemplars per class the caller needs.

    Returns (C, E, D) float32. Raises IclscopeError (a ValueError) naming the file and the shape found
    when the array is not 3-D or is too small, and when `dataset` is None but the file holds no dataset
    or several; naming the file and the first bad index when it holds NaN or +-inf (or values beyond
    float32's range).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise IclscopeError(f"features file {path} does not exist")
    with h5py.File(path, "r") as f:
        if dataset is None:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            if len(names) != 1:
                raise IclscopeError(f"{path} holds {len(names)} datasets ({', '.join(names) or 'none'}); "
                                    "name the one to use (features_dataset / dataset=)")
            dataset = names[0]
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise IclscopeError(f"{path} has no dataset named {dataset!r}")
        ds = f[dataset]
        if ds.ndim != 3:
            raise IclscopeError(f"{path}:{dataset} has shape {tuple(ds.shape)}; expected a 3-D array "
                                "(classes, exemplars, dim)")
        C, E, _ = ds.shape
        if C < min_classes or E < min_exemplars:
            raise IclscopeError(f"{path}:{dataset} has shape {tuple(ds.shape)}: {C} classes x {E} exemplars, "
                                f"but {min_classes} classes x {min_exemplars} exemplars are needed")
        array = ds[()]
    bank = torch.as_tensor(array, dtype=torch.float32)
    check_finite(bank, f"features file {path}:{dataset}")
    return bank


def check_finite(bank: torch.Tensor, what: str) -> None:
    """Refuse a feature bank (any shape) holding NaN or +-inf (also values that overflow float32): one
    IclscopeError line naming ``what`` and the first bad index (row-major order) and its value."""
    bad = ~torch.isfinite(bank)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        value = float(bank[idx])
        raise IclscopeError(f"{what} holds a non-finite value ({value}) at index {list(idx)}; features must be "
                            "finite numbers (fix or regenerate them)")


def generate_features(config: FewShotConfig) -> torch.Tensor:
    """The stand-in feature bank described in :class:`FewShotConfig` (before `normalize`).

    Returns (C, E, D) float32 with C = n_classes + n_heldout_classes and
    E = exemplars_per_class + n_heldout_exemplars. Deterministic in `config.seed`.
    """
    C = config.n_classes + config.n_heldout_classes
    E = config.exemplars_per_class + config.n_heldout_exemplars
    D, eps = config.dim, config.exemplar_noise
    r = min(config.class_rank, D) or D
    g = torch.Generator().manual_seed(_sub_seed(config.seed, 0))
    shared = torch.randn(D, generator=g)  # (D,)
    if r < D:
        basis, _ = torch.linalg.qr(torch.randn(D, r, generator=g, dtype=torch.float64))  # (D, r) orthonormal
        prototypes = (torch.randn(C, r, generator=g, dtype=torch.float64) @ basis.T).float() * math.sqrt(D / r)
    else:
        prototypes = torch.randn(C, D, generator=g)  # (C, D)
    noise = torch.randn(C, E, D, generator=g)  # (C, E, D)
    items = (prototypes[:, None, :] + eps * noise) / math.sqrt(1.0 + eps**2)
    return (config.shared_scale * shared + config.prototype_scale * items).contiguous()


@dataclass
class _Split:
    """Precomputed sampling state of one split (internal)."""

    name: str
    class_lo: int  # the split's classes are class_lo .. class_lo+n_classes-1
    n_classes: int
    ex_lo: int  # its exemplars are ex_lo .. ex_lo+n_ex-1 within every class
    n_ex: int
    heldout_labels: bool  # True: label sets contain a held-out pair; False: they contain none
    class_table: Optional[torch.Tensor]  # (Mc, k+2): k distinct classes, the query's class again, -1
    flat_table: Optional[torch.Tensor]  # (Mc, k+2): class_table as row offsets into the flat bank
    label_table: Optional[torch.Tensor]  # (Ml, P+2): labels per slot, padded with 0
    n_bursty_labels: int  # rows of label_table for bursty sequences (the rest: non-bursty)
    moduli: torch.Tensor  # (3 + k + 2,) moduli of the raw random integers drawn per sequence


class FewShotData:
    """The feature bank and splits of few-shot classification sequences; samples batches.

    Attributes:
        config: the FewShotConfig.
        features: (C, E, D) float32, C = n_classes + n_heldout_classes classes (training classes first),
            E = exemplars_per_class + n_heldout_exemplars (training exemplars first).
        train_label_pairs: (M, 2) int64, the unordered label pairs (a < b) allowed in training.
        heldout_label_pairs: (H, 2) int64, the held-out pairs.
        generator: the torch.Generator used by :meth:`sample` when none is given (seeded from config.seed).

    Splits (see :meth:`sample`):
        "train": training classes, training exemplars, training label pairs.
        "heldout_classes": unseen classes (all E exemplars of each), training label pairs.
        "heldout_exemplars": training classes, unseen exemplars, training label pairs.
        "heldout_labels": training classes and exemplars; every label set holds a held-out pair
            (with P=2 bursty sequences: exactly the held-out pairs, in either order).

    A sequence's context and query classes are drawn uniformly without repetition from the split's
    classes; every exemplar (query included) is drawn independently and uniformly from the split's
    exemplars of its class (with one training exemplar, query and context exemplar are identical).
    Its labels are a uniformly drawn ordered tuple of distinct labels whose unordered pairs satisfy
    the split's rule, assigned to the classes of the sequence; the context order is shuffled.
    """

    def __init__(self, config: Optional[FewShotConfig] = None):
        self.config = cfg = config or FewShotConfig()
        C = cfg.n_classes + cfg.n_heldout_classes
        E = cfg.exemplars_per_class + cfg.n_heldout_exemplars
        if cfg.features_path is not None:
            bank = load_features_h5(cfg.features_path, cfg.features_dataset, min_classes=C, min_exemplars=E)
            if bank.shape[-1] != cfg.dim:
                raise IclscopeError(f"{cfg.features_path} holds {bank.shape[-1]}-d features but the config says "
                                    f"dim={cfg.dim}; set FewShotConfig(dim={bank.shape[-1]})")
            bank = bank[:C, :E].contiguous()
        else:
            bank = generate_features(cfg)
            check_finite(bank, f"the generated features (shared_scale={cfg.shared_scale}, "
                               f"prototype_scale={cfg.prototype_scale}, exemplar_noise={cfg.exemplar_noise})")
        if cfg.normalize:
            bank = bank / bank.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            check_finite(bank, "the normalised features (a norm overflowed)")
        self.features = bank  # (C, E, D)
        # flat bank: E zero rows first (class "-1"), then class c's exemplar e at row (c+1)*E + e
        self._flat_bank = torch.cat([bank.new_zeros(E, cfg.dim), bank.reshape(C * E, cfg.dim)])
        self._E = E

        N, P = cfg.n_labels, cfg.context_pairs
        pairs = torch.combinations(torch.arange(N), 2)  # (N(N-1)/2, 2), lexicographic
        g = torch.Generator().manual_seed(_sub_seed(cfg.seed, 1))
        held = torch.zeros(len(pairs), dtype=torch.bool)
        held[torch.randperm(len(pairs), generator=g)[:cfg.heldout_label_pairs]] = True
        self.train_label_pairs, self.heldout_label_pairs = pairs[~held], pairs[held]
        self._heldout_pair_mask = torch.zeros(N, N, dtype=torch.bool)  # (N, N) symmetric
        self._heldout_pair_mask[pairs[held, 0], pairs[held, 1]] = True
        self._heldout_pair_mask |= self._heldout_pair_mask.T.clone()

        self._build_order_tables()
        self._label_tables = {False: self._build_label_table(False)}  # want_heldout -> (table, n_bursty_rows)
        if cfg.heldout_label_pairs > 0:
            self._label_tables[True] = self._build_label_table(True)
        self._splits = {}
        ex_tr, ex_ho = cfg.exemplars_per_class, cfg.n_heldout_exemplars
        for name, class_lo, n_classes, ex_lo, n_ex, want in (
                ("train", 0, cfg.n_classes, 0, ex_tr, False),
                ("heldout_classes", cfg.n_classes, cfg.n_heldout_classes, 0, E, False),
                ("heldout_exemplars", 0, cfg.n_classes, ex_tr, ex_ho, False),
                ("heldout_labels", 0, cfg.n_classes, 0, ex_tr, True)):
            if n_classes > 0 and n_ex > 0 and not (want and cfg.heldout_label_pairs == 0):
                self._splits[name] = self._build_split(name, class_lo, n_classes, ex_lo, n_ex, want)
        self.generator = torch.Generator().manual_seed(_sub_seed(cfg.seed, 2))

    # ------------------------------------------------------------------------------------ public

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this config can sample (a held-out split with nothing in it is absent)."""
        return tuple(self._splits)

    def classes(self, split: str) -> torch.Tensor:
        """(n,) int64: the class ids (first index of `features`) that `split` draws from."""
        sp = self._split(split)
        return torch.arange(sp.class_lo, sp.class_lo + sp.n_classes)

    def exemplars(self, split: str) -> torch.Tensor:
        """(n,) int64: the exemplar ids (second index of `features`) that `split` draws from."""
        sp = self._split(split)
        return torch.arange(sp.ex_lo, sp.ex_lo + sp.n_ex)

    def sample(self, batch_size: int, split: str = "train",
               generator: Optional[torch.Generator] = None) -> FewShotBatch:
        """Draw `batch_size` independent sequences from `split` (one of :data:`SPLITS`).

        generator: a CPU torch.Generator (None: `self.generator`). The same generator state and the
        same config give the same batch. Returns a CPU :class:`FewShotBatch`; move it with `.to(device)`.
        """
        sp = self._split(split)
        g = self.generator if generator is None else generator
        cfg = self.config
        B, P, k = batch_size, cfg.context_pairs, cfg.n_slots

        u = torch.randint(0, _BIG, (B, sp.moduli.numel()), generator=g) % sp.moduli  # (B, 3+k+2)
        # classes of the slots: [slot 0 = the query's class, distractors..., the query again, -1]
        if sp.class_table is not None:
            cls = sp.class_table[u[:, 0]]  # (B, k+2)
            flat = sp.flat_table[u[:, 0]] + u[:, 3:]  # (B, k+2) rows of the flat bank
        else:
            drawn = torch.rand(B, sp.n_classes, generator=g).topk(k, dim=1).indices + sp.class_lo  # (B, k)
            cls = torch.cat([drawn, drawn[:, :1], drawn.new_full((B, 1), -1)], dim=1)
            flat = (cls + 1) * self._E + sp.ex_lo + u[:, 3:]
        # bursty sequences show slots 0..P-1 in context, non-bursty ones slots 1..P
        if cfg.bursty >= 1:
            nonbursty = None
        elif cfg.bursty <= 0:
            nonbursty = torch.ones(B, dtype=torch.bool)
        else:
            nonbursty = torch.rand(B, generator=g) >= cfg.bursty
        labels = self._sample_labels(sp, u[:, 1], nonbursty, g)  # (B, P+2)
        layout = u[:, 2] if nonbursty is None else u[:, 2] + self._n_orders * nonbursty
        vec_src = self._vec_src[layout]  # (B, T) columns of `flat` / `cls`
        vec_idx = flat.gather(1, vec_src)  # (B, T)
        label_pos = self._label_pos[layout]  # (B, P)
        return FewShotBatch(
            tokens=labels.gather(1, self._tok_src[layout]),
            vectors=self._flat_bank.index_select(0, vec_idx.view(-1)).view(B, cfg.seq_len, cfg.dim),
            vector_mask=self._vector_mask.expand(B, -1).clone(),
            target=labels[:, 0].clone(),
            correct_pos=label_pos[:, 0].clone(),
            wrong_pos=label_pos[:, 1:].clone(),
            class_ids=cls.gather(1, vec_src),
        )

    # ------------------------------------------------------------------------------------ internals

    def _split(self, split: str) -> _Split:
        if split not in SPLITS:
            raise IclscopeError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split not in self._splits:
            raise IclscopeError(f"split {split!r} is empty in this config (n_heldout_classes, n_heldout_exemplars "
                                "or heldout_label_pairs is 0)")
        return self._splits[split]

    def _build_order_tables(self):
        """Lookup tables indexed by layout = order + P! * nonbursty (order: one of the P! context orders).

        _vec_src: (2 P!, T) which column of the (B, k+2) slot tensors each position takes.
        _tok_src: (2 P!, T) which column of the (B, P+2) label tensor each position takes.
        _label_pos: (2 P!, P) positions of [correct label, wrong labels ascending]; -1 for non-bursty.
        """
        cfg = self.config
        P, T, k = cfg.context_pairs, cfg.seq_len, cfg.n_slots
        vec_src, tok_src, label_pos = [], [], []
        for nonbursty in (0, 1):
            for order in itertools.permutations(range(P)):  # order[i]: slot shown at context index i
                slots = [o + nonbursty for o in order]
                vec = [k + 1] * T  # column k+1 is the "-1 / zero" column
                tok = [P + 1] * T  # column P+1 of the labels is 0
                for i, slot in enumerate(slots):
                    vec[2 * i], tok[2 * i + 1] = slot, slot
                vec[T - 1] = k  # the query: column k
                vec_src.append(vec)
                tok_src.append(tok)
                where = {slot: 2 * i + 1 for i, slot in enumerate(slots)}
                label_pos.append([-1] * P if nonbursty else [where[0]] + sorted(where[s] for s in range(1, P)))
        self._n_orders = math.factorial(P)
        self._vec_src = torch.tensor(vec_src)
        self._tok_src = torch.tensor(tok_src)
        self._label_pos = torch.tensor(label_pos)
        self._vector_mask = torch.zeros(T, dtype=torch.bool)
        self._vector_mask[0::2] = True

    def _has_heldout_pair(self, labels: torch.Tensor) -> torch.Tensor:
        """labels: (M, K) distinct label ids. Returns (M,) bool: some pair among them is held out."""
        return self._heldout_pair_mask[labels[:, :, None], labels[:, None, :]].flatten(1).any(1)

    def _build_label_table(self, want_heldout: bool) -> tuple[Optional[torch.Tensor], int]:
        """Allowed ordered label tuples: (Ml, P+2) int64, bursty ones (K=P labels) first, then non-bursty
        ones (K=P+1), padded with 0; and how many rows are bursty. The table is None when it would be
        too large (labels are then rejection-sampled)."""
        cfg = self.config
        N, P = cfg.n_labels, cfg.context_pairs
        sizes = (P,) if cfg.bursty >= 1 else (P + 1,) if cfg.bursty <= 0 else (P, P + 1)
        if any(math.perm(N, K) > _MAX_TABLE_ROWS for K in sizes):
            return None, 0
        parts = []
        for K in sizes:
            tuples = _ordered_tuples(N, K)
            tuples = tuples[self._has_heldout_pair(tuples) == want_heldout]
            if len(tuples) == 0:
                raise IclscopeError(f"no set of {K} distinct labels out of {N} satisfies the "
                                    f"{'held-out' if want_heldout else 'training'} label pairs; "
                                    "use more labels or fewer held-out pairs")
            parts.append(torch.cat([tuples, tuples.new_zeros(len(tuples), P + 2 - K)], dim=1))
        return torch.cat(parts), (len(parts[0]) if cfg.bursty > 0 else 0)

    def _build_split(self, name, class_lo, n_classes, ex_lo, n_ex, want_heldout) -> _Split:
        cfg, E, k = self.config, self._E, self.config.n_slots
        class_table = flat_table = None
        if math.perm(n_classes, k) <= _MAX_TABLE_ROWS:
            drawn = _ordered_tuples(n_classes, k) + class_lo  # (Mc, k)
            class_table = torch.cat([drawn, drawn[:, :1], drawn.new_full((len(drawn), 1), -1)], dim=1)
            flat_table = (class_table + 1) * E + ex_lo
        label_table, n_bursty = self._label_tables[want_heldout]
        mixed = 0 < cfg.bursty < 1
        moduli = [len(class_table) if class_table is not None else _BIG,
                  _BIG if label_table is None or mixed else len(label_table),
                  self._n_orders] + [n_ex] * (k + 1) + [1]
        return _Split(name, class_lo, n_classes, ex_lo, n_ex, want_heldout, class_table, flat_table, label_table,
                      n_bursty, torch.tensor(moduli))

    def _sample_labels(self, sp: _Split, raw: torch.Tensor, nonbursty: Optional[torch.Tensor],
                       g: torch.Generator) -> torch.Tensor:
        """(B, P+2) labels per slot (slot 0: the query's class), padded with 0."""
        P = self.config.context_pairs
        table = sp.label_table
        if table is not None:
            if nonbursty is None or self.config.bursty <= 0:
                return table[raw]  # raw was already reduced modulo len(table)
            nb = sp.n_bursty_labels
            row = torch.where(nonbursty, nb + raw % (len(table) - nb), raw % nb)
            return table[row]
        B = raw.shape[0]
        K = torch.full((B,), P, dtype=torch.long) if nonbursty is None else P + nonbursty.long()
        out = torch.zeros(B, P + 2, dtype=torch.long)
        for K_value in K.unique().tolist():
            rows = (K == K_value).nonzero().squeeze(1)
            out[rows, :K_value] = self._rejection_labels(len(rows), K_value, sp.heldout_labels, g)
        return out

    def _rejection_labels(self, n: int, K: int, want_heldout: bool, g: torch.Generator) -> torch.Tensor:
        """(n, K) uniform ordered tuples of distinct labels satisfying the split's pair rule."""
        out = torch.empty(n, K, dtype=torch.long)
        todo = torch.arange(n)
        for _ in range(100_000):
            if len(todo) == 0:
                return out
            cand = torch.rand(len(todo), self.config.n_labels, generator=g).topk(K, dim=1).indices
            ok = self._has_heldout_pair(cand) == want_heldout
            out[todo[ok]] = cand[ok]
            todo = todo[~ok]
        raise IclscopeError(f"could not draw {K} labels satisfying the label-pair rule; too few allowed label sets")


def _ordered_tuples(n: int, k: int) -> torch.Tensor:
    """(n!/(n-k)!, k) int64: every ordered k-tuple of distinct values in 0..n-1."""
    combos = torch.combinations(torch.arange(n), k) if k > 1 else torch.arange(n)[:, None]  # (C(n,k), k)
    orders = torch.tensor(list(itertools.permutations(range(k))))  # (k!, k)
    return combos[:, orders].reshape(-1, k)


def _sub_seed(seed: int, stream: int) -> int:
    """Independent-looking seeds for the separate random streams of one config seed."""
    return (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------------
# B. Token sequences for induction and previous-token scores
# ----------------------------------------------------------------------------------------------------


def random_tokens(batch: int, seq_len: int, vocab_size: int, generator: Optional[torch.Generator] = None,
                  bos_id: Optional[int] = None, min_token: int = 0) -> torch.Tensor:
    """Plain random tokens, uniform with replacement over min_token..vocab_size-1 (never `bos_id`).

    Returns (B, seq_len) int64, or (B, 1+seq_len) with `bos_id` at position 0.
    """
    return _with_bos(_draw_tokens(batch, seq_len, vocab_size, generator, bos_id, min_token, distinct=False), bos_id)


def repeated_random_tokens(batch: int, seq_len: int, vocab_size: int, generator: Optional[torch.Generator] = None,
                           bos_id: Optional[int] = None, min_token: int = 0) -> torch.Tensor:
    """[BOS?, r_1..r_L, r_1..r_L]: a random half, then the same half again (L = seq_len).

    The half has no repeated token when the vocabulary allows (vocab_size - min_token, less BOS, is at
    least L), so each second-half token has exactly one earlier occurrence. Tokens lie in
    min_token..vocab_size-1 and are never `bos_id` (set min_token to skip other special ids).

    Returns (B, 2L) int64, or (B, 1+2L) with `bos_id` at position 0.
    """
    half = _draw_tokens(batch, seq_len, vocab_size, generator, bos_id, min_token, distinct=True)
    return _with_bos(torch.cat([half, half], dim=1), bos_id)


def random_segment_repeats(batch: int, length: int, vocab_size: int, generator: Optional[torch.Generator] = None,
                           *, min_segment: int = 2, max_segment: Optional[int] = None, bos_id: Optional[int] = None,
                           min_token: int = 0, return_segments: bool = False):
    """Random tokens in which one segment of random length, at a random position, is repeated later.

    Per sequence: a segment length L uniform in [min_segment, max_segment] (default max: length // 2),
    a source start s and a later copy start d >= s + L, both random, with d + L <= length. The base
    tokens have no repeats when the vocabulary allows, so the copy is the only place where an earlier
    occurrence exists. Because positions and lengths vary, a head that attends at a fixed offset
    cannot score as an induction head here (unlike on [r, r] sequences of fixed length).

    Returns tokens (B, length) int64, or (B, 1+length) with `bos_id` at position 0; with
    return_segments also segments (B, 3) int64: [s, d, L], positions in the returned tokens.
    """
    max_segment = length // 2 if max_segment is None else max_segment
    if not 1 <= min_segment <= max_segment or 2 * max_segment > length:
        raise IclscopeError(f"need 1 <= min_segment <= max_segment <= length/2; got min_segment={min_segment}, "
                            f"max_segment={max_segment}, length={length}")
    base = _draw_tokens(batch, length, vocab_size, generator, bos_id, min_token, distinct=True)  # (B, length)
    seg = torch.randint(min_segment, max_segment + 1, (batch,), generator=generator)  # (B,)
    free = length - 2 * seg  # room left for the start and the gap
    a, b = (torch.rand(2, batch, generator=generator) * (free + 1)).long().clamp(max=free)  # uniform 0..free
    src, dst = torch.minimum(a, b), torch.maximum(a, b) + seg  # dst - src - seg = |a - b| >= 0
    pos = torch.arange(length)[None, :]  # (1, length)
    in_copy = (pos >= dst[:, None]) & (pos < (dst + seg)[:, None])
    tokens = base.gather(1, torch.where(in_copy, pos - dst[:, None] + src[:, None], pos))
    tokens = _with_bos(tokens, bos_id)
    if not return_segments:
        return tokens
    offset = 0 if bos_id is None else 1
    return tokens, torch.stack([src + offset, dst + offset, seg], dim=1)


def _draw_tokens(batch: int, n: int, vocab_size: int, generator: Optional[torch.Generator], bos_id: Optional[int],
                 min_token: int, distinct: bool) -> torch.Tensor:
    """(batch, n) int64 from min_token..vocab_size-1 minus bos_id; rows without repeats if `distinct`
    and the vocabulary has at least n values."""
    skip_bos = bos_id is not None and min_token <= bos_id < vocab_size
    V = vocab_size - min_token - int(skip_bos)
    if V < 1:
        raise IclscopeError(f"no tokens to draw from: vocab_size={vocab_size}, min_token={min_token}, bos_id={bos_id}")
    if not distinct or V < n:
        values = torch.randint(0, V, (batch, n), generator=generator)
    elif V * batch <= 2**22 or V <= 4 * n:  # small vocabulary: random keys, keep the top n
        values = torch.cat([torch.rand(rows, V, generator=generator).topk(n, dim=1).indices
                            for rows in _chunks(batch, max(1, 2**22 // V))])
    else:  # large vocabulary: draw with replacement, redraw the rare rows that repeat a token
        values = torch.randint(0, V, (batch, n), generator=generator)
        while True:
            s = values.sort(dim=1).values
            bad = (s[:, 1:] == s[:, :-1]).any(dim=1).nonzero().squeeze(1)
            if len(bad) == 0:
                break
            values[bad] = torch.randint(0, V, (len(bad), n), generator=generator)
    tokens = values + min_token
    if skip_bos:
        tokens = tokens + (tokens >= bos_id).long()
    return tokens


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def _with_bos(tokens: torch.Tensor, bos_id: Optional[int]) -> torch.Tensor:
    if bos_id is None:
        return tokens
    return torch.cat([tokens.new_full((tokens.shape[0], 1), bos_id), tokens], dim=1)
