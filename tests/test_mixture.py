"""The synthetic multi-task ICL mixture (iclscope.data.mixture): layout, task semantics, conditions, seeds."""


import pytest
import torch

from iclscope.data.mixture import (
    BOS, CONDITIONS, SEP, WORD_OFFSET, MixtureConfig, MixtureData, TokenBatch,
)
from iclscope.errors import IclscopeError
from iclscope.tasks import build_token_prompts, synthetic_token_tasks

K = 8
T = 3 * K + 2
N_WORDS = 64


@pytest.fixture(scope="module")
def data():
    return MixtureData(MixtureConfig())


@pytest.fixture(scope="module")
def maps():
    """Stored tasks as dicts {x token: y token}, built independently of the module under test."""
    tasks = synthetic_token_tasks(8, N_WORDS, seed=0, word_offset=WORD_OFFSET)
    return [{x[0]: y[0] for x, y in t.pairs} for t in tasks]


@pytest.fixture(scope="module")
def big(data):
    return data.sample(3000, torch.Generator().manual_seed(123))


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def decode(row):
    """(demo pairs [(x, y)], query) of one prompt row (a list of ints)."""
    return [(row[1 + 3 * j], row[2 + 3 * j]) for j in range(K)], row[-1]


def consistent_tasks(pairs, maps):
    return [t for t, m in enumerate(maps) if all(m[x] == y for x, y in pairs)]


def is_word(v):
    return WORD_OFFSET <= v < WORD_OFFSET + N_WORDS


# ------------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------------


def test_shapes_and_dtypes(data):
    b = data.sample(64, g())
    assert isinstance(b, TokenBatch)
    assert b.tokens.shape == b.targets.shape == b.loss_mask.shape == (64, T)
    assert b.tokens.dtype == b.targets.dtype == torch.int64 and b.loss_mask.dtype == torch.bool
    for name in ("kind", "task", "alt_target", "copy_pos"):
        assert getattr(b, name).shape == (64,) and getattr(b, name).dtype == torch.int64
    assert b.segments.shape == (64, 3)
    assert data.vocab_size == N_WORDS + 2 and data.seq_len == T
    moved = b.to("cpu")
    assert torch.equal(moved.tokens, b.tokens) and torch.equal(moved.loss_mask, b.loss_mask)


def test_layout(big):
    tok = big.tokens
    assert (tok[:, 0] == BOS).all()
    assert ((tok >= 0) & (tok < N_WORDS + 2)).all()
    prompts = big.kind < 2
    sep_pos = torch.arange(3, 3 * K + 1, 3)
    word_pos = torch.tensor([p for p in range(1, T) if p % 3 != 0])
    assert (tok[prompts][:, sep_pos] == SEP).all()
    assert ((tok[prompts][:, word_pos] >= WORD_OFFSET)).all()
    # segment sequences: BOS then words only
    assert (tok[~prompts][:, 1:] >= WORD_OFFSET).all()
    # next-token convention everywhere
    assert torch.equal(big.targets[:, :-1], tok[:, 1:])
    assert (big.targets[~prompts, -1] == -1).all()
    assert (big.targets[big.loss_mask] >= WORD_OFFSET).all()


def test_tasks_are_synthetic_token_tasks(data, maps):
    ref = synthetic_token_tasks(8, N_WORDS, seed=0, word_offset=WORD_OFFSET)
    assert [t.pairs for t in data.tasks] == [t.pairs for t in ref]
    for t, m in enumerate(maps):
        assert all(int(data.task_maps[t, x]) == y for x, y in m.items())
    assert (data.task_maps[:, :WORD_OFFSET] == -1).all()


# ------------------------------------------------------------------------------------------------------
# The three kinds of training sequences
# ------------------------------------------------------------------------------------------------------


def test_kind_proportions_and_repeat_rates(big):
    n = len(big)
    frac = [float((big.kind == c).float().mean()) for c in range(3)]
    assert abs(frac[0] - 0.65) < 0.04 and abs(frac[1] - 0.20) < 0.04 and abs(frac[2] - 0.15) < 0.04, frac
    stored = (big.kind == 0).nonzero().squeeze(1).tolist()
    rows = big.tokens.tolist()
    q_rep, demo_rep, demo_total = 0, 0, 0
    for i in stored:
        pairs, q = decode(rows[i])
        xs = [x for x, _ in pairs]
        q_rep += q in xs
        demo_rep += sum(xs[j] in xs[:j] for j in range(1, K))
        demo_total += K - 1
    assert abs(q_rep / len(stored) - 0.5) < 0.05
    assert abs(demo_rep / demo_total - 0.3) < 0.03
    assert n == 3000


def test_stored_prompts_follow_the_stored_tasks(big, maps):
    rows, targets = big.tokens.tolist(), big.targets[:, -1].tolist()
    stored = (big.kind == 0).nonzero().squeeze(1).tolist()
    for i in stored:
        pairs, q = decode(rows[i])
        ts = consistent_tasks(pairs, maps)
        t = int(big.task[i])
        assert t in ts, (i, pairs, t, ts)
        assert targets[i] == maps[t][q]
        mask = big.loss_mask[i]
        assert mask[-1] and mask.sum() == 1
        xs = [x for x, _ in pairs]
        if q in xs:
            j = max(j for j, x in enumerate(xs) if x == q)
            assert int(big.copy_pos[i]) == 2 + 3 * j and int(big.alt_target[i]) == targets[i]
        else:
            assert int(big.copy_pos[i]) == -1 and int(big.alt_target[i]) == -1


def test_fresh_prompts_are_new_consistent_mappings_with_repeated_queries(big, maps):
    rows, targets = big.tokens.tolist(), big.targets[:, -1].tolist()
    fresh = (big.kind == 1).nonzero().squeeze(1).tolist()
    assert len(fresh) > 400
    for i in fresh:
        pairs, q = decode(rows[i])
        m = {}
        for x, y in pairs:
            assert m.setdefault(x, y) == y  # one x, one y
        assert len(set(m.values())) == len(m)  # a permutation: injective
        assert q in m and targets[i] == m[q] == int(big.alt_target[i])
        assert consistent_tasks(pairs, maps) == []  # not a stored task (8 random pairs)
        assert int(big.task[i]) == -1
        assert big.loss_mask[i, -1] and big.loss_mask[i].sum() == 1


def test_segment_sequences(big, data):
    lo, hi = data.config.segment_range
    assert (lo, hi) == (4, 12)
    seg = (big.kind == 2).nonzero().squeeze(1).tolist()
    assert len(seg) > 300
    dsts, lengths = set(), set()
    for i in seg:
        tok, tgt = big.tokens[i].tolist(), big.targets[i].tolist()
        masked = big.loss_mask[i].nonzero().squeeze(1).tolist()
        assert masked == list(range(masked[0], masked[-1] + 1))  # one contiguous run
        L = len(masked) + 1
        assert lo <= L <= hi
        # an earlier copy at a fixed shift explains every masked position and its target
        shifts = [s for s in range(1, T) if masked[0] - s >= 1
                  and all(tok[m - s] == tok[m] and tok[m + 1 - s] == tok[m + 1] for m in masked)]
        assert shifts, (tok, masked)
        s = shifts[0]
        assert s >= L  # the two occurrences do not overlap
        for m in masked:
            assert tgt[m] == tok[m + 1]
        # the copy's first token (position masked[0]) is not predictable: it is not a loss target
        assert tok[masked[0]] not in tok[masked[0] - s + 1: masked[0]]
        src, dst, length = big.segments[i].tolist()
        assert (dst, length, dst - src) == (masked[0], L, s)
        dsts.add(dst)
        lengths.add(L)
    # positions and lengths vary (a purely positional head must not look like an induction head)
    assert len(dsts) > 8 and len(lengths) == hi - lo + 1


# ------------------------------------------------------------------------------------------------------
# Evaluation conditions
# ------------------------------------------------------------------------------------------------------


def _check_condition_common(b):
    assert b.tokens.shape == (200, T)
    assert (b.loss_mask[:, -1]).all() and b.loss_mask.sum() == len(b)
    assert torch.equal(b.targets[:, :-1], b.tokens[:, 1:])


def test_condition_stored_repeat(data, maps):
    b = data.condition("stored_repeat", 200, g(1))
    _check_condition_common(b)
    assert (b.kind == 0).all()
    for i, row in enumerate(b.tokens.tolist()):
        pairs, q = decode(row)
        xs = [x for x, _ in pairs]
        assert len(set(xs)) == K and q in xs
        t = int(b.task[i])
        assert t in consistent_tasks(pairs, maps)
        assert int(b.targets[i, -1]) == maps[t][q] == int(b.alt_target[i])


def test_condition_stored_novel(data, maps):
    b = data.condition("stored_novel", 200, g(2))
    _check_condition_common(b)
    for i, row in enumerate(b.tokens.tolist()):
        pairs, q = decode(row)
        xs = [x for x, _ in pairs]
        assert len(set(xs)) == K and q not in xs and is_word(q)
        t = int(b.task[i])
        assert t in consistent_tasks(pairs, maps)
        assert int(b.targets[i, -1]) == maps[t][q]
        assert int(b.alt_target[i]) == -1 and int(b.copy_pos[i]) == -1
    assert len(set(b.task.tolist())) == 8


def test_condition_fresh_repeat(data, maps):
    b = data.condition("fresh_repeat", 200, g(3))
    _check_condition_common(b)
    assert (b.kind == 1).all() and (b.task == -1).all()
    for i, row in enumerate(b.tokens.tolist()):
        pairs, q = decode(row)
        m = dict(pairs)
        assert len(m) == K and len(set(m.values())) == K
        assert q in m and int(b.targets[i, -1]) == m[q] == int(b.alt_target[i])
        assert row[int(b.copy_pos[i])] == m[q] and row[int(b.copy_pos[i]) - 1] == q
        assert consistent_tasks(pairs, maps) == []


def test_condition_conflict(data, maps):
    b = data.condition("conflict", 200, g(4))
    _check_condition_common(b)
    for i, row in enumerate(b.tokens.tolist()):
        pairs, q = decode(row)
        xs = [x for x, _ in pairs]
        assert len(set(xs)) == K and q in xs
        j = xs.index(q)
        t = int(b.task[i])
        truth = maps[t][q]
        shown = pairs[j][1]
        assert int(b.targets[i, -1]) == truth
        assert shown != truth and int(b.alt_target[i]) == shown and is_word(shown)
        assert int(b.copy_pos[i]) == 2 + 3 * j
        # every other demo follows the task, and the wrong word appears nowhere else among the labels
        others = [p for jj, p in enumerate(pairs) if jj != j]
        assert t in consistent_tasks(others, maps)
        assert shown not in [y for _, y in others]


def test_condition_fixed_task_and_errors(data, maps):
    b = data.condition("stored_novel", 50, g(5), task=3)
    assert (b.task == 3).all()
    for row in b.tokens.tolist():
        pairs, _ = decode(row)
        assert 3 in consistent_tasks(pairs, maps)
    with pytest.raises(IclscopeError, match="unknown condition"):
        data.condition("novel", 4, g())
    with pytest.raises(IclscopeError):
        data.condition("stored_novel", 4, g(), task=8)
    with pytest.raises(IclscopeError):
        data.condition("fresh_repeat", 4, g(), task=0)
    with pytest.raises(IclscopeError):
        data.sample(0, g())
    assert CONDITIONS == ("stored_repeat", "stored_novel", "fresh_repeat", "conflict")


def test_condition_layout_matches_build_token_prompts(data):
    b = data.condition("stored_novel", 16, g(6))
    ref = build_token_prompts(data.tasks[0], k=K, n=16, seed=0, sep_id=SEP, bos_id=BOS)
    assert ref.input_ids.shape[1] == b.tokens.shape[1] == T
    assert bool(ref.attention_mask.all())
    for ids in (ref.input_ids, b.tokens):
        assert torch.equal(ids == BOS, torch.nn.functional.one_hot(torch.zeros(len(ids), dtype=torch.long), T).bool())
    ref_sep = (ref.input_ids == SEP)[0]
    assert torch.equal((b.tokens == SEP), ref_sep.expand_as(b.tokens))
    # and the reference prompts are answered by the same stored task table
    ans = data.task_maps[0, ref.input_ids[:, -1]]
    assert torch.equal(ans, ref.answer_first_token)


def test_to_prompt_batch(data):
    b = data.condition("conflict", 10, g(7))
    pb = b.to_prompt_batch(task="mix")
    assert torch.equal(pb.input_ids, b.tokens) and torch.equal(pb.answer_first_token, b.targets[:, -1])
    assert len(pb) == 10 and pb.k == K and pb.bos
    pairs, q = decode(b.tokens[0].tolist())
    assert pb.demos[0] == [((x,), (y,)) for x, y in pairs] and pb.queries[0] == (q,)
    with pytest.raises(IclscopeError, match="segment"):
        data.sample(200, g()).to_prompt_batch()


# ------------------------------------------------------------------------------------------------------
# Seeds, configuration, speed
# ------------------------------------------------------------------------------------------------------


def _equal(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f))
               for f in ("tokens", "targets", "loss_mask", "kind", "task", "alt_target", "copy_pos", "segments"))


def test_determinism(data):
    assert _equal(data.sample(64, g(9)), data.sample(64, g(9)))
    assert not torch.equal(data.sample(64, g(9)).tokens, data.sample(64, g(10)).tokens)
    for name in CONDITIONS:
        assert _equal(data.condition(name, 32, g(9)), data.condition(name, 32, g(9)))
    # a stream: consecutive batches differ, and the same seed replays the same stream
    g1, g2 = g(11), g(11)
    s1 = [data.sample(16, g1) for _ in range(3)]
    s2 = [data.sample(16, g2) for _ in range(3)]
    assert all(_equal(a, b) for a, b in zip(s1, s2))
    assert not torch.equal(s1[0].tokens, s1[1].tokens)
    # without a generator: the config's seed
    a, b = MixtureData(MixtureConfig(seed=5)), MixtureData(MixtureConfig(seed=5))
    assert _equal(a.sample(32), b.sample(32))
    # the task seed changes the stored tasks
    other = MixtureData(MixtureConfig(task_seed=1))
    assert not torch.equal(other.task_maps, data.task_maps)


def test_masked_targets(data):
    b = data.sample(64, g())
    m = b.masked_targets()
    assert torch.equal(m >= 0, b.loss_mask)
    assert torch.equal(m[b.loss_mask], b.targets[b.loss_mask])


def test_other_configs():
    cfg = MixtureConfig(n_words=16, n_tasks=3, k=4, p_stored=0.5, p_fresh=0.5, p_segments=0.0, p_fresh_demo_repeat=0.5)
    d = MixtureData(cfg)
    assert cfg.seq_len == 14 and cfg.segment_range == (4, 6)
    b = d.sample(500, g())
    assert b.tokens.shape == (500, 14) and (b.kind < 2).all()
    assert ((b.tokens >= 0) & (b.tokens < 18)).all()
    # fresh prompts with repeated demo inputs stay consistent
    for i in (b.kind == 1).nonzero().squeeze(1).tolist():
        row = b.tokens[i].tolist()
        m = {}
        for j in range(4):
            assert m.setdefault(row[1 + 3 * j], row[2 + 3 * j]) == row[2 + 3 * j]
        assert row[-1] in m and m[row[-1]] == int(b.targets[i, -1])
    only_seg = MixtureData(MixtureConfig(p_stored=0.0, p_fresh=0.0, p_segments=1.0)).sample(20, g())
    assert (only_seg.kind == 2).all() and (only_seg.loss_mask.sum(1) >= 3).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(p_stored=0.5), "sum to 1"),
    (dict(p_demo_repeat=1.5), "p_demo_repeat"),
    (dict(p_query_repeat=-0.1), "p_query_repeat"),
    (dict(n_words=8, k=8), "n_words"),
    (dict(k=0), "k"),
    (dict(n_tasks=0), "n_tasks"),
    (dict(segment_max=13), "segment"),
    (dict(segment_min=1), "segment"),
    (dict(segment_min=6, segment_max=5), "segment"),
    (dict(k=2), "segment"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(IclscopeError, match=match):
        MixtureConfig(**kwargs)


def test_loss_on_labels_scores_every_stored_label_and_only_repeated_fresh_ones():
    from iclscope.data.mixture import MixtureConfig, MixtureData

    data = MixtureData(MixtureConfig(loss_on="labels", p_stored=0.5, p_fresh=0.5, p_segments=0.0))
    b = data.sample(256, torch.Generator().manual_seed(3))
    k = data.config.k
    xpos = torch.arange(k) * 3 + 1
    for i in range(256):
        scored = b.loss_mask[i, xpos]
        assert bool(b.loss_mask[i, -1])  # the query stays scored
        # every scored position's target is the label that follows
        assert torch.equal(b.targets[i, xpos], b.tokens[i, xpos + 1])
        if b.kind[i] == 0:
            assert bool(scored.all())
        else:
            xs = b.tokens[i, xpos].tolist()
            want = [x in xs[:j] for j, x in enumerate(xs)]
            assert scored.tolist() == want
    with pytest.raises(Exception, match="loss_on"):
        MixtureConfig(loss_on="everything")
