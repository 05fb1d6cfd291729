"""Tests for iclscope.data.synthetic: few-shot classification sequences and token sequences."""

import itertools
import math

import pytest
import torch

from iclscope.data import synthetic
from iclscope.data.synthetic import (FewShotBatch, FewShotConfig, FewShotData, generate_features, induction_targets,
                                     load_features_h5, previous_token_pattern, random_segment_repeats, random_tokens,
                                     repeated_random_tokens)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def data():
    return FewShotData(FewShotConfig())


def context_labels(batch):
    """(B, P) labels at label positions."""
    return batch.tokens[:, 1:-1:2]


def check_batch_invariants(batch: FewShotBatch, data: FewShotData, split: str):
    """Everything that must hold for bursty sequences of any split."""
    cfg = data.config
    B, T = batch.tokens.shape
    P = cfg.context_pairs
    assert T == 2 * P + 1
    rows = torch.arange(B)
    # labels in range and distinct within a sequence; zeros at exemplar positions
    labels = context_labels(batch)
    assert ((labels >= 0) & (labels < cfg.n_labels)).all()
    assert (batch.tokens[:, 0::2] == 0).all()
    assert all(len(set(r)) == P for r in labels.tolist())
    # vectors: zeros at label positions; each exemplar is a row of the feature bank of its class
    assert (batch.vectors[:, 1::2] == 0).all()
    assert (batch.class_ids[:, 1::2] == -1).all()
    ex_pos = torch.arange(0, T, 2)
    cls = batch.class_ids[:, ex_pos]  # (B, P+1)
    bank = data.features[cls]  # (B, P+1, E, D)
    match = (bank == batch.vectors[:, ex_pos, None, :]).all(-1)  # (B, P+1, E)
    allowed = torch.zeros(data.features.shape[1], dtype=torch.bool)
    allowed[data.exemplars(split)] = True
    assert (match & allowed).any(-1).all(), "an exemplar vector is not one of the split's exemplars of its class"
    # context classes distinct, all from the split
    assert all(len(set(r)) == P for r in cls[:, :P].tolist())
    assert torch.isin(cls, data.classes(split)).all()
    # the query's class appears exactly once in context; correct_pos is the label right after it
    query_cls = batch.class_ids[:, -1]
    is_query_cls = batch.class_ids[:, :-1] == query_cls[:, None]
    assert (is_query_cls.sum(1) == 1).all()
    ex_of_query_cls = is_query_cls.int().argmax(1)
    assert torch.equal(batch.correct_pos, ex_of_query_cls + 1)
    assert torch.equal(batch.tokens[rows, batch.correct_pos], batch.target)
    # wrong positions: the other label positions, ascending, none equal to the target
    assert batch.wrong_pos.shape == (B, P - 1)
    for b in range(B):
        expected = sorted(set(range(1, T - 1, 2)) - {batch.correct_pos[b].item()})
        assert batch.wrong_pos[b].tolist() == expected
    assert (batch.tokens.gather(1, batch.wrong_pos) != batch.target[:, None]).all()


def test_shapes_and_dtypes(data):
    cfg = data.config
    assert data.features.shape == (150, 5, 512) and data.features.dtype == torch.float32
    for split in synthetic.SPLITS:
        b = data.sample(7, split, gen())
        assert b.tokens.shape == (7, 5) and b.tokens.dtype == torch.int64
        assert b.vectors.shape == (7, 5, cfg.dim) and b.vectors.dtype == torch.float32
        assert b.vector_mask.shape == (7, 5) and b.vector_mask.dtype == torch.bool
        assert b.vector_mask[0].tolist() == [True, False, True, False, True]
        assert b.target.shape == (7,) and b.target.dtype == torch.int64
        assert b.correct_pos.shape == (7,) and b.correct_pos.dtype == torch.int64
        assert b.wrong_pos.shape == (7, 1) and b.wrong_pos.dtype == torch.int64
        assert b.class_ids.shape == (7, 5)
        moved = b.to("cpu")
        assert isinstance(moved, FewShotBatch) and torch.equal(moved.vectors, b.vectors)


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_sequence_invariants(data, split):
    check_batch_invariants(data.sample(256, split, gen(1)), data, split)


def test_train_query_is_its_context_exemplar(data):
    """One training exemplar per class: the query vector equals the exemplar before correct_pos."""
    b = data.sample(128, "train", gen(2))
    rows = torch.arange(128)
    assert torch.equal(b.vectors[rows, b.correct_pos - 1], b.vectors[:, -1])
    assert torch.equal(b.tokens[rows, b.correct_pos], b.target)
    assert not (b.vectors[rows, b.wrong_pos[:, 0] - 1] == b.vectors[:, -1]).all(-1).any()
    # the answer is not fixed per class: the same class carries different labels in different sequences
    by_class = {}
    for c, t in zip(b.class_ids[:, -1].tolist(), b.target.tolist()):
        by_class.setdefault(c, set()).add(t)
    assert any(len(v) > 1 for v in by_class.values())


def test_label_pair_splits(data):
    held = {tuple(p) for p in data.heldout_label_pairs.tolist()}
    train_pairs = {tuple(p) for p in data.train_label_pairs.tolist()}
    assert len(held) == 2 and len(train_pairs) == 8 and not held & train_pairs
    assert held | train_pairs == set(itertools.combinations(range(5), 2))

    def pairs(split):
        labels = context_labels(data.sample(2000, split, gen(3)))
        return {tuple(sorted(r)) for r in labels.tolist()}, {tuple(r) for r in labels.tolist()}

    for split in ("train", "heldout_classes", "heldout_exemplars"):
        unordered, ordered = pairs(split)
        assert unordered == train_pairs
        assert len(ordered) == 16  # both orders
    unordered, ordered = pairs("heldout_labels")
    assert unordered == held and len(ordered) == 4


def test_split_classes_and_exemplars(data):
    assert data.classes("train").tolist() == list(range(50))
    assert data.classes("heldout_classes").tolist() == list(range(50, 150))
    assert data.exemplars("train").tolist() == [0]
    assert data.exemplars("heldout_exemplars").tolist() == [1, 2, 3, 4]
    b = data.sample(500, "heldout_classes", gen(4))
    assert (b.class_ids[b.vector_mask] >= 50).all()
    b = data.sample(500, "train", gen(4))
    assert (b.class_ids[b.vector_mask] < 50).all()
    # held-out exemplars never reproduce a training exemplar
    b = data.sample(200, "heldout_exemplars", gen(4))
    train_vecs = data.features[:, 0]  # (C, D)
    ex = b.vectors[b.vector_mask]  # (n, D)
    assert not (ex[:, None, :] == train_vecs[None]).all(-1).any()


def test_determinism(data):
    same = FewShotData(FewShotConfig())
    assert torch.equal(same.features, data.features)
    assert torch.equal(same.heldout_label_pairs, data.heldout_label_pairs)
    a, b = data.sample(32, "train", gen(7)), same.sample(32, "train", gen(7))
    for name in ("tokens", "vectors", "target", "correct_pos", "wrong_pos", "class_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = data.sample(32, "train", gen(8))
    assert not torch.equal(a.class_ids, c.class_ids)
    other = FewShotData(FewShotConfig(seed=1))
    assert not torch.allclose(other.features, data.features)
    # the default generator is seeded from the config too
    x, y = FewShotData(FewShotConfig(n_heldout_classes=0)), FewShotData(FewShotConfig(n_heldout_classes=0))
    assert torch.equal(x.sample(16).class_ids, y.sample(16).class_ids)
    assert not torch.equal(x.sample(16).class_ids, x.sample(16).class_ids)


def test_non_bursty():
    d = FewShotData(FewShotConfig(bursty=0.0, n_heldout_classes=0))
    b = d.sample(300, "train", gen(0))
    assert (b.correct_pos == -1).all() and (b.wrong_pos == -1).all()
    assert not (b.class_ids[:, :-1] == b.class_ids[:, -1:]).any()  # query's class not in context
    assert not (context_labels(b) == b.target[:, None]).any()  # its label is none of the context labels
    pattern = b.ideal_induction_pattern(0.9)
    assert torch.allclose(pattern[:, -1], torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0]).expand(300, 5))


def test_mixed_bursty():
    d = FewShotData(FewShotConfig(bursty=0.5))
    for split in d.splits:
        b = d.sample(1000, split, gen(0))
        bursty = b.correct_pos >= 0
        assert 400 < bursty.sum() < 600
        rows = bursty.nonzero().squeeze(1)
        sub = FewShotBatch(*(getattr(b, f)[rows] for f in ("tokens", "vectors", "vector_mask", "target",
                                                             "correct_pos", "wrong_pos", "class_ids")))
        check_batch_invariants(sub, d, split)
        nb = ~bursty
        assert (b.wrong_pos[nb] == -1).all()
        assert not (b.class_ids[nb, :-1] == b.class_ids[nb, -1:]).any()


@pytest.mark.parametrize("table_rows", [None, 10])
def test_more_context_pairs(monkeypatch, table_rows):
    """P=3; with table_rows=10 every lookup table is too big and the fallback samplers run."""
    if table_rows is not None:
        monkeypatch.setattr(synthetic, "_MAX_TABLE_ROWS", table_rows)
    d = FewShotData(FewShotConfig(context_pairs=3, n_labels=6, heldout_label_pairs=3, n_classes=20,
                                  n_heldout_classes=10, dim=16))
    if table_rows is not None:
        assert all(d._splits[s].class_table is None and d._splits[s].label_table is None for s in d.splits)
    held = {tuple(p) for p in d.heldout_label_pairs.tolist()}
    for split in d.splits:
        b = d.sample(400, split, gen(0))
        assert b.tokens.shape == (400, 7) and b.wrong_pos.shape == (400, 2)
        check_batch_invariants(b, d, split)
        has_held = [any(p in held for p in itertools.combinations(sorted(r), 2)) for r in context_labels(b).tolist()]
        assert all(has_held) if split == "heldout_labels" else not any(has_held)


def test_ideal_induction_pattern(data):
    b = data.sample(16, "train", gen(0))
    T = 5
    rows = torch.arange(16)
    for s in (1.0, 0.7, 0.0):
        p = b.ideal_induction_pattern(s)
        assert p.shape == (16, T, T)
        assert torch.allclose(p.sum(-1), torch.ones(16, T))
        assert torch.allclose(p[rows, -1, b.correct_pos], torch.full((16,), s))
        assert torch.allclose(p[rows, -1, b.wrong_pos[:, 0]], torch.full((16,), 1 - s))
        assert torch.equal(p[:, :-1], previous_token_pattern(T)[:-1].expand(16, -1, -1))
    strengths = torch.linspace(0, 1, 16)
    p = b.ideal_induction_pattern(strengths)
    assert torch.allclose(p[rows, -1, b.correct_pos], strengths)
    with pytest.raises(ValueError):
        b.ideal_induction_pattern(1.5)
    # P=3: 1-s split evenly between the two wrong labels
    d3 = FewShotData(FewShotConfig(context_pairs=3, n_labels=5, n_heldout_classes=0, dim=8))
    b3 = d3.sample(8, "train", gen(0))
    p3 = b3.ideal_induction_pattern(0.6)
    assert torch.allclose(p3[torch.arange(8)[:, None], -1, b3.wrong_pos], torch.full((8, 2), 0.2))
    assert torch.allclose(p3.sum(-1), torch.ones(8, 7))


def test_previous_token_pattern():
    p = previous_token_pattern(4)
    assert torch.equal(p, torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))


def test_generated_feature_structure():
    cfg = FewShotConfig(n_classes=40, n_heldout_classes=20, exemplar_noise=0.0, class_rank=8, dim=64)
    f = generate_features(cfg)
    assert f.shape == (60, 5, 64)
    # no noise: exemplars equal their prototype; prototypes lie in an 8-dim subspace around the shared part
    assert torch.allclose(f[:, 0], f[:, 3])
    sv = torch.linalg.svdvals((f[:, 0] - f[:1, 0]).double())
    assert sv[7] > 0.1 * sv[0] and sv[8] < 1e-5 * sv[0]
    # the shared component makes classes close: mean cosine ~ shared^2 / (shared^2 + prototype^2) = 0.8
    d = FewShotData(FewShotConfig(n_heldout_classes=0))
    x = torch.nn.functional.normalize(d.features[:, 0], dim=-1)
    cos = x @ x.T
    off = cos[~torch.eye(len(cos), dtype=torch.bool)]
    assert abs(off.mean().item() - 0.8) < 0.08
    normed = FewShotData(FewShotConfig(normalize=True, n_heldout_classes=0, dim=32, class_rank=0))
    assert torch.allclose(normed.features.norm(dim=-1), torch.ones(50, 5))


def test_load_features_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    feats = torch.randn(12, 3, 8)
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("group/features", data=feats.numpy())
    assert torch.equal(load_features_h5(path), feats)
    assert torch.equal(load_features_h5(path, "group/features"), feats)
    with pytest.raises(ValueError, match=r"12 classes x 3 exemplars"):
        load_features_h5(path, min_classes=20)
    with pytest.raises(ValueError, match=r"no dataset named"):
        load_features_h5(path, "nope")

    # FewShotData takes the file's first classes and exemplars
    cfg = FewShotConfig(n_classes=6, n_heldout_classes=4, exemplars_per_class=2, n_heldout_exemplars=1, dim=8,
                        features_path=str(path))
    d = FewShotData(cfg)
    assert torch.equal(d.features, feats[:10])
    b = d.sample(64, "train", gen(0))
    check_batch_invariants(b, d, "train")
    with pytest.raises(ValueError, match=r"dim=8"):
        FewShotData(FewShotConfig(n_classes=6, n_heldout_classes=4, exemplars_per_class=2, n_heldout_exemplars=1,
                                  features_path=str(path)))
    with pytest.raises(ValueError, match=r"\(12, 3, 8\)"):
        FewShotData(FewShotConfig(n_classes=20, n_heldout_classes=0, dim=8, features_path=str(path)))

    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as f:
        f.create_dataset("x", data=torch.randn(10, 8).numpy())
    with pytest.raises(ValueError, match=r"flat\.h5.*\(10, 8\).*3-D"):
        load_features_h5(flat)
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as f:
        f.create_dataset("a", data=feats.numpy())
        f.create_dataset("b", data=feats.numpy())
    with pytest.raises(ValueError, match=r"2 datasets"):
        load_features_h5(two)
    assert torch.equal(load_features_h5(two, "b"), feats)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_features_are_refused_naming_file_and_index(tmp_path, bad):
    h5py = pytest.importorskip("h5py")
    import numpy as np
    feats = torch.randn(12, 3, 8).numpy().astype(np.float64)
    feats[4, 1, 5] = bad
    feats[7, 0, 0] = bad  # a later one: the first is named
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
    with pytest.raises(ValueError, match=r"nan\.h5:features holds a non-finite value .* at index \[4, 1, 5\]") as e:
        load_features_h5(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"nan\.h5.*\[4, 1, 5\]"):
        FewShotData(FewShotConfig(n_classes=6, n_heldout_classes=4, exemplars_per_class=2, n_heldout_exemplars=1,
                                  dim=8, features_path=str(path)))


def test_generated_features_that_overflow_are_refused():
    with pytest.raises(ValueError, match=r"generated features \(shared_scale=1e\+40.*non-finite.*index \[0, 0, "):
        FewShotData(FewShotConfig(n_classes=4, n_heldout_classes=0, dim=8, shared_scale=1e40))


def test_config_validation():
    with pytest.raises(ValueError):
        FewShotConfig(n_labels=2, bursty=0.5)  # non-bursty sequences need P+1 labels
    with pytest.raises(ValueError):
        FewShotConfig(heldout_label_pairs=10)
    with pytest.raises(ValueError):
        FewShotConfig(bursty=1.5)
    d = FewShotData(FewShotConfig(heldout_label_pairs=0, n_heldout_exemplars=0, n_heldout_classes=0, dim=8))
    assert d.splits == ("train",)
    with pytest.raises(ValueError, match="empty"):
        d.sample(4, "heldout_labels")
    with pytest.raises(ValueError, match="unknown split"):
        d.sample(4, "test")


# ------------------------------------------------------------------------------------ token sequences


def test_induction_targets_hand_made():
    tokens = torch.tensor([[7, 1, 2, 1, 2, 3, 3, 1]])
    #                        0  1  2  3  4  5  6  7
    # pos 3 (1): previous 1 at 1 -> 2; pos 4 (2): previous at 2 -> 3; pos 6 (3): previous at 5 -> 6 == i -> -1;
    # pos 7 (1): most recent previous at 3 -> 4
    assert induction_targets(tokens).tolist() == [[-1, -1, -1, 2, 3, -1, -1, 4]]


def test_repeated_random_tokens():
    t = repeated_random_tokens(64, 50, 60, gen(0), bos_id=0, min_token=1)
    assert t.shape == (64, 101) and t.dtype == torch.int64
    assert (t[:, 0] == 0).all() and (t[:, 1:] >= 1).all() and (t < 60).all()
    assert torch.equal(t[:, 1:51], t[:, 51:])
    assert all(len(set(r)) == 50 for r in t[:, 1:51].tolist())
    targets = induction_targets(t)
    assert (targets[:, :51] == -1).all()
    assert torch.equal(targets[:, 51:], torch.arange(2, 52).expand(64, -1))  # i -> (i - 50) + 1
    # a large vocabulary takes the rejection path; BOS inside the range is never drawn
    big = repeated_random_tokens(8, 30, 50_000, gen(1), bos_id=25_000)
    assert all(len(set(r)) == 30 for r in big[:, 1:31].tolist())
    assert (big[:, 1:] != 25_000).all()
    small = repeated_random_tokens(4, 10, 5, gen(1))  # vocab too small for distinct halves
    assert small.shape == (4, 20) and torch.equal(small[:, :10], small[:, 10:])
    assert torch.equal(repeated_random_tokens(4, 10, 100, gen(3)), repeated_random_tokens(4, 10, 100, gen(3)))


def test_random_segment_repeats():
    t, seg = random_segment_repeats(200, 40, 1000, gen(0), bos_id=999, min_segment=3, max_segment=12,
                                    return_segments=True)
    assert t.shape == (200, 41) and (t[:, 0] == 999).all() and (t[:, 1:] != 999).all()
    src, dst, length = seg.unbind(1)
    assert (length >= 3).all() and (length <= 12).all()
    assert (dst >= src + length).all() and (dst + length <= 41).all() and (src >= 1).all()
    targets = induction_targets(t)
    for b in range(200):
        s, d, n = src[b].item(), dst[b].item(), length[b].item()
        assert t[b, d:d + n].tolist() == t[b, s:s + n].tolist()
        # the copy is the only repeat: earlier occurrences exactly at d..d+n-1
        expected = [-1] * 41
        expected[d:d + n] = list(range(s + 1, s + n + 1))
        assert targets[b].tolist() == expected
    # positions and lengths vary, so no fixed offset explains the repeats
    assert len(set(dst.tolist())) > 10 and len(set((dst - src).tolist())) > 10 and len(set(length.tolist())) == 10
    plain = random_segment_repeats(5, 20, 50, gen(0))
    assert plain.shape == (5, 20)
    with pytest.raises(ValueError):
        random_segment_repeats(5, 20, 50, gen(0), max_segment=11)


def test_random_tokens():
    t = random_tokens(50, 30, 7, gen(0), bos_id=3)
    assert t.shape == (50, 31) and (t[:, 0] == 3).all()
    body = t[:, 1:]
    assert set(body.unique().tolist()) == {0, 1, 2, 4, 5, 6}
    assert random_tokens(2, 5, 10, gen(0)).shape == (2, 5)
    assert math.isfinite(float(t.float().mean()))
